"""Prompt features: numpy flow prompt mel vs upstream goldens and an independent torch reference."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.engines.cosyvoice3.features import align_prompt, flow_prompt_mel
from pipeline.shared.errors import InputError

MEL_TOL = 1e-4


def _matcha_mel_torch(y: np.ndarray, *, sample_rate=24000, n_fft=1920, num_mels=80, hop_size=480,
                      win_size=1920, fmin=0.0, fmax=None) -> np.ndarray:
    """Matcha-TTS ``mel_spectrogram`` (center=False) written with torch.stft; returns (frames, num_mels)."""
    import torch
    from librosa.filters import mel as librosa_mel

    basis = librosa_mel(sr=sample_rate, n_fft=n_fft, n_mels=num_mels, fmin=fmin, fmax=fmax)
    basis = torch.from_numpy(basis).float()
    t = torch.from_numpy(np.asarray(y, np.float32))[None]
    pad = int((n_fft - hop_size) / 2)
    t = torch.nn.functional.pad(t.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    spec = torch.stft(t, n_fft, hop_length=hop_size, win_length=win_size, window=torch.hann_window(win_size),
                      center=False, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    spec = torch.view_as_real(spec)
    spec = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
    spec = torch.log(torch.clamp(torch.matmul(basis, spec), min=1e-5))
    return spec[0].T.numpy()


def _err(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def test_prompt_mel_vs_goldens_and_torch(goldens):
    wav = goldens["in_prompt_wav"]
    ref = goldens["in_prompt_feat"][0]
    mel = flow_prompt_mel(wav)
    torch_mel = _matcha_mel_torch(wav)
    e_gold, e_torch, e_ref = _err(mel, ref), _err(mel, torch_mel), _err(torch_mel, ref)
    print(f"prompt mel max abs err: vs goldens {e_gold:.3g}, vs torch reference {e_torch:.3g} "
          f"(torch reference vs goldens {e_ref:.3g})")
    assert mel.dtype == np.float32 and mel.shape == (100, 80)
    assert e_ref <= 1e-6  # the reference really is upstream's computation
    assert e_gold <= MEL_TOL
    assert e_torch <= MEL_TOL


# torch's reflect pad needs more than (n_fft - hop) / 2 = 720 samples
@pytest.mark.parametrize("n", [721, 959, 960, 1441, 24000 + 17])
def test_prompt_mel_lengths_and_signals(n: int):
    rng = np.random.default_rng(n)
    t = np.arange(n) / 24000
    loud = (0.9 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    for wav in (loud, np.zeros(n, np.float32), (1e-4 * rng.standard_normal(n)).astype(np.float32)):
        mel = flow_prompt_mel(wav)
        assert mel.shape == (n // 480, 80)
        err = _err(mel, _matcha_mel_torch(wav))
        assert err <= MEL_TOL, (n, err)
    assert np.all(flow_prompt_mel(np.zeros(n, np.float32)) == np.float32(np.log(1e-5)))


def test_prompt_mel_other_parameters():
    """Keyword constants are honoured, including a window shorter than n_fft and an fmax."""
    rng = np.random.default_rng(0)
    wav = (0.3 * rng.standard_normal(16000)).astype(np.float32)
    kw = {"sample_rate": 16000, "n_fft": 1024, "num_mels": 64, "hop_size": 256, "win_size": 800, "fmin": 20.0,
          "fmax": 7000.0}
    mel = flow_prompt_mel(wav, **kw)
    assert mel.shape == (16000 // 256, 64)
    assert _err(mel, _matcha_mel_torch(wav, **kw)) <= MEL_TOL


def test_prompt_mel_rejects_bad_audio():
    with pytest.raises(InputError, match="too short"):
        flow_prompt_mel(np.zeros(720, np.float32))
    with pytest.raises(InputError, match="mono"):
        flow_prompt_mel(np.zeros((2, 4800), np.float32))
    bad = np.zeros(4800, np.float32)
    bad[3] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        flow_prompt_mel(bad)


@pytest.mark.parametrize(
    ("n_tok", "n_mel", "p"),
    [(50, 100, 50), (60, 101, 50), (40, 90, 40), (50, 99, 49), (0, 10, 0), (5, 1, 0)],
)
def test_align_prompt(n_tok: int, n_mel: int, p: int):
    tokens = np.arange(n_tok)
    mel = np.arange(n_mel * 80, dtype=np.float32).reshape(n_mel, 80)
    t, m = align_prompt(tokens, mel)
    assert np.array_equal(t, tokens[:p])
    assert np.array_equal(m, mel[: 2 * p])
