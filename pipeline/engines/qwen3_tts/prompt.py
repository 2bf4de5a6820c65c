"""Qwen3-TTS voice prompt at run time (spec §3, §4): prompt audio → prompt codes and speaker embedding.

Torch-free: ONNX Runtime runs ``q3_prompt_encoder.onnx`` (speech tokenizer encoder + split RVQ) and
``q3_speaker_encoder.onnx`` (ECAPA-TDNN); the speaker log-mel is numpy (:mod:`.speaker_mel`). Audio at another
rate is resampled to 24 kHz the way upstream's ``librosa.resample`` does it (soxr ``soxr_hq``, length fixed to
``ceil(n · 24000 / sr)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.errors import BackendError, BundleError, InputError
from pipeline.shared.onnx import ort_session

from .speaker_mel import speaker_log_mel

PROMPT_RATE = 24000


def prompt_audio_24k(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float32 at 24 kHz: channels (last axis) averaged, resampled with soxr_hq when the rate differs."""
    y = np.asarray(wav, dtype=np.float32)
    if y.ndim == 2:
        y = y.mean(axis=-1, dtype=np.float32)
    if y.ndim != 1:
        raise InputError(f"prompt audio must be 1-D (or samples × channels), got shape {np.shape(wav)}")
    if y.size == 0:
        raise InputError("prompt audio is empty")
    if not np.isfinite(y).all():
        raise InputError("prompt audio has non-finite samples")
    sr = int(sample_rate)
    if sr <= 0:
        raise InputError(f"bad sample rate {sample_rate}")
    if sr == PROMPT_RATE:
        return y
    import soxr

    out = soxr.resample(y, sr, PROMPT_RATE, quality="soxr_hq").astype(np.float32, copy=False)
    n = int(math.ceil(y.size * PROMPT_RATE / sr))  # librosa.resample's fix_length
    if out.size >= n:
        return np.ascontiguousarray(out[:n])
    return np.pad(out, (0, n - out.size))


class PromptEncoder:
    """Prompt codes and speaker embedding of one prompt clip.

    ``files``: ``{"prompt_encoder": path, "speaker_encoder": path}``; ``dims``: the converter's ``dims``
    (``samples_per_frame``, ``num_codebooks``, ``speaker_dim``, ``mel``, ``min_mel_frames``).
    """

    def __init__(self, files: Mapping[str, Path | str], dims: Mapping[str, Any], n_threads: int | None = None) -> None:
        try:
            self.samples_per_frame = int(dims["samples_per_frame"])
            self.num_codebooks = int(dims["num_codebooks"])
            self.speaker_dim = int(dims["speaker_dim"])
            mel = dict(dims["mel"])
            self.min_mel_frames = int(dims.get("min_mel_frames", 1))
            enc_path, spk_path = Path(files["prompt_encoder"]), Path(files["speaker_encoder"])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"Qwen3-TTS prompt section of the bundle manifest is incomplete ({e!r})") from e
        self.mel_args = {"sample_rate": int(mel["sample_rate"]), "n_fft": int(mel["n_fft"]),
                         "hop": int(mel["hop"]), "n_mels": int(mel["n_mels"]),
                         "fmin": float(mel["fmin"]), "fmax": float(mel["fmax"])}
        self._enc = ort_session(enc_path, n_threads, "Qwen3-TTS prompt encoder", arena=False)
        self._spk = ort_session(spk_path, n_threads, "Qwen3-TTS speaker encoder", arena=False)

    def codes(self, wav24k: np.ndarray) -> np.ndarray:
        """(T12, 16) int64 prompt codes, T12 = ceil(len / 1920) (``ref_code``)."""
        y = self._check(wav24k)
        try:
            codes = self._enc.run(["codes"], {"wav": y[None]})[0]
        except Exception as e:  # ORT raises its own exception types
            raise BackendError(f"ONNX Runtime failed in the prompt encoder: {e}") from e
        t12 = -(-y.size // self.samples_per_frame)
        if codes.shape != (t12, self.num_codebooks):
            raise BackendError(f"prompt encoder returned codes {codes.shape}, expected ({t12}, {self.num_codebooks})")
        return codes.astype(np.int64, copy=False)

    def speaker_mel(self, wav24k: np.ndarray) -> np.ndarray:
        """(T, 128) float32 log-mel the speaker encoder reads, T = len // 256."""
        y = self._check(wav24k)
        need = self.min_mel_frames * self.mel_args["hop"]
        if y.size < need:
            raise InputError(f"prompt audio is too short: {y.size / PROMPT_RATE:.3f} s, "
                             f"need at least {need / PROMPT_RATE:.3f} s")
        return speaker_log_mel(y, **self.mel_args)

    def speaker_embedding(self, wav24k: np.ndarray) -> np.ndarray:
        """(D,) float32 x-vector (``ref_spk_embedding``), D = talker hidden size."""
        mel = self.speaker_mel(wav24k)
        try:
            emb = self._spk.run(["embedding"], {"mel": mel[None]})[0]
        except Exception as e:  # ORT raises its own exception types
            raise BackendError(f"ONNX Runtime failed in the speaker encoder: {e}") from e
        if emb.shape != (self.speaker_dim,):
            raise BackendError(f"speaker encoder returned {emb.shape}, expected ({self.speaker_dim},)")
        return emb.astype(np.float32, copy=False)

    def encode(self, wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """Any-rate prompt audio → (codes (T12, 16) int64, speaker embedding (D,) float32)."""
        y = prompt_audio_24k(wav, sample_rate)
        return self.codes(y), self.speaker_embedding(y)

    @staticmethod
    def _check(wav24k: np.ndarray) -> np.ndarray:
        y = np.ascontiguousarray(wav24k, dtype=np.float32)
        if y.ndim != 1 or y.size == 0:
            raise InputError(f"prompt audio must be non-empty mono 1-D samples, got shape {y.shape}")
        if not np.isfinite(y).all():
            raise InputError("prompt audio has non-finite samples")
        return y
