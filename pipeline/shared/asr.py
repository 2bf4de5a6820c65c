"""Automatic prompt transcription: a small ASR on ONNX Runtime through the ``onnx-asr`` package (no torch).

Two models, fetched by ``cosyvoice-rk download --asr`` into one folder (default ``models/asr``, env
``COSYVOICE_RK_ASR``), described by its ``asr.json`` (written last, so a folder without it is an unfinished
download):

- Russian: GigaAM v3 E2E CTC (``istupakov/gigaam-v3-onnx``, INT8): punctuation and capitals included;
- every other language: Whisper (``onnx-community/whisper-base``, FP32; 99 languages, detects the language).

The language is the caller's (a voice's / request's ``ru``, ``en``, …) or, for ``auto``/None, detected by
Whisper (the most likely of its language tokens, as Whisper itself does); Russian goes to GigaAM, anything else
to Whisper with that language. A language neither model covers is refused with the list of what is covered.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.errors import CosyVoiceRKError

FORMAT = "cosyvoice-rk-asr"
FORMAT_VERSION = 1
MANIFEST = "asr.json"
HOW_TO_GET = "./cv download --asr"
ASR_RATE = 16000


class AsrMissing(CosyVoiceRKError):
    """No (complete) speech recognition model where it was looked for; the message says how to get one."""


class AsrError(CosyVoiceRKError):
    """The ASR model is there but cannot do what was asked (a language it does not cover, unreadable audio)."""


def default_asr_dir() -> Path:
    return Path(os.environ.get("COSYVOICE_RK_ASR", "models/asr"))


@dataclass(frozen=True)
class AsrModel:
    name: str  # what the page and the log show
    kind: str  # "gigaam-v3-e2e-ctc" or "whisper" (onnx-asr's model type)
    folder: str  # under the ASR folder
    quantization: str | None
    languages: tuple[str, ...]  # ("*",): every language the model's vocabulary has


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None  # what was used: the caller's, or the detected one
    model: str
    detected: bool  # the language was detected, not given


def read_manifest(path: Path | str | None = None) -> tuple[Path, list[AsrModel]]:
    """The ASR folder and its models, without loading any (the web process uses this to answer at once)."""
    root = Path(path) if path is not None else default_asr_dir()
    m = root / MANIFEST
    if not m.is_file():
        if root.is_dir() and any(root.iterdir()):
            raise AsrMissing(f"the speech recognition model in {root} is incomplete ({MANIFEST} is missing): run "
                             f"{HOW_TO_GET} again, it resumes where it stopped; or type the transcript")
        raise AsrMissing(f"automatic transcription needs the speech recognition model (~500 MB), not found in "
                         f"{root}: get it with {HOW_TO_GET}; or type the transcript")
    try:
        data = json.loads(m.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or int(data.get("version", 0)) != FORMAT_VERSION:
            raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
        models = [AsrModel(d["name"], d["kind"], d["folder"], d.get("quantization"), tuple(d["languages"]))
                  for d in data["models"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AsrMissing(f"{m} cannot be read ({e}); get the model again with {HOW_TO_GET}") from None
    for md in models:
        if not (root / md.folder).is_dir():
            raise AsrMissing(f"the speech recognition model in {root} is incomplete ({md.folder} is missing): "
                             f"run {HOW_TO_GET} again, it resumes where it stopped; or type the transcript")
    return root, models


def _language(language: str | None) -> str | None:
    lang = (language or "").strip().lower()
    return None if lang in ("", "auto") else lang


class Transcriber:
    """Loaded ASR models (each on first use). ``transcribe`` is all other code needs."""

    def __init__(self, root: Path, models: list[AsrModel], n_threads: int | None = None) -> None:
        self.root = root
        self.models = models
        # as the engine's ONNX sessions: the CPUs this process may use (the worker is pinned on a board), at most 4
        self.n_threads = n_threads or min(4, len(os.sched_getaffinity(0)))
        self._loaded: dict[str, Any] = {}

    def _asr(self, md: AsrModel) -> Any:
        if md.name not in self._loaded:
            import onnx_asr
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = self.n_threads
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle between prompts
            try:
                self._loaded[md.name] = onnx_asr.load_model(md.kind, self.root / md.folder,
                                                            quantization=md.quantization, sess_options=so)
            except Exception as e:  # noqa: BLE001 - onnx-asr raises its own types, OSError and ORT's
                raise AsrMissing(f"the speech recognition model {md.name} in {self.root / md.folder} cannot be "
                                 f"loaded ({type(e).__name__}: {e}); get it again with {HOW_TO_GET}") from e
        return self._loaded[md.name]

    def _covering(self, language: str) -> AsrModel | None:
        named = [md for md in self.models if language in md.languages]
        if named:
            return named[0]
        for md in self.models:
            if "*" in md.languages and md.kind == "whisper" and f"<|{language}|>" in self._asr(md).asr._tokens:
                return md
        return None

    def _whisper(self) -> AsrModel | None:
        return next((md for md in self.models if md.kind == "whisper"), None)

    def detect_language(self, audio16: np.ndarray) -> str:
        """Whisper's language of 16 kHz mono audio: the most likely language token after <|startoftranscript|>."""
        md = self._whisper()
        if md is None:
            raise AsrError("the speech recognition model has no Whisper to detect the language; choose the "
                           "recording's language")
        asr = self._asr(md).asr
        # onnx-asr (pinned minor version) detects too, but over the whole vocabulary and without telling which
        # language it found; Whisper's own rule is the argmax over the language tokens only.
        wave = audio16[None, :].astype(np.float32)
        enc = asr._encode(wave, np.array([wave.shape[1]], np.int64))
        logits, _ = asr._decode(np.array([[asr._bos_token_id]], np.int64), asr._create_state(), enc)
        langs = language_tokens(asr._tokens)
        ids = np.array(list(langs.values()))
        return list(langs)[int(np.argmax(logits[0, -1, ids]))]

    def recognize(self, audio: np.ndarray, sample_rate: int, language: str | None = None) -> Transcript:
        """Text, the language used and the model, for mono (or channels-last) audio at any rate."""
        audio16 = to_asr_audio(audio, sample_rate)
        lang = _language(language)
        detected = False
        if lang is None:
            lang, detected = self.detect_language(audio16), True
        md = self._covering(lang)
        if md is None:
            covered = sorted({x for m in self.models for x in m.languages if x != "*"})
            extra = " and Whisper's languages" if self._whisper() else ""
            raise AsrError(f"no speech recognition model for language {lang!r} (covered: {', '.join(covered)}"
                           f"{extra}); type the transcript")
        kwargs = {"language": lang} if md.kind == "whisper" else {}
        text = self._asr(md).recognize(audio16, sample_rate=ASR_RATE, **kwargs)
        return Transcript(" ".join(str(text).split()), lang, md.name, detected)

    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str | None = None) -> str:
        """What ``audio`` says (``language``: ``ru``, ``en``, … or None/``auto`` to detect it)."""
        return self.recognize(audio, sample_rate, language).text


