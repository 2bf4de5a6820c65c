"""Prompt-audio features in numpy (upstream computes them with torch/torchaudio).

- :func:`flow_prompt_mel`: the flow's prompt mel, Matcha-TTS ``mel_spectrogram`` as CosyVoice3's
  ``feat_extractor`` calls it (spec §2.3).
- :func:`align_prompt`: the 2:1 token/mel truncation of ``frontend_zero_shot`` (spec §2.4).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipeline.shared.errors import InputError


@lru_cache(maxsize=4)
def _mel_basis(sample_rate: int, n_fft: int, num_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    from librosa.filters import mel

    # librosa's defaults: Slaney mel scale and Slaney area normalisation, float32.
    return mel(sr=sample_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax).astype(np.float64)


@lru_cache(maxsize=4)
def _window(win_size: int, n_fft: int) -> np.ndarray:
    """``torch.hann_window(win_size)`` (periodic), zero-padded to n_fft on both sides as torch.stft does."""
    n = np.arange(win_size, dtype=np.float32)
    w = (_f32(0.5) - _f32(0.5) * np.cos(n * _f32(2.0 * np.pi / win_size))).astype(np.float32)
    left = (n_fft - win_size) // 2
    return np.pad(w, (left, n_fft - win_size - left)).astype(np.float64)


def _f32(v: float) -> np.float32:
    return np.float32(v)


def flow_prompt_mel(
    wav24k: np.ndarray,
    *,
    sample_rate: int = 24000,
    n_fft: int = 1920,
    num_mels: int = 80,
    hop_size: int = 480,
    win_size: int = 1920,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """Log-mel of a mono waveform at ``sample_rate``: (frames, num_mels) float32, frames = len // hop_size.

    Reflect-pad (n_fft − hop)/2 on both sides, periodic Hann STFT without centring, magnitude
    sqrt(re² + im² + 1e-9), librosa Slaney mel filters, natural log of max(x, 1e-5).
    """
    y = np.asarray(wav24k, np.float32)
    if y.ndim != 1:
        raise InputError(f"prompt audio must be mono 1-D samples, got shape {y.shape}")
    if win_size > n_fft:
        raise InputError(f"win_size {win_size} is larger than n_fft {n_fft}")
    pad = (n_fft - hop_size) // 2
    if y.size <= pad or y.size + 2 * pad < n_fft:
        need = max(pad + 1, n_fft - 2 * pad)
        raise InputError(f"prompt audio is too short: {y.size} samples, need at least {need}")
    if not np.isfinite(y).all():
        raise InputError("prompt audio has non-finite samples")
    y = np.pad(y, (pad, pad), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop_size].astype(np.float64)
    spec = np.fft.rfft(frames * _window(win_size, n_fft), n=n_fft, axis=1)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    mel = mag @ _mel_basis(sample_rate, n_fft, num_mels, fmin, fmax).T
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)


def align_prompt(tokens: np.ndarray, mel: np.ndarray, ratio: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Cut prompt tokens and mel to P and ratio·P rows, P = min(len(mel) // ratio, len(tokens))."""
    p = min(len(mel) // ratio, len(tokens))
    return tokens[:p], mel[: ratio * p]
