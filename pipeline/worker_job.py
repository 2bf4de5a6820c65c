"""What the worker's callers hold: its configuration, its error and a submitted :class:`Job` with its events
(:mod:`pipeline.worker` runs them)."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.shared.errors import CosyVoiceRKError

if TYPE_CHECKING:
    from pipeline.worker import Worker

TERMINAL = frozenset({"done", "error", "cancelled"})


class WorkerError(CosyVoiceRKError):
    """The worker cannot take a job (no bundle, queue full, shutting down) or died while running one."""


@dataclass(frozen=True)
class WorkerConfig:
    bundle: str
    speakers_dir: str
    quant: str | None = None
    n_threads: int | None = None
    flow_backend: str = "auto"
    npu_cores: str = "auto"
    cpus: str | None = None
    flow_fast: bool = False
    flow_steps: int | None = None
    asr_dir: str | None = None  # speech recognition models (None: pipeline.shared.asr's default location)


class Job:
    """A submitted job: its events arrive on :attr:`events` in order; the last one is terminal."""

    def __init__(self, worker: Worker, job_id: int, kind: str, payload: dict[str, Any]) -> None:
        self.id = job_id
        self.kind = kind
        self.payload = payload
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.state = "queued"
        self.final: dict[str, Any] | None = None
        self.submitted = time.time()
        self.cancel_requested: float | None = None
        self.meta: dict[str, Any] = {}  # the caller's notes (e.g. what to label the result with)
        self.ahead: int | None = None
        self.made_samples = 0  # audio delivered by ``chunk`` events so far
        self.made_rate = 1
        self._worker = worker

    @property
    def finished(self) -> bool:
        return self.final is not None

    def cancel(self) -> bool:
        return self._worker.cancel(self.id)

    def _emit(self, ev: dict[str, Any]) -> None:
        if self.final is not None:
            return
        t = ev["type"]
        if t == "chunk":
            self.made_samples += len(ev["audio"])
            self.made_rate = int(ev["sample_rate"])
        elif t in ("cancelled", "error") and self.made_samples:
            ev = {**ev, "made_seconds": self.made_samples / self.made_rate}
        if t in TERMINAL:
            self.state = t
            self.final = ev
        elif t == "started":
            self.state = "running"
        self.events.put(ev)

    def events_until_done(self, poll: float | None = None) -> Iterator[dict[str, Any]]:
        """Events up to and including the terminal one. With ``poll``, yields ``{"type": "idle"}`` when
        nothing arrived for that many seconds (so a UI loop can refresh or notice a closed page)."""
        while True:
            try:
                ev = self.events.get(timeout=poll)
            except queue.Empty:
                yield {"type": "idle"}
                continue
            yield ev
            if ev["type"] in TERMINAL:
                return

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job ends, consuming its events; returns the terminal event.

        Raises ``WorkerError`` when ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.final is not None and self.events.empty():
                return self.final
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                raise WorkerError(f"job {self.id} did not finish within {timeout:g} s") from None
            if ev["type"] in TERMINAL:
                return ev
