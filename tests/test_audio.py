"""pipeline.shared.audio: loading, torchaudio-exact resampling, trimming and the prompt refusals."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.shared.audio import (
    MAX_PROMPT_BYTES,
    load_audio,
    prepare_prompt,
    resample,
    sinc_resample_kernel,
    trim_silence,
)
from pipeline.shared.errors import InputError

PROMPTS = Path(__file__).parent / "fixtures" / "prompts"
ZERO_SHOT = PROMPTS / "zero_shot_prompt.wav"  # 24 kHz float32, 3.48 s
CROSS_LINGUAL = PROMPTS / "cross_lingual_prompt.wav"  # 22.05 kHz PCM16, 13.75 s


def torch_resample(x: np.ndarray, orig: int, new: int, width_factor: int = 6, rolloff: float = 0.99):
    """torchaudio 2.3.1 ``_get_sinc_resample_kernel`` + ``_apply_sinc_resample_kernel`` (sinc_interp_hann),
    written from the spec with torch ops; returns (output, kernel (n, taps))."""
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    base = min(o, n) * rolloff
    width = math.ceil(width_factor * o / base)
    idx = torch.arange(-width, width + o, dtype=torch.float64)[None, None] / o
    t = torch.arange(0, -n, -1)[:, None, None] / n + idx  # int64 / int → float32, then promoted
    t *= base
    t = t.clamp_(-width_factor, width_factor)
    window = torch.cos(t * math.pi / width_factor / 2) ** 2
    t *= math.pi
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * (base / o)
    kernels = kernels.to(torch.float32)
    wav = f.pad(torch.from_numpy(x)[None], (width, width + o))
    out = f.conv1d(wav[:, None], kernels, stride=o).transpose(1, 2).reshape(1, -1)
    target = int(torch.ceil(torch.as_tensor(n * len(x) / o)))
    return out[0, :target].numpy(), kernels[:, 0].numpy()


def _test_signal(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(round(sr * seconds)) / sr
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t) + 0.05 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def _speechlike(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonic tone with a syllable-rate envelope that never drops near silence."""
    t = np.arange(round(sr * seconds)) / sr
    env = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    x = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 450, 900), 1))
    x += 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * env * x / 2).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * sr / len(x))


# --- resampling ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sr_in,sr_out", [(44100, 16000), (48000, 24000), (16000, 24000), (22050, 16000),
                                          (24000, 16000), (22050, 24000)])
def test_resample_matches_torch_reference(sr_in, sr_out):
    x = _test_signal(sr_in, 1.3)
    ref, ref_kernel = torch_resample(x, sr_in, sr_out)
    kernel = sinc_resample_kernel(sr_in, sr_out)[0]
    np.testing.assert_allclose(kernel, ref_kernel, rtol=0, atol=1e-7)
    y = resample(x, sr_in, sr_out)
    assert y.dtype == np.float32 and y.shape == ref.shape == (math.ceil(len(x) * sr_out / sr_in),)
    err = float(np.abs(y - ref).max())
    print(f"resample {sr_in}->{sr_out}: max |numpy - torch| = {err:.3g}")
    assert err < 1e-6


def test_resample_is_a_sane_resampler():
    """Independent of the torch reference: agrees with soxr on band-limited content, keeps the pitch."""
    soxr = pytest.importorskip("soxr")
    for sr_in, sr_out in [(44100, 16000), (22050, 24000), (48000, 24000)]:
        t = np.arange(sr_in) / sr_in
        x = (0.4 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 5000 * t)).astype(np.float32)
        y = resample(x, sr_in, sr_out)
        s = soxr.resample(x, sr_in, sr_out, "VHQ")
        assert len(y) == len(s)
        edge = sr_out // 50  # filters differ in their start-up and ending
        diff = float(np.abs(y[edge:-edge] - s[edge:-edge]).max())
        print(f"resample {sr_in}->{sr_out}: max |numpy - soxr| = {diff:.3g}")
        assert diff < 2e-3
        assert abs(_peak_hz(y, sr_out) - 1000) < 2
    # Content above the new Nyquist is removed instead of aliasing back.
    t = np.arange(48000) / 48000
    y = resample(np.sin(2 * np.pi * 15000 * t).astype(np.float32), 48000, 16000)
    assert np.abs(y[400:-400]).max() < 1e-3


