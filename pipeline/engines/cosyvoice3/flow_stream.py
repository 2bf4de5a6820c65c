"""Streaming flow in O(n): one 50-frame chunk at a time, every frame computed once.

Upstream's streaming flow (spec §4.4–4.5, §6.2) re-runs the DiT over prompt + all tokens so far with a
static chunk mask on every call. The chunk mask, the causal convs and the fixed noise make chunk c's whole
Euler trajectory depend only on chunks <= c, so here each chunk is solved once, with the attention K/V of the
earlier chunks (per Euler step, block and CFG row) and the position convs' left context carried in the
request (:class:`FlowRequest`). The chunks of a voice's prompt that no generated token can reach are solved
once per voice (:class:`PromptCache`) and shared read-only by every request of that voice.

The estimator is the bundle's chunk graph (``flow.estimator.onnx_chunk``, exported by
:mod:`.convert.dit_chunk`); with empty caches and the whole sequence as one chunk it is upstream's
non-streaming full attention, which :meth:`ChunkedFlow.full` uses for the upstream-style final call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines.cosyvoice3.flow import Flow, euler
from pipeline.shared.errors import BackendError, BundleError, InputError

CACHE_DTYPES = {"fp32": np.float32, "fp16": np.float16}
CHUNK_FORMAT = 2  # pipeline.engines.cosyvoice3.convert.flow_stream_export.CHUNK_FORMAT
# several whole chunks in one estimator call (the graph's in-call chunk mask): fewer, larger calls use the
# cores better; the cap bounds the attention scores' memory
MAX_CHUNKS_PER_CALL = 8
_F32 = np.float32
_HEAD = ("x", "mu", "cond", "spks", "mod", "mod_out", "offset", "bias", "conv1_cache", "conv2_cache")


def chunk_graph_paths(bundle: Any, cache: str) -> tuple[Path, Path, Path | None]:
    """The bundle's chunk graph for ``cache``, its time-modulation graph and the table of that graph's output
    for the bundle's own schedule (None in a bundle without it), or a clear error."""
    if cache not in CACHE_DTYPES:
        raise InputError(f"flow cache type must be one of {', '.join(CACHE_DTYPES)}, not {cache!r}")
    files = bundle.manifest["flow"]["estimator"].get("onnx_chunk") or {}
    if cache not in files:
        raise BundleError(f"bundle {bundle.root} has no streaming flow graph ({cache} cache); convert it again "
                          "with this version to stream")
    if files.get("format") != CHUNK_FORMAT or "time" not in files:
        raise BundleError(f"bundle {bundle.root} has streaming flow graphs of an older layout; convert it again "
                          "with this version to stream")
    table = bundle.path(files["time_table"]) if files.get("time_table") else None
    return bundle.path(files[cache]), bundle.path(files["time"]), table


def euler_times(ts: np.ndarray) -> list[np.ndarray]:
    """The t values :func:`.flow.euler` feeds the estimator, step by step (its float32 running sum)."""
    t, dt = ts[0:1].copy(), ts[1] - ts[0]
    out = []
    for step in range(1, len(ts)):
        out.append(t.copy())
        t = t + dt
        if step < len(ts) - 1:
            dt = ts[step + 1] - t
    return out


