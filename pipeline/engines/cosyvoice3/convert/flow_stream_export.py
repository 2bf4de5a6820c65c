"""Converter step: the streaming flow's graphs (``flow_estimator.chunk.fp32.onnx``, ``.chunk.fp16.onnx`` and the
time-modulation graph ``flow_estimator.time.onnx``).

Exported from ``flow.pt`` through the project's torch DiT (:mod:`.convert.dit_chunk`), checked against
that DiT's chunk-masked full-sequence output, and saved with every weight pointing into the plain estimator's
external data file (``flow_estimator.onnx.data``), so the bundle holds one copy of the weights and ONNX Runtime
memory-maps the same file. The two chunk graphs differ only in the K/V cache tensors' type (the runtime's
``--flow-cache``); both take the AdaLN modulation the time graph computes once per Euler step.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.errors import SourceError

CHUNK_NAMES = {"fp32": "flow_estimator.chunk.fp32.onnx", "fp16": "flow_estimator.chunk.fp16.onnx"}
TIME_NAME = "flow_estimator.time.onnx"
# the time graph's output for the bundle's own Euler schedule, so that the runtime need not load it (0.55 GB)
TIME_TABLE_NAME = "flow_estimator.time_table.npz"
# the graph layout the runtime expects (2: per-block cache inputs, a separate time graph, an in-call chunk mask)
CHUNK_FORMAT = 2
# the chunked graph against the torch DiT run over the whole sequence with upstream's chunk mask
CHECK_TOLERANCE = {"fp32": 1e-4, "fp16": 5e-2}
_MIN_EXTERNAL = 1024


def convert_flow_chunks(src: Path, out: Path, section: dict[str, Any], *,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the chunk graphs into bundle folder ``out`` (after :func:`convert_flow_fast`, whose external data
    file they share); returns the flow section with ``estimator.onnx_chunk`` and the new files."""
    import torch

    from pipeline.engines.cosyvoice3.convert.dit_chunk import export_chunk_onnx, export_time_onnx
    from pipeline.engines.cosyvoice3.convert.dit_torch import load_dit

    out = Path(out)
    sec = dict(section)
    est = dict(sec["estimator"])
    data_name = est["onnx"] + ".data"
    if not (out / data_name).is_file():
        raise SourceError(f"{data_name} is missing: the chunk graphs share the estimator's external data")
    sd = torch.load(Path(src) / "flow.pt", map_location="cpu", weights_only=True)
    dit = load_dit(sd)
    index = _data_index(out / est["onnx"], out / data_name)
    chunk_frames = int(sec.get("dims", {}).get("static_chunk_size", 50))
    names: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        raw = Path(tmp) / "time.onnx"
        export_time_onnx(dit, raw)
        _share_weights(raw, out / TIME_NAME, index, data_name)
    names["time"] = TIME_NAME
    names["time_table"] = write_time_table(out / TIME_NAME, out / TIME_TABLE_NAME, sec)
    for kind, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        name = CHUNK_NAMES[kind]
        log(f"flow → streaming chunk graph ({kind} K/V cache)")
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            raw = Path(tmp) / "chunk.onnx"
            export_chunk_onnx(dit, raw, cache_dtype=dtype)
            _share_weights(raw, out / name, index, data_name)
        err = check_chunk_graph(out / name, out / TIME_NAME, dit, chunk_frames)
        if err > CHECK_TOLERANCE[kind]:
            raise SourceError(f"{name}: chunked output differs from the chunk-masked DiT by {err:.3g}")
        log(f"  chunked vs chunk-masked DiT: max abs {err:.2e}")
        names[kind] = name
    names["format"] = CHUNK_FORMAT
    est["onnx_chunk"] = names
    sec["estimator"] = est
    sec["files"] = list(dict.fromkeys([*sec["files"], *(v for v in names.values() if isinstance(v, str))]))
    return sec


def write_time_table(time_graph: Path, dst: Path, section: dict[str, Any]) -> str:
    """Run the time graph on the t values of the flow's Euler schedule (as the solver accumulates them) and
    save them with the results; returns the file name."""
    import onnxruntime as ort

    from pipeline.engines.cosyvoice3.flow import t_span
    from pipeline.engines.cosyvoice3.flow_stream import euler_times

    ts = euler_times(t_span(int(section["n_timesteps"]), str(section.get("t_scheduler", "cosine"))))
    t = np.concatenate(ts).astype(np.float32)
    mod, mod_out = ort.InferenceSession(str(time_graph), providers=["CPUExecutionProvider"]).run(None, {"t": t})
    tmp = dst.with_name(f".{dst.name}.tmp.npz")
    np.savez(tmp, t=t, mod=mod, mod_out=mod_out)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)
    return dst.name


def _data_index(graph: Path, data: Path) -> dict[bytes, tuple[int, int]]:
    """Digest of each external tensor of ``graph`` → (offset, length) in ``data``."""
    import onnx

    m = onnx.load(str(graph), load_external_data=False)
    index: dict[bytes, tuple[int, int]] = {}
    with open(data, "rb") as f:
        for t in m.graph.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in t.external_data}
            off, n = int(info.get("offset", 0)), int(info["length"])
            f.seek(off)
            index[_digest(t.data_type, f.read(n))] = (off, n)
    return index


