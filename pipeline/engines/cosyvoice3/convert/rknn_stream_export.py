"""Converter step: the streaming flow's chunk step as fixed-shape RKNN graphs (``convert --rknn rk3588``).

One graph per (CFG kind, past bucket P): ``flow_chunk.b1.p<P>.rknn`` (one CFG row; the runtime runs the two rows
on two NPU cores) and, on request, ``flow_chunk.b2.p<P>.rknn`` (the CFG pair as a batch of 2). With
``shapes="dynamic"`` one graph per CFG kind (``flow_chunk.b<B>.dyn.rknn``) holds every P as an rknn-toolkit2
shape set, with one copy of the weights. Each is the :class:`~.convert.dit_chunk_npu.NpuChunkDiT`
exported from ``flow.pt`` and checked twice (per P):

1. padding (ONNX Runtime, FP32): on a short chunk with padded past K/V, the valid frames' velocity and new K/V
   equal the bundle's chunk graph (``flow_estimator.chunk.fp32.onnx``) at the exact lengths, and on a full
   chunk the conv tails too — what :class:`pipeline.engines.cosyvoice3.flow_rknn_stream.RknnChunkEstimator` relies on;
2. conversion (rknn-toolkit2 PC simulator, fp16): a full chunk after 60 % of P real past frames (their K/V made
   by the chunk graph itself), t = 0.9, the unconditional row zeroed; every output against ONNX Runtime on the
   same static graph, refused above ``max_rel_err`` × the output's largest magnitude (as the non-streaming graphs).

Every ``.rknn`` embeds its own fp16 copy of the DiT weights (≈ 0.7 GB at CosyVoice3 size), so the number of
static graphs is the disk (and, loaded, RAM) cost.
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines.cosyvoice3.convert.rknn_export import (
    DEFAULT_MAX_REL_ERR,
    SDPA_FUSION_RULE,
    TOOLKIT,
    parse_buckets,
    preflight,
    run_worker,
)
from pipeline.engines.cosyvoice3.flow_rknn import time_freq
from pipeline.engines.cosyvoice3.flow_rknn_stream import MASK_BIAS, NPU_CHUNK_INPUTS, rope_tables
from pipeline.shared.errors import BackendError, SourceError

DEFAULT_PAST_BUCKETS = (500, 1000)
CFG_KINDS = {"split": 1, "batch": 2}
SHAPES = ("static", "dynamic")
PAD_TOL = 1e-4  # FP32 vs FP32: only summation order differs
SIM_PAST_FRACTION = 0.6
SIM_T = 0.9
OUTPUTS = ("velocity", "k_new", "v_new", "conv1_tail", "conv2_tail")


def chunk_file_name(batch: int, past: int | None) -> str:
    """``flow_chunk.b<B>.p<P>.rknn``, or ``flow_chunk.b<B>.dyn.rknn`` for the dynamic-shape graph of all P."""
    return f"flow_chunk.b{int(batch)}.{'dyn' if past is None else f'p{int(past)}'}.rknn"


def chunk_geometry(dit: Any, chunk: int) -> dict[str, Any]:
    """What the runtime needs to feed the graphs of ``dit`` (a :class:`~.convert.dit_torch.DiT`)."""
    from pipeline.engines.cosyvoice3.convert.dit_chunk_npu import NpuChunkDiT

    m = NpuChunkDiT(dit)
    return {
        "chunk": int(chunk), "depth": m.depth, "heads": m.heads, "dim_head": m.dim_head, "dim": m.dim,
        "conv_context": m.conv_context, "mel_bins": m.mel, "spk_dim": m.spk,
        "time_embedding": {"dim": int(dit.time_embed.time_embed.dim), "scale": 1000.0, "max_period": 10000.0},
        "rope_inv_freq": [float(v) for v in dit.rotary_embed.inv_freq.numpy().astype(np.float32)],
    }


def manifest_section(geo: dict[str, Any], graphs: dict[str, list[dict[str, Any]]], *, target: str = "rk3588",
                     toolkit: str = TOOLKIT, max_rel_err: float = DEFAULT_MAX_REL_ERR) -> dict[str, Any]:
    """The ``flow.estimator.rknn_chunk`` manifest section that :mod:`.flow_rknn_stream` reads;
    ``graphs``: {"split"|"batch": [{"past": P, "batch": B, "file": name, …}]}."""
    return {"target": target, "toolkit": toolkit, "dtype": "float16", "inputs": list(NPU_CHUNK_INPUTS),
            "outputs": list(OUTPUTS), **geo, "max_rel_err": max_rel_err, "host": platform.machine(),
            "sim_inputs": {"t": SIM_T, "past_fraction": SIM_PAST_FRACTION, "seed": 0}, "graphs": graphs}


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def _ref(ref: tuple[Path, Path], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The ONNX chunk graph (and its time graph) on these feeds, as the CPU streams with it."""
    from pipeline.engines.cosyvoice3.flow_stream import ChunkEstimator

    return ChunkEstimator(*ref, n_threads=1)(feeds)


