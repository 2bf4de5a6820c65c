"""Background worker: one process that loads the bundle once and owns every model.

The web process (or any other caller) talks to it through :class:`Worker`, which lives in the caller's
process and never imports a model runtime:

    w = Worker(WorkerConfig("models/bundle", "speakers"))
    job = w.submit("speak", {"text": "Привет!", "voice": "Anna", "language": "ru"})
    for ev in job.events_until_done():   # queued / started / progress / segment / done | error | cancelled
        ...

- One job at a time, in order; at most ``max_queue`` jobs wait (``submit`` refuses more with a clear message).
- ``cancel`` removes a waiting job, or asks the running one to stop at its next step (every LLM token and
  flow step checks a shared flag). A job that does not stop within ``cancel_grace`` seconds (stuck in
  native code) has its process killed and restarted.
- If the process dies (native crash, OOM kill), the running job ends with an error that says so, a fresh
  process is started, and the queue carries on. Everything the worker saves (voices) is written atomically,
  so a death leaves no half-written files behind.
- A bundle the worker cannot load (missing, corrupt) puts it in state ``unavailable`` with the loader's
  message; :meth:`Worker.restart` tries again (e.g. after the bundle was converted).

Job kinds and their payloads (all plain Python data; audio travels as bytes):

- ``speak``: ``text``, ``language``, ``voice`` (saved voice name) or ``prompt`` (``{"audio": bytes,
  "transcript": str, "language": str}``; the transcript may be left out in cross_lingual and instruct),
  ``temperature``, ``seed``, ``top_k``, ``top_p``, ``stream`` (default true: the streaming engine where the worker
  has it, see its placement's ``stream_reason``), ``mode`` (``zero_shot`` default, ``cross_lingual``, ``instruct``),
  ``instruct`` (the instruction, with ``mode="instruct"`` only), ``speed`` (0.5-2.0, default 1.0; with a speed
  other than 1 the job is made without streaming and a ``note`` event says so).
  Events: ``note`` (``message``: how the job is made differs from what was asked, and why); ``progress``
  (``stage`` prefill/tokens/flow/vocoder plus ``segment``/``segments``); ``chunk`` as each
  piece of audio is made (``index`` over the job, ``segment``, ``segments``, ``segment_done`` on a segment's
  last chunk, ``audio`` float32, ``sample_rate``; the chunks joined are the job's audio); one ``segment`` per
  text segment after its last chunk (``audio``: that segment's chunks joined, ``text``, stats); then ``done``.
  A ``cancelled`` or ``error`` event of a job that delivered chunks carries ``made_seconds``: the chunks before
  it are the audio made so far.
- ``add_voice``: ``name``, ``audio`` (bytes), ``ext``, ``transcript``, ``language``, ``overwrite``.
- ``import_voice``: ``data`` (bytes of a ``.cvvoice`` file), ``name``, ``overwrite``.
- ``transcribe``: ``audio`` (bytes), ``language`` (``ru``, ``en``, … or ``auto``: detected); ``done`` has ``text``,
  ``language``, ``model``, ``detected`` (:mod:`pipeline.shared.asr`; the ASR models load on the first such job).
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
import signal
import threading
import time
import traceback
from multiprocessing.connection import wait as _mp_wait
from typing import Any

from pipeline.worker_job import TERMINAL, Job, WorkerConfig, WorkerError

__all__ = ["JOB_KINDS", "TERMINAL", "Job", "Worker", "WorkerConfig", "WorkerError", "describe_exit"]

JOB_KINDS = ("speak", "add_voice", "import_voice", "transcribe")
_TOKEN_EVENT_INTERVAL = 0.25  # seconds between "tokens" progress events (a token takes ~20-40 ms on a board)
_START_RETRIES = 3


class Worker:
    """Parent-side supervisor of the worker process (thread-safe)."""

    def __init__(self, config: WorkerConfig, *, max_queue: int = 8, cancel_grace: float = 30.0,
                 start: bool = True) -> None:
        self.config = config
        self.max_queue = max_queue
        self.cancel_grace = cancel_grace
        self._ctx = mp.get_context("spawn")
        # Id of the job the child should stop; written here, polled by the child between steps.
        self._cancel_id = self._ctx.Value("q", 0, lock=False)
        self._cond = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._ids = itertools.count(1)
        self._proc: Any = None
        self._conn: Any = None
        self._send_lock = threading.Lock()
        self._state = "stopped"
        self._info: dict[str, Any] = {}
        self._last_error = ""
        self._last_crash = ""
        self._closing = False
        self._restart_requested = False
        self._since = 0.0
        self._stats = {"restarts": 0, "crashes": 0, "done": 0, "failed": 0, "cancelled": 0}
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # public ---------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._state = "starting"
            self._thread = threading.Thread(target=self._loop, name="cosyvoice-rk-worker-supervisor", daemon=True)
            self._thread.start()

    def submit(self, kind: str, payload: dict[str, Any]) -> Job:
        if kind not in JOB_KINDS:
            raise ValueError(f"unknown job kind {kind!r}; one of {', '.join(JOB_KINDS)}")
        with self._cond:
            if self._closing:
                raise WorkerError("the studio is shutting down")
            if self._state in ("unavailable", "failed"):
                raise WorkerError(self._last_error or "the worker is not running")
            if len(self._queue) >= self.max_queue:
                raise WorkerError(f"the queue is full ({len(self._queue)} jobs waiting); "
                                  "try again when one has finished")
            job = Job(self, next(self._ids), kind, payload)
            self._queue.append(job)
            self._announce_positions()
            self._cond.notify_all()
            return job

    def cancel(self, job_id: int) -> bool:
        """Cancel a waiting or running job; False if it is unknown or already finished."""
        with self._cond:
            for job in self._queue:
                if job.id == job_id:
                    self._queue.remove(job)
                    self._stats["cancelled"] += 1
                    job._emit({"type": "cancelled", "while": "queued"})
                    self._announce_positions()
                    return True
            job = self._running
            if job is not None and job.id == job_id and not job.finished:
                if job.cancel_requested is None:
                    job.cancel_requested = time.monotonic()
                    self._cancel_id.value = job_id
                    self._cond.notify_all()
                return True
        return False

    def restart(self) -> None:
        """Start a fresh worker process (e.g. after the bundle was fixed). A running job ends with an error."""
        with self._cond:
            self._restart_requested = True
            if self._state in ("unavailable", "failed"):
                self._state, self._last_error = "restarting", ""
            proc = self._proc
            self._cond.notify_all()
        if proc is not None and proc.is_alive():
            proc.kill()

    def wait_ready(self, timeout: float | None = None) -> str:
        """Block until the worker is ready, unavailable or failed; returns the state."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._state in ("starting", "restarting", "stopped") and not self._closing:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            return self._state

    @property
    def state(self) -> str:
        return self._state

    @property
    def last_error(self) -> str:
        return self._last_error

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None and p.is_alive() else None

    def status(self) -> dict[str, Any]:
        with self._cond:
            running = self._running
            st: dict[str, Any] = {
                "state": self._state, "pid": self.pid, "queued": len(self._queue), "max_queue": self.max_queue,
                "running": None if running is None else {"id": running.id, "kind": running.kind,
                                                         "seconds": round(time.time() - running.submitted, 1),
                                                         "audio_s": round(running.made_samples / running.made_rate,
                                                                          2)},
                "uptime_s": round(time.monotonic() - self._since, 1) if self._state in ("ready", "busy") else None,
                "last_error": self._last_error, "last_crash": self._last_crash, **self._stats,
                "backends": dict(self._info.get("backends", {})), "bundle": dict(self._info.get("bundle", {})),
                "placement": dict(self._info.get("placement", {})),
            }
        st["rss_mb"] = _rss_mb(st["pid"])
        return st

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            for job in list(self._queue):
                job._emit({"type": "error", "message": "the studio is shutting down", "kind": "WorkerError"})
            self._queue.clear()
            if self._running is not None:
                self._cancel_id.value = self._running.id
            self._cond.notify_all()
        proc, conn = self._proc, self._conn
        if conn is not None:
            try:
                with self._send_lock:
                    conn.send(None)
            except (OSError, ValueError):
                pass
        if proc is not None:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            self._state = "stopped"

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # supervisor thread ----------------------------------------------------------------------------
    def _set_state(self, state: str, error: str | None = None) -> None:
        with self._cond:
            self._state = state
            if error is not None:
                self._last_error = error
            self._cond.notify_all()

    def _announce_positions(self) -> None:
        """Tell each waiting job whose place changed how many jobs are ahead of it (the running one included)."""
        first = 1 if self._running is not None else 0
        for i, job in enumerate(self._queue):
            if job.ahead != first + i:
                job.ahead = first + i
                job._emit({"type": "queued", "ahead": job.ahead, "waiting": len(self._queue)})

    def _loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                if self._closing:
                    return
                if self._restart_requested:
                    self._restart_requested = False
                    failures = 0
                if self._state in ("unavailable", "failed"):
                    self._cond.wait()
                    continue
            if self._proc is None or not self._proc.is_alive():
                if self._proc is not None:
                    self._stats["restarts"] += 1
                ok = self._spawn()
                if ok:
                    failures = 0
                elif self._state == "crashed":
                    failures += 1
                    if failures >= _START_RETRIES:
                        self._fail_queue(self._last_error)
                        self._set_state("failed")
                    else:
                        with self._cond:
                            self._cond.wait(min(2.0 ** failures, 10.0))
                continue
            with self._cond:
                while not self._queue and not self._closing and not self._restart_requested \
                        and self._proc is not None and self._proc.is_alive():
                    self._cond.wait(1.0)
                if self._closing or self._restart_requested or not self._queue:
                    continue
                job = self._queue.popleft()
                self._cancel_id.value = 0  # before the job is visible as running: cancel() may set it next
                self._running = job
                self._state = "busy"
                self._announce_positions()
            try:
                self._run(job)
            except Exception as e:  # noqa: BLE001 - the supervisor must survive anything a job does
                traceback.print_exc()
                job._emit({"type": "error", "message": f"internal error in the worker supervisor: {e}",
                           "kind": type(e).__name__})
            with self._cond:
                self._running = None
                self._count(job)
                if self._state == "busy":
                    self._state = "ready"
                self._announce_positions()
                self._cond.notify_all()

    def _count(self, job: Job) -> None:
        t = job.final["type"] if job.final else "error"
        self._stats["done" if t == "done" else "cancelled" if t == "cancelled" else "failed"] += 1

    def _fail_queue(self, message: str) -> None:
        with self._cond:
            for job in list(self._queue):
                job._emit({"type": "error", "message": message, "kind": "WorkerError"})
            self._queue.clear()

    def _spawn(self) -> bool:
        """Start a child and wait for it to load the bundle. Sets the state; True when ready."""
        self._set_state("restarting" if self._stats["restarts"] else "starting")
        self._cancel_id.value = 0
        from pipeline.worker_child import _child_main

        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_child_main, args=(child, self.config, self._cancel_id),
                                 name="cosyvoice-rk-worker", daemon=True)
        try:
            proc.start()
        except (OSError, RuntimeError) as e:  # out of processes or memory: counted as a crash, retried
            parent.close()
            child.close()
            self._start_crashed(f"the worker process could not be started ({type(e).__name__}: {e})")
            return False
        child.close()
        with self._cond:
            old, self._proc, self._conn = self._conn, proc, parent
        if old is not None:
            old.close()
        msg = None
        while msg is None:
            ready = _mp_wait([parent, proc.sentinel])
            if parent in ready:
                try:
                    msg = parent.recv()
                except (EOFError, OSError):
                    break
            elif not proc.is_alive():
                break
        if msg is None or msg.get("type") not in ("ready", "fatal"):
            proc.join(5)
            if self._closing or self._restart_requested:
                self._set_state("restarting")
                return False
            self._start_crashed(f"the worker process died while loading the models ({describe_exit(proc.exitcode)})")
            return False
        if msg["type"] == "fatal":
            proc.join(10)
            self._fail_queue(msg["message"])
            self._set_state("unavailable", msg["message"])
            return False
        with self._cond:
            self._info = msg
            self._since = time.monotonic()
            self._last_error = ""
        self._set_state("ready")
        return True

    def _start_crashed(self, why: str) -> None:
        self._last_crash = f"{time.strftime('%H:%M:%S')}: {why}"
        self._set_state("crashed", why)
        self._stats["crashes"] += 1

    def _run(self, job: Job) -> None:
        proc, conn = self._proc, self._conn
        if job.cancel_requested is not None:
            job._emit({"type": "cancelled", "while": "queued"})
            return
        job._emit({"type": "started", "pid": proc.pid})
        try:
            with self._send_lock:
                conn.send((job.id, job.kind, job.payload))
        except (OSError, ValueError):
            self._child_died(job, proc)
            return
        while True:
            timeout = 1.0
            if job.cancel_requested is not None:
                left = job.cancel_requested + self.cancel_grace - time.monotonic()
                if left <= 0:
                    proc.kill()
                    proc.join(5)
                    job._emit({"type": "cancelled", "while": "running",
                               "note": f"the worker did not stop within {self.cancel_grace:g} s and was restarted"})
                    return
                timeout = min(timeout, left)
            ready = _mp_wait([conn, proc.sentinel], timeout)
            if conn in ready or conn.poll():
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    self._child_died(job, proc)
                    return
                if msg.pop("job", None) != job.id:
                    continue  # a late event of an earlier (killed) job
                job._emit(msg)
                if msg["type"] in TERMINAL:
                    return
            elif proc.sentinel in ready:
                self._child_died(job, proc)
                return

    def _child_died(self, job: Job, proc: Any) -> None:
        proc.join(5)
        with self._cond:
            restarting = self._restart_requested
            if not restarting:
                self._stats["crashes"] += 1
        if restarting:
            msg = "the worker was restarted while running this job; run it again"
        else:
            msg = (f"the worker process died while running this job ({describe_exit(proc.exitcode)}); "
                   "it is being restarted: run the job again. Saved voices are not affected")
            self._last_crash = f"{time.strftime('%H:%M:%S')}: {msg}"
        job._emit({"type": "error", "message": msg, "kind": "WorkerCrashed"})


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = ", often the out-of-memory killer" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        import psutil

        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except Exception:  # noqa: BLE001 - psutil missing or the process just ended
        return None
