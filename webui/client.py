"""The web side of the studio, without Gradio: voices on disk, jobs for the worker, results and their history.

Nothing here imports a model runtime (onnxruntime, llama_cpp, rknn): the models live in the worker process
(:mod:`pipeline.worker`). Saved voices are plain files handled by :class:`pipeline.shared.presets.SpeakerStore`;
prompt checks use :mod:`pipeline.shared.audio` (soundfile + numpy).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines import DEFAULT_ENGINE, ENGINES, EngineInfo, engine_name, engine_title
from pipeline.engines.cosyvoice3.bundle_info import source_info
from pipeline.engines.cosyvoice3.modes import check_request
from pipeline.engines.cosyvoice3.tags import check_tags
from pipeline.shared.audio import prepare_prompt
from pipeline.shared.bundle import HOW_TO_GET, Bundle
from pipeline.shared.errors import BundleError, CosyVoiceRKError, InputError, PresetError
from pipeline.shared.presets import SpeakerStore
from pipeline.shared.text import LANGUAGES, MAX_TEXT_CHARS
from pipeline.shared.text.tags import find_tags
from pipeline.worker import Job, Worker, WorkerConfig, WorkerError

from .history import History
from .live import LiveAudio, encode_chunk

TEMPERATURE_RANGE = (0.1, 2.0)
TOP_K_RANGE = (1, 100)
TOP_P_RANGE = (0.05, 1.0)


MAX_SEED = 2**32 - 1


def _number(value: Any, what: str, lo: float, hi: float, *, default: float | None, whole: bool = False,
            below_is_random: bool = False) -> Any:
    """A number from the page or the API: None means ``default``; anything else must be a finite number in
    [lo, hi] (whole when ``whole``; with ``below_is_random`` any negative whole number is -1, "random")."""
    if value is None or value == "":
        return default
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise FieldError("options", f"{what} must be a number, got {str(value)[:40]!r}") from None
    if whole and below_is_random and x < 0 and x.is_integer():
        return -1
    if x != x or not lo <= x <= hi or (whole and not x.is_integer()):
        kind = "a whole number" if whole else "a number"
        extra = " (-1 = random)" if below_is_random else ""
        lo_s, hi_s = (f"{lo:.0f}", f"{hi:.0f}") if whole else (f"{lo:g}", f"{hi:g}")
        raise FieldError("options", f"{what} must be {kind} within {lo_s}–{hi_s}{extra}, got {str(value)[:40]}")
    return int(x) if whole else x


class FieldError(InputError):
    """A bad value in one input of the page; ``field`` names the input, ``key``/``params`` the message."""

    def __init__(self, field: str, message: str, key: str | None = None, **params: Any) -> None:
        super().__init__(message)
        self.field = field
        self.key = key
        self.params = params


@dataclass
class PromptCheck:
    duration: float  # seconds of speech kept after trimming
    trimmed: float
    sample_rate: int


@dataclass
class SpeakState:
    """What a speech job looks like to the page after each worker event."""

    job_id: int
    phase: str = "queued"  # queued, running, done, error, cancelled
    ahead: int = 0
    stage: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    segments_done: int = 0
    segments_total: int = 0
    audio_seconds: float = 0.0  # made so far (what the live player has been sent)
    result: dict[str, Any] | None = None
    started: float = 0.0  # time.monotonic() of the job's start (the live stream's production clock)
    error: str = ""
    note: str = ""


class Studio:
    """Everything the page does. Thread-safe; one instance per server."""

    def __init__(self, bundle: Path | str, speakers_dir: Path | str, results_dir: Path | str, *,
                 quant: str | None = None, n_threads: int | None = None, flow_backend: str = "auto",
                 npu_cores: str = "auto", cpus: str | None = None, flow_fast: bool = False,
                 flow_steps: int | None = None, history_size: int = 20,
                 max_queue: int = 8, max_text_chars: int = MAX_TEXT_CHARS, cancel_grace: float = 30.0,
                 asr_dir: Path | str | None = None) -> None:
        self.bundle_path = Path(bundle)
        self.store = SpeakerStore(speakers_dir)
        self.results_dir = Path(results_dir)
        self.history = History(self.results_dir, history_size)
        self.max_text_chars = max_text_chars
        self.live_dir = Path(tempfile.mkdtemp(prefix="cosyvoice-rk-live-"))
        self.asr_dir = None if asr_dir is None else str(asr_dir)
        self._worker_config = dict(quant=quant, n_threads=n_threads, flow_backend=flow_backend, npu_cores=npu_cores,
                                   cpus=cpus, flow_fast=flow_fast, flow_steps=flow_steps, asr_dir=self.asr_dir)
        self._worker_args = dict(max_queue=max_queue, cancel_grace=cancel_grace)
        self.worker: Worker | None = None
        self.bundle_error: str | None = None
        self.manifest: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._sessions: dict[str, set[int]] = {}
        self._jobs: dict[int, Job] = {}
        self.live = LiveAudio()
        self.refresh_bundle()

    # bundle and worker ----------------------------------------------------------------------------
    @property
    def engine(self) -> EngineInfo:
        """The engine of the bundle (CosyVoice3 while there is none: what the first run sets up)."""
        return ENGINES.get(engine_name(self.manifest or {}), ENGINES[DEFAULT_ENGINE])

    def refresh_bundle(self) -> None:
        """Look at the bundle folder (manifest only: the worker checks the files); start or restart the worker."""
        with self._lock:
            try:
                b = Bundle.load(self.bundle_path, check="none")
            except BundleError as e:
                self.bundle_error, self.manifest = str(e), {}
                return
            self.bundle_error, self.manifest = None, b.manifest
            if self.worker is None:
                a = self._worker_args
                self.worker = Worker(WorkerConfig(str(self.bundle_path), str(self.store.root),
                                                  **self._worker_config), max_queue=a["max_queue"],
                                     cancel_grace=a["cancel_grace"])
            elif self.worker.state in ("unavailable", "failed"):
                self.worker.restart()

    def restart_worker(self) -> None:
        self.refresh_bundle()
        if self.worker is not None and self.worker.state not in ("starting", "restarting"):
            self.worker.restart()

    @property
    def sample_rate(self) -> int:
        return int(self.manifest.get("constants", {}).get("sample_rate", 24000))

    def sampling_defaults(self) -> dict[str, float]:
        s = self.manifest.get("constants", {}).get("sampling", {})
        return {"top_k": int(s.get("top_k", 25)), "top_p": float(s.get("top_p", 0.8))}

    def _worker(self) -> Worker:
        if self.bundle_error:
            raise WorkerError(f"no model bundle: {self.bundle_error}")
        assert self.worker is not None
        return self.worker

    def status(self) -> dict[str, Any]:
        m = self.manifest
        bundle = {"location": str(self.bundle_path.resolve()), "found": not self.bundle_error,
                  "error": self.bundle_error, "how_to_get": HOW_TO_GET}
        if m:
            bundle.update(engine=engine_name(m), engine_title=engine_title(engine_name(m)),
                          fingerprint=m.get("fingerprint", ""), random_weights=bool(m.get("random_weights")),
                          created=m.get("created", ""),
                          quants=sorted(m.get("llm", {}).get("gguf") or m.get("lm", {}).get("talker_gguf") or {}),
                          source=source_info(m) if engine_name(m) == "cosyvoice3" else {},
                          model=m.get("source", {}).get("model", "") if engine_name(m) != "cosyvoice3" else "")
        worker = self.worker.status() if self.worker is not None else {"state": "stopped"}
        return {"bundle": bundle, "worker": worker, "speakers_dir": str(self.store.root.resolve()),
                "results_dir": str(self.results_dir.resolve()), "voices": len(self.voice_names())}

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        shutil.rmtree(self.live_dir, ignore_errors=True)

    # voices ---------------------------------------------------------------------------------------
    def voices(self) -> list[dict[str, Any]]:
        """Every saved voice (``{"slug", "error"}`` for an unreadable one)."""
        out = []
        for v in self.store.list():
            if "error" in v:
                out.append({"slug": v["slug"], "name": v.get("name", v["slug"]), "error": v["error"]})
                continue
            info = v.get("info", {}) if isinstance(v.get("info"), dict) else {}
            out.append({"name": v["name"], "slug": v["slug"], "transcript": v["transcript"],
                        "language": v.get("language", "auto"), "created": v.get("created", ""),
                        "engine": engine_name(v),
                        "duration": info.get("duration"), "audio": str(self.store.root / v["slug"] / v["audio"])})
        return out

    def damaged_voices(self) -> list[dict[str, Any]]:
        """Voices whose folder cannot be read: ``{"slug", "error"}`` (listed with Repair and Delete)."""
        return [{"slug": v["slug"], "error": v["error"]} for v in self.store.list() if "error" in v]

    def damaged_audio(self, slug: str) -> str | None:
        """The prompt recording left in a damaged voice's folder (to save the voice again), or None."""
        d = self._damaged_dir(slug)
        found = sorted(p for p in d.iterdir() if p.is_file() and p.name.startswith("prompt."))
        return str(found[0]) if found else None

    def delete_damaged(self, slug: str) -> None:
        self._damaged_dir(slug)
        self.store.delete_folder(slug)

    def _damaged_dir(self, slug: str) -> Path:
        if slug not in {d["slug"] for d in self.damaged_voices()}:
            raise PresetError(f"there is no damaged voice {slug!r}; the list was out of date, look again")
        return self.store.root / slug

    def voice_names(self) -> list[str]:
        return [v["name"] for v in self.voices() if "error" not in v]

    def voice(self, name: str) -> dict[str, Any]:
        slug = self.store.find(name)
        v = next((v for v in self.voices() if v["slug"] == slug), None)
        if v is None:
            raise PresetError(f"no voice named {name!r}")
        if "error" in v:
            raise PresetError(v["error"])
        return v

    def check_prompt(self, path: str | Path | None) -> PromptCheck:
        """The checks a voice prompt must pass (length, rate, silence), run here so errors show at once."""
        if not path:
            raise FieldError("audio", "upload or record a 3–10 s prompt", "err_no_audio")
        try:
            p = prepare_prompt(str(path))
        except InputError as e:
            raise FieldError("audio", str(e)) from None
        return PromptCheck(p.duration, p.trimmed_s, p.original_sr)

    def validate_new_voice(self, name: str, audio: str | Path | None, transcript: str, language: str,
                           overwrite: bool = False) -> list[FieldError]:
        """Every problem with a new voice, one per input, so the page can show each next to its input."""
        errors: list[FieldError] = []
        try:
            self.check_prompt(audio)
        except FieldError as e:
            errors.append(e)
        if not (transcript or "").strip():
            errors.append(FieldError("transcript", "type exactly what the prompt recording says", "err_transcript"))
        elif len(transcript) > 1000:
            errors.append(FieldError("transcript", "the transcript is longer than 1000 characters; use a 3–10 s "
                                     "prompt and its exact words", "err_transcript_long"))
        try:
            self.store.claim(name or "", overwrite=overwrite)
        except PresetError as e:
            errors.append(FieldError("name", str(e)))
        if language not in LANGUAGES:
            errors.append(FieldError("language", f"unknown language {language!r}"))
        return errors

    def add_voice(self, name: str, audio: str | Path, transcript: str, language: str = "auto",
                  overwrite: bool = False) -> Job:
        errors = self.validate_new_voice(name, audio, transcript, language, overwrite)
        if errors:
            raise errors[0]
        data = Path(audio).read_bytes()
        return self._worker().submit("add_voice", {"name": name.strip(), "audio": data, "ext": Path(audio).suffix,
                                                   "transcript": transcript.strip(), "language": language,
                                                   "overwrite": bool(overwrite)})

    def transcribe(self, audio: str | Path, language: str = "auto") -> Job:
        """Queue the transcription of a prompt recording (``webui/transcribe.py``); no model here: a missing ASR
        model is reported at once from its folder (:class:`pipeline.shared.asr.AsrMissing`)."""
        from pipeline.shared.asr import read_manifest

        read_manifest(self.asr_dir)
        data = Path(audio).read_bytes()
        return self._worker().submit("transcribe", {"audio": data, "language": language})

    def rename_voice(self, name: str, new_name: str) -> str:
        if not (new_name or "").strip():
            raise FieldError("rename", "type the new name", "err_new_name")
        try:
            slug = self.store.rename(name, new_name)
        except PresetError as e:
            raise FieldError("rename", str(e)) from None
        return self.store.load(slug).name

    def delete_voice(self, name: str) -> None:
        self.store.delete(name)

    def export_voice(self, name: str) -> Path:
        out = self.live_dir / "exports"
        out.mkdir(exist_ok=True)
        return self.store.export(name, out)

    def import_voice(self, path: str | Path, name: str | None = None, overwrite: bool = False) -> Job:
        p = Path(path)
        try:
            meta, _, _ = self.store.read_export(p)  # a bad file is refused here (size first), without the worker
            data = p.read_bytes()
        except PresetError as e:
            raise FieldError("import", str(e)) from None
        except OSError:
            raise FieldError("import", f"voice file {p.name} could not be read; choose it again") from None
        target = (name or "").strip() or meta["name"]
        try:
            self.store.claim(target, overwrite=overwrite)
        except PresetError as e:
            raise FieldError("import", str(e)) from None
        return self._worker().submit("import_voice", {"data": data, "name": target, "overwrite": bool(overwrite)})

    # speech ---------------------------------------------------------------------------------------
    def speak(self, text: str, *, voice: str | None = None, prompt_audio: str | Path | None = None,
              prompt_text: str = "", prompt_language: str = "auto", language: str = "auto",
              temperature: float = 1.0, seed: int | None = None, top_k: int | None = None,
              top_p: float | None = None, stream: bool = True, session: str | None = None,
              mode: str = "zero_shot", instruct: str | None = None, speed: float = 1.0) -> Job:
        """Queue a speech job. ``mode`` zero_shot / cross_lingual / instruct (``instruct``: the instruction),
        ``speed`` 0.5-2.0 (see :meth:`pipeline.engines.cosyvoice3.tts.CosyVoiceRK.create_chunks`). Bad values raise
        :class:`FieldError` naming the input, before anything is queued."""
        text = text or ""
        if not isinstance(text, str) or not text.strip():
            raise FieldError("text", "type the text to speak", "err_text_empty")
        if len(text) > self.max_text_chars:
            raise FieldError("text", f"the text has {len(text)} characters, the limit is {self.max_text_chars}: "
                             "split it into parts", "err_text_long", n=len(text), limit=self.max_text_chars)
        if language not in LANGUAGES:
            raise FieldError("language", f"unknown language {language!r}; choose one of {', '.join(LANGUAGES)}")
        temperature = _number(temperature, "temperature", *TEMPERATURE_RANGE, default=1.0)
        seed = _number(seed, "seed", -1, MAX_SEED, default=-1, whole=True, below_is_random=True)
        top_k = _number(top_k, "top-k", *TOP_K_RANGE, default=None, whole=True)
        top_p = _number(top_p, "top-p", *TOP_P_RANGE, default=None)
        try:
            check_tags(text)
        except InputError as e:
            raise FieldError("text", str(e)) from None
        try:
            mode, instruct, speed = check_request(mode or "zero_shot", instruct,
                                                  1.0 if speed is None or speed == "" else speed)
        except InputError as e:
            raise FieldError("instruct" if "instruction" in str(e) else "options", str(e)) from None
        eng = self.engine
        if mode not in eng.modes:
            page = "instruct" if mode == "instruct2" else mode
            raise FieldError("options", f"{eng.title} has no {page} mode; choose "
                             + " or ".join("instruct" if m == "instruct2" else m for m in eng.modes),
                             "err_engine_mode", engine=eng.title, mode=page)
        tags = sorted(set(find_tags(text)))
        if tags and not eng.tags:
            raise FieldError("text", f"{eng.title} reads no control tags ({', '.join(tags)} are CosyVoice3's); "
                             "remove them or write the words instead", "err_engine_tags", engine=eng.title,
                             tags=", ".join(tags))
        if float(speed) != 1.0 and not eng.speed:
            raise FieldError("options", f"{eng.title} has no speed control; leave speed at 1.0", "err_engine_speed",
                             engine=eng.title)
        payload: dict[str, Any] = {"text": text, "language": language, "temperature": float(temperature),
                                   "seed": None if seed < 0 else int(seed),
                                   "top_k": None if top_k is None else int(top_k),
                                   "top_p": None if top_p is None else float(top_p), "stream": bool(stream),
                                   "mode": "instruct" if mode == "instruct2" else mode, "speed": float(speed)}
        if instruct is not None:
            payload["instruct"] = instruct
        if voice:
            try:
                v = self.voice(voice)
            except PresetError as e:
                raise FieldError("voice", str(e)) from None
            payload["voice"] = v["name"]
            label = v["name"]
        else:
            if not prompt_audio:
                raise FieldError("voice", "choose a saved voice, or give a one-off prompt recording",
                                 "err_no_voice")
            self.check_prompt(prompt_audio)
            if mode == "zero_shot" and not (prompt_text or "").strip():
                raise FieldError("transcript", "type exactly what the prompt recording says, or choose cross_lingual "
                                 "or instruct, which need no transcript", "err_transcript_mode")
            # cross_lingual and instruct do not give the model the prompt's words: none needed, none used
            payload["prompt"] = {"audio": Path(prompt_audio).read_bytes(),
                                 "transcript": (prompt_text or "").strip() if mode == "zero_shot" else "",
                                 "language": prompt_language if prompt_language in LANGUAGES else "auto"}
            label = ""
        job = self._worker().submit("speak", payload)
        job.meta = {"voice": label, "text": text, "language": language, "mode": payload["mode"],
                    "speed": payload["speed"],
                    "temperature": float(temperature), "top_k": payload["top_k"], "top_p": payload["top_p"],
                    "live_url": self.live.open(job.id)}
        with self._lock:
            self._jobs[job.id] = job
            if session:
                self._sessions.setdefault(session, set()).add(job.id)
        return job

    def cancel(self, job_id: int) -> bool:
        job = self._jobs.get(job_id)
        return job.cancel() if job is not None else False

    def cancel_session(self, session: str) -> bool:
        with self._lock:
            ids = list(self._sessions.get(session, ()))
        return any([self.cancel(i) for i in ids])

    def follow(self, job: Job, *, poll: float | None = 1.0) -> Iterator[SpeakState]:
        """Consume a speech job's events; yield the page's view after each one. Each audio chunk goes to the
        job's live stream as it arrives; the whole result goes to the history when the job is done, and the audio
        a cancelled or failed job made goes there too (marked partial). When the page goes away (reload, closed
        tab) the job runs on and its result still reaches the history: only Cancel stops a job."""
        st = SpeakState(job.id)
        parts: list[np.ndarray] = []
        rate = [24000]
        events = job.events_until_done(poll=poll)
        try:
            for ev in events:
                if ev["type"] == "idle":
                    yield st
                    continue
                self._apply(job, st, ev, parts, rate)
                yield st
        finally:
            if not job.finished:
                threading.Thread(target=self._drain, args=(job, events, st, parts, rate), daemon=True,
                                 name=f"cosyvoice-rk-drain-{job.id}").start()
            else:
                self._forget(job)

    def _drain(self, job: Job, events: Iterator[dict[str, Any]], st: SpeakState, parts: list[np.ndarray],
               rate: list[int]) -> None:
        try:
            for ev in events:
                if ev["type"] != "idle":
                    self._apply(job, st, ev, parts, rate)
        except Exception as e:  # noqa: BLE001 - a background thread must not die silently
            print(f"cosyvoice-rk webui: job {job.id} could not be saved: {e}", file=sys.stderr)
        finally:
            self.live.finish(job.id, "error")  # its live stream ends even then (a no-op when it has ended)
            self._forget(job)

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)
            for ids in self._sessions.values():
                ids.discard(job.id)

    def _apply(self, job: Job, st: SpeakState, ev: dict[str, Any], parts: list[np.ndarray], rate: list[int]) -> None:
        t = ev["type"]
        if t == "queued":
            st.ahead = ev["ahead"]
        elif t == "started":
            st.phase = "running"
            st.started = time.monotonic()
        elif t == "progress":
            st.phase = "running"
            st.stage = ev["stage"]
            st.info = ev
            st.segments_total = ev.get("segments", st.segments_total)
        elif t == "note":  # the job is made otherwise than asked (e.g. a speed without streaming): said, not hidden
            st.note = ev["message"]
        elif t == "chunk":  # the page hears it through the job's live stream
            rate[0] = int(ev["sample_rate"])
            parts.append(ev["audio"])
            st.audio_seconds += len(ev["audio"]) / rate[0]
            self.live.add(job.id, encode_chunk(ev["audio"], rate[0], time.monotonic() - st.started, ev["segment"],
                                               ev["segments"], bool(ev.get("segment_done"))))
        elif t == "segment":
            st.segments_done = ev["index"] + 1
            st.segments_total = ev["total"]
        elif t == "done":
            res = ev["result"]
            st.result = self._save_result(job, parts, rate[0], {
                "duration": res["duration"], "rtf": res["rtf"], "tokens": res["tokens"], "segments": res["segments"],
                "backends": res["backends"], "timings": res["timings"], "compute_s": res["compute_s"],
                "seed": res["seed"], "warnings": res.get("warnings", []), "ttfa_s": res.get("ttfa_s"),
                "notes": res.get("notes", []),
                "stream": res.get("stream")})
            st.phase = "done"
        elif t in ("cancelled", "error"):
            st.phase = t
            if t == "cancelled":
                st.note = ev.get("note", "")
            else:
                st.error = ev["message"]
            if parts:  # what the job made before it stopped is kept, not thrown away
                st.result = self._save_result(job, parts, rate[0], {
                    "duration": st.audio_seconds, "rtf": 0.0, "tokens": 0, "segments": st.segments_done,
                    "backends": {}, "timings": {}, "compute_s": 0.0, "seed": job.payload.get("seed") or "?",
                    "partial": True, "parts_total": st.segments_total, "warnings": []})
        if t in ("done", "cancelled", "error"):
            self.live.finish(job.id, t)

    def _save_result(self, job: Job, parts: list[np.ndarray], sr: int, info: dict[str, Any]) -> dict[str, Any]:
        meta = job.meta
        audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        kept = {k: v for k, v in meta.items() if k != "live_url"}
        return self.history.add(audio, sr, {**kept, "text": meta.get("text", "")[:500], **info})

    def run_voice_job(self, job: Job) -> dict[str, Any]:
        """Wait for an add/import job; returns its result or raises its error."""
        final = job.wait()
        if final["type"] == "done":
            return final["result"]
        if final["type"] == "cancelled":
            raise WorkerError("cancelled")
        raise CosyVoiceRKError(final["message"])
