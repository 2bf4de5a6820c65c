"""Qwen3-TTS's records: a voice (prompt codes, speaker embedding, transcript) and how it is saved, one segment's
result, one segment's job within a request, and the frame cap per segment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.engines.base import Progress

FRAMES_PER_TOKEN, EXTRA_FRAMES = 15, 50


def max_frames(n_text_tokens: int, configured: int) -> int:
    """Frames one segment may take. Upstream stops only at EOS or ``max_new_tokens`` (8192 frames, 11 minutes);
    a model that never says EOS (random weights, a damaged bundle, a bad prompt) would run that long. Here a
    segment also stops at 1.2 s per text token plus 4 s (speech takes 0.2-0.35 s per token: Chinese characters,
    English and Russian words alike): a deliberate difference, docs/qwen3-tts.md."""
    return max(1, min(configured, FRAMES_PER_TOKEN * n_text_tokens + EXTRA_FRAMES))


def talker_context(max_text_tokens: int, max_prefill: int = 256) -> int:
    """Talker positions a segment can need: its prefill (at most ~140 rows: the ICL block is as long as a 10 s
    prompt's 125 frames plus the control rows) and its frame cap, rounded up to 256. Each position costs 112 KiB
    of F16 KV cache at full size, so the context is sized to this rather than to llama.cpp's 4096."""
    need = max_prefill + max_frames(max_text_tokens, 1 << 30)
    return -(-need // 256) * 256


@dataclass
class VoicePrompt:
    """What a prompt recording gives Qwen3-TTS: its codes (T12, 16) and its speaker embedding (D,)."""

    codes: np.ndarray
    embedding: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {"codes": self.codes, "embedding": self.embedding}


@dataclass(frozen=True)
class VoicePromptCodec:
    """A voice preset's ``features.npz`` for Qwen3-TTS (:class:`pipeline.shared.presets.FeatureCodec`)."""

    num_codebooks: int
    codebook_size: int
    speaker_dim: int

    def to_arrays(self, f: VoicePrompt) -> dict[str, np.ndarray]:
        return f.arrays()

    def from_arrays(self, a: dict[str, np.ndarray]) -> VoicePrompt:
        return VoicePrompt(np.asarray(a["codes"], np.int64), np.asarray(a["embedding"], np.float32))

    def problem(self, f: VoicePrompt | None) -> str | None:
        if f is None:
            return "no features"
        c, e = f.codes, f.embedding
        if c.ndim != 2 or c.shape[1] != self.num_codebooks or len(c) == 0:
            return f"prompt codes have shape {c.shape}"
        if (c < 0).any() or (c >= self.codebook_size).any():
            return "prompt codes out of range"
        if e.shape != (self.speaker_dim,):
            return f"speaker embedding has shape {e.shape}"
        if not np.isfinite(e).all():
            return "features are not finite (NaN or infinity)"
        return None


@dataclass
class Voice:
    name: str
    transcript: str  # "" for a voice made without one (cross_lingual only)
    features: VoicePrompt
    warnings: list[str] = field(default_factory=list)


@dataclass
class SegmentResult:
    """One segment's speech and how it was made (what the worker reports per segment)."""

    audio: np.ndarray
    sample_rate: int
    codes: np.ndarray  # (n, 16) generated frames
    timings: dict[str, float]
    backends: dict[str, str]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> np.ndarray:  # one per 80 ms frame, as CosyVoice3 counts its speech tokens
        return self.codes[:, 0]


@dataclass
class Job:
    """One text segment of a request: its inputs and the request's state (rng, callbacks)."""

    text: str
    voice: Voice
    language: str
    mode: str
    rng: np.random.Generator
    overrides: dict[str, Any]
    index: int
    total: int
    on_progress: Progress | None
    should_stop: Callable[[], bool] | None

    def report(self, stage: str, info: dict) -> None:
        if self.on_progress:
            self.on_progress(stage, {**info, "segment": self.index + 1, "segments": self.total})
