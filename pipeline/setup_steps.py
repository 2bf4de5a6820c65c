"""Helpers of the first-run setup (``pipeline/setup_run.py``): the environment it looks at (torch pin, NPU,
rknn-toolkit2), the files it measures and cleans, the local folder check, and the download child process
(``python -m pipeline.setup_steps download DEST --repo-id R [--revision V]``)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from pipeline.setup_checks import Problem

ROOT = Path(__file__).resolve().parents[1]


def torch_pin(cv: Path = ROOT / "cv") -> str:
    """The torch version ``./cv`` installs (``TORCH_VERSION``, else its default), one source for both."""
    if os.environ.get("TORCH_VERSION"):
        return os.environ["TORCH_VERSION"]
    m = re.search(r"TORCH_VERSION:-([0-9][0-9.]*)", cv.read_text(encoding="utf-8")) if cv.is_file() else None
    return m.group(1) if m else "2.13.0"


def pip_progress_flags(python: str) -> list[str]:
    """``--progress-bar raw`` (pip >= 24.1 prints "Progress N of M" per download) where this pip has it."""
    import subprocess

    try:
        out = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    m = re.match(r"pip (\d+)\.(\d+)", out)
    return ["--progress-bar", "raw"] if m and (int(m.group(1)), int(m.group(2))) >= (24, 1) else []


def npu_present() -> bool:
    """An RK3588 NPU by its device node or the device tree (cheap: no runtime import)."""
    from pipeline.engines.cosyvoice3.flow_rknn import NPU_DEVICE
    from pipeline.shared.cpu import rockchip_soc

    return NPU_DEVICE.exists() or rockchip_soc() == "rk3588"


def rknn_toolkit() -> Path | None:
    from pipeline.engines.cosyvoice3.convert.rknn_export import find_rknn_python

    return find_rknn_python()


def file_size(p: Path) -> int:
    try:
        return p.stat().st_size if p.is_file() else 0
    except OSError:
        return 0


def tree_rss(pid: int) -> int:
    """Resident memory of a child and its own children (sampled: the setup shows and tests the peak)."""
    import psutil

    try:
        p = psutil.Process(pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
    except psutil.Error:
        return 0


def incomplete_files(checkpoint: Path) -> list[Path]:
    d = checkpoint / ".cache" / "huggingface" / "download"
    return list(d.rglob("*.incomplete")) if d.is_dir() else []


def same_disk(a: Path, b: Path) -> bool:
    from pipeline.setup_checks import existing_parent

    try:
        return existing_parent(a).stat().st_dev == existing_parent(b).stat().st_dev
    except OSError:
        return True


def check_folder(folder: Path | None) -> Problem | None:
    from pipeline.engines.cosyvoice3.convert.upstream import FILE_NAMES_REQUIRED

    if folder is None:
        return Problem("setup_folder_empty", "type the path of an upstream checkpoint folder on this machine")
    if not folder.is_dir():
        return Problem("setup_folder_missing", f"{folder} is not a folder on this machine", {"path": str(folder)})
    missing = [f for f in FILE_NAMES_REQUIRED if not (folder / f).is_file()]
    if missing:
        return Problem("setup_folder_incomplete",
                       f"{folder} is not a CosyVoice3 checkpoint: {', '.join(missing)} missing (Download and "
                       "convert fetches them)", {"path": str(folder), "missing": ", ".join(missing)})
    return None


def stamp_cv_venv(python: str) -> None:
    """Tell ``./cv`` that this venv now covers the ``convert`` extra (its stamp), so it does not install again."""
    prefix = Path(python).resolve().parent.parent
    if any(prefix.glob(".installed-*")):
        (prefix / ".installed-convert").touch()


def _main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.setup_steps download DEST --repo-id R [--revision V]``: the download child."""
    import argparse

    from pipeline.engines.cosyvoice3.download import download
    from pipeline.shared.errors import SourceError

    ap = argparse.ArgumentParser(prog="python -m pipeline.setup_steps")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download")
    d.add_argument("dest", type=Path)
    d.add_argument("--repo-id", required=True)
    d.add_argument("--revision", default=None)
    a = ap.parse_args(argv)
    try:
        download(a.dest, repo_id=a.repo_id, revision=a.revision, rl=False, log=lambda m: print(m, flush=True))
    except SourceError as e:
        print(f"error: {e}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())
