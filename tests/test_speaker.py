"""pipeline.engines.cosyvoice3.speaker: whisper log-mel and Kaldi fbank against torch references,
the ONNX runners on the
test stand-in models (pipeline.engines.cosyvoice3.testmodels), and prompt feature extraction from real prompts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.cosyvoice3.features import flow_prompt_mel
from pipeline.engines.cosyvoice3.speaker import (
    MIN_PROMPT_TOKENS,
    PromptModels,
    SpeakerEncoder,
    SpeechTokenizer,
    campplus_input,
    extract_prompt_features,
    kaldi_fbank,
    whisper_log_mel,
)
from pipeline.engines.cosyvoice3.testmodels import TEST_MODEL_DOC, make_test_campplus, make_test_speech_tokenizer
from pipeline.shared.audio import prepare_prompt
from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import BundleError, InputError

torch = pytest.importorskip("torch")
F = torch.nn.functional

PROMPTS = Path(__file__).parent / "fixtures" / "prompts"
ZERO_SHOT = PROMPTS / "zero_shot_prompt.wav"
CROSS_LINGUAL = PROMPTS / "cross_lingual_prompt.wav"


def torch_whisper_log_mel(x: np.ndarray, n_mels: int = 128, dtype=torch.float32) -> np.ndarray:
    """openai-whisper ``log_mel_spectrogram`` (20231117) with librosa's filters, as its mel_filters.npz holds."""
    import librosa

    a = torch.from_numpy(x).to(dtype)
    stft = torch.stft(a, 400, 160, window=torch.hann_window(400, dtype=dtype), return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    filters = torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)).to(dtype)
    log_spec = torch.clamp(filters @ magnitudes, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).numpy()


def torch_kaldi_fbank(x: np.ndarray, num_mel_bins: int = 80, sf: float = 16000.0, dtype=None) -> np.ndarray:
    """torchaudio.compliance.kaldi.fbank(dither=0, defaults otherwise) written from the spec. ``dtype=None``
    runs it as torchaudio does on float32 input (mel banks in the default float32); float64 runs it all
    in double precision."""
    dt = dtype or torch.float32
    w = torch.from_numpy(x).to(dt)
    shift, size, padded = int(sf * 0.010), int(sf * 0.025), 512
    n = 1 + (len(w) - size) // shift
    frames = w.as_strided((n, size), (shift, 1))
    frames = frames - torch.mean(frames, dim=1).unsqueeze(1)
    offset = F.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
    frames = frames - 0.97 * offset[:, :-1]
    frames = frames * torch.hann_window(size, periodic=False, dtype=dt).pow(0.85).unsqueeze(0)
    frames = F.pad(frames.unsqueeze(0), (0, padded - size), mode="constant", value=0).squeeze(0)
    spectrum = torch.fft.rfft(frames).abs().pow(2.0)

    def mel_scale(f):
        return 1127.0 * (1.0 + f / 700.0).log()

    lo, hi = 1127.0 * math.log(1.0 + 20.0 / 700.0), 1127.0 * math.log(1.0 + sf / 2 / 700.0)
    delta = (hi - lo) / (num_mel_bins + 1)
    b = torch.arange(num_mel_bins, dtype=dtype).unsqueeze(1)
    left, center, right = lo + b * delta, lo + (b + 1.0) * delta, lo + (b + 2.0) * delta
    mel = mel_scale(sf / padded * torch.arange(padded / 2, dtype=dtype)).unsqueeze(0)
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    banks = torch.max(torch.zeros(1, dtype=up.dtype), torch.min(up, down)).to(dt)
    banks = F.pad(banks, (0, 1), mode="constant", value=0)
    energies = torch.mm(spectrum, banks.T)
    return torch.max(energies, torch.tensor(torch.finfo(torch.float).eps, dtype=dt)).log().numpy()


@pytest.fixture(scope="module")
def wav16k() -> np.ndarray:
    return prepare_prompt(ZERO_SHOT).wav16k


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> PromptModels:
    d = tmp_path_factory.mktemp("frontend")
    return PromptModels(SpeechTokenizer(make_test_speech_tokenizer(d / "st.onnx", seed=1), n_threads=1),
                        SpeakerEncoder(make_test_campplus(d / "cp.onnx", seed=2), n_threads=1))


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


# --- features vs torch -----------------------------------------------------------------------------------


