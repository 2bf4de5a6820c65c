"""What every engine's ``bench`` shares: min/median/max statistics, peak RSS, the machine's description, and the
JSON report."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np


def stats(xs: Sequence[float]) -> dict[str, float]:
    """min / median / max of a non-empty sequence."""
    v = [float(x) for x in xs]
    return {"min": min(v), "median": float(statistics.median(v)), "max": max(v)}


def peak_rss_mb() -> tuple[float, str]:
    """The process's peak resident set in MiB and where it was read (``VmHWM`` or ``ru_maxrss``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0, "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss"


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("model name", "hardware", "cpu model"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = list(range(os.cpu_count() or 1))

    def version(mod: str) -> str:
        try:
            return str(__import__(mod).__version__)
        except Exception:  # a missing or broken optional module is reported, not fatal
            return "?"

    return {"cpu": cpu, "logical_cpus": os.cpu_count() or 1, "affinity": affinity, "loadavg_start": loadavg(),
            "loadavg_end": None, "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": version("onnxruntime"), "llama_cpp": version("llama_cpp"),
            "platform": platform.platform()}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def report_json(rep: dict[str, Any]) -> str:
    return json.dumps(rep, indent=1, default=jsonable)


def jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")