class _Case:
    """Inputs of one chunk call in both forms: the ONNX chunk graph's (exact lengths) and the NPU graph's."""

    def __init__(self, geo: dict[str, Any], ref_graph: tuple[Path, Path], batch: int, past: int, n: int, t_valid: int,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        f32 = np.float32
        mel, c, spk = geo["mel_bins"], geo["chunk"], geo["spk_dim"]
        dim, ctx = geo["dim"], geo["conv_context"]
        off = t_valid

        def cfg_pair(shape: tuple[int, ...]) -> np.ndarray:
            a = np.zeros((2, *shape), f32)
            a[0] = rng.standard_normal(shape, dtype=f32)
            return a

        x = np.repeat(rng.standard_normal((1, mel, t_valid + n), dtype=f32), 2, axis=0)
        mu, cond, spks = cfg_pair((mel, t_valid + n)), cfg_pair((mel, t_valid + n)), cfg_pair((spk,))
        cond[:, :, int(0.3 * (t_valid + n)):] = 0.0
        t = np.full((2,), SIM_T, f32)
        depth, heads, dh = geo["depth"], geo["heads"], geo["dim_head"]
        empty = np.zeros((depth, 2, heads, 0, dh), f32)
        zc = np.zeros((2, dim, ctx), f32)
        if t_valid:  # real past K/V and conv context: the chunk graph over the past frames, in one call
            _, kp, vp, c1, c2 = _ref(ref_graph, {
                "x": x[..., :t_valid], "mu": mu[..., :t_valid], "cond": cond[..., :t_valid], "spks": spks, "t": t,
                "offset": np.zeros(1, np.int64), "conv1_cache": zc, "conv2_cache": zc, "k_voice": empty,
                "v_voice": empty, "k_past": empty, "v_past": empty})
        else:
            kp, vp, c1, c2 = empty, empty, zc, zc
        sl = slice(t_valid, t_valid + n)
        self.ref_feeds = {"x": x[..., sl], "mu": mu[..., sl], "cond": cond[..., sl], "spks": spks, "t": t,
                          "offset": np.array([off], np.int64), "conv1_cache": c1, "conv2_cache": c2,
                          "k_voice": empty, "v_voice": empty, "k_past": kp, "v_past": vp}
        cos, sin = rope_tables(off, c, np.asarray(geo["rope_inv_freq"], f32))
        bias = np.zeros((2, past + c), f32)
        bias[..., t_valid:past] = MASK_BIAS
        bias[..., past + n:] = MASK_BIAS

        def pad(a: np.ndarray, axis: int, to: int) -> np.ndarray:
            w = [(0, 0)] * a.ndim
            w[axis] = (0, to - a.shape[axis])
            return np.pad(a, w)

        te = geo["time_embedding"]
        npu = {"x": pad(x[..., sl], 2, c), "mu": pad(mu[..., sl], 2, c), "cond": pad(cond[..., sl], 2, c),
               "spks": spks, "t_freq": time_freq(t, te["dim"], te["scale"], te["max_period"]), "rope_cos": cos,
               "rope_sin": sin, "key_bias": bias, "conv1_cache": c1, "conv2_cache": c2,
               "k_past": pad(kp, 3, past), "v_past": pad(vp, 3, past)}
        b = slice(0, batch)
        self.npu_feeds = {k: np.ascontiguousarray(v if k in ("rope_cos", "rope_sin") else
                                                  (v[:, b] if k in ("k_past", "v_past") else v[b]), f32)
                          for k, v in npu.items()}
        self.batch, self.n, self.full, self.t_valid = batch, n, n == c, t_valid

    def valid(self, outs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The outputs' valid part (batch rows of this case; frames < n; tails only for a full chunk)."""
        n, b = self.n, slice(0, self.batch)
        v = [outs[0][b][..., :n], outs[1][:, b][..., :n, :], outs[2][:, b][..., :n, :]]
        return v + ([outs[3][b], outs[4][b]] if self.full else [])


def _max_err(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> tuple[list[float], list[float]]:
    errs, scales = [], []
    for g, w in zip(got, want, strict=True):
        if g.shape != w.shape:
            raise BackendError(f"output shape {g.shape}, expected {w.shape}")
        g64, w64 = np.asarray(g, np.float64), np.asarray(w, np.float64)
        errs.append(float(np.max(np.abs(g64 - w64))) if np.isfinite(g64).all() else float("inf"))
        scales.append(float(np.max(np.abs(w64))))
    return errs, scales


def _build(onnx_path: Path, rknn_path: Path, pasts: list[int], geo: dict[str, Any], ref_graph: tuple[Path, Path],
           batch: int,
           target: str, python: Path, max_rel_err: float, log: Callable[[str], None]) -> tuple[list[dict], dict]:
    """Check ``onnx_path`` (padding, per past length), build it (several past lengths: rknn-toolkit2's
    ``dynamic_input``, one shape set each) and check every shape set in the simulator; the manifest entries."""
    c, work, tag = geo["chunk"], rknn_path.parent, rknn_path.name
    pads, sims, refs = [], [], []
    for p in pasts:
        pad_err = 0.0
        for n, tv in ((c - 13, p - 7), (c, p // 3)):  # short chunk + padded past; full chunk (tails)
            case = _Case(geo, ref_graph, batch, p, n, tv, seed=1)
            errs, scales = _max_err(case.valid(_ort(onnx_path, case.npu_feeds)),
                                    case.valid(_ref(ref_graph, case.ref_feeds)))
            bad = [f"{OUTPUTS[i]} {e:.3g}" for i, (e, s) in enumerate(zip(errs, scales, strict=True))
                   if not e <= PAD_TOL * max(s, 1.0)]
            if bad:
                raise BackendError(f"{tag} p{p}: the chunk graph on padded inputs differs from {ref_graph[0].name} "
                                   f"at the exact lengths: {', '.join(bad)}")
            pad_err = max(pad_err, *errs)
        sim = _Case(geo, ref_graph, batch, p, c, int(SIM_PAST_FRACTION * p), seed=0)
        refs.append(_ort(onnx_path, sim.npu_feeds))
        np.savez(work / f"{tag}.p{p}.inputs.npz", **sim.npu_feeds)
        pads.append(pad_err)
        sims.append(sim)
    g: dict[str, Any] = {"seq": pasts[0], "onnx": str(onnx_path), "rknn": str(rknn_path),
                         "inputs": [str(work / f"{tag}.p{p}.inputs.npz") for p in pasts],
                         "sim_out": [str(work / f"{tag}.p{p}.sim.npz") for p in pasts]}
    if rknn_path.name.endswith(".dyn.rknn"):
        g["dynamic_input"] = [[list(v.shape) for v in s.npu_feeds.values()] for s in sims]
    log(f"flow stream → RKNN {target} {tag}: rknn-toolkit2 build + simulator check")
    t0 = time.monotonic()
    answer = run_worker(python, {"target": target, "simulate": True, "disable_rules_fallback": [SDPA_FUSION_RULE],
                                 "graphs": [g]},
                        heartbeat=lambda s: log(f"  {tag}: rknn-toolkit2 still working ({s / 60:.0f} min)"))
    res = answer["graphs"][0]
    if not res["ok"]:
        raise BackendError(f"rknn-toolkit2 could not convert {tag}: {res['attempts'][-1]['error']}\n"
                           f"{answer['log_tail']}")
    entries = []
    for p, pad_err, sim, ref, dst in zip(pasts, pads, sims, refs, g["sim_out"], strict=True):
        with np.load(dst) as z:
            got = [z[f"arr_{i}"] for i in range(len(OUTPUTS))]
        errs, scales = _max_err(sim.valid(got), sim.valid(ref))
        for name, e, s in zip(OUTPUTS, errs, scales, strict=True):
            if not e <= max_rel_err * max(s, 1e-6):
                raise BackendError(f"RKNN streaming graph {tag} p{p} refused: simulator {name} max abs error "
                                   f"{e:.3g} exceeds {max_rel_err:g} × max|ONNX Runtime| {s:.3g}")
        entries.append({"past": p, "batch": batch, "disable_rules": res["disable_rules"], "pad_max_abs_err": pad_err,
                        "build_s": res["build_s"], "sim_s": res["sim_s"], "sim_past_frames": sim.t_valid,
                        "sim_max_abs_err": dict(zip(OUTPUTS, errs, strict=True)),
                        "sim_ref_max_abs": dict(zip(OUTPUTS, scales, strict=True))})
        log(f"  {tag} p{p}: simulator max abs err velocity {errs[0]:.3g} (max |ref| {scales[0]:.3g}), k_new "
            f"{errs[1]:.3g} ({scales[1]:.3g}), v_new {errs[2]:.3g} ({scales[2]:.3g}); padding err {pad_err:.2g}")
    log(f"  {tag}: built and simulated in {time.monotonic() - t0:.1f} s "
        f"({(rknn_path.stat().st_size / 2**20):.1f} MB)")
    return entries, answer


def check_options(past_buckets: str | Sequence[int], cfg: Sequence[str],
                  shapes: str = "static") -> tuple[list[int], list[str]]:
    """Parsed past buckets and CFG kinds (in build order); :class:`SourceError` when an option is wrong."""
    kinds = [k for k in CFG_KINDS if k in set(cfg)]
    if not kinds or set(cfg) - set(CFG_KINDS):
        raise SourceError(f"CFG graph kinds {list(cfg)}: choose from {', '.join(CFG_KINDS)}")
    if shapes not in SHAPES:
        raise SourceError(f"RKNN streaming graph shapes {shapes!r}: choose {' or '.join(SHAPES)}")
    return parse_buckets(past_buckets), kinds


def convert_rknn_stream(
    src: Path | str,
    out: Path | str,
    flow_section: dict[str, Any],
    *,
    target: str = "rk3588",
    past_buckets: str | Sequence[int] = DEFAULT_PAST_BUCKETS,
    cfg: Sequence[str] = ("split",),
    shapes: str = "static",
    log: Callable[[str], None] = print,
    rknn_python: Path | str | None = None,
    max_rel_err: float = DEFAULT_MAX_REL_ERR,
) -> dict[str, Any]:
    """Build the streaming chunk graphs into bundle folder ``out`` (after the ONNX chunk graphs are written);
    returns ``{"rknn_chunk": <manifest section for flow.estimator>, "files": [...]}``. ``shapes``: ``static``
    (one graph per past bucket) or ``dynamic`` (one graph per CFG kind holding every bucket as a shape set:
    one copy of the weights; docs/rknn-simulator.md has the measured sizes)."""
    import torch

    from pipeline.engines.cosyvoice3.convert.dit_chunk_npu import export_npu_chunk_onnx
    from pipeline.engines.cosyvoice3.convert.dit_torch import load_dit

    _, kinds = check_options(past_buckets, cfg, shapes)
    src, out = Path(src), Path(out)
    target, buckets, python = preflight(target, past_buckets, rknn_python)
    chunk = flow_section["estimator"]["onnx_chunk"]
    ref_graph = (out / chunk["fp32"], out / chunk["time"])
    dit = load_dit(torch.load(src / "flow.pt", map_location="cpu", weights_only=True))
    geo = chunk_geometry(dit, int(flow_section.get("dims", {}).get("static_chunk_size", 50)))
    c = geo["chunk"]
    work = out / ".rknn-stream-build"
    work.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    files, toolkit = [], None
    try:
        for kind in kinds:
            batch = CFG_KINDS[kind]
            units = [[p] for p in buckets] if shapes == "static" else [list(buckets)]
            for pasts in units:
                name = chunk_file_name(batch, pasts[0] if shapes == "static" else None)
                onnx_path = work / f"{name}.onnx"
                log(f"flow stream → RKNN {target} {name}: {shapes} ONNX export (chunk {c}, past "
                    f"{'/'.join(map(str, pasts))}, batch {batch})")
                export_npu_chunk_onnx(dit, onnx_path, batch=batch, chunk=c, past=pasts[0],
                                      dynamic_past=shapes == "dynamic")
                entries, answer = _build(onnx_path, work / name, pasts, geo, ref_graph, batch, target, python,
                                         max_rel_err, log)
                toolkit = answer.get("toolkit")
                shutil.move(str(work / name), str(out / name))
                size = round((out / name).stat().st_size / 2**20, 2)
                for e in entries:
                    e.update(file=name, size_mb=size, shapes=shapes)
                graphs[kind] += entries
                files.append(name)
                onnx_path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    section = manifest_section(geo, graphs, target=target, toolkit=toolkit or TOOLKIT, max_rel_err=max_rel_err)
    return {"rknn_chunk": section, "files": files}


__all__ = ["DEFAULT_PAST_BUCKETS", "CFG_KINDS", "chunk_file_name", "chunk_geometry", "convert_rknn_stream",
           "manifest_section", "parse_buckets"]