def test_whisper_log_mel_matches_torch(wav16k):
    for x in (wav16k, _noise(16000 * 2 + 77)):
        m = whisper_log_mel(x)
        assert m.shape == (128, len(x) // 160) and m.dtype == np.float32
        exact = float(np.abs(m - torch_whisper_log_mel(x, dtype=torch.float64)).max())
        upstream = float(np.abs(m - torch_whisper_log_mel(x)).max())
        print(f"whisper log-mel: max err vs torch float64 {exact:.3g}, vs torch float32 {upstream:.3g}")
        assert exact < 1e-6
        assert upstream < 1e-4
    assert whisper_log_mel(wav16k, n_mels=80).shape == (80, len(wav16k) // 160)
    with pytest.raises(InputError, match="too short"):
        whisper_log_mel(np.zeros(200, np.float32))


def test_kaldi_fbank_matches_torch(wav16k):
    for x in (wav16k, _noise(16000 + 333, 1)):
        f = kaldi_fbank(x)
        assert f.shape == (1 + (len(x) - 400) // 160, 80) and f.dtype == np.float32
        exact = np.abs(f - torch_kaldi_fbank(x, dtype=torch.float64))
        upstream = np.abs(f - torch_kaldi_fbank(x))
        # torchaudio itself in float32, against the same algorithm in float64: its own rounding.
        own = np.abs(torch_kaldi_fbank(x) - torch_kaldi_fbank(x, dtype=torch.float64))
        print(f"kaldi fbank: max err vs torch float64 {exact.max():.3g}; vs torchaudio-style float32 "
              f"{upstream.max():.3g} (mean {upstream.mean():.2g}), which is {own.max():.3g} from float64")
        assert exact.max() < 1e-5
        assert upstream.max() <= 1.5 * own.max() + 1e-5 and upstream.mean() < 2e-5


def test_kaldi_fbank_matches_kaldi_native_fbank(wav16k):
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 80
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(16000.0, wav16k.tolist())
    fb.input_finished()
    ref = np.array([fb.get_frame(i) for i in range(fb.num_frames_ready)], np.float32)
    f = kaldi_fbank(wav16k)
    assert f.shape == ref.shape
    err = np.abs(f - ref)
    print(f"kaldi fbank: max err vs kaldi-native-fbank {err.max():.3g} (mean {err.mean():.2g})")
    assert err.max() < 2e-3 and err.mean() < 2e-5


def test_campplus_input_is_mean_normalised(wav16k):
    c = campplus_input(wav16k)
    f = kaldi_fbank(wav16k)
    np.testing.assert_allclose(c, f - f.mean(axis=0), rtol=0, atol=1e-5)
    assert np.abs(c.mean(axis=0)).max() < 1e-5


# --- ONNX runners on the test models ---------------------------------------------------------------------


def test_test_models_are_deterministic_and_signed(tmp_path):
    import onnx

    a = make_test_speech_tokenizer(tmp_path / "a.onnx", seed=3)
    b = make_test_speech_tokenizer(tmp_path / "b.onnx", seed=3)
    c = make_test_speech_tokenizer(tmp_path / "c.onnx", seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert TEST_MODEL_DOC in onnx.load(str(a)).doc_string
    feats = np.random.default_rng(0).uniform(-1, 1.5, (128, 203)).astype(np.float32)
    ta, tc = SpeechTokenizer(a).tokens_from_mel(feats), SpeechTokenizer(c).tokens_from_mel(feats)
    assert ta.shape == (203 // 4,) and ta.dtype == np.int64
    assert ta.min() >= 0 and ta.max() < 6561 and len(set(ta.tolist())) > 20
    assert not np.array_equal(ta, tc)
    # Group g depends only on frames 4g..4g+3.
    changed = feats.copy()
    changed[:, 8:12] += 1.0
    diff = np.flatnonzero(SpeechTokenizer(a).tokens_from_mel(changed) != ta)
    assert set(diff.tolist()) <= {2}


def test_runners(models, wav16k):
    tokens = models.tokenizer(wav16k)
    assert tokens.shape == ((len(wav16k) // 160) // 4,)
    emb = models.speaker(wav16k)
    assert emb.shape == (192,) and emb.dtype == np.float32
    assert not np.allclose(emb, models.speaker(0.5 * _noise(len(wav16k), 7)), atol=1e-3)


def test_tokenizer_refuses_over_30s(models):
    with pytest.raises(InputError, match=r"prompt is 30\.1 s; the speech tokenizer takes at most 30 s"):
        models.tokenizer(np.zeros(int(16000 * 30.1), np.float32))


def test_wrong_model_files(tmp_path):
    cp = make_test_campplus(tmp_path / "cp.onnx")
    st = make_test_speech_tokenizer(tmp_path / "st.onnx")
    with pytest.raises(BundleError, match="does not look like the speech tokenizer"):
        SpeechTokenizer(cp)
    with pytest.raises(BundleError, match="does not look like campplus"):
        SpeakerEncoder(st)
    with pytest.raises(BundleError, match="does not exist"):
        SpeakerEncoder(tmp_path / "nope.onnx")


def _fake_bundle(root: Path, *, tokenizer: bool = True, campplus: bool = True) -> Bundle:
    """Just the manifest parts the prompt frontend reads (``Bundle.load`` needs a full converted bundle)."""
    files, frontend = {}, {"tokenizer": None, "campplus": None, "speech_tokenizer": None}
    if tokenizer:
        make_test_speech_tokenizer(root / "speech_tokenizer_v3.onnx", seed=1)
        files["speech_tokenizer_v3.onnx"] = {}
        frontend["speech_tokenizer"] = "speech_tokenizer_v3.onnx"
    if campplus:
        make_test_campplus(root / "campplus.onnx", seed=2)
        files["campplus.onnx"] = {}
        frontend["campplus"] = "campplus.onnx"
    prompt_mel = {"sample_rate": 24000, "n_fft": 1920, "num_mels": 80, "hop_size": 480, "win_size": 1920,
                  "fmin": 0.0, "fmax": None}
    manifest = {"constants": {"speech_token_size": 6561, "token_mel_ratio": 2, "sample_rate": 24000},
                "flow": {"prompt_mel": prompt_mel}, "frontend": frontend, "files": files}
    return Bundle(root, manifest)


def test_from_bundle_names_missing_model(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(BundleError, match=r"no speech tokenizer \(speech_tokenizer_v3\.onnx\)"):
        SpeechTokenizer.from_bundle(_fake_bundle(tmp_path / "a", tokenizer=False))
    with pytest.raises(BundleError, match=r"no speaker encoder \(campplus\.onnx\)"):
        PromptModels.from_bundle(_fake_bundle(tmp_path / "b", campplus=False))


# --- prompt features -------------------------------------------------------------------------------------


def test_extract_real_prompt(models):
    prepared = prepare_prompt(ZERO_SHOT)
    pf, info = extract_prompt_features(prepared, models)
    n_tok = (len(prepared.wav16k) // 160) // 4
    n_mel = len(prepared.wav24k) // 480
    p = min(n_tok, n_mel // 2)
    assert p >= MIN_PROMPT_TOKENS and info["warning"] is None
    assert pf.speech_tokens.shape == (p,) and pf.mel.shape == (2 * p, 80) and pf.embedding.shape == (192,)
    assert info["prompt_tokens"] == p and info["tokens_raw"] == n_tok and info["mel_frames"] == 2 * p
    np.testing.assert_array_equal(pf.speech_tokens, models.tokenizer(prepared.wav16k)[:p])
    np.testing.assert_array_equal(pf.mel, flow_prompt_mel(prepared.wav24k)[: 2 * p])
    np.testing.assert_array_equal(pf.embedding, models.speaker(prepared.wav16k))


def test_extract_cross_lingual_prompt_from_bundle(tmp_path):
    bundle = _fake_bundle(tmp_path)
    prepared = prepare_prompt(CROSS_LINGUAL, max_s=15.0)
    assert prepared.original_sr == 22050
    pf, info = extract_prompt_features(prepared, bundle)
    assert info["prompt_tokens"] == len(pf.speech_tokens) > 300 and pf.mel.shape[0] == 2 * len(pf.speech_tokens)
    assert set(info["timings"]) == {"speech_tokenizer", "speaker_encoder", "prompt_mel"}


def test_short_prompt_warns(models):
    prepared = prepare_prompt(ZERO_SHOT, min_s=1.0)
    prepared.wav16k, prepared.wav24k = prepared.wav16k[: 16000 * 2], prepared.wav24k[: 24000 * 2]
    pf, info = extract_prompt_features(prepared, models)
    assert len(pf.speech_tokens) == 50
    assert info["warning"] == ("the prompt gives only 50 speech tokens (2.0 s); 75 or more (a prompt of 3 s or "
                               "more) clone the voice more reliably")

