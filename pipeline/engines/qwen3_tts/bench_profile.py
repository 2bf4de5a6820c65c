"""Timers for ``bench --engine qwen3-tts``: stage proxies around the talker and the code predictor (so the
engine's own :func:`.generate.generate_codes` loop is what is timed), and a per-part profile of the code predictor.

The profile replays :meth:`.code_predictor.CodePredictor.predict` for a few frames with a timer around each part:
``llama_decode`` itself, the rest of ``LMBody.forward`` (batch fill, hidden copy: Python/ctypes), the projection,
the 15 numpy heads, sampling and the embedding lookups. It also times one 16-row teacher-forced call, the floor a
fused or batched code predictor could reach on this CPU (the weights are read once instead of 15 times).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .code_predictor import CodePredictor
from .sampling import SamplingConfig, pick
from .talker import Talker


class TimedTalker:
    """Stands in for a :class:`.talker.Talker` in ``generate_codes``; records prefill and step times."""

    def __init__(self, talker: Talker) -> None:
        self._t = talker
        self.tables = talker.tables
        self.prefill_s = 0.0
        self.steps: list[float] = []

    @property
    def n_ctx(self) -> int:
        return self._t.n_ctx

    def prefill(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        out = self._t.prefill(rows)
        self.prefill_s = time.perf_counter() - t0
        return out

    def step(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        out = self._t.step(row)
        self.steps.append(time.perf_counter() - t0)
        return out


class TimedCodePredictor:
    """Stands in for a :class:`.code_predictor.CodePredictor`; records the time of each frame."""

    def __init__(self, cp: CodePredictor) -> None:
        self._cp = cp
        self.frames: list[float] = []

    def predict(self, *args: Any, **kw: Any) -> np.ndarray:
        t0 = time.perf_counter()
        out = self._cp.predict(*args, **kw)
        self.frames.append(time.perf_counter() - t0)
        return out


class _TimedLib:
    """The llama.cpp bindings with a stopwatch on ``llama_decode`` (everything else passes through)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.decode_s = 0.0
        self.calls = 0

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        t0 = time.perf_counter()
        rc = self._lib.llama_decode(ctx, batch)
        self.decode_s += time.perf_counter() - t0
        self.calls += 1
        return rc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)


PROFILE_PARTS = ("llama_decode", "forward_overhead", "project", "heads", "sampling", "embed", "reset")


def profile_code_predictor(cp: CodePredictor, inputs: list[tuple[np.ndarray, int]], cfg: SamplingConfig,
                           rng: np.random.Generator) -> dict[str, Any]:
    """Per-frame milliseconds of each part over ``inputs`` = [(talker hidden, code 0)] (the frames of a run)."""
    t, body = cp.tables, cp.body
    timed = _TimedLib(body._lib)
    body._lib = timed
    parts = {k: 0.0 for k in PROFILE_PARTS}
    totals: list[float] = []
    clock = time.perf_counter

    def lap(key: str, t0: float) -> float:
        now = clock()
        parts[key] += now - t0
        return now

    n = t.n_groups - 1
    try:
        for hidden, code0 in inputs:
            start = t0 = clock()
            body.reset()
            t0 = lap("reset", t0)
            rows = np.stack([np.asarray(hidden, np.float32).reshape(-1), t.codec([int(code0)])[0]])
            x = t.cp_project(rows)
            t0 = lap("project", t0)
            h = body.forward(x)
            t0 = lap("forward_overhead", t0)
            for j in range(n):
                logits = t.cp_head[j] @ h
                t0 = lap("heads", t0)
                code = pick(logits, cfg, rng)
                t0 = lap("sampling", t0)
                if j + 1 < n:
                    e = t.cp_embedding[j][code][None]
                    t0 = lap("embed", t0)
                    x = t.cp_project(e)
                    t0 = lap("project", t0)
                    h = body.forward(x)
                    t0 = lap("forward_overhead", t0)
            totals.append(clock() - start)
        decode_s, calls = timed.decode_s, timed.calls
        # 16 rows in one call, all hidden out: what one fused pass over the weights costs here
        rows16 = np.stack([np.asarray(inputs[0][0], np.float32).reshape(-1)]
                          + [t.codec([int(inputs[0][1])])[0]] + [t.cp_embedding[j][0] for j in range(n - 1)])
        x16 = t.cp_project(rows16)
        batch16 = []
        for _ in range(3):
            body.reset()
            t0 = clock()
            body.forward(x16, all_hidden=True)
            batch16.append(clock() - t0)
    finally:
        body._lib = timed._lib
    frames = len(inputs)
    parts["forward_overhead"] -= decode_s
    parts["llama_decode"] = decode_s
    return {
        "frames": frames,
        "ms_per_frame": 1e3 * statistics.median(totals),
        "parts_ms_per_frame": {k: 1e3 * v / frames for k, v in parts.items()},
        "llama_decode_calls_per_frame": calls / frames,
        "llama_decode_ms_per_call": 1e3 * decode_s / max(calls, 1),
        "one_call_16_rows_ms": 1e3 * statistics.median(batch16),
    }


def time_call(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
