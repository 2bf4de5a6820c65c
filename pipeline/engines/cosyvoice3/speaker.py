"""Voice-prompt features without torch: speech tokens (whisper log-mel → speech_tokenizer_v3.onnx),
speaker embedding (Kaldi fbank → campplus.onnx) and the flow's prompt mel (spec §2.1–§2.4).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines.cosyvoice3.engine import PromptFeatures
from pipeline.shared.audio import FLOW_SR, TOKENIZER_SR, PreparedPrompt
from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import BackendError, BundleError, InputError
from pipeline.shared.onnx import ort_session

WHISPER_N_FFT = 400
WHISPER_HOP = 160
TOKENIZER_MAX_S = 30.0  # upstream asserts this before running the tokenizer
MIN_PROMPT_TOKENS = 75  # below this, cloning gets unreliable (peers refuse; we warn)
_KALDI_EPS = float(np.finfo(np.float32).eps)


def _check_wav(wav: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(wav, np.float32)
    if x.ndim != 1:
        raise InputError(f"{what} expects mono 1-D audio, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError(f"{what}: audio has non-finite samples")
    return x


@lru_cache(maxsize=4)
def _whisper_filters(n_mels: int) -> np.ndarray:
    from librosa.filters import mel

    # openai-whisper's mel_filters.npz was made by this call (librosa defaults: Slaney scale and norm, float32).
    return mel(sr=TOKENIZER_SR, n_fft=WHISPER_N_FFT, n_mels=n_mels).astype(np.float64)


def _hann(n: int, periodic: bool) -> np.ndarray:
    m = n if periodic else n - 1
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / m)


def whisper_log_mel(wav16k: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """``whisper.log_mel_spectrogram(audio, n_mels)`` (openai-whisper 20231117): (n_mels, N // 160) float32.

    Periodic Hann 400, hop 160, centred STFT with reflect padding, power with the last frame dropped,
    Slaney mel filters, log10 clamped at 1e-10, floored at (global max − 8), then (x + 4) / 4.
    """
    x = _check_wav(wav16k, "whisper_log_mel")
    pad = WHISPER_N_FFT // 2
    if len(x) <= pad:
        raise InputError(f"audio is too short for the speech tokenizer: {len(x)} samples, need more than {pad}")
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(xp, WHISPER_N_FFT)[::WHISPER_HOP][:-1]
    spec = np.fft.rfft(frames * _hann(WHISPER_N_FFT, periodic=True), axis=1)
    power = spec.real**2 + spec.imag**2
    mel = _whisper_filters(n_mels) @ power.T
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).astype(np.float32)


def _mel_scale(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)


@lru_cache(maxsize=4)
def kaldi_mel_banks(num_bins: int, n_fft: int = 512, sample_rate: float = 16000.0, low_freq: float = 20.0,
                    high_freq: float = 0.0) -> np.ndarray:
    """Kaldi / torchaudio ``get_mel_banks`` (no VTLN): (num_bins, n_fft // 2) triangles on the mel scale."""
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    lo, hi = _mel_scale(low_freq), _mel_scale(high_freq)
    delta = (hi - lo) / (num_bins + 1)
    b = np.arange(num_bins, dtype=np.float64)[:, None]
    left, center, right = lo + b * delta, lo + (b + 1.0) * delta, lo + (b + 2.0) * delta
    mel = _mel_scale(sample_rate / n_fft * np.arange(n_fft // 2))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    return np.maximum(0.0, np.minimum(up, down))


def kaldi_fbank(wav16k: np.ndarray, num_mel_bins: int = 80, *, sample_rate: int = TOKENIZER_SR) -> np.ndarray:
    """``torchaudio.compliance.kaldi.fbank(x, num_mel_bins, dither=0, sample_frequency)``: (T, bins) float32.

    25 ms / 10 ms frames with snip_edges (T = 1 + (N − 400) // 160 at 16 kHz), DC removal, pre-emphasis
    0.97, povey window, 512-point power spectrum, Kaldi mel banks 20 Hz–Nyquist, log floored at float32 eps.
    Computed in float64; upstream's float32 torch differs from exact arithmetic by up to ~1e-3 in the
    quietest bins, and this stays within that.
    """
    x = _check_wav(wav16k, "kaldi_fbank")
    if len(x) < int(sample_rate * 0.025):
        raise InputError(f"audio is too short for the speaker encoder: {len(x)} samples")
    win = int(sample_rate * 0.025)
    shift = int(sample_rate * 0.010)
    n_fft = 1 << (win - 1).bit_length()
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), win)[::shift]
    frames = frames - frames.mean(axis=1, keepdims=True)
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)  # replicate-padded x[i-1]
    frames = (frames - 0.97 * prev) * _hann(win, periodic=False) ** 0.85  # povey window
    spec = np.fft.rfft(frames, n=n_fft, axis=1)[:, : n_fft // 2]  # the Nyquist bin has a zero weight
    power = spec.real**2 + spec.imag**2
    mel = power @ kaldi_mel_banks(num_mel_bins, n_fft, float(sample_rate)).T
    return np.log(np.maximum(mel, _KALDI_EPS)).astype(np.float32)


def campplus_input(wav16k: np.ndarray, num_mel_bins: int = 80) -> np.ndarray:
    """CAMPPlus features: Kaldi fbank minus its mean over time (T, bins) float32."""
    feat = kaldi_fbank(wav16k, num_mel_bins).astype(np.float64)
    return (feat - feat.mean(axis=0, keepdims=True)).astype(np.float32)


def _frontend_path(bundle: Bundle, key: str, what: str) -> Path:
    name = (bundle.manifest.get("frontend") or {}).get(key)
    if not name or not bundle.has(name):
        upstream = {"speech_tokenizer": "speech_tokenizer_v3.onnx", "campplus": "campplus.onnx"}[key]
        raise BundleError(
            f"bundle {bundle.root} has no {what} ({upstream}); it is needed to clone a voice from audio. "
            f"Put {upstream} in the checkpoint folder and convert again"
        )
    return bundle.path(name)


def _static_dim(shape: list, i: int) -> int | None:
    return shape[i] if len(shape) > i and isinstance(shape[i], int) else None


class SpeechTokenizer:
    """``speech_tokenizer_v3.onnx``: 16 kHz audio → speech tokens at 25 Hz (about one per 4 mel frames)."""

    def __init__(self, path: Path | str, *, n_threads: int | None = None, vocab_size: int = 6561,
                 n_mels: int = 128) -> None:
        self.path = Path(path)
        self.vocab_size = int(vocab_size)
        self.n_mels = int(n_mels)
        self.session = ort_session(self.path, n_threads, "speech tokenizer")
        ins = self.session.get_inputs()
        if len(ins) < 2 or len(ins[0].shape) != 3 or _static_dim(ins[0].shape, 1) not in (None, self.n_mels):
            raise BundleError(
                f"{self.path.name} does not look like the speech tokenizer: inputs "
                f"{[(i.name, i.shape) for i in ins]}, expected feats (1, {self.n_mels}, T) and lengths (1,)"
            )
        self._feats, self._lengths = ins[0].name, ins[1].name
        self._out = self.session.get_outputs()[0].name

    @classmethod
    def from_bundle(cls, bundle: Bundle, *, n_threads: int | None = None) -> SpeechTokenizer:
        return cls(_frontend_path(bundle, "speech_tokenizer", "speech tokenizer"), n_threads=n_threads,
                   vocab_size=int(bundle.constants.get("speech_token_size", 6561)))

    def __call__(self, wav16k: np.ndarray) -> np.ndarray:
        """Speech tokens (int64) of 16 kHz mono audio; refuses more than 30 s as upstream does."""
        x = _check_wav(wav16k, "speech tokenizer")
        if len(x) / TOKENIZER_SR > TOKENIZER_MAX_S:
            raise InputError(
                f"prompt is {len(x) / TOKENIZER_SR:.1f} s; the speech tokenizer takes at most "
                f"{TOKENIZER_MAX_S:g} s, cut it to 3–10 s"
            )
        return self.tokens_from_mel(whisper_log_mel(x, self.n_mels))

    def tokens_from_mel(self, feats: np.ndarray) -> np.ndarray:
        """Run the model on a (n_mels, T) whisper log-mel; returns the flattened ids as int64."""
        feats = np.ascontiguousarray(feats, np.float32)[None]
        try:
            out = self.session.run([self._out], {self._feats: feats,
                                                 self._lengths: np.array([feats.shape[2]], np.int32)})[0]
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"speech tokenizer failed on {feats.shape[2]} frames: {e}") from e
        tokens = np.asarray(out).reshape(-1).astype(np.int64)
        bad = tokens[(tokens < 0) | (tokens >= self.vocab_size)]
        if bad.size:
            raise BackendError(
                f"{self.path.name} returned token {int(bad[0])} outside [0, {self.vocab_size}); "
                "it is not a matching speech tokenizer"
            )
        return tokens


class SpeakerEncoder:
    """``campplus.onnx``: 16 kHz audio → speaker embedding (192,), unnormalised as upstream passes it on."""

    def __init__(self, path: Path | str, *, n_threads: int | None = None, num_mel_bins: int = 80) -> None:
        self.path = Path(path)
        self.num_mel_bins = int(num_mel_bins)
        self.session = ort_session(self.path, n_threads, "speaker encoder")
        ins = self.session.get_inputs()
        if len(ins) != 1 or len(ins[0].shape) != 3 or _static_dim(ins[0].shape, 2) not in (None, num_mel_bins):
            raise BundleError(
                f"{self.path.name} does not look like campplus: inputs {[(i.name, i.shape) for i in ins]}, "
                f"expected one input (1, T, {num_mel_bins})"
            )
        self._in = ins[0].name
        self._out = self.session.get_outputs()[0].name

    @classmethod
    def from_bundle(cls, bundle: Bundle, *, n_threads: int | None = None) -> SpeakerEncoder:
        return cls(_frontend_path(bundle, "campplus", "speaker encoder"), n_threads=n_threads)

    def __call__(self, wav16k: np.ndarray) -> np.ndarray:
        feats = campplus_input(wav16k, self.num_mel_bins)
        try:
            out = self.session.run([self._out], {self._in: feats[None]})[0]
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"speaker encoder failed on {feats.shape[0]} frames: {e}") from e
        emb = np.asarray(out, np.float32).reshape(-1)
        if not np.isfinite(emb).all():
            raise BackendError(f"{self.path.name} returned a non-finite speaker embedding")
        return emb


