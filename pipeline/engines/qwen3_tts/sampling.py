"""Logits processing and token choice for the talker and the code predictor (spec §8.1, §8.2, §7).

Talker, in transformers 4.57.3's order: repetition penalty over the code-0 ids generated so far (each distinct id
once: x penalty if < 0, / penalty otherwise), EOS = -inf for the first ``min_new_tokens`` steps, ids
``suppress_start``..vocab-1 except EOS = -inf; then, if sampling, temperature, top-k (ties kept), top-p, softmax
and a draw. The code predictor has no penalty, no EOS and no suppression. Greedy = argmax of the processed
scores. Draws come from an injected ``numpy.random.Generator`` (torch's RNG cannot be matched).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingConfig:
    """One sampler's settings; ``from_generation_config`` reads the talker's or the sub-talker's keys."""

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0

    @classmethod
    def from_generation_config(cls, gen: dict, prefix: str = "") -> SamplingConfig:
        """``prefix`` "" for the talker, "subtalker_" for the code predictor."""
        d = cls()
        return cls(do_sample=bool(gen.get(f"{prefix}dosample" if prefix else "do_sample", d.do_sample)),
                   temperature=float(gen.get(f"{prefix}temperature", d.temperature)),
                   top_k=int(gen.get(f"{prefix}top_k", d.top_k)),
                   top_p=float(gen.get(f"{prefix}top_p", d.top_p)))


def talker_scores(logits: np.ndarray, generated: Iterable[int], *, eos_id: int, repetition_penalty: float = 1.05,
                  min_new_tokens: int = 2, suppress_start: int = 2048) -> np.ndarray:
    """Processed talker scores (spec §8.2 steps 1–3) for the step after ``generated`` code-0 ids."""
    s = np.array(logits, dtype=np.float32)
    prev = list(generated)
    seen = np.unique(np.asarray(prev, dtype=np.int64))
    if seen.size and repetition_penalty != 1.0:
        v = s[seen]
        s[seen] = np.where(v < 0, v * np.float32(repetition_penalty), v / np.float32(repetition_penalty))
    if len(prev) < min_new_tokens:
        s[eos_id] = -np.inf
    keep = s[eos_id]
    s[suppress_start:] = -np.inf
    s[eos_id] = keep
    return s


def warp(scores: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Temperature, top-k and top-p as transformers' warpers do them (removed entries = -inf)."""
    s = np.array(scores, dtype=np.float32)
    if cfg.temperature != 1.0:
        s = s / np.float32(cfg.temperature)
    if 0 < cfg.top_k < s.shape[0]:
        kth = np.partition(s, -cfg.top_k)[-cfg.top_k]
        s[s < kth] = -np.inf
    if cfg.top_p < 1.0:
        order = np.argsort(s, kind="stable")  # ascending, as transformers sorts
        p = _softmax(s[order])
        remove = np.cumsum(p) <= 1.0 - cfg.top_p
        remove[-1] = False  # min_tokens_to_keep = 1
        s[order[remove]] = -np.inf
    return s


def _softmax(s: np.ndarray) -> np.ndarray:
    x = s.astype(np.float64)
    x = np.exp(x - x.max())
    return x / x.sum()


def pick(scores: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator | None) -> int:
    """argmax when ``cfg.do_sample`` is false, else one draw from softmax(warp(scores))."""
    if not cfg.do_sample:
        return int(np.argmax(scores))
    if rng is None:
        raise ValueError("sampling needs a numpy Generator (rng)")
    p = _softmax(warp(scores, cfg))
    i = int(np.searchsorted(np.cumsum(p), rng.random(), side="right"))
    return i if i < p.shape[0] and p[i] > 0 else int(np.flatnonzero(p)[-1])  # rounding at the top end
