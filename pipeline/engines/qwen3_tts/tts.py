"""``Qwen3TTS``: Qwen3-TTS behind the engines' interface (:class:`pipeline.engines.base.TTSEngine`).

A voice is its prompt codes (spec §3) and speaker embedding (§4), computed once and saved with the preset, plus its
transcript. Speech is made per text segment as upstream's ``generate_voice_clone`` makes one utterance: talker
prefill (§5; ICL with the transcript and prompt codes, or x-vector only), talker + code predictor loop (§6–§8), then
the decoder over [prompt codes; generated codes] and the prompt cut (§9–§10). Upstream has no text normalisation or
splitting; here the shared text frontend normalises and splits long text, and each segment is one utterance.

Modes: ``zero_shot`` is upstream's ICL mode (the transcript is needed); ``cross_lingual`` is upstream's
x-vector-only mode (only the speaker embedding: no transcript, the voice may speak another language). Qwen3-TTS
Base has no instruct mode and no speed control; both are refused with a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines import engine_name, engine_title
from pipeline.engines.base import (
    AudioChunk,
    Capabilities,
    Progress,
    Segment,
    audio_bytes,
    check_transcript,
    jsonable,
)
from pipeline.shared.audio import AudioSource, prepare_prompt
from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import Cancelled, InputError, PresetError
from pipeline.shared.presets import Preset, SpeakerStore

ENGINE = "qwen3-tts"
MODES = ("zero_shot", "cross_lingual")
# the shared frontend's languages → the talker's codec language names (talker_config.codec_language_id)
TALKER_LANGUAGE = {"ru": "russian", "en": "english", "zh": "chinese", "ja": "japanese", "auto": None}


def max_frames(n_text_tokens: int, configured: int) -> int:
    """Frames one segment may take. Upstream stops only at EOS or ``max_new_tokens`` (8192 frames, 11 minutes);
    a model that never says EOS (random weights, a damaged bundle, a bad prompt) would run that long. Here a
    segment also stops at 2 s per text token plus 4 s (speech runs at about 3 tokens per second): a deliberate
    difference, docs/qwen3-tts.md."""
    return max(1, min(configured, 25 * n_text_tokens + 50))


@dataclass
class VoicePrompt:
    """What a prompt recording gives Qwen3-TTS: its codes (T12, 16) and its speaker embedding (D,)."""

    codes: np.ndarray
    embedding: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {"codes": self.codes, "embedding": self.embedding}


@dataclass(frozen=True)
class VoicePromptCodec:
    """A voice preset's ``features.npz`` for Qwen3-TTS (:class:`pipeline.shared.presets.FeatureCodec`)."""

    num_codebooks: int
    codebook_size: int
    speaker_dim: int

    def to_arrays(self, f: VoicePrompt) -> dict[str, np.ndarray]:
        return f.arrays()

    def from_arrays(self, a: dict[str, np.ndarray]) -> VoicePrompt:
        return VoicePrompt(np.asarray(a["codes"], np.int64), np.asarray(a["embedding"], np.float32))

    def problem(self, f: VoicePrompt | None) -> str | None:
        if f is None:
            return "no features"
        c, e = f.codes, f.embedding
        if c.ndim != 2 or c.shape[1] != self.num_codebooks or len(c) == 0:
            return f"prompt codes have shape {c.shape}"
        if (c < 0).any() or (c >= self.codebook_size).any():
            return "prompt codes out of range"
        if e.shape != (self.speaker_dim,):
            return f"speaker embedding has shape {e.shape}"
        if not np.isfinite(e).all():
            return "features are not finite (NaN or infinity)"
        return None


@dataclass
class Voice:
    name: str
    transcript: str  # "" for a voice made without one (cross_lingual only)
    features: VoicePrompt
    warnings: list[str] = field(default_factory=list)


@dataclass
class SegmentResult:
    """One segment's speech and how it was made (what the worker reports per segment)."""

    audio: np.ndarray
    sample_rate: int
    codes: np.ndarray  # (n, 16) generated frames
    timings: dict[str, float]
    backends: dict[str, str]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens(self) -> np.ndarray:  # one per 80 ms frame, as CosyVoice3 counts its speech tokens
        return self.codes[:, 0]


