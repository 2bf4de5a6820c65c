"""``CosyVoiceRK``: the one class a user needs (voices in, speech out).

    tts = CosyVoiceRK("models/bundle", speakers_dir="speakers")
    tts.add_voice("Anna", "anna.wav", "Привет, меня зовут Анна.", language="ru")
    audio, sr = tts.create("Съешь ещё этих мягких французских булок.", voice="Anna", language="ru", seed=1)
    for seg in tts.create_stream(long_text, voice="Anna"): play(seg.audio)
    for chunk in tts.create_chunks(long_text, voice="Anna"): play(chunk.audio)   # ~1 s pieces, gapless

Long text is split into segments (each one LLM run with the same prompt, as upstream does) and the
segments are joined without cross-fade, as upstream does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import closing
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
from pipeline.engines.cosyvoice3.engine import (
    Engine,
    PromptFeatures,
    PromptFeaturesCodec,
    SynthesisResult,
    log_to_stderr,
)
from pipeline.engines.cosyvoice3.tokenizer import ENDOFPROMPT
from pipeline.shared.audio import AudioSource, prepare_prompt
from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import CosyVoiceRKError, InputError, PresetError
from pipeline.shared.presets import Preset, SpeakerStore

ENGINE = "cosyvoice3"


@dataclass
class Voice:
    """Prompt features plus the prompt text ids and, for saved voices, the cached LLM prefix state."""

    name: str
    transcript: str
    features: PromptFeatures
    prompt_ids: list[int]
    prefix_state: bytes | None = None
    warnings: list[str] = field(default_factory=list)


class CosyVoiceRK:
    """CosyVoice3 behind the engines' interface (:class:`pipeline.engines.base.TTSEngine`)."""

    def __init__(self, bundle: Bundle | Path | str, *, speakers_dir: Path | str = "speakers",
                 quant: str | None = None, n_threads: int | None = None, flow_backend: str = "auto",
                 npu_cores: str = "auto", cpus: str | None = None, flow_fast: bool = False,
                 flow_steps: int | None = None, log: Callable[[str], None] | None = None) -> None:
        """``flow_backend`` auto|rknn|onnx and ``npu_cores`` go to :meth:`Engine.load`; ``cpus`` (auto: the A76
        cores on an RK3588, no pinning elsewhere; ``all``; or a list like ``4-7``) pins this process first, so
        every thread pool starts on those cores. ``flow_fast``/``flow_steps``: the opt-in fast flow. The choices
        and their reasons are kept in ``placement``."""
        from pipeline.engines.cosyvoice3.speaker import PromptModels
        from pipeline.engines.cosyvoice3.tokenizer import TextTokenizer
        from pipeline.shared.cpu import place_process
        from pipeline.shared.text import TextFrontend

        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        cores, cpus_reason = place_process(cpus, log=log or log_to_stderr)
        self.engine = Engine.load(self.bundle, quant=quant, n_threads=n_threads, flow_backend=flow_backend,
                                  npu_cores=npu_cores, flow_fast=flow_fast, flow_steps=flow_steps, log=log)
        self.streams, stream_reason = self._stream_choice(flow_fast)
        (log or log_to_stderr)(stream_reason)
        self.placement = {"cpus": cores, "cpus_reason": cpus_reason, "flow_backend": flow_backend,
                          "flow_backend_reason": self.engine.flow_backend_reason, "npu_cores": npu_cores,
                          "flow_steps": self.engine.flow.n_timesteps, "stream": self.streams,
                          "stream_reason": stream_reason}
        self.tokenizer = TextTokenizer.from_bundle(self.bundle)
        self.text = TextFrontend(self.tokenizer)
        self.prompt_models = PromptModels.from_bundle(self.bundle, n_threads=n_threads)
        self.codec = PromptFeaturesCodec.for_bundle(self.bundle)
        self.store = SpeakerStore(speakers_dir, engine=ENGINE, codec=self.codec)
        self._quant = quant or self.bundle.manifest["llm"]["default_quant"]
        self._log = log or log_to_stderr
        self._gguf_key = self._prefix_key_base(quant)

    def _stream_choice(self, flow_fast: bool) -> tuple[bool, str]:
        """Whether ``create_chunks(stream=True)`` can use the streaming engine here, and why (logged once)."""
        from pipeline.engines.cosyvoice3.flow_stream import chunk_graph_paths

        whole = "each text part is made in one pass and heard when it is done"
        try:
            chunk_graph_paths(self.bundle, self.engine.flow_cache_type)
        except CosyVoiceRKError as e:
            return False, f"no streaming: {e}; {whole}"
        if flow_fast:
            return False, f"no streaming: the fast flow (INT8) has no streaming graph; {whole}"
        if getattr(self.engine.flow.estimator, "backend", "") == "rknn-npu":
            if not self.bundle.manifest["flow"]["estimator"].get("rknn_chunk"):
                return False, ("no streaming: the flow runs on the NPU and the bundle has no streaming NPU graphs "
                               f"(convert it again with --rknn rk3588); {whole}")
            return True, ("streaming: chunk-causal flow with K/V caches on the RKNN NPU (docs/rk3588.md §7) and "
                          "incremental vocoder on ONNX Runtime CPU, audio every 25 speech tokens")
        return True, ("streaming: chunk-causal flow with K/V caches and incremental vocoder on ONNX Runtime CPU, "
                      "audio after 25 speech tokens, then upstream's doubling hops (50, 100, 100, …)")

    def _prefix_key_base(self, quant: str | None) -> str:
        llm = self.bundle.manifest["llm"]
        name = llm["gguf"][quant or llm["default_quant"]]
        return self.bundle.manifest["files"][name]["sha256"][:16]

    @property
    def sample_rate(self) -> int:
        return int(self.bundle.constants["sample_rate"])

    @property
    def capabilities(self) -> Capabilities:
        from pipeline.engines.cosyvoice3.modes import MODES
        from pipeline.shared.text import LANGUAGES

        return Capabilities(ENGINE, engine_title(ENGINE), MODES, LANGUAGES, speed=True, tags=True,
                            streaming=self.streams)

    @property
    def backends(self) -> dict[str, str]:
        return self.engine.backends

    @property
    def quant(self) -> str:
        return self._quant

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> CosyVoiceRK:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # voices -------------------------------------------------------------------------------------
    def features_from_audio(self, audio: AudioSource, **limits: Any) -> tuple[PromptFeatures, dict[str, Any]]:
        from pipeline.engines.cosyvoice3.speaker import extract_prompt_features

        prepared = prepare_prompt(audio, **limits)
        return extract_prompt_features(prepared, self.prompt_models, bundle=self.bundle)

    def voice_from_audio(self, audio: AudioSource, transcript: str | None, *, language: str = "auto",
                         name: str = "(one-off prompt)", **limits: Any) -> Voice:
        """A voice that is not saved: prompt audio + its transcript. ``transcript=None``: a voice for the
        cross_lingual and instruct modes only, which do not give the LLM the prompt's words."""
        if transcript is not None:
            check_transcript(transcript)
        feats, info = self.features_from_audio(audio, **limits)
        ids = self.text.prompt_ids(transcript, language) if transcript is not None else []
        return Voice(name, transcript or "", feats, ids, warnings=[info["warning"]] if info.get("warning") else [])

    def add_voice(self, name: str, audio: AudioSource, transcript: str, *, language: str = "auto",
                  overwrite: bool = False, **limits: Any) -> tuple[Preset, dict[str, Any]]:
        """Validate the prompt, compute its features and cached LLM prefix, and save it as a preset (written to
        its folder only when all of that succeeded)."""
        from pipeline.shared.text import check_language

        self.store.claim(name, overwrite=overwrite)
        check_transcript(transcript)
        check_language(language)
        ids = self.text.prompt_ids(transcript, language)
        data, ext = audio_bytes(audio)
        feats, info = self.features_from_audio(data, **limits)
        preset = self.store.create(name, data, ext, transcript, language=language, features=feats,
                                   bundle_fingerprint=self.bundle.fingerprint, info=jsonable(info),
                                   prefix=self._prefix(ids), overwrite=overwrite)
        return preset, info

    def import_voice(self, src: Path | str | bytes, *, name: str | None = None, overwrite: bool = False) -> Preset:
        """Import an exported voice file. Its features are used only when they come from this bundle and pass
        the checks (finite, shapes, token range); otherwise they are recomputed from its audio."""
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
        ids = self.text.prompt_ids(meta["transcript"], language)
        if (meta.get("bundle_fingerprint") != self.bundle.fingerprint or engine_name(meta) != ENGINE
                or self._features_problem(feats)):
            feats, _ = self.features_from_audio(audio)
        info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
        return self.store.create(name, audio, Path(meta["audio"]).suffix, meta["transcript"], language=language,
                                 features=feats, bundle_fingerprint=self.bundle.fingerprint, info=jsonable(info),
                                 prefix=self._prefix(ids), overwrite=overwrite)

    def _features_problem(self, f: PromptFeatures | None) -> str | None:
        return self.codec.problem(f)

    def load_voice(self, name: str) -> Voice:
        """A saved voice; stale or damaged features (another bundle, not finite, wrong shapes) are recomputed
        from its prompt audio and saved; a damaged cached prefix is rebuilt."""
        p = self.store.load(name)
        damaged = list(p.damaged)
        if p.features is not None and self._features_problem(p.features):
            damaged.append("features.npz")
        other = p.engine != ENGINE
        if other:
            damaged = []  # another engine's features are not damage: they are recomputed for this one
        if other or not p.fits(self.bundle.fingerprint) or self._features_problem(p.features):
            feats, _ = self.features_from_audio(p.audio_path.read_bytes())
            self.store.update_features(p, feats, self.bundle.fingerprint)
        ids = self._ensure_prefix(p)
        warnings = [f"voice {p.name!r}: its saved {', '.join(sorted(set(damaged)))} did not pass the checks (damaged "
                    "on disk?) and was rebuilt from its recording"] if damaged else []
        return Voice(p.name, p.transcript, p.features, ids, p.prefix_state, warnings=warnings)

    def prepare_stream(self, name: str, *, should_stop: Callable[[], bool] | None = None) -> float:
        """Solve the saved voice's flow prompt cache now (kept in memory, LRU), so that its first streamed
        request does not pay for it; returns the seconds it took (0 when streaming is off or it was there)."""
        if not self.streams:
            return 0.0
        import time

        v = self.load_voice(name)
        t0 = time.perf_counter()
        self.engine.prompt_cache(v.features, should_stop=should_stop)
        return time.perf_counter() - t0

    def _prefix(self, ids: list[int]) -> tuple[bytes, str]:
        """The cached LLM state after ``[sos, prompt text]`` and the key it is valid for."""
        key = self._gguf_key + hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest()[:16]
        return self.engine.prompt_prefix_state(ids), key

    def _ensure_prefix(self, p: Preset) -> list[int]:
        ids = self.text.prompt_ids(p.transcript, p.meta.get("language", "auto"))
        key = self._gguf_key + hashlib.sha256(np.asarray(ids, np.int64).tobytes()).hexdigest()[:16]
        if not p.prefix_fits(key):
            state, key = self._prefix(ids)
            self.store.update_prefix(p, state, key)
        return ids

    # speech -------------------------------------------------------------------------------------
    def create_chunks(self, text: str, voice: Voice | str, *, language: str = "auto", temperature: float = 1.0,
                      seed: int | None = None, top_k: int | None = None, top_p: float | None = None,
                      stream: bool = True, on_progress: Progress | None = None,
                      should_stop: Callable[[], bool] | None = None, mode: str = "zero_shot",
                      instruct: str | None = None, speed: float = 1.0) -> Iterator[AudioChunk]:
        """Synthesize ``text`` as audio chunks, each yielded as soon as it is made; the chunks joined are the
        whole audio, sample for sample. The last chunk of each text segment carries that :class:`Segment`
        (its audio is the segment's chunks joined) and may hold no samples. ``stream`` asks for sub-segment
        chunks from the streaming engine; without it each segment is one chunk (non-streaming synthesis).
        ``should_stop`` is checked before every chunk too, so a cancel stops within one chunk.

        ``mode``: zero_shot (the voice's transcript is the LLM's prompt text), cross_lingual (no transcript: the
        voice speaks another language than its prompt) or instruct (``instruct``, a natural-language instruction,
        in CosyVoice3's form, see :func:`.modes.instruct_text`); every mode works with a saved voice (its
        prompt features; its transcript only in zero_shot). ``speed`` 0.5-2.0 resamples each part's mel as
        upstream does, which needs the whole part: a request asked to stream is then made without streaming, and
        ``on_progress("note", {"message": why})`` (or the log) says so."""
        from pipeline.engines.cosyvoice3.modes import check_speed, mode_name, stream_note
        from pipeline.engines.cosyvoice3.sampling import Cancelled, make_ras_sampler

        mode, speed = mode_name(mode), check_speed(speed)
        v = self.load_voice(voice) if isinstance(voice, str) else voice
        prompt_ids = self._mode_prompt_ids(mode, v, instruct)
        note = stream_note(stream and self.streams, speed)
        pieces = self.text.split(text, language)
        if not pieces:
            raise InputError("text has nothing to say after normalisation (only punctuation?)")
        rng = np.random.default_rng(seed)
        sampling = dict(self.bundle.constants["sampling"])
        if top_k is not None:
            sampling["top_k"] = int(top_k)
        if top_p is not None:
            sampling["top_p"] = float(top_p)
        sampler = make_ras_sampler(sampling)
        if note:
            stream = False
            if on_progress:
                on_progress("note", {"message": note})
            else:
                self._log(note)
        index = 0
        for i, piece in enumerate(pieces):
            ids = self.tokenizer.encode(piece)

            def progress(stage: str, info: dict, i: int = i) -> None:
                if on_progress:
                    on_progress(stage, {**info, "segment": i + 1, "segments": len(pieces)})

            parts: list[np.ndarray] = []
            # closing(): a cancel or error ends the engine's generator at once (its threads, its buffers)
            # upstream's cross-lingual examples put the system prefix in the text themselves: it is not doubled
            p_ids = [] if mode == "cross_lingual" and ENDOFPROMPT in piece else prompt_ids
            with closing(self._segment_chunks(ids, v, rng=rng, temperature=temperature, sampler=sampler,
                                              stream=stream, on_progress=progress, should_stop=should_stop,
                                              mode=mode, prompt_ids=p_ids, speed=speed)) as made:
                for audio, is_last, res in made:
                    audio = np.asarray(audio, np.float32)
                    if not is_last and not len(audio):
                        continue
                    parts.append(audio)
                    seg = None
                    if is_last:
                        if res is None:
                            raise RuntimeError("the engine ended a segment without its SynthesisResult")
                        joined = np.concatenate(parts)
                        if len(res.audio) and not np.array_equal(joined, res.audio):
                            raise RuntimeError(f"the engine's chunks ({len(joined)} samples) are not its segment "
                                               f"audio ({len(res.audio)} samples)")
                        seg = Segment(i, len(pieces), piece, joined, res.sample_rate, res)
                    yield AudioChunk(audio, self.sample_rate, index, i, len(pieces), seg)
                    index += 1
                    if is_last:
                        break
                    if should_stop is not None and should_stop():  # before any more work is asked for
                        raise Cancelled(f"stopped after {index} audio chunk(s)")

    def _mode_prompt_ids(self, mode: str, v: Voice, instruct: str | None) -> list[int]:
        """The LLM prompt text ids of ``mode`` for voice ``v`` (see :func:`.modes.llm_inputs`)."""
        from pipeline.engines.cosyvoice3.modes import check_request, instruct_text
        from pipeline.shared.text import SYSTEM_PREFIX

        check_request(mode, instruct, 1.0)
        if mode == "instruct2":
            return self.tokenizer.encode(instruct_text(instruct))
        if mode == "cross_lingual":
            return self.tokenizer.encode(SYSTEM_PREFIX)
        if not v.prompt_ids:
            raise InputError("zero_shot needs the words of the prompt recording (its transcript); give them, or "
                             "choose cross_lingual or instruct, which need none")
        return list(v.prompt_ids)

    def _segment_chunks(self, text_ids: list[int], v: Voice, *, rng: np.random.Generator, temperature: float,
                        sampler: Any, stream: bool, on_progress: Progress,
                        should_stop: Callable[[], bool] | None, mode: str = "zero_shot",
                        prompt_ids: list[int] | None = None, speed: float = 1.0
                        ) -> Iterator[tuple[np.ndarray, bool, SynthesisResult | None]]:
        """One text segment as ``(float32 audio, is_last, SynthesisResult on the last one else None)``.

        The one seam between the engine and every listener (``create_chunks``, the worker, the page, ``say``).
        ``stream``: the streaming engine (chunk-causal flow, incremental HiFT, audio at upstream's emission points)
        where this engine has it (:meth:`_stream_choice`); else non-streaming synthesis, the segment as one
        chunk. The chunks of a segment joined must be its ``SynthesisResult.audio`` (when that is not empty); the
        last one may be empty. ``prompt_ids``: the mode's LLM prompt text (default: the voice's, zero_shot)."""
        p_ids = v.prompt_ids if prompt_ids is None else prompt_ids
        # the cached prefix holds [sos, system prefix + transcript]: zero_shot's LLM prompt only
        kw = dict(rng=rng, temperature=temperature, sampler=sampler,
                  prefix_state=v.prefix_state if mode == "zero_shot" else None,
                  on_progress=on_progress, should_stop=should_stop, mode=mode, speed=speed)
        if not (stream and self.streams):  # why not is in placement["stream_reason"] (logged at load)
            res = self.engine.synthesize(text_ids, p_ids, v.features, **kw)
            yield res.audio, True, res
            return
        # one flow call per emission on the CPU: upstream's growing hops make fewer, larger calls (the whole
        # request is done sooner; the first audio is the same); the NPU solves a chunk per call either way
        schedule = "upstream" if self.engine.chunked_flow().max_chunks > 1 else "chunk"
        for item in self.engine.synthesize_stream(text_ids, p_ids, v.features, schedule=schedule, **kw):
            if isinstance(item, SynthesisResult):
                yield np.zeros(0, np.float32), True, item
            else:
                yield item, False, None

    def create_stream(self, text: str, voice: Voice | str, *, stream: bool = False,
                      **kw: Any) -> Iterator[Segment]:
        """Synthesize ``text`` segment by segment; each segment is yielded as soon as it is ready.
        Keyword arguments as for :meth:`create_chunks`."""
        for chunk in self.create_chunks(text, voice, stream=stream, **kw):
            if chunk.segment_result is not None:
                yield chunk.segment_result

    def create(self, text: str, voice: Voice | str, **kw: Any) -> tuple[np.ndarray, int]:
        parts = [s.audio for s in self.create_stream(text, voice, **kw)]
        return np.concatenate(parts).astype(np.float32), self.sample_rate

