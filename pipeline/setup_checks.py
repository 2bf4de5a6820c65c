"""What the first-run setup (``pipeline/setup_run.py``) checks before it starts: memory, disk, the converter's
extras, and the build tools when the extras would have to be built.

Nothing here imports torch or a model runtime; the checks run in the web process.

**Memory the conversion needs.** Measured at the real CosyVoice3 shapes (``make-random-bundle --size full``, a
converter run on random weights of the real sizes, docs/benchmarks.md): 5.8 GB peak. The converter handles one
model at a time: ``llm.pt`` (2.02 GB, float32) is loaded whole and the GGUF tensors are made from it (the LLM stage
is the peak: the state dict, its numpy views and the writer's buffers, about 2.6x the file); ``flow.pt`` and
``flow.decoder.estimator.fp32.onnx`` (1.33 GB each) come after it, when it is freed. Torch, onnx and
onnxruntime themselves take ~0.5 GB. Hence ``0.5 GB + 3 x llm.pt``: 6.6 GB for the real release, which covers
the 5.8 GB measured with the later stages' margin. The tiny test checkpoint converts within this bound too
(tests/test_setup_run.py measures its peak). The RKNN graphs (``--rknn``) need more: rknn-toolkit2 peaks at
8.6 GB loading the real-depth estimator (docs/rk3588.md §2), hence ``9 GB`` when they are built.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 1e9
MB = 1e6
BASE_BYTES = 0.5 * GB  # the interpreter with torch, onnx and onnxruntime imported
LLM_FACTOR = 3.0  # peak / llm.pt size at the LLM stage, with margin (see the module docstring)
RKNN_BYTES = 9.0 * GB  # rknn-toolkit2's own peak on the real estimator (8.6 GB measured)
BUNDLE_FACTOR = 1.1  # a bundle is at most about the size of the checkpoint files it was made from
EXTRAS_MODULES = ("torch", "onnx", "safetensors")  # the `convert` extra (pyproject.toml)


@dataclass(frozen=True)
class Problem:
    """Why the setup cannot run here: ``key``/``params`` for the page's text, ``message`` in English."""

    key: str
    message: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resources:
    """Free memory and disk as the setup sees them (tests pass their own)."""

    mem_available: int  # MemAvailable
    swap_free: int
    disk_free: Callable[[Path], int]


def existing_parent(path: Path) -> Path:
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def probe_resources() -> Resources:
    import psutil

    return Resources(int(psutil.virtual_memory().available), int(psutil.swap_memory().free),
                     lambda p: shutil.disk_usage(existing_parent(p)).free)


def memory_need(llm_pt_bytes: int, *, rknn: bool = False) -> int:
    need = int(BASE_BYTES + LLM_FACTOR * llm_pt_bytes)
    return max(need, int(RKNN_BYTES)) if rknn else need


def check_memory(res: Resources, llm_pt_bytes: int, *, rknn: bool = False) -> Problem | None:
    need = memory_need(llm_pt_bytes, rknn=rknn)
    have = res.mem_available + res.swap_free
    if have >= need:
        return None
    params = {"need": need / GB, "have": have / GB, "ram": res.mem_available / GB, "swap": res.swap_free / GB}
    return Problem("setup_no_memory",
                   f"the conversion needs about {need / GB:.1f} GB of memory and this machine has "
                   f"{have / GB:.1f} GB free (RAM {res.mem_available / GB:.1f} GB + swap {res.swap_free / GB:.1f} "
                   "GB). Convert on an x86 computer and copy the bundle here (README, 'On an RK3588 board'), or "
                   "add swap (e.g. a swap file on an SSD) and try again", params)


def check_disk(res: Resources, folder: Path, need: int, what: str) -> Problem | None:
    free = res.disk_free(folder)
    if free >= need:
        return None
    where = existing_parent(folder)
    return Problem("setup_no_disk",
                   f"{what} needs about {need / GB:.2f} GB free in {where}, it has {free / GB:.2f} GB. "
                   "Free some space or start the studio with --bundle on a larger disk",
                   {"need": need / GB, "have": free / GB, "folder": str(where), "what": what})


def extras_present(python: str = sys.executable, timeout: float = 300.0) -> tuple[bool, str]:
    """Whether ``python`` imports the converter's extras (torch, onnx, safetensors): a real import in a child
    process (torch is never imported by the web process), so a half-installed torch counts as missing."""
    code = "import " + ", ".join(EXTRAS_MODULES) + "; print(torch.__version__)"
    try:
        r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"{python} could not be run ({type(e).__name__}: {e})"
    if r.returncode == 0:
        return True, f"torch {r.stdout.strip()}"
    tail = (r.stderr.strip().splitlines() or ["?"])[-1]
    return False, tail


def build_tools_missing() -> list[str]:
    """What building a package from source would lack here: a C compiler, Python's headers."""
    missing = []
    cc = os.environ.get("CC", "").split()
    if not (cc and shutil.which(cc[0])) and not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        missing.append("a C compiler (apt install build-essential)")
    inc = sysconfig.get_paths().get("include") or ""
    if not Path(inc, "Python.h").is_file():
        v = f"{sys.version_info.major}.{sys.version_info.minor}"
        missing.append(f"Python's headers (apt install python{v}-dev)")
    return missing


def wheels_cover(python: str, requirements: list[str], timeout: float = 600.0) -> tuple[bool | None, str]:
    """Whether pip finds ready wheels for ``requirements`` for this machine (a dry run, nothing installed):
    True, False (something would be built from source), or None when the index cannot be reached."""
    cmd = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--only-binary=:all:", *requirements]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"pip could not be run ({type(e).__name__}: {e})"
    if r.returncode == 0:
        return True, ""
    err = r.stderr
    if re.search(r"No matching distribution|Could not find a version", err):
        return False, (err.strip().splitlines() or [""])[-1]
    return None, (err.strip().splitlines() or ["pip failed"])[-1]


def check_build_tools(python: str, requirements: list[str]) -> Problem | None:
    """Refuse when the extras have no wheel here and the tools to build them are missing."""
    ok, why = wheels_cover(python, requirements)
    if ok is None:
        return Problem("setup_no_index", f"cannot reach the Python package index to install the converter's "
                       f"extras ({why}); check the internet connection and try again", {"error": why})
    if ok:
        return None
    missing = build_tools_missing()
    if not missing:
        return None
    return Problem("setup_no_compiler",
                   f"the converter's extras ({', '.join(requirements)}) have no ready-made package for this "
                   f"machine and would be built from source, which needs {' and '.join(missing)}. Install them, "
                   "or convert on an x86 computer and copy the bundle here (README, 'On an RK3588 board')",
                   {"missing": ", ".join(missing)})
