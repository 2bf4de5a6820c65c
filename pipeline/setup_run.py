"""First run from the page: get a bundle where there is none, then have the worker load it.

Stages (each reported with its progress; :meth:`FirstRun.snapshot` is what the page shows):

- ``check``: sizes from the hub (``HfApi.model_info(files_metadata=True)``) or the local folder; memory, disk, the
  converter's extras and, when they are missing and have no wheel here, the build tools
  (``pipeline/setup_checks.py``). A failed check refuses up front and says what to do instead.
- ``install``: the converter's extras into this interpreter's environment (``pip``, as ``./cv convert`` does:
  the pinned torch first, then ``-e .[convert]``), byte progress from pip's ``--progress-bar raw``. Skipped when
  they import already.
- ``download`` (from the hub only): CosyVoice3's ``download.download`` in a child process; progress is the bytes on
  disk in the checkpoint folder (finished files plus huggingface_hub's ``.incomplete`` files) against the sizes
  the hub lists. Finished files are not fetched again by a second run (a file cut off midway starts over:
  huggingface_hub 1.x/2.x does not resume a partial file across processes).
- ``convert``: ``cosyvoice-rk convert`` in a child process (it needs torch; this process never imports it) into a
  hidden folder beside the bundle, with ``--rknn rk3588`` when this machine has an RK3588 NPU and the
  rknn-toolkit2 environment (``.venv-rknn``) is there.
- ``place``: the converted folder is renamed to the bundle path (a half-converted folder is never taken for a
  bundle); ``load``: the caller's ``on_bundle`` starts the worker on it and waits until it is ready.

:meth:`FirstRun.cancel` stops the running child (SIGINT, so its own cleanup runs; SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.setup_checks import (
    BUNDLE_FACTOR,
    EXTRAS_MODULES,
    Problem,
    Resources,
    check_build_tools,
    check_disk,
    check_memory,
    extras_present,
    probe_resources,
)
from pipeline.setup_steps import (
    ROOT,
    check_folder,
    file_size,
    incomplete_files,
    npu_present,
    pip_progress_flags,
    rknn_toolkit,
    same_disk,
    stamp_cv_venv,
    torch_pin,
    tree_rss,
)
from pipeline.shared.errors import CosyVoiceRKError

STAGES = ("check", "install", "download", "convert", "place", "load")
# the converter's log lines (pipeline/engines/cosyvoice3/convert/bundle_writer.py) that start a step, in order
CONVERT_STEPS = (("LLM ", "llm"), ("flow → frontend", "flow"), ("flow estimator → RKNN", "rknn"),
                 ("flow → INT8", "flow_fast"), ("flow → streaming", "flow_stream"),
                 ("streaming flow chunk step → RKNN", "rknn_stream"), ("HiFT → ", "hift"),
                 ("bundle written", "written"))
_RAW = re.compile(r"Progress (\d+) of (\d+)")
_GRACE = 15.0


class SetupError(CosyVoiceRKError):
    """A stage failed; the message says which and what to do."""


class FirstRun:
    """One setup at a time; thread-safe. ``on_bundle()`` is called once the bundle is in place and returns
    ``(ok, message)`` when the worker has loaded it (or could not)."""

    def __init__(self, bundle: Path | str, *, checkpoint: Path | str | None = None, repo_id: str | None = None,
                 revision: str | None = None, probe: Callable[[], Resources] = probe_resources,
                 python: str = sys.executable, on_bundle: Callable[[], tuple[bool, str]] | None = None,
                 rknn: str = "auto") -> None:
        from pipeline.engines.cosyvoice3.download import PINNED_REVISION, REPO_ID

        self.bundle = Path(bundle).absolute()
        self.checkpoint = Path(checkpoint).absolute() if checkpoint else self.bundle.parent / "cosyvoice3"
        self.repo_id = repo_id or REPO_ID
        self.revision = revision or PINNED_REVISION  # another one (e.g. "main") is checked against the hub's metadata
        self.probe = probe
        self.python = python
        self.on_bundle = on_bundle
        self.rknn = rknn  # auto: when an NPU is present and the toolkit is there; "off": never
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[dict[str, Any]], None]] = []
        self._st: dict[str, Any] = {"phase": "idle"}

    # public ---------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def subscribe(self, fn: Callable[[dict[str, Any]], None]) -> None:
        """``fn(event)`` for every stage change and progress update (from the setup thread)."""
        self._listeners.append(fn)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            st = dict(self._st)
        if st.get("t0") is not None:
            st["elapsed"] = (st.get("t_end") or time.monotonic()) - st["t0"]
        return st

    def start_download(self) -> bool:
        """Download and convert; False when a setup is already running."""
        return self._start("hub", None)

    def start_folder(self, folder: str | Path) -> bool:
        """Convert a local upstream checkpoint folder; False when a setup is already running."""
        text = str(folder or "").strip()
        return self._start("folder", Path(text).expanduser().absolute() if text else None)

    def cancel(self) -> bool:
        if not self.running:
            return False
        self._cancel.set()
        self._stop_child()
        return True

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    # the run --------------------------------------------------------------------------------------
    def _start(self, source: str, folder: Path | None) -> bool:
        with self._lock:
            if self.running:
                return False
            self._cancel.clear()
            self._st = {"phase": "running", "source": source, "stage": "check", "stages": [], "done": [],
                        "bytes": 0, "total": 0, "step": "", "detail": "", "problems": [], "notes": [],
                        "error": "", "log": [], "t0": time.monotonic(), "t_end": None,
                        "checkpoint": str(folder or self.checkpoint), "bundle": str(self.bundle), "peak_rss": {}}
            self._thread = threading.Thread(target=self._run, args=(source, folder), daemon=True,
                                            name="cosyvoice-rk-setup")
            self._thread.start()
        return True

    def _set(self, **kw: Any) -> None:
        with self._lock:
            self._st.update(kw)
            ev = dict(self._st)
        for fn in self._listeners:
            try:
                fn(ev)
            except Exception as e:  # noqa: BLE001 - a listener must not stop the setup
                print(f"cosyvoice-rk setup: listener failed: {e}", file=sys.stderr)

    def _log(self, line: str) -> None:
        with self._lock:
            self._st["log"] = [*self._st["log"], line][-40:]

    def _stage(self, name: str, **kw: Any) -> None:
        if self._cancel.is_set():
            raise _Cancelled()
        with self._lock:
            prev = self._st.get("stage")
            done = list(self._st["done"])
            if prev and prev != name and prev not in done:
                done.append(prev)
        self._set(**{"stage": name, "done": done, "bytes": 0, "total": 0, "step": "", "detail": "", **kw})

    def _run(self, source: str, folder: Path | None) -> None:
        try:
            plan = self._check(source, folder)
            if plan is None:
                return
            self._set(stages=plan["stages"], notes=plan["notes"])
            if "install" in plan["stages"]:
                self._install()
            src = folder
            if source == "hub":
                self._download(plan["files"], plan["total"])
                src = self.checkpoint
            tmp = self._convert(src, plan["rknn"])
            self._stage("place")
            self._place(tmp)
            self._stage("load")
            ok, msg = self.on_bundle() if self.on_bundle else (True, "")
            if not ok:
                raise SetupError(f"the bundle is in place but the worker could not load it: {msg}")
            self._set(phase="done", done=list(plan["stages"]), t_end=time.monotonic())
        except _Cancelled:
            self._set(phase="cancelled", t_end=time.monotonic())
        except CosyVoiceRKError as e:
            self._set(phase="cancelled" if self._cancel.is_set() else "failed", error=str(e),
                      t_end=time.monotonic())
        except Exception as e:  # noqa: BLE001 - the page shows it; the studio lives on
            self._set(phase="failed", error=f"internal error ({type(e).__name__}: {e})", t_end=time.monotonic())
        finally:
            self._proc = None
            self._cleanup()

    def _check(self, source: str, folder: Path | None) -> dict[str, Any] | None:
        from pipeline.engines.cosyvoice3.download import NEEDED_FILES

        problems: list[Problem] = []
        res = self.probe()
        if self.bundle.exists() and not self.bundle.is_dir():
            problems.append(Problem("setup_bundle_file", f"{self.bundle} is a file, not a bundle folder; move it "
                                    "away or start the studio with another --bundle", {"path": str(self.bundle)}))
        if source == "hub":
            sizes = self._hub_sizes()
            files, total = list(sizes), sum(sizes.values())
            have = sum(min(file_size(self.checkpoint / f), sizes[f]) for f in files)
            if p := check_disk(res, self.checkpoint, total - have, "the download"):
                problems.append(p)
            llm_pt = sizes.get("llm.pt", 0)
        else:
            files, total = [], 0
            problem = check_folder(folder)
            if problem:
                self._refuse([problem, *problems])
                return None
            assert folder is not None
            total = sum(file_size(folder / f) for f in NEEDED_FILES)
            llm_pt = file_size(folder / "llm.pt")
        rknn = self.rknn != "off" and npu_present()
        notes = []
        if rknn and rknn_toolkit() is None:
            rknn = False
            notes.append("setup_note_no_toolkit")
        if rknn and check_memory(res, llm_pt, rknn=True) and not check_memory(res, llm_pt):
            rknn = False  # the toolkit's 9 GB are not there, the plain conversion fits: the flow runs on the CPU
            notes.append("setup_note_rknn_memory")
        if rknn:
            notes.append("setup_note_rknn_time")
        if p := check_memory(res, llm_pt, rknn=rknn):
            problems.append(p)
        bundle_parent = self.bundle.parent
        if source == "hub" and same_disk(bundle_parent, self.checkpoint):
            if p := check_disk(res, bundle_parent, int(total - have + BUNDLE_FACTOR * total), "the download and "
                               "the conversion"):
                problems = [q for q in problems if q.key != "setup_no_disk"] + [p]
        elif p := check_disk(res, bundle_parent, int(BUNDLE_FACTOR * total), "the conversion"):
            problems.append(p)
        if problems:  # refused before the slower checks below
            self._refuse(problems)
            return None
        ok, why = extras_present(self.python)
        self._log(f"converter extras ({', '.join(EXTRAS_MODULES)}): {'present, ' + why if ok else 'missing: ' + why}")
        if not ok and (p := check_build_tools(self.python, [f"torch=={torch_pin()}", "onnx>=1.15",
                                                             "safetensors>=0.4"])):
            self._refuse([p])
            return None
        stages = ["check", *([] if ok else ["install"]), *(["download"] if source == "hub" else []),
                  "convert", "place", "load"]
        return {"stages": stages, "files": files, "total": total, "rknn": rknn, "notes": notes}

    def _refuse(self, problems: list[Problem]) -> None:
        self._set(phase="refused", t_end=time.monotonic(),
                  problems=[{"key": p.key, "message": p.message, "params": p.params} for p in problems])

    def _hub_sizes(self) -> dict[str, int]:
        """Size of each file ``download`` will fetch (its own choice from the listing), from the hub."""
        from huggingface_hub import HfApi

        from pipeline.engines.cosyvoice3.download import select_files

        try:
            info = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(
                self.repo_id, revision=self.revision, files_metadata=True)
        except Exception as e:  # noqa: BLE001 - HTTP, offline, timeout: all mean the same here
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise SetupError(f"cannot reach {self.repo_id} ({type(e).__name__}: {first}); check the internet "
                             "connection (or HF_ENDPOINT) and try again") from e
        sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
        return {f: sizes[f] for f in select_files(list(sizes))}  # SourceError names what the listing lacks

    # stages ---------------------------------------------------------------------------------------
    def _install(self) -> None:
        self._stage("install")
        pip = [self.python, "-m", "pip", "install", *pip_progress_flags(self.python)]
        self._child([*pip, f"torch=={torch_pin()}"], "install", progress=True)
        if (ROOT / "pyproject.toml").is_file():
            self._child([*pip, "-e", f"{ROOT}[convert]"], "install", progress=True)
            stamp_cv_venv(self.python)
        ok, why = extras_present(self.python)
        if not ok:
            raise SetupError(f"the converter's extras were installed but do not import ({why})")

    def _download(self, files: list[str], total: int) -> None:
        self._stage("download", total=total)
        cmd = [self.python, "-m", "pipeline.setup_steps", "download", str(self.checkpoint), "--repo-id", self.repo_id]
        if self.revision:
            cmd += ["--revision", self.revision]

        def poll() -> None:
            done = sum(file_size(self.checkpoint / f) for f in files) + sum(
                file_size(p) for p in incomplete_files(self.checkpoint))
            self._set(bytes=min(done, total))

        self._child(cmd, "download", poll=poll)
        poll()

    def _convert(self, src: Path, rknn: bool) -> Path:
        self._stage("convert")
        tmp = self.bundle.with_name(f".{self.bundle.name}.setup")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [self.python, "-m", "pipeline.cli", "convert", str(src), str(tmp)]
        if rknn:
            cmd += ["--rknn", "rk3588"]
        self._child(cmd, "convert")
        return tmp

    def _place(self, tmp: Path) -> None:
        from pipeline.shared.bundle import MANIFEST

        if not (tmp / MANIFEST).is_file():
            raise SetupError(f"the conversion ended without a bundle in {tmp}")
        b = self.bundle
        if b.is_dir() and any(b.iterdir()):
            aside = b.with_name(f"{b.name}.before-setup-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(b, aside)  # whatever was there (a broken bundle) is kept, not deleted
            self._set(notes=[*self.snapshot()["notes"], f"moved:{aside}"])
        elif b.is_dir():
            b.rmdir()
        b.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, b)

    # children -------------------------------------------------------------------------------------
    def _child(self, cmd: list[str], stage: str, *, progress: bool = False,
               poll: Callable[[], None] | None = None) -> None:
        if self._cancel.is_set():
            raise _Cancelled()
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                   PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
        self._log("$ " + " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                cwd=str(ROOT), env=env, start_new_session=True)
        self._proc = proc
        reader = threading.Thread(target=self._read, args=(proc, stage, progress), daemon=True)
        reader.start()
        peak = 0
        while proc.poll() is None:
            if self._cancel.is_set():  # a Stop that came while this child was being started
                self._stop_child()
            if poll is not None:
                poll()
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.3)
        with self._lock:
            self._st["peak_rss"] = {**self._st.get("peak_rss", {}), stage: max(peak, tree_rss(proc.pid))}
        reader.join(10)
        self._proc = None
        if self._cancel.is_set():
            raise _Cancelled()
        if proc.returncode != 0:
            tail = [ln for ln in self.snapshot()["log"] if not ln.startswith("$ ")][-3:]
            raise SetupError(f"{stage} failed (exit code {proc.returncode}): {' / '.join(tail) or 'no output'}")

    def _read(self, proc: subprocess.Popen, stage: str, progress: bool) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            m = _RAW.search(line) if progress else None
            if m:
                self._set(bytes=int(m.group(1)), total=int(m.group(2)))
                continue
            if not line:
                continue
            self._log(line)
            if stage == "convert":
                step = next((k for prefix, k in CONVERT_STEPS if line.lstrip().startswith(prefix)), None)
                self._set(detail=line.strip(), **({"step": step} if step else {}))
            elif stage == "download" and line.startswith("["):
                self._set(detail=line.strip())
            elif stage == "install" and not line.startswith(" "):
                self._set(detail=line.strip()[:160])

    def _stop_child(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGINT)  # Python's own cleanup (temporary folders) runs on SIGINT
            proc.wait(_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _cleanup(self) -> None:
        """Leftovers of a stopped child: huggingface_hub's partial files, the converter's temporary folders."""
        for p in incomplete_files(self.checkpoint):
            p.unlink(missing_ok=True)
        if self._st.get("phase") != "done":
            shutil.rmtree(self.bundle.with_name(f".{self.bundle.name}.setup"), ignore_errors=True)
        for p in self.bundle.parent.glob(f"..{self.bundle.name}.setup.partial-*"):
            shutil.rmtree(p, ignore_errors=True)


class _Cancelled(Exception):
    pass
