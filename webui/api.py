"""Named endpoints for programs (``gradio_client``): they return data, not page updates."""

from __future__ import annotations

import sys
import traceback

import gradio as gr

from pipeline.shared.errors import CosyVoiceRKError
from pipeline.worker import WorkerError

from .client import FieldError, Studio
from .i18n import t


def _api_error(e: BaseException) -> gr.Error:
    if isinstance(e, CosyVoiceRKError):
        return gr.Error(str(e), print_exception=False)
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    return gr.Error(t("err_internal", "en", error=f"{type(e).__name__}: {e}"), print_exception=False)


def _api(studio: Studio) -> None:
    """Named endpoints for programs (``gradio_client``); they return data, not page updates."""

    def voices() -> list[dict]:
        """Saved voices: name, transcript, language, created, duration (s)."""
        return [{k: v for k, v in d.items() if k != "audio"} for d in studio.voices()]

    def status() -> dict:
        """Bundle, backends per stage, worker state and queue."""
        return studio.status()

    def rename_voice(name: str, new_name: str) -> str:
        """Rename a saved voice; returns the new name."""
        try:
            return studio.rename_voice(name, new_name)
        except Exception as e:  # noqa: BLE001
            raise _api_error(e) from None

    def delete_voice(name: str) -> str:
        """Delete a saved voice; returns its name."""
        try:
            studio.delete_voice(name)
            return name
        except Exception as e:  # noqa: BLE001
            raise _api_error(e) from None

    gr.api(voices, api_name="voices")
    gr.api(status, api_name="status")
    gr.api(rename_voice, api_name="rename_voice")
    gr.api(delete_voice, api_name="delete_voice")

    with gr.Column(visible=False):
        a_text = gr.Textbox(label="text")
        a_voice = gr.Textbox(label="voice")
        a_language = gr.Textbox("auto", label="language")
        a_temp = gr.Number(1.0, label="temperature")
        a_seed = gr.Number(-1, label="seed", precision=0)
        a_topk = gr.Number(0, label="top_k", precision=0)
        a_topp = gr.Number(0.0, label="top_p")
        a_paudio = gr.Audio(type="filepath", label="prompt_audio")
        a_ptext = gr.Textbox("", label="prompt_text")
        a_plang = gr.Textbox("auto", label="prompt_language")
        a_mode = gr.Textbox("zero_shot", label="mode")
        a_instruct = gr.Textbox("", label="instruct")
        a_speed = gr.Number(1.0, label="speed")
        a_wav = gr.Audio(type="filepath", label="audio", format="wav")
        a_info = gr.JSON(label="info")
        a_name = gr.Textbox(label="name")
        a_transcript = gr.Textbox("", label="transcript")
        a_overwrite = gr.Checkbox(False, label="overwrite")
        a_file = gr.File(label="file", type="filepath")
        a_go = gr.Button()

    def run_speak(text: str, voice: str | None, prompt_audio: str | None, prompt_text: str, prompt_language: str,
                  language: str, temperature: float, seed: float, top_k: float, top_p: float, mode: str,
                  instruct: str, speed: float) -> tuple[str, dict]:
        try:
            job = studio.speak(text, voice=voice or None, prompt_audio=prompt_audio, prompt_text=prompt_text or "",
                               prompt_language=prompt_language or "auto", language=language or "auto",
                               temperature=temperature, seed=seed, top_k=top_k or None, top_p=top_p or None,
                               mode=mode or "zero_shot", instruct=instruct or None, speed=speed)
            last = None
            for st in studio.follow(job, poll=None):
                last = st
            if last is None or last.phase != "done" or not last.result:
                raise WorkerError(last.error if last and last.error else "cancelled")
            e = last.result
            return e["path"], {k: e[k] for k in ("duration", "rtf", "tokens", "segments", "backends", "timings",
                                                 "seed", "voice", "compute_s", "warnings", "ttfa_s", "stream",
                                                 "mode", "speed", "notes")
                               if k in e}
        except Exception as e:  # noqa: BLE001
            raise _api_error(e) from None

    def synthesize(text: str, voice: str, language: str, temperature: float, seed: float, top_k: float,
                   top_p: float, mode: str, instruct: str, speed: float) -> tuple[str, dict]:
        """Speak ``text`` in a saved ``voice``. Returns (WAV file, info: duration, rtf, tokens, segments,
        backends, timings, seed, mode, speed, notes). ``seed`` -1 = random; ``top_k``/``top_p`` 0 = the bundle's
        defaults; ``mode`` zero_shot / cross_lingual / instruct (with ``instruct``, the instruction); ``speed``
        0.5-2.0 (other than 1: made without streaming, said in ``notes``)."""
        return run_speak(text, voice, None, "", "auto", language, temperature, seed, top_k, top_p, mode, instruct,
                         speed)

    def synthesize_with_prompt(text: str, prompt_audio: str | None, prompt_text: str, prompt_language: str,
                               language: str, temperature: float, seed: float, top_k: float,
                               top_p: float, mode: str, instruct: str, speed: float) -> tuple[str, dict]:
        """Speak ``text`` in the voice of a one-off recording (3–10 s) whose exact words are ``prompt_text``
        (needed in zero_shot only). Other parameters as for ``/synthesize``."""
        return run_speak(text, None, prompt_audio, prompt_text, prompt_language, language, temperature, seed, top_k,
                         top_p, mode, instruct, speed)

    def add_voice(name: str, audio: str | None, transcript: str, language: str, overwrite: bool) -> dict:
        """Save a voice from a 3–10 s recording and its exact transcript."""
        try:
            return studio.run_voice_job(studio.add_voice(name, audio, transcript, language or "auto", overwrite))
        except Exception as e:  # noqa: BLE001
            raise _api_error(e) from None

    def export_voice(name: str) -> str:
        """One .cvvoice file with the voice."""
        try:
            return str(studio.export_voice(name))
        except Exception as e:  # noqa: BLE001
            raise _api_error(e) from None

    def import_voice(file: str | None, name: str, overwrite: bool) -> dict:
        """Import a .cvvoice file (optionally under another name)."""
        try:
            if not file:
                raise FieldError("import", "give a .cvvoice file")
            return studio.run_voice_job(studio.import_voice(file, name or None, overwrite))
        except Exception as e:  # noqa: BLE001
            raise _api_error(e) from None

    modes = [a_mode, a_instruct, a_speed]
    a_go.click(synthesize, [a_text, a_voice, a_language, a_temp, a_seed, a_topk, a_topp, *modes], [a_wav, a_info],
               api_name="synthesize", concurrency_limit=None)
    a_go.click(synthesize_with_prompt, [a_text, a_paudio, a_ptext, a_plang, a_language, a_temp, a_seed, a_topk, a_topp,
                                        *modes], [a_wav, a_info], api_name="synthesize_with_prompt",
               concurrency_limit=None)
    a_go.click(add_voice, [a_name, a_paudio, a_transcript, a_language, a_overwrite], [a_info], api_name="add_voice",
               concurrency_limit=None)
    a_go.click(export_voice, [a_name], [a_file], api_name="export_voice")
    a_go.click(import_voice, [a_file, a_name, a_overwrite], [a_info], api_name="import_voice",
               concurrency_limit=None)
