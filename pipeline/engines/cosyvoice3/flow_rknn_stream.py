"""The streaming flow's chunk estimator on the Rockchip NPU (rknn-toolkit-lite2 ``RKNNLite``).

Same interface as :class:`.flow_stream.ChunkEstimator`, so :class:`~.flow_stream.ChunkedFlow`
drives it unchanged. The NPU wants fixed shapes, so the converter (:mod:`.convert.rknn_stream_export`)
builds the chunk step (:mod:`.convert.dit_chunk_npu`) for a fixed chunk of C = 50 frames and a few past
K/V lengths P (buckets, ``flow_chunk.b<B>.p<P>.rknn``). A call with n ≤ C frames and T = voice + past frames of
K/V runs on the smallest P ≥ T: the chunk is right-padded to C, the K/V to P, and ``key_bias`` masks the padded
keys, so the valid frames see exactly the keys the ONNX chunk graph sees.

CFG split (``cfg="split"``, the default): the conditional and the unconditional row run as two batch-1 graphs
on two NPU cores at the same time (row 0 in the calling thread, row 1 in a helper thread; ``RKNNLite.inference``
waits on the NPU outside the GIL). ``cfg="batch"`` runs the pair as one batch-2 graph on ``core_mask``.

Calls the graphs cannot take run on the ONNX chunk graph on the CPU, logged with the reason: more than C frames
at once (``ChunkedFlow.full``, upstream's full-attention final call) or more past frames than the largest
bucket (``overflow="error"`` refuses the latter instead).
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines.cosyvoice3.flow_rknn import (
    CORE_MASKS,
    OVERFLOW_POLICIES,
    Log,
    choose_bucket,
    core_mask_name,
    parse_core_mask,
    time_freq,
)
from pipeline.shared.errors import BackendError, BundleError, InputError

NPU_CHUNK_INPUTS = ("x", "mu", "cond", "spks", "t_freq", "rope_cos", "rope_sin", "key_bias",
                    "conv1_cache", "conv2_cache", "k_past", "v_past")
CFG_MODES = ("split", "batch")
SPLIT_CORES = (CORE_MASKS["0"], CORE_MASKS["1"])  # row 0 (conditional) on core 0, row 1 on core 1
MASK_BIAS = -10000.0
NPU_CFG_ENV = "COSYVOICE_RK_NPU_CFG"  # split | batch: the streaming graphs' CFG kind (board comparison)
NPU_KV_ENV = "COSYVOICE_RK_NPU_KV"  # fp32 | fp16: the dtype the past K/V inputs are handed to RKNNLite in
KV_INPUT_DTYPES = {"fp32": np.float32, "fp16": np.float16}
_F32 = np.float32


def rope_tables(offset: int, chunk: int, inv_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin (chunk, 2·len(inv_freq)) of the DiT's interleaved RoPE angles for frames offset… in float32
    (torch's order: float32 position × float32 inv_freq; sin/cos in float64 rounded)."""
    p = np.arange(offset, offset + chunk, dtype=_F32)
    f = np.outer(p, np.asarray(inv_freq, _F32)).astype(_F32)
    f = np.repeat(f, 2, axis=1).astype(np.float64)
    return np.cos(f).astype(_F32), np.sin(f).astype(_F32)