def _digest(dtype: int, raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16, person=dtype.to_bytes(16, "little")).digest()


def _share_weights(raw: Path, dst: Path, index: dict[bytes, tuple[int, int]], data_name: str) -> None:
    """Save ``raw`` as ``dst`` with each large initializer that has the same bytes in the shared data file
    pointing there. A large initializer with no twin there (none is expected) is an error."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(raw))
    missing = []
    for t in m.graph.initializer:
        arr = numpy_helper.to_array(t)
        if arr.nbytes < _MIN_EXTERNAL:
            continue
        hit = index.get(_digest(t.data_type, np.ascontiguousarray(arr).tobytes()))
        if hit is None:
            missing.append(t.name)
            continue
        t.ClearField("raw_data")
        for f in ("float_data", "int32_data", "int64_data", "double_data"):
            t.ClearField(f)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", data_name), ("offset", str(hit[0])), ("length", str(hit[1]))):
            e = t.external_data.add()
            e.key, e.value = k, v
    if missing:
        raise SourceError(f"chunk graph weights not found in {data_name}: {', '.join(missing[:5])}")
    tmp = dst.with_name(f".{dst.name}.tmp")
    onnx.save_model(m, str(tmp))
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)


def check_chunk_graph(path: Path, time_path: Path, dit: Any, chunk_frames: int, frames: int = 130,
                      seed: int = 0) -> float:
    """Run ``path`` over random inputs, chunk by chunk and then two chunks per call (the in-call chunk mask),
    and compare with the torch DiT over the whole sequence with upstream's static chunk mask; returns the max
    abs difference."""
    import onnxruntime as ort
    import torch

    from pipeline.engines.cosyvoice3.convert.dit_chunk import ChunkDiT, cache_input_names

    cd = ChunkDiT(dit)
    mel = dit.proj_out.out_features
    spk = dit.input_embed.proj.in_features - 3 * mel
    g = torch.Generator().manual_seed(seed)
    x, mu, cond = (torch.randn(2, mel, frames, generator=g) for _ in range(3))
    spks, t = torch.randn(2, spk, generator=g), torch.rand(1, generator=g).repeat(2)
    ref = _chunk_masked(dit, x, mu, cond, spks, t, chunk_frames).numpy()
    mod, mod_out = ort.InferenceSession(str(time_path), providers=["CPUExecutionProvider"]).run(
        None, {"t": t[:1].numpy()})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cache_t = np.float16 if sess.get_inputs()[-1].type == "tensor(float16)" else np.float32
    names = cache_input_names(cd.depth)
    err = 0.0
    for per_call in (1, 2):
        kv = np.zeros((cd.depth, 2, 2, cd.heads, 0, cd.dim_head), cache_t)  # block, k/v, batch, heads, T, dh
        c1 = c2 = np.zeros((2, cd.dim, cd.conv_context), np.float32)
        outs = []
        for a in range(0, frames, per_call * chunk_frames):
            b = min(frames, a + per_call * chunk_frames)
            i = np.arange(a, b)
            bias = np.where(i[None, :] // chunk_frames <= i[:, None] // chunk_frames, 0.0, -np.inf)
            feeds = {"x": x[:, :, a:b].numpy(), "mu": mu[:, :, a:b].numpy(), "cond": cond[:, :, a:b].numpy(),
                     "spks": spks.numpy(), "mod": mod[0], "mod_out": mod_out[0], "offset": np.array([a], np.int64),
                     "bias": bias.astype(np.float32), "conv1_cache": c1, "conv2_cache": c2}
            empty = np.zeros((2, cd.heads, 0, cd.dim_head), cache_t)
            for n in names:
                blk, kind = int(n.rsplit("_", 1)[1]), 0 if n.startswith("k_") else 1
                feeds[n] = empty if "_voice_" in n else np.ascontiguousarray(kv[blk, kind])
            vel, kn, vn, c1, c2 = sess.run(None, feeds)
            kv = np.concatenate([kv, np.stack([kn, vn], axis=1)], axis=4)
            outs.append(vel)
        err = max(err, float(np.abs(np.concatenate(outs, axis=2) - ref).max()))
    return err


def _chunk_masked(dit: Any, x: Any, mu: Any, cond: Any, spks: Any, t: Any, chunk: int) -> Any:
    """The torch DiT over the whole sequence with upstream's streaming mask (query i sees key j iff
    j < (i // chunk + 1) · chunk)."""
    import torch

    n = x.shape[-1]
    i = torch.arange(n)
    allowed = i[None, :] < ((i[:, None] // chunk) + 1) * chunk  # (T, T)
    xt, mut, condt = x.transpose(1, 2), mu.transpose(1, 2), cond.transpose(1, 2)
    with torch.no_grad():
        temb = dit.time_embed(t)
        h = dit.input_embed(xt, condt, mut, spks)
        freqs = dit.rotary_embed(n)
        mask = allowed[None, None].expand(x.shape[0], 1, n, n)
        valid = torch.ones(x.shape[0], n, dtype=torch.bool)
        for block in dit.transformer_blocks:
            h = block(h, temb, mask, valid, freqs)
        return dit.proj_out(dit.norm_out(h, temb)).transpose(1, 2)
