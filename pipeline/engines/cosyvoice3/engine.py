"""``Engine``: text ids + prompt features → 24 kHz audio, through the three stages of a bundle.

Data flows one way: LLM (llama.cpp) → speech tokens → flow (ONNX Runtime / RKNN) → mel → HiFT → audio.
Every source of randomness can be injected: ``rng`` for sampling, ``flow_noise`` and ``hift_noise``
for the fixed tables (defaults: the bundle's, which are upstream's).
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import InputError

Progress = Callable[[str, dict], None]
# flow prompt caches kept in memory (fp16: ~1.8 MB per prompt frame at full size; a 10 s prompt is ~0.8 GB)
_PROMPT_CACHE_BUDGET_MB = 1200


@dataclass
class PromptFeatures:
    """What a voice prompt contributes: speech tokens (P,), flow mel (2P, 80), speaker embedding (192,)."""

    speech_tokens: np.ndarray
    mel: np.ndarray
    embedding: np.ndarray

    def __post_init__(self) -> None:
        self.speech_tokens = np.asarray(self.speech_tokens, dtype=np.int64).reshape(-1)
        self.mel = np.ascontiguousarray(self.mel, dtype=np.float32)
        self.embedding = np.asarray(self.embedding, dtype=np.float32).reshape(-1)
        if self.mel.ndim != 2 or self.mel.shape[0] != 2 * len(self.speech_tokens):
            raise InputError(
                f"prompt mel has {self.mel.shape[0] if self.mel.ndim == 2 else '?'} frames for "
                f"{len(self.speech_tokens)} tokens; it must have exactly 2 per token (align_prompt does this)"
            )

    def arrays(self) -> dict[str, np.ndarray]:
        return {"speech_tokens": self.speech_tokens, "mel": self.mel, "embedding": self.embedding}


@dataclass(frozen=True)
class PromptFeaturesCodec:
    """A voice preset's ``features.npz`` for CosyVoice3 (:class:`pipeline.shared.presets.FeatureCodec`), checked
    against the bundle's constants when they are given."""

    vocab: int | None = None
    mel_bins: int | None = None
    emb_dim: int | None = None

    @classmethod
    def for_bundle(cls, bundle: Bundle) -> PromptFeaturesCodec:
        c = bundle.constants
        return cls(c.get("speech_token_size"), c.get("mel_bins"), c.get("spk_embed_dim"))

    def to_arrays(self, f: PromptFeatures) -> dict[str, np.ndarray]:
        return f.arrays()

    def from_arrays(self, a: dict[str, np.ndarray]) -> PromptFeatures:
        return PromptFeatures(a["speech_tokens"], a["mel"], a["embedding"])

    def problem(self, f: PromptFeatures | None) -> str | None:
        """Why ``f`` cannot be used (not finite, wrong shapes, tokens out of range), or None when it can."""
        if f is None:
            return "no features"
        tok, mel, emb = f.speech_tokens, f.mel, f.embedding
        if tok.ndim != 1 or len(tok) == 0:
            return "no speech tokens"
        if (tok < 0).any() or (self.vocab is not None and (tok >= self.vocab).any()):
            return "speech tokens out of range"
        bins_ok = self.mel_bins is None or (mel.ndim == 2 and mel.shape[1] == self.mel_bins)
        if mel.ndim != 2 or mel.shape[0] != 2 * len(tok) or not bins_ok:
            return f"prompt mel has shape {mel.shape}"
        if emb.ndim != 1 or emb.size == 0 or (self.emb_dim is not None and emb.size != self.emb_dim):
            return f"speaker embedding has shape {emb.shape}"
        if not (np.isfinite(mel).all() and np.isfinite(emb).all()):
            return "features are not finite (NaN or infinity)"
        return None


@dataclass
class SynthesisResult:
    audio: np.ndarray
    sample_rate: int
    tokens: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # streaming: ttfa_s, wall_s (the stages overlap), chunks, ...

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def rtf(self) -> float:
        busy = self.stats.get("wall_s") or sum(self.timings.values())
        return busy / max(self.duration, 1e-9)


def log_to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check_temperature(temperature: float) -> None:
    """Raise :class:`InputError` unless ``temperature`` can scale the LLM's logits."""
    if not temperature > 0 or not np.isfinite(temperature):
        raise InputError(f"temperature must be a number > 0 (got {temperature}); 1.0 is upstream's sampling")


