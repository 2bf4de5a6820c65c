"""CPU placement on big.LITTLE boards: detect the RK3588 and its Cortex-A76 cores, pin the process to them.

On the RK3588 (4× A55 at 1.8 GHz as cpu0–3, 4× A76 at 2.4 GHz as cpu4–7) llama.cpp and ONNX Runtime run
several times slower when their threads land on the little cores, so by default the worker pins itself to the
A76 cores before any thread pool exists. Elsewhere nothing is pinned unless asked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipeline.shared.errors import InputError

DT_COMPATIBLE = Path("/proc/device-tree/compatible")
SYS_CPU = Path("/sys/devices/system/cpu")
CPUS_ENV = "COSYVOICE_RK_CPUS"
RK3588_BIG_CORES = (4, 5, 6, 7)


def read_compatible(path: Path = DT_COMPATIBLE) -> list[str]:
    """The device tree's root ``compatible`` strings (NUL-separated in the file); [] where there is none."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return []
    return [s for s in raw.decode("ascii", "replace").split("\0") if s]


def rockchip_soc(path: Path = DT_COMPATIBLE) -> str | None:
    """``"rk3588"`` for RK3588 and RK3588S boards (same CPU cluster and NPU), another ``rkXXXX`` name for other
    Rockchip SoCs, ``None`` when the device tree names no Rockchip SoC."""
    socs = [m.group(1) for s in read_compatible(path) if (m := re.fullmatch(r"rockchip,(rk\d{4})s?", s))]
    if "rk3588" in socs:
        return "rk3588"
    return socs[0] if socs else None


def is_rk3588(path: Path = DT_COMPATIBLE) -> bool:
    return rockchip_soc(path) == "rk3588"


def _read_int(p: Path) -> int | None:
    try:
        return int(p.read_text().strip())
    except (OSError, ValueError):
        return None


def big_cores(sys_cpu: Path = SYS_CPU) -> list[int]:
    """CPUs of the fastest cluster, from ``cpu_capacity`` (arm64 exposes it) or else ``cpuinfo_max_freq``;
    [] when the cores are all alike or the kernel exposes neither."""
    ids = sorted(int(m.group(1)) for p in Path(sys_cpu).glob("cpu[0-9]*") if (m := re.fullmatch(r"cpu(\d+)", p.name)))
    for rel in ("cpu_capacity", "cpufreq/cpuinfo_max_freq"):
        vals = {i: _read_int(Path(sys_cpu) / f"cpu{i}" / rel) for i in ids}
        if ids and all(v is not None for v in vals.values()):
            top = max(vals.values())
            if min(vals.values()) == top:
                return []
            return [i for i in ids if vals[i] == top]
    return []


def parse_cpus(spec: str) -> list[int]:
    """``"4-7"``, ``"4,5,6,7"`` or ``"0-1,4-7"`` → sorted CPU ids."""
    out: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"CPU list {spec!r}: {part!r} is not a CPU number or range like 4-7")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise ValueError(f"CPU list {spec!r}: range {part} runs backwards")
        out.update(range(a, b + 1))
    if not out:
        raise ValueError(f"CPU list {spec!r} names no CPU")
    return sorted(out)


def plan_cpus(
    spec: str | None = None, *, compatible: Path = DT_COMPATIBLE, sys_cpu: Path = SYS_CPU,
    allowed: Iterable[int] | None = None,
) -> tuple[list[int] | None, str]:
    """Which CPUs to pin to, and why. ``spec``: ``"auto"`` (default; also read from $COSYVOICE_RK_CPUS),
    ``"all"`` / ``"none"`` (no pinning) or a CPU list such as ``"4-7"``. ``None`` means leave the scheduler alone.
    """
    spec = (spec or os.environ.get(CPUS_ENV) or "auto").strip().lower()
    allowed_set = set(os.sched_getaffinity(0) if allowed is None else allowed)
    if spec in ("all", "none", "off"):
        return None, f"CPU pinning off ({spec!r} asked): threads may run on any CPU"
    if spec != "auto":
        try:
            cores = parse_cpus(spec)
        except ValueError as e:
            raise InputError(f"--cpus: {e}") from None
        missing = sorted(set(cores) - allowed_set)
        if missing:
            raise InputError(f"--cpus {spec}: CPU(s) {missing} are not available to this process "
                             f"(allowed: {sorted(allowed_set)})")
        return cores, f"pinned to CPUs {_fmt(cores)} as asked"
    if not is_rk3588(compatible):
        return None, "CPU pinning off: not an RK3588 (threads left to the OS scheduler; --cpus 4-7 style lists pin)"
    big = big_cores(sys_cpu)
    how = "by cpu capacity/max frequency"
    if not big:
        big, how = list(RK3588_BIG_CORES), "by the RK3588 layout (sysfs gave no capacities)"
    cores = [c for c in big if c in allowed_set]
    if not cores:
        return None, (f"CPU pinning off: the A76 cores {_fmt(big)} are outside this process's allowed CPUs "
                      f"{_fmt(sorted(allowed_set))}")
    return cores, f"RK3588: pinned to the Cortex-A76 cores {_fmt(cores)} (found {how}; --cpus all turns this off)"


def _fmt(cores: Iterable[int]) -> str:
    c = sorted(cores)
    if c and c == list(range(c[0], c[-1] + 1)) and len(c) > 2:
        return f"{c[0]}-{c[-1]}"
    return ",".join(map(str, c))


def pin_threads(cores: Iterable[int], *, task_dir: Path = Path("/proc/self/task")) -> list[int]:
    """Pin every thread of this process to ``cores``; threads created later inherit it. Returns the new mask.

    ``os.sched_setaffinity(0, …)`` alone changes only the calling thread, and numpy's BLAS pool or a web
    server's threads may already exist, so each thread listed in /proc/self/task is set too.
    """
    cores = sorted(set(cores))
    os.sched_setaffinity(0, cores)
    try:
        tids = [int(p.name) for p in Path(task_dir).iterdir() if p.name.isdigit()]
    except OSError:
        tids = []
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cores)
        except (ProcessLookupError, PermissionError):
            pass  # the thread ended meanwhile, or is not ours to move
    return sorted(os.sched_getaffinity(0))


def place_process(
    spec: str | None = None, *, log: Callable[[str], None] = print, **paths: Path
) -> tuple[list[int] | None, str]:
    """:func:`plan_cpus`, then :func:`pin_threads`; logs and returns (cores or None, reason).

    Call it in the worker before llama.cpp or ONNX Runtime start their thread pools, and size those pools
    with ``len(cores)`` when no thread count was given.
    """
    cores, reason = plan_cpus(spec, **paths)
    if cores is not None:
        pin_threads(cores)
    log(reason)
    return cores, reason


_BLAS_LIMIT: Any = None


def quiet_blas() -> None:
    """One thread for numpy's BLAS in this process, for good. numpy's matrix products here are small (logit
    heads, a few convolutions) and its OpenBLAS threads spin after each call: on 2 cores they took llama.cpp's
    cores: a Qwen3-TTS talker step took 308 ms with them and 66 ms without (two separate
    ``bench --engine qwen3-tts`` runs, not one)."""
    global _BLAS_LIMIT
    if _BLAS_LIMIT is None:
        from threadpoolctl import threadpool_limits

        _BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")