def test_resample_identity_and_refusals():
    x = _test_signal(16000, 0.1)
    y = resample(x, 16000, 16000)
    assert np.array_equal(x, y) and y is not x
    with pytest.raises(InputError, match="44101 Hz to 16000 Hz"):
        resample(x, 44101, 16000)
    with pytest.raises(InputError, match="mono"):
        resample(np.zeros((2, 100), np.float32), 48000, 16000)


# --- trimming --------------------------------------------------------------------------------------------


def test_trim_silence_matches_librosa():
    librosa = pytest.importorskip("librosa")
    sr = 16000
    x = np.concatenate([np.zeros(7000), 1e-5 * np.ones(3000), _speechlike(sr, 1.0), np.zeros(9000)])
    x = x.astype(np.float32)
    y, (a, b) = trim_silence(x, sr, top_db=60, frame_length=440, hop_length=220)
    ly, (la, lb) = librosa.effects.trim(x, top_db=60, frame_length=440, hop_length=220)
    assert (a, b) == (la, lb) and np.array_equal(y, ly)
    assert 9000 < a < 10000 and 26000 <= b < 27000
    ym, (ma, mb) = trim_silence(x, sr, top_db=60, frame_length=440, hop_length=220, margin_s=0.1)
    assert (ma, mb) == (a - 1600, b + 1600) and len(ym) == mb - ma
    assert trim_silence(np.zeros(0, np.float32), sr)[1] == (0, 0)


# --- loading ---------------------------------------------------------------------------------------------


def test_load_formats(tmp_path):
    sr = 22050
    x = _speechlike(sr, 1.0)
    pcm = tmp_path / "a.wav"
    sf.write(pcm, x, sr, subtype="PCM_16")
    y, r = load_audio(pcm)
    assert r == sr and y.dtype == np.float32 and np.abs(y - x).max() <= 1 / 32768 + 1e-7

    flt = tmp_path / "f.wav"
    sf.write(flt, np.clip(x * 3, -1.5, 1.5), sr, subtype="FLOAT")  # float WAV may exceed ±1; kept as is
    y, _ = load_audio(flt)
    assert np.array_equal(y, np.clip(x * 3, -1.5, 1.5))

    flac = tmp_path / "a.flac"
    sf.write(flac, x, sr, subtype="PCM_24")
    y, r = load_audio(flac)
    assert r == sr and np.abs(y - x).max() < 1e-6

    for fmt, subtype, ext in [("OGG", "VORBIS", "ogg"), ("MP3", "MPEG_LAYER_III", "mp3")]:
        if fmt not in sf.available_formats():
            continue
        p = tmp_path / f"a.{ext}"
        sf.write(p, x, sr, format=fmt, subtype=subtype)
        y, r = load_audio(p)
        assert r == sr and abs(len(y) - len(x)) < 0.1 * sr
        assert abs(_peak_hz(y, sr) - _peak_hz(x, sr)) < 3

    data, r = load_audio(pcm.read_bytes())  # uploads arrive as bytes
    assert r == sr and np.array_equal(data, load_audio(pcm)[0])


def test_stereo_downmix(tmp_path):
    sr = 16000
    left, right = _speechlike(sr, 0.5, 1), 0.5 * _speechlike(sr, 0.5, 2)
    p = tmp_path / "st.wav"
    sf.write(p, np.stack([left, right], axis=1), sr, subtype="FLOAT")
    y, r = load_audio(p)
    assert r == sr and y.ndim == 1
    np.testing.assert_allclose(y, (left + right) / 2, rtol=0, atol=1e-7)


def test_real_prompts_load():
    x, sr = load_audio(ZERO_SHOT)
    assert sr == 24000 and sf.info(ZERO_SHOT).subtype == "FLOAT" and abs(len(x) / sr - 3.48) < 0.01
    x, sr = load_audio(CROSS_LINGUAL)
    assert sr == 22050 and abs(len(x) / sr - 13.75) < 0.01
    total = sum(p.stat().st_size for p in PROMPTS.glob("*.wav"))
    assert total < 1_000_000  # fixtures stay small