class Engine:
    def __init__(self, bundle: Bundle, lm, text_embedding, flow, hift) -> None:
        self.bundle = bundle
        self.lm = lm
        self.text_embedding = text_embedding
        self.flow = flow
        self.hift = hift
        self.constants = bundle.constants
        self.flow_backend_reason = ""
        self.n_threads: int | None = None
        self.flow_cache_type = "fp16"
        # streaming flow backend (set by load from --flow-backend/--npu-cores; a bare Engine streams on the CPU)
        self.flow_backend = "onnx"
        self.npu_cores: str | int = "auto"
        self.log: Callable[[str], None] = log_to_stderr
        self.prompt_caches = PromptCacheLRU(budget_mb=_PROMPT_CACHE_BUDGET_MB)
        self._chunked = None
        self._chunked_lock = threading.Lock()

    @classmethod
    def load(cls, bundle: Bundle | Path | str, *, quant: str | None = None, n_threads: int | None = None,
             exact: bool = False, flow_backend: str = "auto", npu_cores: str = "auto", flow_fast: bool = False,
             flow_steps: int | None = None, flow_cache: str = "fp16",
             log: Callable[[str], None] | None = None) -> Engine:
        """``flow_backend``: auto (RKNN only when the bundle has RKNN graphs and the NPU is present), rknn or
        onnx; the choice and its reason are logged and kept in ``flow_backend_reason``. ``flow_fast`` (the
        INT8 estimator on ONNX Runtime) and ``flow_steps`` (Euler steps instead of the bundle's 10) are the
        opt-in fast mode: faster, and the mel is no longer upstream's. ``flow_cache``: the streaming flow's K/V
        cache type (fp16 or fp32). The ONNX Runtime estimators load on first use: a process that only streams
        holds only the streaming graph."""
        from pipeline.engines.cosyvoice3.flow import Flow, ort_estimator
        from pipeline.engines.cosyvoice3.flow_rknn import make_estimator
        from pipeline.engines.cosyvoice3.llm import SpeechLM, TextEmbedding
        from pipeline.engines.cosyvoice3.vocoder import HiFT

        b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        log = log or log_to_stderr
        if flow_cache not in ("fp16", "fp32"):
            raise InputError(f"flow cache type must be fp16 or fp32, not {flow_cache!r}")
        est, reason = make_estimator(b, flow_backend, n_threads=n_threads, core_mask=npu_cores, fast=flow_fast,
                                     log=log, onnx_factory=lambda: ort_estimator(b, n_threads, lazy=True))
        flow = Flow.from_bundle(b, estimator=est, n_threads=n_threads, n_timesteps=flow_steps)
        if flow_steps is not None:
            log(f"flow: {flow.n_timesteps} Euler steps asked for (the bundle's: "
                f"{b.manifest['flow']['n_timesteps']}; fewer steps are faster and change the mel)")
        lm = SpeechLM.from_bundle(b, quant=quant, n_threads=n_threads, exact=exact)
        temb = TextEmbedding(b.path(b.manifest["llm"]["text_embedding"]))
        e = cls(b, lm, temb, flow, HiFT.from_bundle(b, n_threads=n_threads))
        e.flow_backend_reason = reason
        e.n_threads = n_threads
        e.flow_cache_type = flow_cache
        e.flow_backend, e.npu_cores, e.log = flow_backend, npu_cores, log
        return e

    def chunked_flow(self):
        """The streaming flow (:class:`~pipeline.engines.cosyvoice3.flow_stream.ChunkedFlow`), loaded on first use."""
        from pipeline.engines.cosyvoice3.flow_stream import ChunkedFlow

        with self._chunked_lock:
            if self._chunked is None:
                # the flow thread shares the cores with the LLM and vocoder threads: no busy-waiting workers
                self._chunked = ChunkedFlow.from_bundle(self.bundle, self.flow, n_threads=self.n_threads,
                                                        cache=self.flow_cache_type, spin=False,
                                                        backend=self.flow_backend,
                                                        npu={"core_mask": self.npu_cores, "log": self.log})
            return self._chunked

    def prompt_cache(self, prompt: PromptFeatures, key: str = "", *,
                     should_stop: Callable[[], bool] | None = None):
        """The voice's flow prompt cache: from memory (LRU under a budget) or solved now."""
        cf = self.chunked_flow()
        full = "|".join([key or _features_key(prompt), self.flow_cache_type, str(self.flow.n_timesteps)])
        hit = self.prompt_caches.get(full)
        if hit is not None:
            return hit
        pc = cf.build_prompt_cache(prompt, key=full, should_stop=should_stop)
        self.prompt_caches.put(full, pc)
        return pc

    def synthesize_stream(self, text_ids: Sequence[int], prompt_text_ids: Sequence[int], prompt: PromptFeatures,
                          *, voice_key: str = "", use_prompt_cache: bool = True, **kw):
        """Streaming synthesis of one segment: yields float32 audio arrays as they become final, then the
        :class:`SynthesisResult` (whole audio, tokens, timings, ``stats``). See :mod:`.streaming`."""
        from pipeline.engines.cosyvoice3.modes import check_speed
        from pipeline.engines.cosyvoice3.streaming import stream_segment

        if len(text_ids) == 0:
            raise InputError("text is empty: nothing to say")
        if check_speed(kw.pop("speed", 1.0)) != 1.0:
            raise InputError("a speed other than 1.0 resamples the whole utterance's mel, which streaming does not "
                             "have until the end (upstream applies speed only without streaming): turn streaming "
                             "off to change the speed")
        t0 = time.perf_counter()
        hit = use_prompt_cache and self.prompt_caches.get(
            "|".join([voice_key or _features_key(prompt), self.flow_cache_type, str(self.flow.n_timesteps)]))
        cache = self.prompt_cache(prompt, voice_key, should_stop=kw.get("should_stop")) if use_prompt_cache else None
        build_s = time.perf_counter() - t0
        for item in stream_segment(self, text_ids, prompt_text_ids, prompt, flow_cache=cache, **kw):
            if isinstance(item, SynthesisResult):
                item.stats.update(prompt_cache_hit=bool(hit), prompt_cache_build_s=0.0 if hit else build_s,
                                  prompt_cache_mb=(cache.nbytes / 2**20) if cache is not None else 0.0)
                item.stats["wall_s"] += build_s
                item.stats["ttfa_s"] += build_s
            yield item

    def close(self) -> None:
        self.lm.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def backends(self) -> dict[str, str]:
        return {"llm": getattr(self.lm, "backend", "llama.cpp"),
                "flow": getattr(self.flow.estimator, "backend", "?"),
                "vocoder": getattr(self.hift, "backend", "?")}

    def prompt_prefix_state(self, prompt_text_ids: Sequence[int]) -> bytes:
        """llama.cpp state after ``[sos, prompt text]``: the only part of the prefill a voice can reuse,
        because upstream puts the target text before the prompt speech tokens."""
        c = self.constants
        self.lm.reset()
        self.lm.feed([int(c["sos"])])
        self.lm.prefill(self.text_embedding.lookup(prompt_text_ids))
        return self.lm.save_state()

    def _prefill(self, text_ids: np.ndarray, prompt_text_ids: np.ndarray, prompt: PromptFeatures,
                 prefix_state: bytes | None, *, tail: Sequence[int] | None = None) -> np.ndarray:
        """[sos, prompt text, text, task_id, *tail]; ``tail``: the LLM's prompt speech tokens (default: the
        prompt's; none in cross_lingual and instruct2). ``prefix_state``: llama.cpp state after [sos, prompt text]."""
        from pipeline.engines.cosyvoice3.llm import prefill_zero_shot

        c = self.constants
        tail = prompt.speech_tokens if tail is None else np.asarray(tail, np.int64)
        if prefix_state is None:
            self.lm.reset()
            ids = np.concatenate([prompt_text_ids, text_ids])
            return prefill_zero_shot(self.lm, self.text_embedding, ids, tail, c)
        self.lm.load_state(prefix_state)
        if self.lm.n_past != 1 + len(prompt_text_ids):
            raise InputError(f"cached prompt state holds {self.lm.n_past} positions, the prompt text needs "
                             f"{1 + len(prompt_text_ids)}; the voice preset must be recomputed")
        self.lm.prefill(self.text_embedding.lookup(text_ids))
        return self.lm.feed([int(c["task_id"]), *np.asarray(tail).tolist()])

    def generate_tokens(self, text_ids: Sequence[int], prompt_text_ids: Sequence[int], prompt: PromptFeatures, *,
                        rng: np.random.Generator | None = None, temperature: float = 1.0, sampler=None,
                        max_tokens: int | None = None, prefix_state: bytes | None = None,
                        on_progress: Progress | None = None, should_stop: Callable[[], bool] | None = None,
                        on_token: Callable[[int, int], None] | None = None, mode: str = "zero_shot") -> list[int]:
        """Speech tokens for ``text_ids`` in ``mode`` (:mod:`.modes`; ``prompt_text_ids`` is the system
        prefix + transcript in zero_shot, the instruction in instruct2, the system prefix in cross_lingual).
        ``prefix_state`` (llama.cpp after [sos, prompt text]) is used in zero_shot only."""
        from pipeline.engines.cosyvoice3.modes import llm_inputs, mode_name
        from pipeline.engines.cosyvoice3.sampling import generate_tokens

        if len(text_ids) == 0:
            raise InputError("text is empty: nothing to say")
        check_temperature(temperature)
        mode = mode_name(mode)
        rng = rng if rng is not None else np.random.default_rng()
        p_ids, t_ids, tail = llm_inputs(mode, prompt_text_ids, text_ids, prompt.speech_tokens)
        if mode != "zero_shot":
            prefix_state = None
        tids = np.asarray(t_ids, np.int64)
        pids = np.asarray(p_ids, np.int64)
        if on_progress:
            on_progress("prefill", {"positions": len(tids) + len(pids) + len(tail) + 2,
                                    "cached": prefix_state is not None})
        logits = self._prefill(tids, pids, prompt, prefix_state, tail=tail)

        def tick(i: int, tok: int) -> None:
            if on_token:
                on_token(i, tok)
            elif on_progress:
                on_progress("tokens", {"n": i + 1})

        return generate_tokens(self.lm, logits, n_tts_text_tokens=len(tids), constants=self.constants,
                               rng=rng, temperature=temperature, sampler=sampler, max_tokens=max_tokens,
                               on_token=tick, should_stop=should_stop)

    def synthesize(self, text_ids: Sequence[int], prompt_text_ids: Sequence[int], prompt: PromptFeatures, *,
                   rng: np.random.Generator | None = None, temperature: float = 1.0, sampler=None,
                   flow_noise: np.ndarray | None = None, hift_noise: np.ndarray | None = None,
                   prefix_state: bytes | None = None, on_progress: Progress | None = None,
                   should_stop: Callable[[], bool] | None = None, mode: str = "zero_shot",
                   speed: float = 1.0) -> SynthesisResult:
        """Non-streaming synthesis of one text segment in ``mode`` (see :meth:`generate_tokens`); ``speed``
        (0.5-2.0) resamples the mel before the vocoder as upstream does. Returns float32 audio at the bundle's
        rate."""
        from pipeline.engines.cosyvoice3.modes import check_speed, speed_mel
        from pipeline.engines.cosyvoice3.sampling import filter_silent

        speed = check_speed(speed)

        c = self.constants
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        tokens = self.generate_tokens(text_ids, prompt_text_ids, prompt, rng=rng, temperature=temperature,
                                      sampler=sampler, max_tokens=self.max_new_tokens(len(prompt.speech_tokens)),
                                      prefix_state=prefix_state, on_progress=on_progress, should_stop=should_stop,
                                      mode=mode)
        timings["llm"] = time.perf_counter() - t0
        kept = filter_silent(tokens, c["silent_tokens"], c["max_silent_run"])
        if not kept:
            raise InputError("the LLM produced no speech tokens for this text; try another temperature or seed")
        if on_progress:
            on_progress("flow", {"tokens": len(kept)})
        t0 = time.perf_counter()
        mel = self.flow(np.asarray(kept, np.int64), prompt.speech_tokens, prompt.mel, prompt.embedding,
                        noise=flow_noise, should_stop=should_stop)
        timings["flow"] = time.perf_counter() - t0
        mel = speed_mel(mel, speed)
        if on_progress:
            on_progress("vocoder", {"frames": mel.shape[1]})
        t0 = time.perf_counter()
        audio = self.hift(mel, noise=hift_noise)
        timings["vocoder"] = time.perf_counter() - t0
        return SynthesisResult(audio.astype(np.float32), int(c["sample_rate"]), tokens, timings, self.backends)

    def max_new_tokens(self, n_prompt_tokens: int) -> int:
        """Longest generation the fixed noise tables cover (flow mel frames and HiFT samples)."""
        ratio = int(self.constants["token_mel_ratio"])
        frames_flow = self.flow.noise_frames // ratio - n_prompt_tokens
        frames_hift = self.hift.noise_samples // (int(self.constants["samples_per_frame"]) * ratio)
        return max(0, min(frames_flow, frames_hift))


def _features_key(prompt: PromptFeatures) -> str:
    h = hashlib.sha256()
    for a in (prompt.speech_tokens, prompt.mel, prompt.embedding):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:24]


class PromptCacheLRU:
    """Flow prompt caches by voice key, least recently used dropped first when over ``budget_mb``."""

    def __init__(self, budget_mb: float) -> None:
        self.budget = int(budget_mb * 2**20)
        self._d: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str):
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
            return v

    def put(self, key: str, value) -> None:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > 1 and sum(v.nbytes for v in self._d.values()) > self.budget:
                self._d.popitem(last=False)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(v.nbytes for v in self._d.values())

    def __len__(self) -> int:
        return len(self._d)
