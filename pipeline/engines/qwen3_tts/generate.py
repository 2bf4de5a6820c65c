"""The generation loop (spec §8.3, §5.7): talker prefill, then per frame code 0 -> code predictor -> next row.

step 0: prefill -> scores -> code 0 of frame 0; step k: feed F(frame k-1) + text row k-1 -> code 0 of frame k.
The code predictor runs right after each code 0 (upstream runs it inside the next talker step; same numbers).
Stop on EOS (that id is dropped) or after ``max_new_tokens`` code-0 ids (the last one is dropped: its codes
1..15 are never predicted). Returns (n, 16) int64 codes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.shared.errors import InputError

from .code_predictor import CodePredictor
from .prefill import TalkerPrompt
from .sampling import SamplingConfig, pick, talker_scores
from .talker import Talker


@dataclass(frozen=True)
class GenerationConfig:
    """Spec §8.1 defaults (the converter's ``sampling`` section holds the checkpoint's values)."""

    max_new_tokens: int = 2048
    repetition_penalty: float = 1.05
    min_new_tokens: int = 2
    talker: SamplingConfig = field(default_factory=SamplingConfig)
    subtalker: SamplingConfig = field(default_factory=SamplingConfig)

    @classmethod
    def from_sampling(cls, gen: Mapping[str, Any], **overrides: Any) -> GenerationConfig:
        """From a generation_config-style dict (``do_sample``, ``subtalker_top_k``, ...); ``overrides`` are
        those keys too (e.g. ``do_sample=False``)."""
        g = {**gen, **overrides}
        return cls(max_new_tokens=int(g.get("max_new_tokens", 2048)),
                   repetition_penalty=float(g.get("repetition_penalty", 1.05)),
                   min_new_tokens=int(g.get("min_new_tokens", 2)),
                   talker=SamplingConfig.from_generation_config(g),
                   subtalker=SamplingConfig.from_generation_config(g, "subtalker_"))


@dataclass
class Trace:
    """Per-step internals for checks: raw talker logits, processed scores, code-0 ids, code-predictor inputs
    (the two prefill rows before projection) and raw code-predictor logits."""

    talker_logits: list[np.ndarray] = field(default_factory=list)
    talker_scores: list[np.ndarray] = field(default_factory=list)
    code0: list[int] = field(default_factory=list)
    cp_inputs: list[np.ndarray] = field(default_factory=list)
    cp_logits: list[np.ndarray] = field(default_factory=list)


def generate_codes(talker: Talker, cp: CodePredictor, prompt: TalkerPrompt, eos_id: int, cfg: GenerationConfig, *,
                   rng: np.random.Generator | None = None, progress: Callable[[int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, trace: Trace | None = None,
                   on_frame: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Generate frames for ``prompt``. ``on_frame(codes (16,))`` (for streaming) and then ``progress(n_frames)``
    are called after each complete frame; ``should_stop()`` is asked after each frame and ends the loop early
    (the frames so far are returned).
    Generation also ends when the talker's context is full (as at max_new_tokens)."""
    if cfg.max_new_tokens < 1:
        raise InputError("max_new_tokens must be at least 1")
    if (cfg.talker.do_sample or cfg.subtalker.do_sample) and rng is None:
        raise ValueError("sampling needs a numpy Generator (rng)")
    tables = talker.tables
    n_groups = tables.n_groups
    # every code-0 id but the last needs one more talker position
    max_new = min(cfg.max_new_tokens, talker.n_ctx - prompt.prefill.shape[0] + 1)
    hidden, logits = talker.prefill(prompt.prefill)
    generated: list[int] = []
    frames: list[np.ndarray] = []
    for step in range(max_new):
        scores = talker_scores(logits, generated, eos_id=eos_id, repetition_penalty=cfg.repetition_penalty,
                               min_new_tokens=cfg.min_new_tokens, suppress_start=tables.cp_vocab)
        c0 = pick(scores, cfg.talker, rng)
        generated.append(c0)
        if trace is not None:
            trace.talker_logits.append(logits)
            trace.talker_scores.append(scores)
            trace.code0.append(c0)
        if c0 == eos_id or step == max_new - 1:
            break
        cp_logits = np.empty((n_groups - 1, tables.cp_vocab), np.float32) if trace is not None else None
        rest = cp.predict(hidden, c0, cfg.subtalker, rng, logits_out=cp_logits)
        frame = np.concatenate([[c0], rest]).astype(np.int64)
        frames.append(frame)
        if trace is not None:
            trace.cp_inputs.append(np.stack([hidden, tables.codec([c0])[0]]))
            trace.cp_logits.append(cp_logits)
        if on_frame is not None:
            on_frame(frame.copy())
        if progress is not None:
            progress(len(frames))
        if should_stop is not None and should_stop():
            break
        row = tables.frame_rows(frame[None])[0] + prompt.text_row(len(frames) - 1)
        hidden, logits = talker.step(row)
    return np.stack(frames) if frames else np.zeros((0, n_groups), dtype=np.int64)
