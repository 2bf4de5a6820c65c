"""The speaker encoder's log-mel in numpy (spec §4.1, upstream ``mel_spectrogram`` as
``extract_speaker_embedding`` calls it).

Reflect-pad (n_fft − hop)/2 on both sides, periodic Hann STFT without centring, magnitude
sqrt(re² + im² + 1e-9), librosa Slaney mel filters (fmin 0, fmax 12000), natural log of max(x, 1e-5).
The STFT runs in float64 (upstream's float32 torch.stft agrees to float32 rounding).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipeline.shared.errors import InputError

SAMPLE_RATE = 24000
N_FFT = 1024
HOP = 256
WIN = 1024
N_MELS = 128
FMIN = 0.0
FMAX = 12000.0
MAG_EPS = 1e-9
LOG_FLOOR = 1e-5


@lru_cache(maxsize=4)
def mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """``librosa.filters.mel`` (Slaney scale and area norm, float32 as upstream uses it), as float64."""
    from librosa.filters import mel

    return mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax).astype(np.float64)


@lru_cache(maxsize=4)
def hann_periodic(n: int) -> np.ndarray:
    """``torch.hann_window(n)`` (periodic) computed in float32, returned as float64."""
    k = np.arange(n, dtype=np.float32)
    w = np.float32(0.5) - np.float32(0.5) * np.cos(k * np.float32(2.0 * np.pi / n))
    return w.astype(np.float32).astype(np.float64)


def speaker_log_mel(
    wav24k: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    hop: int = HOP,
    n_mels: int = N_MELS,
    fmin: float = FMIN,
    fmax: float = FMAX,
) -> np.ndarray:
    """Mono float waveform at 24 kHz → log-mel (T, n_mels) float32, T = len // hop."""
    y = np.asarray(wav24k, np.float32)
    if y.ndim != 1:
        raise InputError(f"prompt audio must be mono 1-D samples, got shape {y.shape}")
    pad = (n_fft - hop) // 2
    if y.size <= pad:
        raise InputError(f"prompt audio is too short: {y.size} samples, need at least {pad + 1}")
    if not np.isfinite(y).all():
        raise InputError("prompt audio has non-finite samples")
    y = np.pad(y, (pad, pad), mode="reflect").astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop]
    spec = np.fft.rfft(frames * hann_periodic(n_fft), n=n_fft, axis=1)
    mag = np.sqrt(spec.real**2 + spec.imag**2 + MAG_EPS)
    mel = mag @ mel_basis(sample_rate, n_fft, n_mels, float(fmin), float(fmax)).T
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)
