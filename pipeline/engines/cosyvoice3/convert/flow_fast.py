"""Converter step after :func:`.convert.flow_export.convert_flow`: flow estimator files for speed and RSS.

- ``flow_estimator.onnx`` is re-saved with its weights in ``flow_estimator.onnx.data`` (ONNX external data).
  ONNX Runtime memory-maps external data and keeps only its prepacked copies of the MatMul weights, so the
  full-size fp32 session holds ~1.4 GB instead of ~2.0 GB (measured, docs/benchmarks.md). Graph and weights
  are unchanged: the same numbers come out. Other backends (RKNN) keep converting this file.
- ``flow_estimator.fused.onnx`` is the same graph for ONNX Runtime only: each exported
  ``scaled_dot_product_attention`` (MatMul, mask Add, Softmax, NaN guard, MatMul and their head reshapes) is one
  ``com.microsoft.MultiHeadAttention`` node. It shares ``flow_estimator.onnx.data`` (no second copy of the
  weights) and is checked against the plain graph when written (rounding-level differences only).
- ``flow_estimator.int8.onnx`` (+ ``.data``) is the opt-in fast mode: MatMuls with constant weights quantized
  dynamically by ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per output channel, uint8
  activations quantized at run time; attention stays float and is fused as above). Its mel differs from full
  fidelity; ``cosyvoice-rk bench --flow-fast`` measures by how much.

Needs ``onnx`` and ``onnxruntime`` (host side).
``python -m pipeline.engines.cosyvoice3.convert.flow_fast BUNDLE`` upgrades an
existing bundle in place.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.errors import BackendError

INT8_SUFFIX = ".int8.onnx"
FUSED_SUFFIX = ".fused.onnx"
DATA_SUFFIX = ".data"
# tensors below this many bytes stay inside the graph file (shapes, small constants)
_EXTERNAL_MIN_BYTES = 1024
# the fused graph must reproduce the plain one to this (absolute, on outputs of magnitude ~1..10)
FUSED_TOLERANCE = 1e-4


def _variant(estimator_file: str, suffix: str) -> str:
    stem = estimator_file[:-5] if estimator_file.endswith(".onnx") else estimator_file
    return stem + suffix


def int8_name(estimator_file: str) -> str:
    """``flow_estimator.onnx`` → ``flow_estimator.int8.onnx``."""
    return _variant(estimator_file, INT8_SUFFIX)


def fused_name(estimator_file: str) -> str:
    """``flow_estimator.onnx`` → ``flow_estimator.fused.onnx``."""
    return _variant(estimator_file, FUSED_SUFFIX)


# --- attention fusion -------------------------------------------------------------------------------------------

def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def fuse_attention(model: Any, num_heads: int, dim_head: int) -> int:
    """Replace every exported SDPA in ``model`` (in place) by ``com.microsoft.MultiHeadAttention``; returns how
    many. The pattern (torch's TorchScript export of ``F.scaled_dot_product_attention`` with a float mask):

    ``Q3 -Reshape-Transpose(0,2,1,3)-Mul(√s)``, ``K3 -Reshape-Transpose(0,2,3,1)-Mul(√s)`` → ``MatMul`` →
    ``Add(mask)`` → ``Softmax`` → ``Where(IsNaN, 0, ·)`` → ``MatMul(V3 -Reshape-Transpose(0,2,1,3))`` →
    ``Transpose(0,2,1,3)`` → ``Reshape`` (B, T, H·D). Anything that does not match exactly is left alone.
    The mask becomes the node's ``attention_bias``; the scale is 1/√dim_head (SDPA's default).
    """
    from onnx import helper

    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def src(name: str, op: str) -> Any:
        n = prod.get(name)
        return n if n is not None and n.op_type == op else None

    replace: dict[int, Any] = {}
    for sm in [n for n in g.node if n.op_type == "Softmax"]:
        add = src(sm.input[0], "Add")
        if add is None:
            continue
        scores = 0 if src(add.input[0], "MatMul") is not None else 1
        mm1, bias = src(add.input[scores], "MatMul"), add.input[1 - scores]
        mq = src(mm1.input[0], "Mul") if mm1 is not None else None
        mk = src(mm1.input[1], "Mul") if mm1 is not None else None
        tq = src(mq.input[0], "Transpose") if mq is not None else None
        tk = src(mk.input[0], "Transpose") if mk is not None else None
        if tq is None or tk is None or _attr(tq, "perm") != [0, 2, 1, 3] or _attr(tk, "perm") != [0, 2, 3, 1]:
            continue
        rq, rk = src(tq.input[0], "Reshape"), src(tk.input[0], "Reshape")
        after = cons.get(sm.output[0], [])
        guard = next((n for n in after if n.op_type == "Where" and n.input[2] == sm.output[0]), None)
        if rq is None or rk is None or guard is None or {n.op_type for n in after} != {"IsNaN", "Where"}:
            continue
        users = cons.get(guard.output[0], [])
        mm2 = users[0] if len(users) == 1 and users[0].op_type == "MatMul" and users[0].input[0] == guard.output[0] \
            else None
        tv = src(mm2.input[1], "Transpose") if mm2 is not None else None
        rv = src(tv.input[0], "Reshape") if tv is not None and _attr(tv, "perm") == [0, 2, 1, 3] else None
        users = cons.get(mm2.output[0], []) if mm2 is not None else []
        to = users[0] if len(users) == 1 and users[0].op_type == "Transpose" else None
        if rv is None or to is None or _attr(to, "perm") != [0, 2, 1, 3]:
            continue
        users = cons.get(to.output[0], [])
        ro = users[0] if len(users) == 1 and users[0].op_type == "Reshape" else None
        if ro is None:
            continue
        replace[id(ro)] = helper.make_node(
            "MultiHeadAttention", [rq.input[0], rk.input[0], rv.input[0], "", "", bias], [ro.output[0]],
            name=(sm.name or "attention") + "/MultiHeadAttention", domain="com.microsoft",
            num_heads=int(num_heads), scale=1.0 / math.sqrt(dim_head))
    if not replace:
        return 0
    nodes = [replace.get(id(n), n) for n in g.node]
    outputs = {o.name for o in g.output}
    while True:  # drop what only fed the replaced subgraphs (their MatMuls, Softmax, reshapes, shape arithmetic)
        used = {i for n in nodes for i in n.input} | outputs
        keep = [n for n in nodes if any(o in used for o in n.output)]
        if len(keep) == len(nodes):
            break
        nodes = keep
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replace)


def _random_feeds(session: Any, frames: int) -> dict[str, np.ndarray]:
    """Inputs for an estimator session: dynamic axes get ``frames``, the mask is all ones (as the flow sends)."""
    rng = np.random.default_rng(0)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else frames for d in i.shape]
        feeds[i.name] = (np.ones(shape, np.float32) if i.name == "mask"
                         else rng.standard_normal(shape).astype(np.float32))
    return feeds


def max_output_difference(a: Path | str, b: Path | str, frames: int = 48) -> float:
    """Largest |a − b| of two estimator graphs on the same random inputs (ONNX Runtime, 1 thread)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sa = ort.InferenceSession(str(a), so, providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(b), so, providers=["CPUExecutionProvider"])
    feeds = _random_feeds(sa, frames)
    ya, yb = sa.run(None, feeds)[0], sb.run(None, feeds)[0]
    return float(np.max(np.abs(ya.astype(np.float64) - yb)))