class Qwen3TTS:
    """Qwen3-TTS voice cloning on a bundle made by ``convert`` from a Qwen3-TTS-12Hz Base checkpoint."""

    def __init__(self, bundle: Bundle | Path | str, *, speakers_dir: Path | str = "speakers",
                 quant: str | None = None, n_threads: int | None = None, cpus: str | None = None,
                 log: Callable[[str], None] | None = None, flow_backend: str = "auto", npu_cores: str = "auto",
                 flow_fast: bool = False, flow_steps: int | None = None) -> None:
        """``flow_*`` and ``npu_cores`` are CosyVoice3's options: anything but their defaults is refused."""
        from pipeline.engines.qwen3_tts.decoder import CodeDecoder
        from pipeline.engines.qwen3_tts.lm_session import Qwen3LM
        from pipeline.engines.qwen3_tts.prompt import PromptEncoder
        from pipeline.shared.cpu import place_process

        if flow_fast or flow_steps is not None or flow_backend not in ("auto", "onnx") or npu_cores != "auto":
            raise InputError("the flow options (--flow-backend, --flow-fast, --flow-steps, --npu-cores) are "
                             "CosyVoice3's; a Qwen3-TTS bundle has no flow: leave them out")
        self._log = log or (lambda m: None)
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        m, root = self.bundle.manifest, self.bundle.root
        cores, cpus_reason = place_process(cpus, log=self._log)
        self.lm = Qwen3LM(root, m["lm"], quant=quant, n_threads=n_threads)
        try:
            p = m["prompt"]
            self.prompt = PromptEncoder({k: root / p[k] for k in ("prompt_encoder", "speaker_encoder")}, p["dims"],
                                        n_threads=n_threads)
            self.decoder = CodeDecoder(root / m["decoder"]["decoder_onnx"], m["decoder"]["dims"], n_threads=n_threads)
        except BaseException:
            self.lm.close()
            raise
        pd = p["dims"]
        self.codec = VoicePromptCodec(int(pd["num_codebooks"]), int(pd["codebook_size"]), int(pd["speaker_dim"]))
        self.store = SpeakerStore(speakers_dir, engine=ENGINE, codec=self.codec)
        self.streams = False
        stream_reason = "no streaming yet for Qwen3-TTS: each text part is made in one pass and heard when it is done"
        self._log(stream_reason)
        self.placement = {"cpus": cores, "cpus_reason": cpus_reason, "stream": False, "stream_reason": stream_reason}

    # the interface's properties ----------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(ENGINE, engine_title(ENGINE), MODES, tuple(TALKER_LANGUAGE), speed=False, tags=False,
                            streaming=self.streams)

    @property
    def sample_rate(self) -> int:
        return int(self.bundle.constants["sample_rate"])

    @property
    def backends(self) -> dict[str, str]:
        return {"prompt": "onnxruntime-cpu", "talker": "llama.cpp", "decoder": "onnxruntime-cpu"}

    @property
    def quant(self) -> str:
        return self.lm.quant

    def close(self) -> None:
        self.lm.close()

    def __enter__(self) -> Qwen3TTS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # voices ------------------------------------------------------------------------------------
    def features_from_audio(self, audio: AudioSource, **limits: Any) -> tuple[VoicePrompt, dict[str, Any]]:
        """Prompt codes and speaker embedding of a prompt recording: checked and trimmed by the shared audio path,
        then resampled to 24 kHz as upstream does (librosa's default, soxr_hq)."""
        from pipeline.engines.qwen3_tts.prompt import prompt_audio_24k

        prepared = prepare_prompt(audio, **limits)
        wav = prompt_audio_24k(prepared.trimmed, prepared.original_sr)
        codes = self.prompt.codes(wav)
        info = {"duration": prepared.duration, "original_sr": prepared.original_sr, "prompt_tokens": len(codes)}
        if getattr(prepared, "warning", None):
            info["warning"] = prepared.warning
        return VoicePrompt(codes, self.prompt.speaker_embedding(wav)), info

    def voice_from_audio(self, audio: AudioSource, transcript: str | None, *, language: str = "auto",
                         name: str = "(one-off prompt)", **limits: Any) -> Voice:
        if transcript is not None:
            check_transcript(transcript)
        feats, info = self.features_from_audio(audio, **limits)
        return Voice(name, transcript or "", feats, warnings=[info["warning"]] if info.get("warning") else [])

    def add_voice(self, name: str, audio: AudioSource, transcript: str, *, language: str = "auto",
                  overwrite: bool = False, **limits: Any) -> tuple[Preset, dict[str, Any]]:
        from pipeline.shared.text import check_language

        self.store.claim(name, overwrite=overwrite)
        check_transcript(transcript)
        check_language(language)
        data, ext = audio_bytes(audio)
        feats, info = self.features_from_audio(data, **limits)
        preset = self.store.create(name, data, ext, transcript, language=language, features=feats,
                                   bundle_fingerprint=self.bundle.fingerprint, info=jsonable(info),
                                   overwrite=overwrite)
        return preset, info

    def import_voice(self, src: Path | str | bytes, *, name: str | None = None, overwrite: bool = False) -> Preset:
        """Import an exported voice file; features from another engine or bundle are recomputed from its audio."""
        from pipeline.shared.text import check_language

        meta, audio, feats = self.store.read_export(src)
        name = name or meta["name"]
        language = meta.get("language", "auto")
        self.store.claim(name, overwrite=overwrite)
        try:
            check_language(language)
        except InputError as e:
            raise PresetError(f"the voice file says its language is {language!r}, which this version does not "
                              "know; export it again with a language of ru, en, zh, ja or auto") from e
        if (meta.get("bundle_fingerprint") != self.bundle.fingerprint or engine_name(meta) != ENGINE
                or self.codec.problem(feats)):
            feats, _ = self.features_from_audio(audio)
        info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
        return self.store.create(name, audio, Path(meta["audio"]).suffix, meta["transcript"], language=language,
                                 features=feats, bundle_fingerprint=self.bundle.fingerprint, info=jsonable(info),
                                 overwrite=overwrite)

    def load_voice(self, name: str) -> Voice:
        """A saved voice; features of another engine or bundle, or damaged ones, are recomputed from its audio."""
        p = self.store.load(name)
        other = p.engine != ENGINE
        damaged = [] if other else list(p.damaged)
        if other or not p.fits(self.bundle.fingerprint) or self.codec.problem(p.features):
            feats, _ = self.features_from_audio(p.audio_path.read_bytes())
            self.store.update_features(p, feats, self.bundle.fingerprint)
        warnings = [f"voice {p.name!r}: its saved {', '.join(sorted(set(damaged)))} did not pass the checks (damaged "
                    "on disk?) and was rebuilt from its recording"] if damaged else []
        return Voice(p.name, p.transcript, p.features, warnings=warnings)

    def prepare_stream(self, name: str, *, should_stop: Callable[[], bool] | None = None) -> float:
        return 0.0  # nothing to solve ahead: the voice's codes and embedding are saved with it

    # speech ------------------------------------------------------------------------------------
    def split(self, text: str, language: str = "auto") -> list[str]:
        """Normalised segments (the shared frontend); control tags are CosyVoice3's and refused here."""
        from pipeline.engines.qwen3_tts.text import SegmentText

        return SegmentText(self.lm.tokens).split(text, language)

    def create_chunks(self, text: str, voice: Voice | str, *, language: str = "auto",
                      temperature: float | None = None, seed: int | None = None, top_k: int | None = None,
                      top_p: float | None = None, stream: bool = True, on_progress: Progress | None = None,
                      should_stop: Callable[[], bool] | None = None, mode: str = "zero_shot",
                      instruct: str | None = None, speed: float = 1.0) -> Iterator[AudioChunk]:
        """Synthesize ``text``: one chunk per text segment (no streaming yet), each carrying its :class:`Segment`.
        ``temperature`` scales the checkpoint's own (generation_config.json: 0.9), so 1.0 (the page's default)
        is upstream's sampling and lower is steadier; ``top_k``/``top_p`` replace the checkpoint's; ``seed``
        makes it repeatable."""
        from pipeline.shared.text import check_language

        if mode not in MODES:
            raise InputError(f"Qwen3-TTS Base has the modes {', '.join(MODES)} (cross_lingual is its x-vector-only "
                             f"cloning); {mode!r} is CosyVoice3's")
        if instruct:
            raise InputError("Qwen3-TTS Base takes no instruction; choose zero_shot or cross_lingual")
        if float(speed) != 1.0:
            raise InputError("Qwen3-TTS has no speed control; leave speed at 1.0")
        if temperature is not None and not (0.0 < float(temperature) <= 2.0):
            raise InputError(f"temperature {temperature} is out of range; use a value in (0, 2]")
        check_language(language)
        pieces = self.split(text, language)  # bad text is refused before a voice is (re)computed
        v = self.load_voice(voice) if isinstance(voice, str) else voice
        if mode == "zero_shot" and not v.transcript:
            raise InputError("zero_shot needs the words of the prompt recording (its transcript); give them, or "
                             "choose cross_lingual, which needs none")
        rng = np.random.default_rng(seed)
        overrides = {k: val for k, val in (("top_k", top_k), ("top_p", top_p)) if val is not None}
        if temperature is not None:
            overrides["temperature"] = float(temperature) * float(self.lm.sampling.get("temperature", 1.0))
        for i, piece in enumerate(pieces):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped before segment {i + 1}")
            res = self._segment(piece, v, language, mode, rng, overrides, i, len(pieces), on_progress, should_stop)
            seg = Segment(i, len(pieces), piece, res.audio, res.sample_rate, res)
            yield AudioChunk(res.audio, self.sample_rate, i, i, len(pieces), seg)

    def _segment(self, piece: str, v: Voice, language: str, mode: str, rng: np.random.Generator,
                 overrides: dict[str, Any], i: int, n: int, on_progress: Progress | None,
                 should_stop: Callable[[], bool] | None) -> SegmentResult:
        from pipeline.engines.qwen3_tts.decoder import voice_clone_wav

        def report(stage: str, info: dict) -> None:
            if on_progress:
                on_progress(stage, {**info, "segment": i + 1, "segments": n})

        icl = mode == "zero_shot"
        t0 = time.perf_counter()
        prompt = self.lm.prompt(piece, v.features.embedding, language=TALKER_LANGUAGE[language],
                                ref_text=v.transcript if icl else None, ref_codes=v.features.codes if icl else None)
        report("prefill", {"positions": int(len(prompt.prefill))})
        cap = max_frames(len(self.lm.tokens.encode(piece)), int(self.lm.sampling.get("max_new_tokens", 8192)))
        codes = self.lm.generate(prompt, rng=rng, progress=lambda k: report("tokens", {"n": int(k)}),
                                 should_stop=should_stop, **{"max_new_tokens": cap, **overrides})
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped after {len(codes)} frames")
        t1 = time.perf_counter()
        report("vocoder", {"frames": int(len(codes))})
        audio = voice_clone_wav(self.decoder, codes, v.features.codes if icl else None)
        t2 = time.perf_counter()
        return SegmentResult(np.asarray(audio, np.float32), self.sample_rate, np.asarray(codes),
                             {"talker": t1 - t0, "decoder": t2 - t1}, self.backends)  # talker: + code predictor

    def create_stream(self, text: str, voice: Voice | str, *, stream: bool = False, **kw: Any) -> Iterator[Segment]:
        for chunk in self.create_chunks(text, voice, stream=stream, **kw):
            if chunk.segment_result is not None:
                yield chunk.segment_result

    def create(self, text: str, voice: Voice | str, **kw: Any) -> tuple[np.ndarray, int]:
        parts = [s.audio for s in self.create_stream(text, voice, **kw)]
        return np.concatenate(parts).astype(np.float32), self.sample_rate