def test_prepare_real_prompt():
    p = prepare_prompt(ZERO_SHOT)
    # 0.30 s lead-in and 0.29 s tail of silence, each cut down to the 0.2 s margin.
    assert p.original_sr == 24000
    assert abs(p.duration - 3.29) < 0.02 and abs(p.trimmed_s - 0.19) < 0.02
    assert p.wav16k.dtype == p.wav24k.dtype == np.float32
    assert len(p.wav16k) == round(p.duration * 16000) and len(p.wav24k) == round(p.duration * 24000)
    x, sr = load_audio(ZERO_SHOT)
    _, (a, b) = trim_silence(x, sr, margin_s=0.2)
    np.testing.assert_array_equal(p.wav16k, resample(x[a:b], sr, 16000))  # resampled from the file's rate
    np.testing.assert_array_equal(p.wav24k, x[a:b])
    longer = prepare_prompt(CROSS_LINGUAL, max_s=15.0)
    assert longer.original_sr == 22050 and 13.5 < longer.duration < 13.75


# --- refusals --------------------------------------------------------------------------------------------


def _refusal(src, **kw) -> str:
    with pytest.raises(InputError) as e:
        prepare_prompt(src, **kw)
    return str(e.value)


def test_refuses_non_audio(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("these are my notes, not audio\n" * 20)
    msg = _refusal(p)
    assert "is not an audio file" in msg and "WAV" in msg and "FLAC" in msg and "OGG" in msg
    assert "is not an audio file" in _refusal(b"RIFF....WAVEjunk")
    assert "does not exist" in _refusal(tmp_path / "missing.wav")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    assert "no audio samples" in _refusal(empty, hard_max_s=30)


def test_refuses_low_sample_rate(tmp_path):
    p = tmp_path / "phone.wav"
    sf.write(p, _speechlike(8000, 5.0), 8000, subtype="PCM_16")
    assert _refusal(p) == "prompt is 8000 Hz; record at 16 kHz or more"


def test_refuses_silence(tmp_path):
    zeros = tmp_path / "zeros.wav"
    sf.write(zeros, np.zeros(16000 * 5, np.float32), 16000)
    assert "prompt is silent" in _refusal(zeros)
    hiss = tmp_path / "hiss.wav"
    sf.write(hiss, 2e-4 * np.random.default_rng(0).standard_normal(16000 * 5), 16000, subtype="FLOAT")
    msg = _refusal(hiss)
    assert msg.startswith("prompt is silent (its loudest part is -7") and "microphone" in msg


def test_refuses_too_short(tmp_path):
    p = tmp_path / "short.wav"
    sf.write(p, _speechlike(16000, 1.8), 16000, subtype="PCM_16")
    assert _refusal(p) == "prompt is 1.8 s of speech after trimming silence; record 3–10 s"
    padded = tmp_path / "short_padded.wav"  # 4.8 s file, 1.8 s of it speech
    sil = np.zeros(24000, np.float32)
    sf.write(padded, np.concatenate([sil, _speechlike(16000, 1.8), sil]), 16000, subtype="PCM_16")
    assert _refusal(padded).startswith("prompt is 2.2 s of speech after trimming silence")  # + 2 × 0.2 s margin


def test_refuses_too_long():
    assert _refusal(CROSS_LINGUAL) == "prompt is 13.7 s; cut it to 3–10 s"
    assert _refusal(CROSS_LINGUAL, max_s=13.72).startswith("prompt is 13.7")  # not "13.7 s; cut it to 3–13.7"


def test_refuses_over_hard_limit(tmp_path):
    p = tmp_path / "long.wav"
    sf.write(p, np.tile(_speechlike(16000, 1.0), 31), 16000, subtype="PCM_16")
    assert _refusal(p) == "prompt is 31.0 s long, the limit is 30 s; cut it to 3–10 s of speech"


def test_refuses_huge_file(tmp_path):
    p = tmp_path / "huge.wav"
    with open(p, "wb") as f:  # sparse: refused on its size before anything is read
        f.truncate(MAX_PROMPT_BYTES + 1)
    assert _refusal(p) == "prompt file is 50.0 MB, the limit is 50 MB; upload a short clip (3–10 s of speech)"
    assert _refusal(ZERO_SHOT.read_bytes(), max_bytes=100_000).startswith("prompt file is 0.3 MB, the limit")


def test_refuses_bad_samples_and_odd_rates(tmp_path):
    x = _speechlike(16000, 4.0)
    x[100] = np.nan
    p = tmp_path / "nan.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    assert "NaN" in _refusal(p)
    odd = tmp_path / "odd.wav"
    sf.write(odd, _speechlike(44101, 4.0), 44101, subtype="PCM_16")
    assert "cannot resample 44101 Hz" in _refusal(odd)
