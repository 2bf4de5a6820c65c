"""Incremental decode of Qwen3-TTS frames as they are generated (spec §11; upstream has no streaming).

The decoder is causal: the samples of frame t depend only on frames <= t of the call they were decoded in.
Two schedules:

- ``left_context=None`` ("upstream"): every call covers upstream's current ``chunked_decode`` window
  (from its first context frame up to the newest frame). Each frame is therefore computed from exactly the
  same inputs as in ``CodeDecoder.decode`` of the whole sequence, so the stream equals the one-shot decode up
  to float32 reordering (different T gives different GEMM blocking; measured in tests/test_q3_decoder.py).
  Cost grows within each 300-frame chunk: a call decodes up to 325 frames.
- ``left_context=L`` (bounded, L >= 25): every call decodes the new frames plus the L frames before them.
  The cost per call is bounded, but frames are computed with less history than in the one-shot decode (the
  transformer alone sees 72 frames per layer, so only a context of num_layers·71 + conv reach would be exact);
  the difference is small but not zero, see the test for a measured figure.

ICL: the prompt codes are the stream's first frames and are never emitted, so the stream starts at sample
T12·spf. Upstream's one-shot cut ``int(T12/(T12+n)·len)`` is one sample earlier for ~5 % of (T12, n) pairs,
which a stream cannot know before n is final.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import InputError

from .decoder import CodeDecoder


class StreamingDecoder:
    """Feed frames with ``push``; each call returns the waveform of the frames not emitted yet."""

    def __init__(self, decoder: CodeDecoder, prompt_codes: Any | None = None,
                 left_context: int | None = None) -> None:
        if left_context is not None and left_context < decoder.left_context_frames:
            raise InputError(f"left_context must be >= {decoder.left_context_frames} frames")
        self.decoder = decoder
        self.left_context = left_context
        n_q = decoder.num_quantizers
        prompt = np.zeros((0, n_q), np.int64) if prompt_codes is None else np.asarray(prompt_codes)
        self._codes = [np.maximum(decoder._check(prompt), 0)] if len(prompt) else []
        self._n = len(prompt)
        self._done = self._n  # frames whose samples were emitted (the prompt never is)
        self.n_prompt = self._n

    @property
    def frames(self) -> int:
        return self._n

    def _window_start(self, first_new: int) -> int:
        """First frame fed to the call that emits frames from ``first_new`` on."""
        if self.left_context is not None:
            return max(0, first_new - self.left_context)
        chunk, ctx = self.decoder.chunk_frames, self.decoder.left_context_frames
        start = (first_new // chunk) * chunk
        return start - (ctx if start - ctx > 0 else start)

    def push(self, frames: Any) -> np.ndarray:
        """Append frames (k, n_q) and return the samples of every frame not emitted yet (k·spf float32)."""
        f = np.asarray(frames)
        if f.size == 0:
            return np.zeros(0, np.float32)
        f = self.decoder._check(f)
        if np.any(f[:, 0] < 0):
            raise InputError("streamed frames cannot hold padding (-1) codes")
        self._codes.append(f)
        self._n += len(f)
        codes = np.concatenate(self._codes)
        self._codes = [codes]
        spf = self.decoder.samples_per_frame
        out = []
        chunk = self.decoder.chunk_frames
        while self._done < self._n:
            # in upstream mode a call never crosses one of upstream's chunk boundaries
            end = self._n if self.left_context is not None else min(self._n, (self._done // chunk + 1) * chunk)
            lo = self._window_start(self._done)
            out.append(self.decoder.run(codes[lo:end])[(self._done - lo) * spf:])
            self._done = end
        return np.concatenate(out).astype(np.float32, copy=False)
