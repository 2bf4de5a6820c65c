"""Prompt audio: loading, upstream-exact resampling, silence trimming and the checks a voice prompt must pass.

Upstream (``cosyvoice/utils/file_utils.py: load_wav``) reads the file with soundfile, averages the channels,
refuses rates below 16 kHz and resamples with ``torchaudio.transforms.Resample`` defaults. :func:`resample`
reproduces that kernel in numpy (spec §2.0). Trimming and the length limits are this port's additions.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pipeline.shared.errors import InputError

MIN_SAMPLE_RATE = 16000
TOKENIZER_SR = 16000
FLOW_SR = 24000
MAX_PROMPT_BYTES = 50 * 1024 * 1024
SILENCE_DBFS = -60.0  # loudest 27.5 ms frame below this: nothing to clone

AudioSource = str | os.PathLike | bytes | bytearray

# Rate pairs whose reduced ratio o:n makes the polyphase kernel larger than this are refused (e.g. 44101 Hz).
_MAX_KERNEL_TAPS = 8192
_MAX_KERNEL_SIZE = 4_000_000


def accepted_formats() -> str:
    """The common formats this machine's libsndfile reads, for messages."""
    import soundfile as sf

    have = sf.available_formats()
    names = [label for key, label in (("WAV", "WAV"), ("FLAC", "FLAC"), ("OGG", "OGG/Vorbis"), ("MP3", "MP3"),
                                       ("AIFF", "AIFF")) if key in have]
    return ", ".join(names)


def _describe(src: AudioSource) -> str:
    # the file's own name only: a path may be a server's temp folder, which means nothing to the person
    return "the uploaded data" if isinstance(src, bytes | bytearray) else os.path.basename(os.fspath(src))


def _open(src: AudioSource):
    return io.BytesIO(bytes(src)) if isinstance(src, bytes | bytearray) else os.fspath(src)


def _unreadable(src: AudioSource, err: Exception) -> InputError:
    # libsndfile's own words ("Format not recognised", "Error in WAV file") are not a message for a person
    size = len(src) if isinstance(src, bytes | bytearray) else os.path.getsize(src)
    if size == 0:
        return InputError(f"{_describe(src)} is empty (0 bytes); upload or record 3–10 s of speech")
    return InputError(
        f"{_describe(src)} is not an audio file that can be read (damaged, or a format this machine does not "
        f"read); use one of: {accepted_formats()}"
    )


def audio_info(src: AudioSource) -> tuple[int, int, int]:
    """(sample rate, channels, frames) from the header, without decoding."""
    import soundfile as sf

    if not isinstance(src, bytes | bytearray) and not os.path.isfile(src):
        raise InputError(f"prompt file {_describe(src)} does not exist")
    try:
        info = sf.info(_open(src))
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types for a bad file
        raise _unreadable(src, e) from e
    return int(info.samplerate), int(info.channels), int(info.frames)


