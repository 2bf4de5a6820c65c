"""``Qwen3TTS``: Qwen3-TTS behind the engines' interface (:class:`pipeline.engines.base.TTSEngine`).

A voice is its prompt codes (spec §3) and speaker embedding (§4), computed once and saved with the preset, plus its
transcript. Speech is made per text segment as upstream's ``generate_voice_clone`` makes one utterance: talker
prefill (§5; ICL with the transcript and prompt codes, or x-vector only), talker + code predictor loop (§6–§8), then
the decoder over [prompt codes; generated codes] and the prompt cut (§9–§10): with the stream decoder (below) the
prompt part is decoded once per voice and only the generated frames per request (``prompt_decode="each"``: per
request, as upstream). Upstream has no text normalisation or
splitting; here the shared text frontend normalises and splits long text, and each segment is one utterance.

Streaming (``create_chunks(stream=True)``, when the bundle has ``decoder_stream_onnx``; upstream has none, §11):
the talker + code predictor run in a thread and each segment's frames are decoded as they come by the stateful
stream decoder (:mod:`.streaming`: first audio after 4 frames, then hops of 8 and 16). ICL primes that decoder
with the voice's prompt codes once per voice (kept, LRU) instead of decoding the prompt with every segment. Same
seed, same codes as ``stream=False``, and the same samples within float32 rounding; ICL only: where upstream's
cut falls one sample early the one-pass audio has that extra first sample (:func:`.streaming.stream_job`).

Modes: ``zero_shot`` is upstream's ICL mode (the transcript is needed); ``cross_lingual`` is upstream's
x-vector-only mode (only the speaker embedding: no transcript, the voice may speak another language). Qwen3-TTS
Base has no instruct mode and no speed control; both are refused with a message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from pipeline.shared.errors import BundleError, Cancelled, InputError, PresetError
from pipeline.shared.onnx import trim_heap
from pipeline.shared.presets import Preset, SpeakerStore
from pipeline.shared.text import HARD_MAX_TOKENS

from .decoder_stream import PrimedDecoders
from .streaming import FIRST_FRAMES, stream_job
from .voice import Job, SegmentResult, Voice, VoicePrompt, VoicePromptCodec, max_frames, talker_context

if TYPE_CHECKING:
    from .decoder import CodeDecoder

ENGINE = "qwen3-tts"
MODES = ("zero_shot", "cross_lingual")
# the shared frontend's languages → the talker's codec language names (talker_config.codec_language_id)
TALKER_LANGUAGE = {"ru": "russian", "en": "english", "zh": "chinese", "ja": "japanese", "auto": None}


class Qwen3TTS:
    """Qwen3-TTS voice cloning on a bundle made by ``convert`` from a Qwen3-TTS-12Hz Base checkpoint."""

    def __init__(self, bundle: Bundle | Path | str, *, speakers_dir: Path | str = "speakers",
                 quant: str | None = None, n_threads: int | None = None, cpus: str | None = None,
                 log: Callable[[str], None] | None = None, flow_backend: str = "auto", npu_cores: str = "auto",
                 flow_fast: bool = False, flow_steps: int | None = None, prompt_decode: str = "once") -> None:
        """``flow_*`` and ``npu_cores`` are CosyVoice3's options: anything but their defaults is refused.
        ``prompt_decode``: ``"once"`` (when the bundle has the stream decoder) decodes a voice's prompt codes once
        and each request's generated frames only; ``"each"`` decodes [prompt; generated] per request, as
        upstream's ``generate_voice_clone`` does (the same samples within float32 rounding, slower)."""
        from pipeline.engines.qwen3_tts.decoder import CodeDecoder
        from pipeline.engines.qwen3_tts.decoder_stream import StatefulStreamDecoder
        from pipeline.engines.qwen3_tts.lm_session import Qwen3LM
        from pipeline.shared.cpu import place_process, quiet_blas

        if flow_fast or flow_steps is not None or flow_backend not in ("auto", "onnx") or npu_cores != "auto":
            raise InputError("the flow options (--flow-backend, --flow-fast, --flow-steps, --npu-cores) are "
                             "CosyVoice3's; a Qwen3-TTS bundle has no flow: leave them out")
        if prompt_decode not in ("once", "each"):
            raise InputError(f"prompt_decode must be 'once' or 'each', got {prompt_decode!r}")
        self.prompt_decode = prompt_decode
        self._log = log or (lambda m: None)
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        m, root = self.bundle.manifest, self.bundle.root
        cores, cpus_reason = place_process(cpus, log=self._log)
        quiet_blas()
        self.lm = Qwen3LM(root, m["lm"], quant=quant, n_threads=n_threads, n_ctx=talker_context(HARD_MAX_TOKENS))
        try:
            p = m["prompt"]
            self._prompt_args = ({k: root / p[k] for k in ("prompt_encoder", "speaker_encoder")}, p["dims"],
                                 n_threads)
            for path in self._prompt_args[0].values():
                if not path.is_file():
                    raise BundleError(f"bundle {root} has no {path.name}; convert the checkpoint again")
            stream_file = m["decoder"].get("decoder_stream_onnx")
            self._decoder_args = (root / m["decoder"]["decoder_onnx"], m["decoder"]["dims"], n_threads)
            self._decoder = None if stream_file else CodeDecoder(*self._decoder_args)
            self._decoder_lock = threading.Lock()
            stream_base = (StatefulStreamDecoder(root / stream_file, m["decoder"]["dims"], n_threads=n_threads,
                                                 spin=False) if stream_file else None)
        except BaseException:
            self.lm.close()
            raise
        pd = p["dims"]
        self.codec = VoicePromptCodec(int(pd["num_codebooks"]), int(pd["codebook_size"]), int(pd["speaker_dim"]))
        self.store = SpeakerStore(speakers_dir, engine=ENGINE, codec=self.codec)
        self._primed = PrimedDecoders(stream_base) if stream_base else None  # the one cross-request state
        self.streams = self._primed is not None
        if self.streams:
            stream_reason = (f"streaming: frames are decoded while they are generated ({stream_file}), first audio "
                             f"after {FIRST_FRAMES} frames ({FIRST_FRAMES * 80} ms of speech)")
        else:
            stream_reason = ("no streaming: this bundle has no stateful decoder step (decoder_stream_onnx; convert "
                             "it again); each text part is made in one pass and heard when it is done")
        self._log(stream_reason)
        self.placement = {"cpus": cores, "cpus_reason": cpus_reason, "stream": self.streams,
                          "stream_reason": stream_reason}

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
    def decoder(self) -> CodeDecoder:
        """The one-pass decoder (``stream=False``). A streaming bundle loads it at its first use, so that a
        streaming worker does not hold both decoder graphs (~460 MB each at full size)."""
        from pipeline.engines.qwen3_tts.decoder import CodeDecoder

        with self._decoder_lock:
            if self._decoder is None:
                self._decoder = CodeDecoder(*self._decoder_args)
            return self._decoder

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
        feats = self.prompt_features(wav)
        info = {"duration": prepared.duration, "original_sr": prepared.original_sr,
                "prompt_tokens": len(feats.codes)}
        if getattr(prepared, "warning", None):
            info["warning"] = prepared.warning
        return feats, info

    def prompt_features(self, wav24k: np.ndarray) -> VoicePrompt:
        """Codes and speaker embedding of 24 kHz prompt audio. The prompt and speaker encoders are opened for it
        and freed after it (~0.23 GB at full size that speech never needs)."""
        from pipeline.engines.qwen3_tts.prompt import PromptEncoder

        enc = PromptEncoder(*self._prompt_args)
        try:
            return VoicePrompt(enc.codes(wav24k), enc.speaker_embedding(wav24k))
        finally:
            del enc
            trim_heap()

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
        """Prime the stream decoder with the saved voice's prompt codes now (kept in memory, LRU), so that its
        first streamed request does not decode the prompt first; returns the seconds it took (0 when streaming
        is off, the voice has no transcript (no ICL) or it was primed already)."""
        if not self.streams:
            return 0.0
        v = self.load_voice(name)
        if not v.transcript:
            return 0.0
        t0 = time.perf_counter()
        fresh = self._primed.decoder(v.features.codes, should_stop)[1]
        return time.perf_counter() - t0 if fresh else 0.0

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
        """Synthesize ``text`` as audio chunks, each yielded as soon as it is made; the chunks joined are the
        whole audio, sample for sample; the last chunk of a segment (maybe empty) carries its :class:`Segment`.
        ``stream`` (when :attr:`streams`): several chunks per segment, made while its frames are generated
        (:func:`.streaming.stream_job`); else one per segment, made in one pass as upstream does. ``should_stop`` is
        asked after every frame and before every chunk: a cancel stops within one chunk.

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
        index = 0
        for i, piece in enumerate(pieces):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped before segment {i + 1}")
            job = Job(piece, v, language, mode, rng, overrides, i, len(pieces), on_progress, should_stop)
            if not (stream and self.streams):
                res = self._segment(job)
                seg = Segment(i, len(pieces), piece, res.audio, res.sample_rate, res)
                yield AudioChunk(res.audio, self.sample_rate, index, i, len(pieces), seg)
                index += 1
                continue
            # closing(): a cancel, an error or a consumer that stops ends the generation thread at once
            with closing(stream_job(self, job)) as made:
                for audio, seg in made:
                    yield AudioChunk(audio, self.sample_rate, index, i, len(pieces), seg)
                    index += 1
                    if seg is None and should_stop is not None and should_stop():
                        raise Cancelled(f"stopped after {index} audio chunk(s)")

    def _talker_prompt(self, job: Job) -> tuple[Any, int]:
        """The talker prompt of ``job`` (ICL in zero_shot) and its frame cap."""
        icl = job.mode == "zero_shot"
        v = job.voice
        prompt = self.lm.prompt(job.text, v.features.embedding, language=TALKER_LANGUAGE[job.language],
                                ref_text=v.transcript if icl else None, ref_codes=v.features.codes if icl else None)
        job.report("prefill", {"positions": int(len(prompt.prefill))})
        cap = max_frames(len(self.lm.tokens.encode(job.text)), int(self.lm.sampling.get("max_new_tokens", 8192)))
        return prompt, cap

    def _segment(self, job: Job) -> SegmentResult:
        """One segment in one pass (upstream's ``generate_voice_clone``)."""
        from pipeline.engines.qwen3_tts.decoder import voice_clone_wav
        from pipeline.engines.qwen3_tts.decoder_stream import voice_clone_wav_primed

        icl = job.mode == "zero_shot"
        t0 = time.perf_counter()
        prompt, cap = self._talker_prompt(job)
        codes = self.lm.generate(prompt, rng=job.rng, progress=lambda k: job.report("tokens", {"n": int(k)}),
                                 should_stop=job.should_stop, **{"max_new_tokens": cap, **job.overrides})
        if job.should_stop is not None and job.should_stop():
            raise Cancelled(f"stopped after {len(codes)} frames")
        t1 = time.perf_counter()
        job.report("vocoder", {"frames": int(len(codes))})
        prompt_codes = job.voice.features.codes if icl else None
        if self._primed is not None and self.prompt_decode == "once":
            audio, _ = voice_clone_wav_primed(self._primed, codes, prompt_codes, job.should_stop)
        else:
            audio = voice_clone_wav(self.decoder, codes, prompt_codes)
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