def load_transcriber(path: Path | str | None = None, *, n_threads: int | None = None) -> Transcriber:
    """The transcriber of the ASR folder ``path`` (None: ``$COSYVOICE_RK_ASR`` or ``models/asr``); raises
    :class:`AsrMissing` saying how to get the model when it is not there. The models load on first use."""
    try:
        import onnx_asr  # noqa: F401
    except ImportError:
        raise AsrMissing("the onnx-asr package is not installed: run ./cv once more (it installs the runtime), "
                         "or pip install onnx-asr") from None
    root, models = read_manifest(path)
    return Transcriber(root, models, n_threads)


def language_tokens(tokens: dict[str, int]) -> dict[str, int]:
    """Whisper's language tokens (``<|en|>`` → id), by code."""
    specials = {"startoftranscript", "endoftext", "transcribe", "translate", "notimestamps", "nospeech",
                "startoflm", "startofprev", "nocaptions"}
    out = {}
    for tok, i in tokens.items():
        if tok.startswith("<|") and tok.endswith("|>"):
            code = tok[2:-2]
            if code not in specials and code.isalpha() and len(code) <= 3:
                out[code] = i
    return out


def to_asr_audio(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 mono at 16 kHz (channels averaged)."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2:
        x = x.mean(axis=1)
    if x.ndim != 1 or x.size == 0:
        raise AsrError("the recording has no samples to transcribe")
    if not np.isfinite(x).all():
        raise AsrError("the recording contains invalid samples (NaN or infinity)")
    if sample_rate != ASR_RATE:
        import soxr

        x = soxr.resample(x, sample_rate, ASR_RATE).astype(np.float32)
    return x


def transcribe_bytes(transcriber: Transcriber, data: bytes, language: str | None = None) -> Transcript:
    """A recording as file bytes (any format libsndfile reads) → its transcript."""
    import io

    import soundfile as sf

    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as e:  # noqa: BLE001 - libsndfile's messages vary by format
        raise AsrError(f"the recording cannot be read ({e}); save it as WAV and try again") from None
    return transcriber.recognize(audio, int(sr), language)


def transcribe_file(path: Path | str, language: str | None = None, asr_dir: Path | str | None = None) -> Transcript:
    """The command line's transcription of a prompt file (loads the models, transcribes once)."""
    t = load_transcriber(asr_dir)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise AsrError(f"cannot read {path} ({e.strerror or e})") from None
    result = transcribe_bytes(t, data, language)
    if not result.text:
        raise AsrError(f"the speech recognition model heard no words in {path}; give the transcript "
                       "(--prompt-text)")
    return result