def load_audio(src: AudioSource) -> tuple[np.ndarray, int]:
    """Decode an audio file (path or bytes) to float32 mono in [-1, 1] and its sample rate.

    Channels are averaged, as upstream does. Integer PCM is scaled by soundfile (1/32768 for 16 bit).
    """
    import soundfile as sf

    if not isinstance(src, bytes | bytearray) and not os.path.isfile(src):
        raise InputError(f"prompt file {_describe(src)} does not exist")
    try:
        data, sr = sf.read(_open(src), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise _unreadable(src, e) from e
    if data.shape[0] == 0:
        raise InputError(f"{_describe(src)} contains no audio samples; record 3–10 s of speech")
    x = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(x, dtype=np.float32), int(sr)


@lru_cache(maxsize=16)
def sinc_resample_kernel(
    sr_in: int, sr_out: int, lowpass_filter_width: int = 6, rolloff: float = 0.99
) -> tuple[np.ndarray, int, int, int]:
    """torchaudio's ``sinc_interp_hann`` kernel: (kernel (n, 2·width + o) float32, width, o, n)."""
    g = math.gcd(sr_in, sr_out)
    o, n = sr_in // g, sr_out // g
    base = min(o, n) * rolloff
    width = math.ceil(lowpass_filter_width * o / base)
    taps = 2 * width + o
    if taps > _MAX_KERNEL_TAPS or taps * n > _MAX_KERNEL_SIZE:
        raise InputError(
            f"cannot resample {sr_in} Hz to {sr_out} Hz (the rate ratio {o}:{n} is too irregular); "
            "save the prompt at 16000, 22050, 24000, 32000, 44100 or 48000 Hz"
        )
    idx = np.arange(-width, width + o, dtype=np.float64)[None, :] / o
    # torchaudio divides an int64 arange by n in float32, then adds the float64 idx.
    phase = np.arange(0, -n, -1).astype(np.float32)[:, None] / np.float32(n)
    t = (phase.astype(np.float64) + idx) * base
    t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
    window = np.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel = kernel * (window * (base / o))
    kernel = kernel.astype(np.float32)
    kernel.setflags(write=False)
    return kernel, width, o, n


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """``torchaudio.transforms.Resample(sr_in, sr_out)(x)`` for 1-D float audio, in numpy (float64 inside)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise InputError(f"resample expects mono 1-D audio, got shape {x.shape}")
    if sr_in <= 0 or sr_out <= 0:
        raise InputError(f"sample rates must be positive, got {sr_in} → {sr_out}")
    if sr_in == sr_out:
        return x.copy()
    kernel, width, o, n = sinc_resample_kernel(int(sr_in), int(sr_out))
    k64 = kernel.astype(np.float64).T  # (taps, n)
    taps = k64.shape[0]
    xp = np.pad(x.astype(np.float64), (width, width + o))
    frames = np.lib.stride_tricks.sliding_window_view(xp, taps)[::o]  # conv1d(stride=o) input windows
    out = np.empty((frames.shape[0], n), np.float64)
    step = max(1, (1 << 21) // taps)  # bound the temporary copy matmul makes of the strided view
    for s in range(0, frames.shape[0], step):
        out[s : s + step] = frames[s : s + step] @ k64
    target = math.ceil(n * len(x) / o)
    return out.reshape(-1)[:target].astype(np.float32)


def _frame_params(sr: int) -> tuple[int, int]:
    # Upstream's old webui trimmed with frame 440 / hop 220 at 16 kHz; keep those durations at any rate.
    frame = max(2, round(sr * 0.0275))
    return frame, frame // 2


def frame_rms(x: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """RMS per frame, librosa ``feature.rms(center=True)`` framing (zero padding of frame_length // 2)."""
    pad = frame_length // 2
    xp = np.pad(np.asarray(x, np.float64), (pad, pad))
    if len(xp) < frame_length:
        xp = np.pad(xp, (0, frame_length - len(xp)))
    frames = np.lib.stride_tricks.sliding_window_view(xp, frame_length)[::hop_length]
    return np.sqrt(np.mean(frames * frames, axis=1))


def trim_silence(
    x: np.ndarray, sr: int, top_db: float = 60.0, *, margin_s: float = 0.0, frame_length: int | None = None,
    hop_length: int | None = None,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Cut leading and trailing parts quieter than ``top_db`` below the loudest frame.

    With ``margin_s=0`` this is ``librosa.effects.trim`` (returns the trimmed audio and its (start, end)
    sample indices); a margin keeps up to that much of the original audio on each side of the speech.
    Default frames are 27.5 ms with 50% hop, the durations upstream's former web UI trimmed with.
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 1:
        raise InputError(f"trim_silence expects mono 1-D audio, got shape {x.shape}")
    if len(x) == 0:
        return x, (0, 0)
    fl, hl = _frame_params(sr)
    fl, hl = frame_length or fl, hop_length or hl
    power = frame_rms(x, fl, hl) ** 2
    db = 10 * np.log10(np.maximum(power, 1e-10)) - 10 * np.log10(max(float(power.max()), 1e-10))
    loud = np.flatnonzero(db > -top_db)
    if len(loud) == 0:
        return x[:0], (0, 0)
    margin = round(margin_s * sr)
    start = max(0, int(loud[0]) * hl - margin)
    end = min(len(x), (int(loud[-1]) + 1) * hl + margin)
    return x[start:end], (start, end)


def peak_dbfs(x: np.ndarray, sr: int) -> float:
    """Level of the loudest 27.5 ms frame in dB relative to full scale."""
    fl, hl = _frame_params(sr)
    return 20 * math.log10(max(float(frame_rms(x, fl, hl).max()), 1e-10))


@dataclass
class PreparedPrompt:
    """Checked voice prompt: trimmed mono audio at the tokenizer rate (16 kHz) and the flow rate (24 kHz)."""

    wav16k: np.ndarray
    wav24k: np.ndarray
    duration: float  # seconds of audio kept after trimming
    original_sr: int
    trimmed_s: float  # seconds of silence cut off (both ends)
    trimmed: np.ndarray | None = None  # the trimmed audio at original_sr (an engine that resamples its own way)


def _fmt_range(min_s: float, max_s: float) -> str:
    return f"{min_s:g}–{max_s:g} s"


def _secs(v: float, limit: float) -> str:
    """``v`` to 0.1 s, or 0.01 s when 0.1 s would print the limit it breaks (10.04 s is not "10.0 s")."""
    s = f"{v:.1f}"
    return f"{v:.2f}" if s == f"{limit:.1f}" else s


def prepare_prompt(
    src: AudioSource,
    *,
    min_s: float = 3.0,
    max_s: float = 10.0,
    hard_max_s: float = 30.0,
    max_bytes: int = MAX_PROMPT_BYTES,
    top_db: float = 60.0,
    margin_s: float = 0.2,
) -> PreparedPrompt:
    """Load, check, trim and resample a voice prompt. Each refusal is an InputError saying what to do.

    ``hard_max_s`` is checked on the file header before decoding (upstream's speech tokenizer takes
    at most 30 s); ``min_s`` / ``max_s`` apply to the audio kept after trimming leading and trailing
    silence, which keeps ``margin_s`` of pause on each side (upstream's own 3.5 s example prompt holds 2.9 s
    of speech between 0.3 s pauses).
    """
    want = _fmt_range(min_s, max_s)
    size = len(src) if isinstance(src, bytes | bytearray) else (
        os.path.getsize(src) if os.path.isfile(src) else None)
    if size is not None and size > max_bytes:
        raise InputError(
            f"prompt file is {size / 2**20:.1f} MB, the limit is {max_bytes / 2**20:g} MB; "
            f"upload a short clip ({want} of speech)"
        )
    sr, _, frames = audio_info(src)
    if sr < MIN_SAMPLE_RATE:
        raise InputError(f"prompt is {sr} Hz; record at {MIN_SAMPLE_RATE // 1000} kHz or more")
    if frames / sr > hard_max_s:
        raise InputError(
            f"prompt is {_secs(frames / sr, hard_max_s)} s long, the limit is {hard_max_s:g} s; "
            f"cut it to {want} of speech"
        )
    x, sr = load_audio(src)
    if not np.isfinite(x).all():
        raise InputError("prompt contains invalid samples (NaN or infinity); export it again as 16-bit WAV")
    level = peak_dbfs(x, sr)
    if level < SILENCE_DBFS:
        raise InputError(
            f"prompt is silent (its loudest part is {level:.0f} dBFS); "
            f"record {want} of speech closer to the microphone"
        )
    y, _ = trim_silence(x, sr, top_db=top_db, margin_s=margin_s)
    duration = len(y) / sr
    if duration < min_s:
        raise InputError(
            f"prompt is {_secs(duration, min_s)} s of speech after trimming silence; record {want}"
        )
    if duration > max_s:
        raise InputError(f"prompt is {_secs(duration, max_s)} s; cut it to {want}")
    return PreparedPrompt(
        wav16k=resample(y, sr, TOKENIZER_SR),
        wav24k=resample(y, sr, FLOW_SR),
        duration=duration,
        original_sr=sr,
        trimmed_s=(len(x) - len(y)) / sr,
        trimmed=y,
    )

