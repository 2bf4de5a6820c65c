"""The worker's child process: it opens the bundle with its engine (:func:`pipeline.engines.open_tts`), says it is
ready, then runs one job at a time (speak, add or import a voice, transcribe) and sends its events to the parent
(:class:`pipeline.worker.Worker`). A job's failure is reported on the job, never fatal to the process."""

from __future__ import annotations

import collections
import hashlib
import os
import random
import signal
import sys
import threading
import time
import traceback
from dataclasses import asdict
from typing import Any

from pipeline.shared.errors import CosyVoiceRKError
from pipeline.worker import _TOKEN_EVENT_INTERVAL, WorkerConfig, WorkerError


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the thread that started it exits (a killed web server leaves no orphan)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort
        pass


def _child_main(conn: Any, config: WorkerConfig, cancel_id: Any) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C goes to the server, which shuts the worker down
    try:
        from pipeline.engines import open_tts

        tts = open_tts(config.bundle, speakers_dir=config.speakers_dir, quant=config.quant,
                       n_threads=config.n_threads, flow_backend=config.flow_backend,
                       npu_cores=config.npu_cores, cpus=config.cpus, flow_fast=config.flow_fast,
                       flow_steps=config.flow_steps)
    except CosyVoiceRKError as e:
        conn.send({"type": "fatal", "message": str(e), "kind": type(e).__name__})
        return
    except Exception as e:  # noqa: BLE001 - report, do not crash-loop silently
        traceback.print_exc()
        conn.send({"type": "fatal", "message": f"could not load the models ({type(e).__name__}: {e})",
                   "kind": type(e).__name__})
        return
    b, caps = tts.bundle, tts.capabilities
    conn.send({
        "type": "ready", "pid": os.getpid(), "backends": tts.backends, "config": asdict(config),
        "placement": dict(tts.placement),
        "engine": {"name": caps.engine, "title": caps.title, "modes": list(caps.modes),
                   "languages": list(caps.languages), "speed": caps.speed, "streaming": caps.streaming},
        "bundle": {"location": str(b.root), "fingerprint": b.fingerprint, "random_weights": b.is_random,
                   "quant": tts.quant, "sample_rate": tts.sample_rate,
                   "sampling": dict(b.constants.get("sampling", {}))},
    })
    runner = _Runner(tts, conn, cancel_id, asr_dir=config.asr_dir)
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg is None:
                break
            runner.run(*msg)
    finally:
        tts.close()