class ChunkEstimator:
    """The chunk graph on ONNX Runtime's CPU provider.

    Takes the feeds :class:`ChunkedFlow` builds (stacked caches, ``t``) and gives the graph what it wants: each
    block's cache as a view (no copy) and the AdaLN modulation for ``t``: from the bundle's table for its own
    schedule (10 steps: 5.5 MB), else computed by the time graph once per time value and kept (the graph's
    0.55 GB of weights are loaded for that and freed after)."""

    backend = "onnxruntime-cpu"
    multi_chunk = True

    def __init__(self, path: Path | str, time_path: Path | str, time_table: Path | str | None = None, *,
                 n_threads: int | None = None, spin: bool = True) -> None:
        import onnxruntime as ort

        from pipeline.shared.llama import default_threads

        self.path, self.time_path = Path(path), Path(time_path)
        self.n_threads = int(n_threads or default_threads())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.n_threads
        opts.inter_op_num_threads = 1
        if not spin:  # other stages share the cores while a request streams: do not busy-wait
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._opts = opts
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BackendError(f"ONNX Runtime cannot load the streaming flow estimator {self.path}: {e}") from e
        ins = {i.name: i for i in self.session.get_inputs()}
        self.depth = sum(1 for n in ins if n.startswith("k_voice_"))
        want = [*_HEAD, *(f"{k}_{p}_{i}" for i in range(self.depth) for p in ("voice", "past") for k in "kv")]
        if sorted(ins) != sorted(want):
            raise BundleError(f"{self.path.name} does not have the chunk graph's inputs ({sorted(ins)[:12]}…); "
                              "convert the bundle again with this version")
        self.cache_dtype = np.float16 if ins["k_past_0"].type == "tensor(float16)" else np.float32
        shape = ins["k_past_0"].shape  # (batch, heads, frames, dim_head)
        self.heads, self.dim_head = int(shape[1]), int(shape[3])
        self.dim = int(ins["conv1_cache"].shape[1])
        self.conv_context = int(ins["conv1_cache"].shape[2])
        self._outs = [o.name for o in self.session.get_outputs()]
        self._mods: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        if time_table is not None:  # the bundle's own schedule: the time graph is never loaded
            try:
                with np.load(time_table) as z:
                    for i, t in enumerate(np.asarray(z["t"], _F32)):
                        self._mods[t.reshape(1).tobytes()] = (np.ascontiguousarray(z["mod"][i], _F32),
                                                              np.ascontiguousarray(z["mod_out"][i], _F32))
            except (OSError, KeyError, ValueError) as e:
                raise BundleError(f"the flow time table {time_table} cannot be read ({e}); run check on the "
                                  "bundle") from e

    def empty_kv(self, frames: int = 0) -> np.ndarray:
        return np.zeros((self.depth, 2, self.heads, frames, self.dim_head), self.cache_dtype)

    def prepare(self, times: list[np.ndarray]) -> None:
        """Compute the modulation for these t values (one time-graph session, freed after)."""
        import onnxruntime as ort

        todo = [np.asarray(t, _F32).reshape(1) for t in times if np.asarray(t, _F32).tobytes() not in self._mods]
        if not todo:
            return
        try:
            sess = ort.InferenceSession(str(self.time_path), self._opts, providers=["CPUExecutionProvider"])
            mod, mod_out = sess.run(None, {"t": np.concatenate(todo)})
        except Exception as e:
            raise BackendError(f"ONNX Runtime cannot run the flow time graph {self.time_path}: {e}") from e
        for i, t in enumerate(todo):
            self._mods[t.tobytes()] = (np.ascontiguousarray(mod[i]), np.ascontiguousarray(mod_out[i]))

    def __call__(self, feeds: dict[str, np.ndarray], *, kv: bool = True) -> list[np.ndarray]:
        t = np.asarray(feeds["t"], _F32)
        if np.any(t != t.flat[0]):
            raise BackendError("the streaming flow estimator takes one t for both CFG rows")
        key = t.reshape(-1)[:1].tobytes()
        if key not in self._mods:
            self.prepare([t.reshape(-1)[:1]])
        mod, mod_out = self._mods[key]
        n = feeds["x"].shape[-1]
        run = {"x": feeds["x"], "mu": feeds["mu"], "cond": feeds["cond"], "spks": feeds["spks"], "mod": mod,
               "mod_out": mod_out, "offset": feeds["offset"], "conv1_cache": feeds["conv1_cache"],
               "conv2_cache": feeds["conv2_cache"]}
        run["bias"] = feeds["bias"] if "bias" in feeds else np.zeros((n, n), _F32)
        for part in ("voice", "past"):
            k, v = feeds[f"k_{part}"], feeds[f"v_{part}"]
            for i in range(self.depth):
                run[f"k_{part}_{i}"] = k[i]
                run[f"v_{part}_{i}"] = v[i]
        names = self._outs if kv else self._outs[:1]
        try:
            return self.session.run(names, run)
        except Exception as e:
            raise BackendError(f"streaming flow estimator failed on {n} frames: {e}") from e


