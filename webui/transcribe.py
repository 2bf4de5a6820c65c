"""The transcript box fills itself: when a prompt is uploaded or recorded, the worker's speech recognition model
(:mod:`pipeline.shared.asr`) transcribes it and the text lands in the box, editable.

Only a box that is empty or still holds the last automatic text is filled: what the user typed is never
overwritten, not even when typed while the transcription runs (the browser decides, from the box as it is when the
transcript arrives). A recording whose transcript the box already holds is not transcribed again (the audio's
change event may fire twice for one upload). On the Speak tab nothing is transcribed in the modes that need no
transcript (another language, instruction).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import gradio as gr

from pipeline.shared.errors import CosyVoiceRKError

from .client import Studio
from .i18n import t
from .views import _err, _esc, _msg, _ok

# The box is written in the browser, after the transcription, from its value at that moment: a box the user typed
# into meanwhile is left alone. ``o``: {"text": the transcript, "prev": the box's automatic text when it started}.
FILL_JS = """(o, cur, m) => {
  if (!o) return [cur, m];
  const {text, prev} = JSON.parse(o);
  if (cur && cur.trim() && cur !== prev) return [cur, ''];
  return [text, m];
}"""


def _busy(lang: str) -> str:
    return f'<span class="cv-busy">⏳ {_esc(t("asr_busy", lang))}</span>'


def transcribe_into(studio: Studio, lang: str, path: str | None, current: str | None, auto_text: str | None,
                    auto_path: str | None, language: str, mode: str = "zero_shot",
                    source: str = "prompt") -> Iterator[list[Any]]:
    """Updates for (message, the offer for FILL_JS, the last automatic text, the recording it came from): the busy
    state first, then the result or why there is none."""
    auto_text, auto_path = auto_text or "", auto_path or ""
    keep = [gr.update(), "", auto_text, auto_path]
    typed = bool((current or "").strip()) and current != auto_text
    already = bool(auto_text) and current == auto_text and path == auto_path
    if not path or mode != "zero_shot" or source != "prompt" or typed or already:
        yield keep
        return
    try:
        studio.check_prompt(path)
    except Exception:  # noqa: BLE001 - the prompt check next to the audio says what is wrong with it
        yield keep
        return
    yield [_busy(lang), "", auto_text, auto_path]
    try:
        final = studio.transcribe(path, language or "auto").wait()
    except Exception as e:  # noqa: BLE001 - shown next to the box
        yield [_err(_msg(e, lang)), "", auto_text, auto_path]
        return
    if final["type"] != "done":
        yield [_err(_msg(CosyVoiceRKError(final.get("message") or "cancelled"), lang)), "", auto_text, auto_path]
        return
    r = final["result"]
    if not r["text"]:
        yield [_err(t("asr_empty", lang)), "", auto_text, auto_path]
        return
    offer = json.dumps({"text": r["text"], "prev": current or ""}, ensure_ascii=False)
    yield [_ok(t("asr_filled", lang, model=r["model"], language=r["language"])), offer, r["text"], path]


def wire_transcription(studio: Studio, lang: Any, audio: Any, box: Any, msg: Any, language: Any,
                       mode: Any = None, source: Any = None) -> None:
    """Fill ``box`` from ``audio``; with ``mode`` (the speech mode) and ``source`` (saved voice or one-off
    recording) only in zero_shot with the one-off recording, also when either switches to that."""
    auto = gr.State("")  # the last automatic text
    auto_path = gr.State("")  # the recording it was transcribed from
    offer = gr.Textbox("", visible="hidden")  # read in the browser by FILL_JS
    gates = [mode, source] if mode is not None and source is not None else []
    ins = [lang, audio, box, auto, auto_path, language, *gates]

    def run(*args: Any) -> Iterator[list[Any]]:
        yield from transcribe_into(studio, *args)

    for trigger in (audio.change, *(g.change for g in gates)):
        trigger(run, ins, [msg, offer, auto, auto_path], api_visibility="private", show_progress="hidden",
                trigger_mode="always_last").then(None, [offer, box, msg], [box, msg], js=FILL_JS,
                                                 api_visibility="private")
