"""Qwen3-TTS speech tokenizer decoder at run time: ONNX Runtime + numpy, no torch (spec §9.6-9.7, §10).

``CodeDecoder.decode`` is upstream's ``Qwen3TTSTokenizerV2Model.decode`` for a batch of one: the output length
counts the frames whose code 0 is > -1, codes are clamped to >= 0, and the frames are decoded in chunks of 300
with 25 frames of left context whose samples are dropped (``chunked_decode``). ``voice_clone_wav`` is the output
assembly of ``generate_voice_clone`` (ICL: decode [prompt; generated] and cut the prompt part; x-vector: no cut).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.errors import BackendError, InputError
from pipeline.shared.onnx import ort_session

DEFAULT_DIMS: dict[str, Any] = {
    "num_quantizers": 16,
    "codebook_size": 2048,
    "samples_per_frame": 1920,
    "sample_rate": 24000,
    "chunk_frames": 300,
    "left_context_frames": 25,
}


def chunk_plan(n_frames: int, chunk: int = 300, context: int = 25) -> list[tuple[int, int, int]]:
    """Upstream ``chunked_decode``'s windows as (first frame fed, first frame kept, end) per call."""
    plan, start = [], 0
    while start < n_frames:
        end = min(start + chunk, n_frames)
        ctx = context if start - context > 0 else start  # upstream's condition, strict '>'
        plan.append((start - ctx, start, end))
        start = end
    return plan


def check_codes(codes: Any, num_quantizers: int, codebook_size: int) -> np.ndarray:
    """Integer codes (T, n_q) below ``codebook_size`` as int64 (negative values are upstream's padding)."""
    c = np.asarray(codes)
    if c.ndim != 2 or c.shape[1] != num_quantizers or not np.issubdtype(c.dtype, np.integer):
        raise InputError(f"decoder codes must be integers of shape (T, {num_quantizers}), got {c.dtype} {c.shape}")
    if c.size and int(c.max()) >= codebook_size:
        raise InputError(f"decoder code {int(c.max())} is out of range (codebook size {codebook_size})")
    return c.astype(np.int64, copy=False)


class CodeDecoder:
    """``q3_decoder.onnx`` with upstream's chunking. ``dims``: the converter's ``dims`` dict.

    ``path`` may also be the streaming step ``q3_decoder_stream.onnx``: it is then called with zero states
    and ``pos0`` 0, which computes the same window (the empty cache slots are masked), so a bundle can ship
    that graph alone (measured max |diff| 5e-5 .. 2e-4 against the one-shot graph)."""

    def __init__(self, path: Path | str, dims: dict[str, Any] | None = None, n_threads: int | None = None) -> None:
        self.path = Path(path)
        d = {**DEFAULT_DIMS, **(dims or {})}
        self.num_quantizers = int(d["num_quantizers"])
        self.codebook_size = int(d["codebook_size"])
        self.samples_per_frame = int(d["samples_per_frame"])
        self.sample_rate = int(d["sample_rate"])
        self.chunk_frames = int(d["chunk_frames"])
        self.left_context_frames = int(d["left_context_frames"])
        self._sess = ort_session(self.path, n_threads)
        inputs = self._sess.get_inputs()
        self._zero_states = {i.name: np.zeros(i.shape, np.float32) for i in inputs[2:]}
        self._stream_graph = [i.name for i in inputs[:2]] == ["codes", "pos0"]

    def check_codes(self, codes: Any) -> np.ndarray:
        return check_codes(codes, self.num_quantizers, self.codebook_size)

    def run(self, codes: np.ndarray) -> np.ndarray:
        """One graph call, no chunking: codes (T, n_q) in [0, codebook_size) → (T·spf,) float32."""
        c = np.ascontiguousarray(codes.T[None], dtype=np.int64)
        feed: dict[str, np.ndarray] = {"codes": c}
        if self._stream_graph:
            feed.update(self._zero_states, pos0=np.zeros(1, np.int64))
        try:
            return self._sess.run(["wav"], feed)[0]
        except Exception as e:  # ORT raises its own exception types
            raise BackendError(f"decoder failed on {c.shape[2]} frames: {e}") from e

    def decode(self, codes: Any) -> np.ndarray:
        """codes (T, n_q) → waveform (n_valid·spf,) float32 in [-1, 1] (upstream ``decode``)."""
        c = self.check_codes(codes)
        n_valid = int(np.count_nonzero(c[:, 0] > -1))
        c = np.maximum(c, 0)
        parts = [self.run(c[lo:end])[(keep - lo) * self.samples_per_frame:]
                 for lo, keep, end in chunk_plan(len(c), self.chunk_frames, self.left_context_frames)]
        wav = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return wav[: n_valid * self.samples_per_frame].astype(np.float32, copy=False)


def icl_cut(n_prompt: int, n_generated: int, n_samples: int) -> int:
    """``int(T12 / (T12 + n) · len(wav))`` in Python float arithmetic (it can be T12·spf − 1)."""
    total = n_prompt + n_generated
    return int(n_prompt / total * n_samples) if total else 0


def voice_clone_wav(decoder: CodeDecoder, generated: Any, prompt_codes: Any | None = None) -> np.ndarray:
    """``generate_voice_clone``'s waveform: ICL (``prompt_codes`` given) decodes [prompt; generated] in one
    call and drops the first ``icl_cut`` samples; x-vector mode (None) decodes the generated frames only."""
    gen = np.asarray(generated)
    if gen.size == 0:
        gen = gen.reshape(0, decoder.num_quantizers)
    if prompt_codes is None:
        return decoder.decode(gen)
    prompt = np.asarray(prompt_codes)
    wav = decoder.decode(np.concatenate([prompt, gen], axis=0))
    return wav[icl_cut(len(prompt), len(gen), len(wav)):]