@dataclass
class StepState:
    """What one Euler step carries from chunk to chunk: K/V of the frames so far and the conv context."""

    k: np.ndarray  # (depth, 2, heads, frames, dim_head)
    v: np.ndarray
    conv1: np.ndarray  # (2, dim, K-1)
    conv2: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.conv1.nbytes + self.conv2.nbytes


@dataclass
class PromptCache:
    """A voice's prompt chunks, solved once: ``frames`` (a multiple of the chunk) and one state per step."""

    frames: int
    steps: list[StepState]
    key: str = ""
    build_s: float = 0.0

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.steps)


@dataclass
class FlowRequest:
    """Per-request streaming state. ``frames_done``: frames from the prompt start solved so far."""

    tokens: list[int]  # prompt + generated so far
    n_prompt: int
    spks: np.ndarray
    cond: np.ndarray  # (M, 2P) prompt mel
    voice: PromptCache | None
    past: list[StepState]
    frames_done: int
    stats: dict[str, float] = field(default_factory=lambda: {"chunks": 0, "calls": 0, "frames": 0})


class ChunkedFlow:
    """Streaming flow over a :class:`Flow` (frontend, noise, solver constants) and a :class:`ChunkEstimator`."""

    def __init__(self, flow: Flow, estimator: ChunkEstimator, *, chunk_frames: int) -> None:
        self.flow = flow
        self.est = estimator
        self.chunk = int(chunk_frames)
        self.ratio = flow.token_mel_ratio
        if self.chunk % self.ratio:
            raise BundleError(f"flow chunk of {self.chunk} frames is not a whole number of tokens")
        self.chunk_tokens = self.chunk // self.ratio
        self.mel_bins = flow.mel_bins
        self.max_chunks = MAX_CHUNKS_PER_CALL if getattr(estimator, "multi_chunk", False) else 1
        if hasattr(estimator, "prepare"):
            estimator.prepare(euler_times(flow.t_span()))

    @classmethod
    def from_bundle(cls, bundle: Any, flow: Flow, *, n_threads: int | None = None, cache: str = "fp16",
                    spin: bool = True, backend: str = "onnx", npu: dict[str, Any] | None = None) -> ChunkedFlow:
        """``backend`` auto|rknn|onnx (:func:`.flow_rknn_stream.make_chunk_estimator`, which takes the
        ``npu`` options core_mask, cfg, overflow, log); ``onnx`` (the default) is the ONNX chunk graph."""
        sec = bundle.manifest["flow"]
        paths = chunk_graph_paths(bundle, cache)
        dims = sec.get("dims", {})
        if int(dims.get("num_decoding_left_chunks", -1)) != -1:
            raise BundleError("this flow was trained with a limited left context (num_decoding_left_chunks = "
                              f"{dims['num_decoding_left_chunks']}); streaming supports all left chunks only")
        if backend == "onnx":
            est: Any = ChunkEstimator(*paths, n_threads=n_threads, spin=spin)
        else:
            from pipeline.engines.cosyvoice3.flow_rknn_stream import make_chunk_estimator

            est, _ = make_chunk_estimator(bundle, backend, cache=cache, n_threads=n_threads, spin=spin, **(npu or {}))
        return cls(flow, est, chunk_frames=int(dims.get("static_chunk_size", 50)))

    # -- geometry -----------------------------------------------------------------------------------
    def voice_frames(self, n_prompt: int) -> int:
        """Prompt frames in whole chunks that no generated token reaches through the pre-lookahead conv."""
        la = self.flow.frontend.pre_lookahead_len
        return max(0, (self.ratio * (n_prompt - la)) // self.chunk * self.chunk)

    # -- requests -----------------------------------------------------------------------------------
    def _speaker(self, prompt: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        toks = np.asarray(prompt.speech_tokens, np.int64)
        mel = np.asarray(prompt.mel, _F32)
        if mel.shape != (self.ratio * toks.size, self.mel_bins):
            raise InputError(f"prompt mel has shape {mel.shape}, expected ({self.ratio * toks.size}, "
                             f"{self.mel_bins})")
        if toks.size and toks.max() >= self.flow.frontend.vocab_size:
            raise InputError(f"prompt speech tokens contain id {int(toks.max())} beyond the flow vocabulary")
        return toks, np.ascontiguousarray(mel.T), self.flow.frontend.speaker(prompt.embedding)

    def _fresh_steps(self) -> list[StepState]:
        z = np.zeros((2, self.est.dim, self.est.conv_context), _F32)
        return [StepState(self.est.empty_kv(), self.est.empty_kv(), z, z) for _ in range(self.flow.n_timesteps)]

    def build_prompt_cache(self, prompt: Any, *, key: str = "",
                           should_stop: Callable[[], bool] | None = None) -> PromptCache:
        """Solve the voice's request-independent prompt chunks once."""
        import time

        t0 = time.perf_counter()
        toks, cond, spks = self._speaker(prompt)
        req = FlowRequest(toks.tolist(), toks.size, spks, cond, None, self._fresh_steps(), 0)
        frames = self.voice_frames(toks.size)
        while req.frames_done < frames:
            self._solve_next(req, finalize=False, upto=frames, should_stop=should_stop)
        return PromptCache(frames, req.past, key, time.perf_counter() - t0)

    def start(self, prompt: Any, cache: PromptCache | None = None) -> FlowRequest:
        toks, cond, spks = self._speaker(prompt)
        if cache is not None and cache.frames != self.voice_frames(toks.size):
            raise InputError("the voice's flow prompt cache does not match its prompt; rebuild it")
        if cache is None:
            return FlowRequest(toks.tolist(), toks.size, spks, cond, None, self._fresh_steps(), 0)
        past = [StepState(self.est.empty_kv(), self.est.empty_kv(), s.conv1, s.conv2) for s in cache.steps]
        return FlowRequest(toks.tolist(), toks.size, spks, cond, cache, past, cache.frames)

    def ready_frames(self, req: FlowRequest, *, finalize: bool) -> int:
        """Frames (from the prompt start) that can be solved with the tokens known now."""
        total = self.ratio * len(req.tokens)
        if finalize:
            return total
        la = self.flow.frontend.pre_lookahead_len
        return max(req.frames_done, (self.ratio * (len(req.tokens) - la)) // self.chunk * self.chunk)

    def advance(self, req: FlowRequest, new_tokens: list[int], upto: int, *, finalize: bool,
                should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """Append ``new_tokens``, solve chunks until frame ``upto`` (from the prompt start; a chunk boundary
        unless ``finalize``) and return the generated mel frames solved by this call (M, n)."""
        req.tokens.extend(int(t) for t in new_tokens)
        if upto > self.ready_frames(req, finalize=finalize):
            raise InputError(f"frame {upto} needs more tokens than the {len(req.tokens)} known")
        start = req.frames_done
        mels = []
        while req.frames_done < upto:
            mels.append(self._solve_next(req, finalize=finalize, upto=upto, should_stop=should_stop))
        mel = np.concatenate(mels, axis=1) if mels else np.zeros((self.mel_bins, 0), _F32)
        skip = max(0, self.ratio * req.n_prompt - start)  # prompt frames in the first chunk are not output
        return np.ascontiguousarray(mel[:, skip:])

    def _solve_next(self, req: FlowRequest, *, finalize: bool, upto: int,
                    should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        a = req.frames_done
        # up to max_chunks per call; the voice's cached part ends a call, so that a request groups its chunks
        # the same with or without the cache (a call's shape changes the float rounding)
        vf = self.voice_frames(req.n_prompt)
        b = min(a + self.chunk * self.max_chunks, upto, vf if a < vf else upto)
        keep = (b - a) % self.chunk == 0  # a partial chunk is the last one: nothing attends to it later
        return self._solve(req, a, b, finalize=finalize, keep=keep, should_stop=should_stop)

    def _solve(self, req: FlowRequest, a: int, b: int, *, finalize: bool, keep: bool, chunked: bool = True,
               should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """Solve frames [a, b) with everything before ``a`` in ``req``'s caches; returns x (M, b − a).
        ``chunked``: upstream's chunk mask among these frames (else full attention: the upstream final call)."""
        t0, t1 = a // self.ratio, b // self.ratio
        toks = np.asarray(req.tokens, np.int64)
        if toks.max(initial=0) >= self.flow.frontend.vocab_size:
            raise InputError(f"speech tokens contain id {int(toks.max())} beyond the flow vocabulary")
        mu = self.flow.frontend.encode_range(toks, t0, t1, finalize=finalize)
        n = b - a
        m = self.mel_bins
        if b > self.flow.noise_frames:
            raise InputError(f"prompt + speech need {b} mel frames but the flow noise table holds "
                             f"{self.flow.noise_frames}; use a shorter prompt or split the text")
        feeds = {
            "mu": np.zeros((2, m, n), _F32), "cond": np.zeros((2, m, n), _F32),
            "spks": np.zeros((2, req.spks.size), _F32), "offset": np.array([a], np.int64),
        }
        feeds["mu"][0] = mu
        p_end = min(b, req.cond.shape[1])
        if p_end > a:
            feeds["cond"][0, :, : p_end - a] = req.cond[:, a:p_end]
        feeds["spks"][0] = req.spks
        if chunked and n > self.chunk:
            i = np.arange(a, b) // self.chunk
            feeds["bias"] = np.where(i[None, :] <= i[:, None], _F32(0.0), _F32(-np.inf)).astype(_F32)
        voice = req.voice.steps if req.voice is not None else None
        empty = self.est.empty_kv()
        x_in = np.zeros((2, m, n), _F32)
        t_in = np.zeros((2,), _F32)

        def velocity(step: int, x: np.ndarray, t: np.ndarray) -> np.ndarray:
            st = req.past[step - 1]
            x_in[:] = x
            t_in[:] = t
            vs = voice[step - 1] if voice is not None else None
            feeds.update(x=x_in, t=t_in, conv1_cache=st.conv1, conv2_cache=st.conv2,
                         k_voice=vs.k if vs else empty, v_voice=vs.v if vs else empty, k_past=st.k, v_past=st.v)
            out, k_new, v_new, c1, c2 = self.est(feeds)
            if keep:
                st.k = np.concatenate([st.k, k_new], axis=3)
                st.v = np.concatenate([st.v, v_new], axis=3)
                st.conv1, st.conv2 = c1, c2
            return out

        x = euler(np.array(self.flow.noise[0, :, a:b], _F32), self.flow.t_span(), self.flow.cfg_rate, velocity,
                  should_stop=should_stop)
        req.frames_done = b
        req.stats["chunks"] += -(-n // self.chunk)
        req.stats["calls"] += 1
        req.stats["frames"] += n
        return x

    def full(self, prompt: Any, tokens: np.ndarray, *, should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """Upstream's non-streaming (full attention) flow through the chunk graph: generated mel (M, ratio·N)."""
        toks, cond, spks = self._speaker(prompt)
        req = FlowRequest([*toks.tolist(), *np.asarray(tokens, np.int64).tolist()], toks.size, spks, cond, None,
                          self._fresh_steps(), 0)
        # one chunk that is the whole sequence: full attention
        mel = self._solve(req, 0, self.ratio * len(req.tokens), finalize=True, keep=False, chunked=False,
                          should_stop=should_stop)
        return np.ascontiguousarray(mel[:, self.ratio * toks.size:])