@dataclass
class PromptModels:
    """The two ONNX models the voice-prompt frontend runs."""

    tokenizer: SpeechTokenizer
    speaker: SpeakerEncoder

    @classmethod
    def from_bundle(cls, bundle: Bundle, *, n_threads: int | None = None) -> PromptModels:
        return cls(SpeechTokenizer.from_bundle(bundle, n_threads=n_threads),
                   SpeakerEncoder.from_bundle(bundle, n_threads=n_threads))


def extract_prompt_features(
    prepared: PreparedPrompt, models: Bundle | PromptModels, *, bundle: Bundle | None = None
) -> tuple[PromptFeatures, dict[str, Any]]:
    """Speech tokens, flow prompt mel and speaker embedding of a prepared prompt, cut to P tokens / 2P frames.

    ``models`` is a bundle (its frontend models are loaded) or already-loaded :class:`PromptModels`; the
    flow's mel parameters and token/mel ratio come from ``bundle`` (or ``models`` when it is one) and
    default to CosyVoice3's. ``info`` holds counts, timings and ``warning`` (a string, or None).
    """
    from pipeline.engines.cosyvoice3.features import align_prompt, flow_prompt_mel

    if isinstance(models, Bundle):
        bundle = bundle or models
        models = PromptModels.from_bundle(models)
    ratio = 2
    mel_params: dict[str, Any] = {}
    if bundle is not None:
        ratio = int(bundle.constants.get("token_mel_ratio", 2))
        mel_params = dict((bundle.manifest.get("flow") or {}).get("prompt_mel") or {})
        if int(mel_params.get("sample_rate", FLOW_SR)) != FLOW_SR:
            raise BundleError(f"bundle {bundle.root}: the flow's prompt mel is at {mel_params['sample_rate']} Hz, "
                              f"this frontend prepares {FLOW_SR} Hz audio")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    tokens = models.tokenizer(prepared.wav16k)
    t1 = time.perf_counter()
    embedding = models.speaker(prepared.wav16k)
    t2 = time.perf_counter()
    mel = flow_prompt_mel(prepared.wav24k, **mel_params)
    t3 = time.perf_counter()
    timings.update(speech_tokenizer=t1 - t0, speaker_encoder=t2 - t1, prompt_mel=t3 - t2)
    tok, mel = align_prompt(tokens, mel, ratio=ratio)
    p = len(tok)
    seconds = len(mel) * int(mel_params.get("hop_size", 480)) / FLOW_SR
    warning = None
    if p < MIN_PROMPT_TOKENS:
        warning = (
            f"the prompt gives only {p} speech tokens ({seconds:.1f} s); {MIN_PROMPT_TOKENS} or more "
            "(a prompt of 3 s or more) clone the voice more reliably"
        )
    info = {
        "prompt_tokens": p,
        "tokens_raw": int(len(tokens)),
        "mel_frames": int(len(mel)),
        "duration": prepared.duration,
        "warning": warning,
        "timings": timings,
    }
    return PromptFeatures(speech_tokens=tok, mel=mel, embedding=embedding), info
