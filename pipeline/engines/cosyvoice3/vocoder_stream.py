"""Streaming HiFT in O(n): the same samples as upstream's re-run on all mel so far, each computed once.

Upstream (spec §5.4, §6.2) re-runs ``hift.inference`` on the whole mel cache at every streaming call and emits
the samples it had not emitted: with ``finalize=False`` the last 8 frames' audio waits for look-ahead (3 for
the f0 predictor, 4 for conv_pre, 1 held back by the iSTFT trim). CosyVoice3's HiFT is causal apart from those
look-aheads, so :class:`HiFTStream` carries what a re-run would recompute:

- f0 per frame, final once its 3 look-ahead frames exist (windowed with the f0 convs' 8-frame left context);
- the running float64 phase cumsum (continued, so the sums are bit-identical to one cumsum);
- the absolute sample index into the fixed source-noise table;
- for the decoder network and the (i)STFT, a window of :func:`decoder_context` mel frames before the first
  sample to emit: every sample after it depends on nothing older, so running the decoder on the window
  gives the re-run's samples. The window costs a bounded re-computation per call instead of upstream's O(n).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.engines.cosyvoice3.vocoder import HiFT
from pipeline.shared.errors import InputError

_F0_LEFT = 8  # 4 causal k=3 convs after conv0: 2 frames of left context each


def decoder_context(params: dict[str, Any]) -> int:
    """Mel frames of left context the decoder network + (i)STFT need for exact samples (upper bound).

    Summed along the longest causal path: each stage's upsampling conv, then the source branch's down-sampling
    conv and ResBlock, then the stage's widest ResBlock (3 dilations × two convs), conv_post, and the STFT
    window at both ends; expressed in frames of each stage's rate and rounded up, plus 2 frames of margin.
    """
    rates = [int(r) for r in params.get("upsample_rates", (8, 5, 3))]
    kernels = [int(k) for k in params.get("upsample_kernel_sizes", (16, 11, 7))]
    res_k = [int(k) for k in params.get("resblock_kernel_sizes", (3, 7, 11))]
    res_d = [int(d) for d in params.get("resblock_dilations", (1, 3, 5))]
    src_k = [int(k) for k in params.get("source_resblock_kernel_sizes", (7, 7, 11))]
    n_fft, hop = int(params["n_fft"]), int(params["hop_len"])

    def resblock(k: int) -> int:
        return sum((k - 1) * d + (k - 1) for d in res_d)

    frames = 0.0
    rate = 1
    for i, (u, k) in enumerate(zip(rates, kernels, strict=True)):
        rate *= u
        src_rate = rate  # the source branch is brought to this stage's rate
        stage = (k - 1) + max(resblock(max(res_k)), 0)
        branch = resblock(src_k[i]) + 1
        frames += (stage + branch) / src_rate
    frames += 6 / rate  # conv_post (k=7)
    frames += 2 * n_fft / (rate * hop)  # STFT of the source and the iSTFT overlap
    return int(np.ceil(frames)) + 2


class HiFTStream:
    """One request's vocoder state: ``push(mel, finalize)`` returns the samples that became final."""

    def __init__(self, hift: HiFT, *, noise: np.ndarray | None = None, context: int | None = None) -> None:
        self.hift = hift
        self.noise = noise
        self.context = decoder_context(hift.params) if context is None else int(context)
        self.mel = np.zeros((0, 0), np.float32)
        self.f0 = np.zeros(0, np.float32)
        self.phase = np.zeros((0, hift.n_harmonics))
        self.emitted = 0  # frames whose audio was returned
        self.done = False
        self.samples = 0

    def push(self, mel: np.ndarray, *, finalize: bool = False) -> np.ndarray:
        """Append mel frames (M, n) and return the new audio: up to frame total − 8, or to the end when
        ``finalize`` (after which the stream is closed)."""
        if self.done:
            raise InputError("this vocoder stream is finalized")
        h = self.hift
        m = np.asarray(mel, np.float32)
        if m.ndim != 2:
            raise InputError(f"mel must be (80, T), got shape {m.shape}")
        self.mel = m.copy() if self.mel.size == 0 else np.concatenate([self.mel, m], axis=1)
        total = self.mel.shape[1]
        la = h.f0_look_ahead
        hold = la + h.conv_pre_look_right + 1
        f0_end = total if finalize else max(0, total - la)
        end = total if finalize else max(0, total - hold)
        if end <= self.emitted:
            if finalize:
                self.done = True
            return np.zeros(0, np.float32)
        self._extend_f0(f0_end, finalize)
        ws = max(0, self.emitted - self.context)
        src_end = f0_end
        source = h.source(self.f0[ws:src_end], self.noise, phase=self.phase[ws:src_end], start_frame=ws)
        audio = h.decode(self.mel[:, ws:src_end], source, finalize=finalize)
        spf = h.samples_per_frame
        out = audio[(self.emitted - ws) * spf : (end - ws) * spf]
        if out.shape[0] != (end - self.emitted) * spf:
            raise InputError(f"vocoder stream: expected {(end - self.emitted) * spf} samples, got {out.shape[0]}")
        self.emitted = end
        self.samples += out.shape[0]
        if finalize:
            self.done = True
        return out

    def _extend_f0(self, f0_end: int, finalize: bool) -> None:
        h = self.hift
        have = self.f0.shape[0]
        if f0_end <= have:
            return
        lo = max(0, have - _F0_LEFT)
        hi = f0_end if finalize else f0_end + h.f0_look_ahead
        f0 = h.f0(self.mel[:, lo:hi], finalize=finalize).astype(np.float32)[have - lo :]
        phase0 = self.phase[-1] if have else None
        self.phase = np.concatenate([self.phase, h.phase_cumsum(f0, phase0)])
        self.f0 = np.concatenate([self.f0, f0])