class _Runner:
    def __init__(self, tts: Any, conn: Any, cancel_id: Any, asr_dir: str | None = None) -> None:
        self.tts = tts
        self.asr_dir = asr_dir
        self._asr: Any = None  # the transcriber, loaded by the first transcribe job
        self.conn = conn
        self.cancel_id = cancel_id
        self._send_lock = threading.Lock()
        self._voices: collections.OrderedDict[str, Any] = collections.OrderedDict()  # one-off prompt cache

    def run(self, job_id: int, kind: str, payload: dict[str, Any]) -> None:
        from pipeline.shared.errors import Cancelled

        def send(ev: dict[str, Any]) -> None:
            with self._send_lock:  # progress comes from the streaming engine's LLM thread too
                self.conn.send({"job": job_id, **ev})

        def should_stop() -> bool:
            return self.cancel_id.value == job_id

        try:
            if should_stop():
                raise Cancelled("cancelled before it started")
            if kind == "speak":
                self._speak(payload, send, should_stop)
            elif kind == "add_voice":
                preset, info = self.tts.add_voice(payload["name"], payload["audio"], payload["transcript"],
                                                  language=payload.get("language", "auto"),
                                                  overwrite=bool(payload.get("overwrite")))
                send({"type": "done", "result": {"name": preset.name, "slug": preset.slug, "info": _plain(info)}})
                self._prepare_stream(preset.name)
            elif kind == "import_voice":
                preset = self.tts.import_voice(payload["data"], name=payload.get("name") or None,
                                               overwrite=bool(payload.get("overwrite")))
                send({"type": "done", "result": {"name": preset.name, "slug": preset.slug}})
            elif kind == "transcribe":
                send({"type": "done", "result": self._transcribe(payload)})
            else:
                raise WorkerError(f"unknown job kind {kind!r}")
        except Cancelled:
            send({"type": "cancelled", "while": "running"})
        except CosyVoiceRKError as e:
            send({"type": "error", "message": str(e), "kind": type(e).__name__})
        except MemoryError:
            send({"type": "error", "message": "the worker ran out of memory on this job; use shorter text",
                  "kind": "MemoryError"})
        except Exception as e:  # noqa: BLE001 - any other failure is reported, the worker lives on
            traceback.print_exc()
            send({"type": "error", "message": f"internal error ({type(e).__name__}: {e})", "kind": type(e).__name__})

    def _prepare_stream(self, name: str) -> None:
        """Solve a newly saved voice's flow prompt cache while the person types, until the next job arrives
        (a stopped build keeps nothing: the voice's first streamed request solves it). Its job is done already:
        nothing here may report on it."""
        from pipeline.shared.errors import Cancelled

        try:
            took = self.tts.prepare_stream(name, should_stop=self.conn.poll)
        except Cancelled:
            return
        except Exception as e:  # noqa: BLE001 - logged only: the voice is saved, a request solves the cache
            print(f"worker: voice {name!r} not prepared for streaming ({type(e).__name__}: {e}); its first "
                  "request will do it", file=sys.stderr)
            return
        if took:
            print(f"worker: voice {name!r} prepared for streaming in {took:.1f} s", file=sys.stderr)

    def _transcribe(self, p: dict[str, Any]) -> dict[str, Any]:
        from pipeline.shared.asr import load_transcriber, transcribe_bytes

        if self._asr is None:
            self._asr = load_transcriber(self.asr_dir)
        r = transcribe_bytes(self._asr, bytes(p["audio"]), p.get("language"))
        return {"text": r.text, "language": r.language, "model": r.model, "detected": r.detected}

    def _one_off(self, prompt: dict[str, Any]) -> Any:
        audio = bytes(prompt["audio"])
        key = hashlib.sha256(audio + b"\0" + (prompt.get("transcript") or "").encode() + b"\0"
                             + prompt.get("language", "auto").encode()).hexdigest()
        if key in self._voices:
            self._voices.move_to_end(key)
            return self._voices[key]
        # no transcript: a voice for cross_lingual / instruct only (zero_shot refuses it, saying why)
        transcript = prompt.get("transcript") or None
        voice = self.tts.voice_from_audio(audio, transcript, language=prompt.get("language", "auto"))
        self._voices[key] = voice
        while len(self._voices) > 4:
            self._voices.popitem(last=False)
        return voice

    def _speak(self, p: dict[str, Any], send: Any, should_stop: Any) -> None:
        t_start = time.perf_counter()
        send({"type": "progress", "stage": "voice"})
        if p.get("voice"):
            voice = self.tts.load_voice(p["voice"])
        elif p.get("prompt"):
            voice = self._one_off(p["prompt"])
        else:
            raise WorkerError("choose a saved voice or give a prompt recording with its transcript")
        seed = p.get("seed")
        seed = random.randrange(2**31) if seed is None else int(seed)
        last_tokens = [0.0]
        notes: list[str] = []

        def progress(stage: str, info: dict[str, Any]) -> None:
            if stage == "note":
                notes.append(info["message"])
                send({"type": "note", "message": info["message"]})
                return
            now = time.monotonic()
            if stage == "tokens":
                if now - last_tokens[0] < _TOKEN_EVENT_INTERVAL:
                    return
                last_tokens[0] = now
            send({"type": "progress", "stage": stage, **_plain(info)})

        n_seg, duration, tokens, compute = 0, 0.0, 0, 0.0
        ttfa: float | None = None
        timings: dict[str, float] = {}
        backends: dict[str, str] = {}
        for ch in self.tts.create_chunks(p["text"], voice, language=p.get("language", "auto"),
                                         temperature=float(p.get("temperature", 1.0)), seed=seed,
                                         top_k=p.get("top_k"), top_p=p.get("top_p"), stream=p.get("stream", True),
                                         on_progress=progress, should_stop=should_stop,
                                         mode=p.get("mode") or "zero_shot", instruct=p.get("instruct"),
                                         speed=1.0 if p.get("speed") is None else p["speed"]):
            seg = ch.segment_result
            if ttfa is None and len(ch.audio):
                ttfa = time.perf_counter() - t_start
            send({"type": "chunk", "index": ch.index, "segment": ch.segment, "segments": ch.segments,
                  "segment_done": seg is not None, "audio": ch.audio, "sample_rate": ch.sample_rate})
            if seg is None:
                continue
            r = seg.result
            n_seg += 1
            seg_s = len(seg.audio) / seg.sample_rate
            busy = r.stats.get("wall_s") or sum(r.timings.values())  # streaming: the stages overlap
            duration += seg_s
            compute += busy
            tokens += len(r.tokens)
            for k, v in r.timings.items():
                timings[k] = timings.get(k, 0.0) + v
            backends.update(r.backends)
            send({"type": "segment", "index": seg.index, "total": seg.total, "text": seg.text,
                  "audio": seg.audio, "sample_rate": seg.sample_rate, "tokens": len(r.tokens),
                  "duration": seg_s, "rtf": busy / max(seg_s, 1e-9), "timings": dict(r.timings),
                  "backends": dict(r.backends)})
        send({"type": "done", "result": {
            "segments": n_seg, "duration": duration, "tokens": tokens, "timings": timings, "backends": backends,
            "compute_s": compute, "rtf": compute / max(duration, 1e-9), "seed": seed, "ttfa_s": ttfa,
            "stream": bool(p.get("stream", True)) and bool(self.tts.streams) and not notes,
            "wall_s": time.perf_counter() - t_start, "warnings": list(voice.warnings), "notes": notes,
            "sample_rate": self.tts.sample_rate}})


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly copy (numpy scalars → Python numbers; other objects dropped)."""
    out = {}
    for k, v in d.items():
        if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        if isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
    return out