def write_fused(path: Path | str, num_heads: int, dim_head: int) -> list[str]:
    """Write ``<name>.fused.onnx`` beside estimator ``path`` (whose weights are external data, shared by the
    fused graph); returns ``[its name]``, or ``[]`` when no attention matched or the check failed."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    if not fuse_attention(model, num_heads, dim_head):
        return []
    dst = path.with_name(fused_name(path.name))
    tmp = path.with_name(f".{dst.name}.tmp")
    onnx.save_model(model, str(tmp))  # initializers keep their references into <name>.onnx.data
    try:
        diff = max_output_difference(path, tmp)
        if not diff <= FUSED_TOLERANCE:
            return []
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return [dst.name]


# --- INT8 ---------------------------------------------------------------------------------------------------

def quantize_estimator(src: Path | str, dst: Path | str, *, num_heads: int | None = None,
                       dim_head: int | None = None) -> list[str]:
    """Write the INT8 (dynamic, MatMul-only, per-channel weights) version of estimator ``src`` to ``dst``, its
    weights in ``dst`` + ``.data``, attention fused when ``num_heads``/``dim_head`` are given; returns both file
    names. The graph file is renamed into place last."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise BackendError(f"building the INT8 flow estimator needs onnx and onnxruntime.quantization ({e}); "
                           "pip install onnx") from e
    import logging

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp.onnx", dir=dst.parent)
    os.close(fd)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing" warnings: not applicable here
    try:
        quantize_dynamic(src, tmp, op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True})
        model = onnx.load(tmp)
        if num_heads and dim_head:
            fuse_attention(model, num_heads, dim_head)
        _save_external(model, dst)
    except Exception as e:
        raise BackendError(f"INT8 quantization of {src} failed: {e}") from e
    finally:
        root.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return [dst.name, dst.name + DATA_SUFFIX]


