"""Live playback, server side: a speech job's audio chunks streamed to the page as they are made.

The page's player (``live_player.js``) reads ``GET cv-live/<job>?key=<key>`` with ``fetch()`` and schedules every
chunk right after the previous one with Web Audio. The response is a sequence of frames, each a 20-byte
little-endian header and, for audio, the chunk's samples as float32 (exactly what the engine made):

    uint32 samples | uint32 sample_rate | float32 made_s | uint16 segment | uint16 segments | uint32 flags

``made_s``: seconds from the job's start to the chunk's arrival here (the page measures the production speed
with it); flags bit 0: the chunk ends its text segment. The last frame has ``samples`` 0, flags bit 1 and
``sample_rate`` = the job's end (0 done, 1 cancelled, 2 error); a stream without it was cut off.

The route checks the page's login (``--auth``) and a random per-job key, and works behind a path prefix (the URL is
relative to the page).
"""

from __future__ import annotations

import asyncio
import collections
import json
import secrets
import struct
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse

from .i18n import LANGS, t

HEADER = struct.Struct("<IIfHHI")
FLAG_SEGMENT_DONE = 1
FLAG_END = 2
END_STATUS = {"done": 0, "cancelled": 1, "error": 2}
ROUTE = "/cv-live/{job_id}"
MEDIA_TYPE = "application/vnd.cosyvoice-rk.pcm-frames"
_POLL_S = 0.02  # how often an open stream looks for a new chunk
_FINISHED_KEPT = 2  # finished jobs whose audio stays streamable (a page that opens its stream late)
_PLAYER_JS = Path(__file__).with_name("live_player.js")
_PLAYER_KEYS = ("lp_waiting", "lp_buffering", "lp_playing", "lp_played", "lp_stopped", "lp_ended",
                "lp_failed", "lp_no_webaudio", "lp_stop")

LIVE_HTML = ('<div id="cv-live"><span id="cv-live-status" aria-live="polite"></span>'
             '<button id="cv-live-stop" type="button" hidden></button></div>')
LIVE_JS = "(v) => { if (window.cvLive) window.cvLive.update(v); }"
LIVE_CSS = """
#cv-live { display: flex; gap: 8px; align-items: center; min-height: 2em; }
#cv-live-status { flex: 1; }
#cv-live-stop { padding: 2px 10px; border: 1px solid var(--border-color-primary, #d1d5db); border-radius: 6px; }
"""


def encode_chunk(audio: np.ndarray, sample_rate: int, made_s: float, segment: int, segments: int,
                 segment_done: bool) -> bytes:
    a = np.ascontiguousarray(audio, dtype="<f4")
    flags = FLAG_SEGMENT_DONE if segment_done else 0
    return HEADER.pack(len(a), int(sample_rate), float(made_s), segment, segments, flags) + a.tobytes()


def encode_end(status: str) -> bytes:
    return HEADER.pack(0, END_STATUS[status], 0.0, 0, 0, FLAG_END)


class _Job:
    def __init__(self, key: str) -> None:
        self.key = key
        self.frames: list[bytes] = []
        self.end: bytes | None = None


class LiveAudio:
    """The frames of recent speech jobs, for their live streams (thread-safe; async readers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: collections.OrderedDict[int, _Job] = collections.OrderedDict()

    def open(self, job_id: int) -> str:
        """Register a job; returns its stream's URL, relative to the page."""
        key = secrets.token_urlsafe(16)
        with self._lock:
            self._jobs[job_id] = _Job(key)
            self._prune()
        return f"cv-live/{job_id}?key={key}"

    def add(self, job_id: int, frame: bytes) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.end is None:
                job.frames.append(frame)

    def finish(self, job_id: int, status: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.end is None:
                job.end = encode_end(status)
                self._jobs.move_to_end(job_id)
            self._prune()

    def _prune(self) -> None:
        finished = [i for i, j in self._jobs.items() if j.end is not None]
        for i in finished[:-_FINISHED_KEPT]:
            del self._jobs[i]

    def _job(self, job_id: int, key: str) -> _Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and secrets.compare_digest(job.key, key) else None

    async def stream(self, job: _Job) -> AsyncIterator[bytes]:
        sent = 0
        while True:
            with self._lock:
                new, end = job.frames[sent:], job.end
            if new:
                sent += len(new)
                yield b"".join(new)
            elif end is not None:
                yield end
                return
            else:
                await asyncio.sleep(_POLL_S)


def _logged_in(app: Any, request: Any) -> bool:
    """Gradio's own login check (its ``/login_check`` route): the session cookie its login form set."""
    if getattr(app, "auth", None) is None and getattr(app, "auth_dependency", None) is None:
        return True
    if app.auth_dependency is not None:
        return app.auth_dependency(request) is not None
    cookies = request.cookies
    token = cookies.get(f"access-token-{app.cookie_id}") or cookies.get(f"access-token-unsecure-{app.cookie_id}")
    return app.tokens.get(token) is not None


def install_route(app: Any, live: LiveAudio) -> None:
    """Add the live stream route to the FastAPI app Gradio serves the page with."""

    async def live_stream(job_id: int, request: Request, key: str = "") -> StreamingResponse:
        if not _logged_in(app, request):
            raise HTTPException(status_code=401, detail="log in to the studio first")
        job = live._job(job_id, key)
        if job is None:
            raise HTTPException(status_code=404, detail=f"no live audio for job {job_id} (finished long ago?)")
        return StreamingResponse(live.stream(job), media_type=MEDIA_TYPE,
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    app.add_api_route(ROUTE, live_stream, methods=["GET"], include_in_schema=False)


def head_html() -> str:
    """The player's script for the page's <head>, with its words in every page language."""
    words = {lang: {k: t(k, lang) for k in _PLAYER_KEYS} for lang in LANGS}
    return (f"<script>window.cvLiveText = {json.dumps(words, ensure_ascii=False)};</script>\n"
            f"<script>\n{_PLAYER_JS.read_text(encoding='utf-8')}\n</script>\n")