class RknnChunkEstimator:
    """See the module doc. ``graphs``: {past frames P: .rknn path} of one batch kind (1 for ``split``, 2 for
    ``batch``); ``geometry``: the manifest's ``flow.estimator.rknn_chunk`` fields (chunk, depth, heads, dim_head,
    dim, conv_context, mel_bins, time_embedding, rope_inv_freq); ``fallback`` builds the ONNX chunk estimator."""

    backend = "rknn-npu"

    def __init__(
        self,
        graphs: Mapping[int, Path | str],
        geometry: Mapping[str, Any],
        *,
        cfg: str = "split",
        core_mask: str | int | None = "auto",
        cache_dtype: Any = np.float16,
        kv_input: str = "fp32",
        fallback: Callable[[], Any] | None = None,
        overflow: str = "onnx",
        preload: Sequence[int] = (),
        target: str = "rk3588",
        log: Log = print,
    ) -> None:
        if not graphs:
            raise BundleError("no RKNN streaming flow graphs given")
        if cfg not in CFG_MODES:
            raise InputError(f"CFG mode {cfg!r}: choose {' or '.join(CFG_MODES)}")
        if overflow not in OVERFLOW_POLICIES:
            raise InputError(f"overflow policy {overflow!r}: choose {' or '.join(OVERFLOW_POLICIES)}")
        try:
            g = geometry
            self.chunk = int(g["chunk"])
            self.depth, self.heads, self.dim_head = int(g["depth"]), int(g["heads"]), int(g["dim_head"])
            self.dim, self.conv_context, self.mel_bins = int(g["dim"]), int(g["conv_context"]), int(g["mel_bins"])
            te = g["time_embedding"]
            self._t_emb = (int(te["dim"]), float(te["scale"]), float(te["max_period"]))
            self._inv_freq = np.asarray(g["rope_inv_freq"], _F32)
            if list(g.get("inputs", NPU_CHUNK_INPUTS)) != list(NPU_CHUNK_INPUTS):
                raise BundleError(f"RKNN chunk graphs take {g['inputs']}, this runtime feeds {list(NPU_CHUNK_INPUTS)}")
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"RKNN streaming flow geometry is malformed ({e!r}); convert again") from e
        self.cfg = cfg
        self.batch = 1 if cfg == "split" else 2
        self.graphs = {int(k): Path(v) for k, v in sorted(graphs.items())}
        self.buckets = list(self.graphs)
        self.core_masks = SPLIT_CORES if cfg == "split" else (parse_core_mask(core_mask),)
        if cfg == "split" and parse_core_mask(core_mask) != CORE_MASKS["auto"]:
            log(f"flow stream: --npu-cores {core_mask_name(parse_core_mask(core_mask))} ignored: the CFG split runs "
                "the two rows on NPU cores 0 and 1")
        self.cache_dtype = np.dtype(cache_dtype).type
        if kv_input not in KV_INPUT_DTYPES:
            raise InputError(f"K/V input type {kv_input!r}: choose {' or '.join(KV_INPUT_DTYPES)}")
        self.kv_input = kv_input
        self.n_threads = 1
        self.overflow = overflow
        self.target = target
        self.log = log
        self._fallback_factory = fallback
        self._fallback: Any = None
        self._said: set[str] = set()
        self._runtimes: dict[Path, list[Any]] = {}
        self._bufs: dict[tuple, tuple[np.ndarray, int]] = {}
        self._lock = threading.Lock()  # one call at a time on the NPU runtimes and the input buffers
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="npu-cfg") if cfg == "split" else None
        self.last_choice: dict[str, Any] = {}
        try:
            self._rknnlite = importlib.import_module("rknnlite.api").RKNNLite
        except Exception as e:
            raise BackendError(f"rknn-toolkit-lite2 does not import ({type(e).__name__}: {e}); the RKNN flow backend "
                               "runs on the RK3588 board only (pip install rknn-toolkit-lite2 there)") from e
        for p in preload:
            self._runtime(int(p))

    @property
    def name(self) -> str:
        cores = "/".join(core_mask_name(m) for m in self.core_masks)
        return (f"rknn-npu streaming ({self.target}, CFG {self.cfg}, chunk {self.chunk}, past buckets "
                f"{'/'.join(f'p{b}' for b in self.buckets)}, cores {cores}, K/V in {self.kv_input})")

    def empty_kv(self, frames: int = 0) -> np.ndarray:
        return np.zeros((self.depth, 2, self.heads, frames, self.dim_head), self.cache_dtype)

    def _runtime(self, past: int) -> list[Any]:
        path = self.graphs[past]  # a dynamic-shape graph serves several buckets: one set of runtimes per file
        rts = self._runtimes.get(path)
        if rts is not None:
            return rts
        t0 = time.monotonic()
        rts = []
        try:
            for mask in self.core_masks:
                rt = self._rknnlite(verbose=False)
                rts.append(rt)
                if rt.load_rknn(str(path)) != 0:
                    raise BackendError(f"RKNNLite cannot read the streaming flow graph {path} (see the rknnlite log)")
                ret = rt.init_runtime(core_mask=mask)
                if ret != 0:
                    raise BackendError(
                        f"RKNNLite.init_runtime failed for {path.name} (status {ret}, core_mask "
                        f"{core_mask_name(mask)}): check the NPU driver and librknnrt.so versions (docs/rk3588.md)")
        except BaseException:
            for rt in rts:
                rt.release()
            raise
        self._runtimes[path] = rts
        self.log(f"flow stream: RKNN graph {path.name} (batch {self.batch}) loaded on NPU core(s) "
                 f"{'/'.join(core_mask_name(m) for m in self.core_masks)} in {time.monotonic() - t0:.1f} s")
        return rts

    def _say(self, key: str, msg: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.log(msg)

    def _cpu(self, feeds: dict[str, np.ndarray], kv: bool, key: str, why: str) -> list[np.ndarray]:
        if self.overflow == "error" and key == "overflow":
            raise BackendError(f"flow stream: {why}; convert with a larger --flow-stream-buckets entry or allow "
                               "the ONNX Runtime fallback")
        if self._fallback is None:
            if self._fallback_factory is None:
                raise BackendError(f"flow stream: {why}, and no ONNX Runtime fallback was given")
            self._fallback = self._fallback_factory()
        self._say(key, f"flow stream: {why}; such calls run on ONNX Runtime CPU (logged once)")
        self.last_choice = {"backend": getattr(self._fallback, "backend", "onnxruntime-cpu"), "past": None}
        return self._fallback(feeds, kv=kv)

    def __call__(self, feeds: dict[str, np.ndarray], *, kv: bool = True) -> list[np.ndarray]:
        n = int(feeds["x"].shape[-1])
        tv, tp = int(feeds["k_voice"].shape[3]), int(feeds["k_past"].shape[3])
        t_all = tv + tp
        if n > self.chunk:
            return self._cpu(feeds, kv, "long", f"a call of {n} frames at once (full attention) is longer than "
                                               f"the NPU chunk of {self.chunk}")
        past = choose_bucket(max(t_all, 1), self.buckets)
        if past is None:
            return self._cpu(feeds, kv, "overflow", f"{t_all} past frames exceed the largest RKNN streaming graph "
                                                   f"p{self.buckets[-1]}")
        rts = self._runtime(past)
        self.last_choice = {"backend": self.backend, "past": past, "padding": past - t_all, "frames": n}
        c = self.chunk
        off = int(np.asarray(feeds["offset"]).reshape(-1)[0])
        cos, sin = rope_tables(off, c, self._inv_freq)
        t_freq = time_freq(np.asarray(feeds["t"], _F32), *self._t_emb)
        bias = np.zeros((2, past + c), _F32)
        bias[..., t_all:past] = MASK_BIAS
        bias[..., past + n:] = MASK_BIAS

        def row(sl: slice) -> list[np.ndarray]:
            def pad(z: np.ndarray) -> np.ndarray:
                out = np.zeros((sl.stop - sl.start, z.shape[1], c), _F32)
                out[..., :n] = z[sl]
                return out

            k, v = (self._kv_buffer(name, past, sl, feeds, tv, t_all) for name in ("k", "v"))
            return [pad(feeds["x"]), pad(feeds["mu"]), pad(feeds["cond"]),
                    np.ascontiguousarray(feeds["spks"][sl], _F32), np.ascontiguousarray(t_freq[sl]), cos, sin,
                    np.ascontiguousarray(bias[sl]), np.ascontiguousarray(feeds["conv1_cache"][sl], _F32),
                    np.ascontiguousarray(feeds["conv2_cache"][sl], _F32), k, v]

        def run(i: int, sl: slice) -> list[np.ndarray]:
            outs = rts[i].inference(inputs=row(sl))
            if outs is None:
                raise BackendError(f"RKNN inference failed on streaming graph p{past} (row {sl.start}, {n} frames, "
                                   f"{t_all} past; see the rknnlite log)")
            b = sl.stop - sl.start
            want = [(b, self.mel_bins, c), (self.depth, b, self.heads, c, self.dim_head),
                    (self.depth, b, self.heads, c, self.dim_head), (b, self.dim, self.conv_context),
                    (b, self.dim, self.conv_context)]
            got = [tuple(np.shape(o)) for o in outs]
            if got != want:
                raise BackendError(f"RKNN streaming graph p{past} returned shapes {got}, expected {want}")
            return outs

        with self._lock:
            if self._pool is not None:
                second = self._pool.submit(run, 1, slice(1, 2))
                try:
                    first = run(0, slice(0, 1))
                finally:
                    wait([second])
                rows = [first, second.result()]
                outs = [np.concatenate([r[k] for r in rows], axis=1 if k in (1, 2) else 0) for k in range(5)]
            else:
                outs = run(0, slice(0, 2))
        vel = np.ascontiguousarray(np.asarray(outs[0], _F32)[:, :, :n])
        if not kv:
            return [vel]
        k_new = np.ascontiguousarray(np.asarray(outs[1])[:, :, :, :n], self.cache_dtype)
        v_new = np.ascontiguousarray(np.asarray(outs[2])[:, :, :, :n], self.cache_dtype)
        tails = [np.asarray(outs[3], _F32), np.asarray(outs[4], _F32)]
        if n < c:  # the graph's tails are those of the padded chunk: never carry them (a short chunk is the last)
            tails = [np.full_like(z, np.nan) for z in tails]
        return [vel, k_new, v_new, *tails]

    def _kv_buffer(self, name: str, past: int, sl: slice, feeds: dict[str, np.ndarray], tv: int,
                   t_all: int) -> np.ndarray:
        """The padded K or V input of the rows ``sl`` (depth, rows, heads, past, dim_head) in ``kv_input``
        (float32, which RKNNLite converts to the graph's fp16; float16 hands the fp16 cache over as is): the voice's
        frames, then the request's, then zeros (masked). One buffer per (name, bucket, rows) is kept and
        refilled, so a call copies the caches once and only re-zeroes what the last call left past ``t_all``.
        Callers of one estimator never overlap (each row's buffer is used by one thread)."""
        key = (name, past, sl.start, sl.stop)
        buf, used = self._bufs.get(key, (None, 0))
        if buf is None:
            buf = np.zeros((self.depth, sl.stop - sl.start, self.heads, past, self.dim_head),
                           KV_INPUT_DTYPES[self.kv_input])
        buf[:, :, :, :tv] = feeds[f"{name}_voice"][:, sl]
        buf[:, :, :, tv:t_all] = feeds[f"{name}_past"][:, sl]
        if used > t_all:
            buf[:, :, :, t_all:used] = 0.0
        self._bufs[key] = (buf, t_all)
        return buf

    def close(self) -> None:
        for rts in self._runtimes.values():
            for rt in rts:
                rt.release()
        self._runtimes.clear()
        self._bufs.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def rknn_chunk_section(bundle: Any) -> dict | None:
    """The manifest's ``flow.estimator.rknn_chunk`` section, or None when the bundle has no streaming graphs."""
    sec = bundle.manifest.get("flow", {}).get("estimator", {}).get("rknn_chunk")
    return sec if sec else None


def make_chunk_estimator(
    bundle: Any,
    backend: str = "auto",
    *,
    cache: str = "fp16",
    n_threads: int | None = None,
    spin: bool = True,
    core_mask: str | int | None = "auto",
    cfg: str | None = None,
    overflow: str = "onnx",
    log: Log = print,
    detect: Callable[[str], tuple[bool, str]] | None = None,
) -> tuple[Any, str]:
    """The streaming flow's chunk estimator for ``--flow-backend auto|rknn|onnx`` and the reason (also logged),
    with the rules of :func:`.flow_rknn.make_estimator`: ``auto`` takes the NPU only when the bundle has
    RKNN streaming graphs of the ``cfg`` kind and ``detect`` finds the NPU and its runtime, and falls back to the
    ONNX chunk graph (``cache`` fp16/fp32) saying why; ``rknn`` raises instead of falling back. ``cfg``: split or
    batch; default ``$COSYVOICE_RK_NPU_CFG``, else split."""
    from pipeline.engines.cosyvoice3.flow_rknn import BACKENDS, detect_npu
    from pipeline.engines.cosyvoice3.flow_stream import CACHE_DTYPES, ChunkEstimator, chunk_graph_paths

    backend = (backend or "auto").strip().lower()
    cfg = cfg or os.environ.get(NPU_CFG_ENV) or "split"
    if backend not in BACKENDS:
        raise InputError(f"flow backend {backend!r}: choose {', '.join(BACKENDS)}")
    if cfg not in CFG_MODES:
        raise InputError(f"CFG mode {cfg!r}: choose {' or '.join(CFG_MODES)}")
    if cache not in CACHE_DTYPES:
        raise InputError(f"flow cache type must be one of {', '.join(CACHE_DTYPES)}, not {cache!r}")
    onnx_graphs = chunk_graph_paths(bundle, cache)

    def onnx_est() -> ChunkEstimator:
        return ChunkEstimator(*onnx_graphs, n_threads=n_threads, spin=spin)

    def onnx(why: str) -> tuple[Any, str]:
        est = onnx_est()
        reason = f"streaming flow on ONNX Runtime CPU ({cache} K/V cache): {why}"
        log(reason)
        return est, reason

    if backend == "onnx":
        return onnx("--flow-backend onnx asked for it")
    sec = rknn_chunk_section(bundle)
    graphs = (sec or {}).get("graphs", {}).get(cfg) if sec else None
    if not graphs:
        why = ("the bundle has no RKNN streaming graphs (convert with --rknn rk3588)" if sec is None else
               f"the bundle has no RKNN streaming graphs for CFG {cfg} (built: {', '.join(sec.get('graphs', {}))})")
        if backend == "rknn":
            raise BackendError(f"--flow-backend rknn: {why}")
        return onnx(why)
    ok, why = (detect or detect_npu)(str(sec.get("target", "rk3588")))
    if not ok:
        if backend == "rknn":
            raise BackendError(f"--flow-backend rknn: {why}")
        return onnx(why)
    try:
        paths = {int(g["past"]): bundle.path(g["file"]) for g in graphs}
        est = RknnChunkEstimator(paths, sec, cfg=cfg, core_mask=core_mask, cache_dtype=CACHE_DTYPES[cache],
                                 kv_input=os.environ.get(NPU_KV_ENV) or "fp32",
                                 fallback=onnx_est, overflow=overflow, preload=[min(paths)],
                                 target=str(sec.get("target", "rk3588")), log=log)
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"bundle {bundle.root}: manifest flow.estimator.rknn_chunk is malformed ({e!r}); "
                          "convert again") from e
    except BackendError as e:
        if backend == "rknn":
            raise
        return onnx(f"the NPU was detected ({why}) but the RKNN runtime failed: {e}")
    reason = (f"streaming flow on the RKNN NPU ({'asked for' if backend == 'rknn' else 'auto'}: {why}); {est.name}; "
              f"calls longer than the chunk or past the largest bucket run on ONNX Runtime CPU, logged")
    log(reason)
    return est, reason