def _save_external(model: Any, path: Path) -> None:
    """Save ``model`` as ``path`` + ``path.data`` (tensors >= 1 KiB); the graph file is renamed in last."""
    import onnx

    data = path.with_name(path.name + DATA_SUFFIX)
    if data.exists():
        data.unlink()  # onnx appends to an existing data file
    tmp_graph = path.with_name(f".{path.name}.tmp")
    onnx.save_model(model, str(tmp_graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=_EXTERNAL_MIN_BYTES)
    os.chmod(data, 0o644)
    os.chmod(tmp_graph, 0o644)
    os.replace(tmp_graph, path)


def externalize(path: Path | str) -> list[str]:
    """Move the weights of ONNX file ``path`` into ``<name>.data`` beside it (in place); returns both names.

    A no-op (apart from the returned names) when the file already uses external data."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    path = Path(path)
    names = [path.name, path.name + DATA_SUFFIX]
    if any(uses_external_data(t) for t in onnx.load(str(path), load_external_data=False).graph.initializer):
        return names
    _save_external(onnx.load(str(path)), path)
    return names


# --- bundle -------------------------------------------------------------------------------------------------

def attention_dims(section: dict[str, Any]) -> tuple[int | None, int | None]:
    """(heads, dim_head) of the DiT from a manifest flow section, or (None, None)."""
    dims = section.get("dims") or {}
    return dims.get("heads"), dims.get("dim_head")


def convert_flow_fast(out: Path | str, section: dict[str, Any], *, int8: bool = True,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Post-process ``convert_flow``'s output in bundle folder ``out``; returns the updated flow section:
    ``files`` gains ``<estimator>.onnx.data``, ``<estimator>.fused.onnx`` (``estimator.onnx_fused``) and, with
    ``int8``, ``<estimator>.int8.onnx`` + ``.data`` (``estimator.onnx_int8``)."""
    out = Path(out)
    sec = dict(section)
    est = dict(sec["estimator"])
    name = est["onnx"]
    heads, dim_head = attention_dims(sec)
    files = [f for f in sec["files"] if f != name]
    if int8:
        log("flow → INT8 estimator (fast mode)")
        q = int8_name(name)
        files.extend(quantize_estimator(out / name, out / q, num_heads=heads, dim_head=dim_head))
        est["onnx_int8"] = q
    log("flow → estimator weights as external data")
    files.extend(externalize(out / name))
    est.pop("onnx_fused", None)
    if heads and dim_head:
        log("flow → estimator with fused attention (ONNX Runtime)")
        fused = write_fused(out / name, heads, dim_head)
        if fused:
            est["onnx_fused"] = fused[0]
            files.extend(fused)
        else:
            log("  attention pattern not found or not exact: ONNX Runtime runs the plain graph")
    sec["estimator"] = est
    sec["files"] = list(dict.fromkeys(files))
    return sec


def upgrade_bundle(root: Path | str, *, int8: bool = True, log: Callable[[str], None] = print) -> None:
    """Apply :func:`convert_flow_fast` to an existing bundle and rewrite its manifest (file list, hashes).
    The fingerprint stays: the weights are the same bytes, the other files are derived from them."""
    from pipeline.shared.bundle import MANIFEST, Bundle, file_entry
    from pipeline.shared.fsutil import atomic_write_json

    b = Bundle.load(root)
    m = b.manifest
    sec = dict(m["flow"])
    est = sec["estimator"]
    done = [est["onnx"] + DATA_SUFFIX] + ([est["onnx_int8"] + DATA_SUFFIX] if est.get("onnx_int8") else [])
    if (est.get("onnx_int8") or not int8) and est.get("onnx_fused") and all(n in m["files"] for n in done):
        log(f"{b.root}: flow estimator already upgraded")
        return
    sec["files"] = [est["onnx"]]
    new = convert_flow_fast(b.root, sec, int8=int8, log=log)
    m["flow"]["estimator"] = new["estimator"]
    for n in new["files"]:
        m["files"][n] = file_entry(b.root / n)
    atomic_write_json(b.root / MANIFEST, m)
    Bundle.load(b.root)  # hashes the new files once (and proves the manifest right)
    log(f"{b.root}: upgraded")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipeline.engines.cosyvoice3.convert.flow_fast BUNDLE_DIR")
    upgrade_bundle(sys.argv[1], log=lambda msg: print(msg, file=sys.stderr))
