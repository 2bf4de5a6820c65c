"""The streaming flow's RKNN chunk graphs in rknn-toolkit2's PC simulator (fp16, like the NPU).

Needs the toolkit's venv (``scripts/setup-rknn-env.sh``; skipped without it, like tests/test_rknn_sim.py);
``docs/rknn-simulator.md`` keeps the output of a run. Two checks:

- the converter (:func:`convert_rknn_stream`) builds both graph kinds and accepts them: its own padding check
  (FP32) and the simulator's error on every output of one chunk call;
- a whole streaming request through :class:`RknnChunkEstimator` with ``RKNNLite`` replaced by the simulator
  (a long-lived server in the toolkit's venv): every chunk's mel against the same request on the ONNX chunk
  graph. fp16 accumulates here over 10 Euler steps and the K/V caches of every earlier chunk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from test_flow_rknn_stream import _present, _prompt, _stream, make_bundle

from pipeline.engines.cosyvoice3.convert.config import load_source_config
from pipeline.engines.cosyvoice3.convert.dit_chunk_npu import export_npu_chunk_onnx
from pipeline.engines.cosyvoice3.convert.flow_export import convert_flow
from pipeline.engines.cosyvoice3.convert.flow_fast import convert_flow_fast
from pipeline.engines.cosyvoice3.convert.flow_stream_export import convert_flow_chunks
from pipeline.engines.cosyvoice3.convert.rknn_export import DEFAULT_MAX_REL_ERR, find_rknn_python
from pipeline.engines.cosyvoice3.convert.rknn_stream_export import (
    OUTPUTS,
    check_options,
    chunk_file_name,
    chunk_geometry,
    convert_rknn_stream,
)
from pipeline.engines.cosyvoice3.flow import Flow
from pipeline.engines.cosyvoice3.flow_rknn_stream import RknnChunkEstimator
from pipeline.engines.cosyvoice3.flow_stream import ChunkedFlow
from pipeline.shared.errors import SourceError

RKNN_PY = find_rknn_python()
needs_toolkit = pytest.mark.skipif(
    RKNN_PY is None,
    reason="no rknn-toolkit2 environment (.venv-rknn); create it with scripts/setup-rknn-env.sh (~1 min)",
)
SERVER = Path(__file__).with_name("rknn_sim_server.py")
# fp16 on the NPU: ~1e-3 of the output scale per call (docs/rknn-simulator.md); the converter refuses at 5 %.
# A whole request carries it through 10 Euler steps and the K/V of every earlier chunk: allowed 1 % of the mel's
# scale, the level the non-streaming simulator test asks of one call. A broken lowering is off by O(1).
FP16_REL = 0.01


def test_check_options():
    assert check_options("1000,500", ["batch", "split"]) == ([500, 1000], ["split", "batch"])
    for b, c in (("500", ["pair"]), ("500", []), ("x", ["split"])):
        with pytest.raises(SourceError):
            check_options(b, c)
    with pytest.raises(SourceError, match="shapes 'ragged'"):
        check_options("500", ["split"], "ragged")


@pytest.fixture(scope="module")
def chunk_dir(tiny_src: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("rknn-stream-conv")
    sec = convert_flow(tiny_src, out, load_source_config(tiny_src))
    sec = convert_flow_fast(out, sec, int8=False, log=lambda m: None)
    return out, convert_flow_chunks(tiny_src, out, sec, log=lambda m: None)


@needs_toolkit
def test_simulator_conversion_of_the_streaming_graphs(chunk_dir, tiny_src, capsys):
    out, sec = chunk_dir
    logs: list[str] = []
    res = convert_rknn_stream(tiny_src, out, sec, past_buckets=[100], cfg=("batch", "split"), log=logs.append)
    r = res["rknn_chunk"]
    assert res["files"] == [chunk_file_name(1, 100), chunk_file_name(2, 100)]
    assert all((out / f).stat().st_size > 0 for f in res["files"]) and not (out / ".rknn-stream-build").exists()
    assert (r["target"], r["dtype"], r["chunk"], r["depth"], r["heads"]) == ("rk3588", "float16", 50, 2, 2)
    assert sorted(r["graphs"]) == ["batch", "split"]
    for kind, batch in (("split", 1), ("batch", 2)):
        (g,) = r["graphs"][kind]
        assert (g["past"], g["batch"], g["file"], g["disable_rules"]) == (100, batch, chunk_file_name(batch, 100), [])
        assert g["pad_max_abs_err"] < 1e-4
        for name in OUTPUTS:
            err, ref = g["sim_max_abs_err"][name], g["sim_ref_max_abs"][name]
            assert 0 < err < DEFAULT_MAX_REL_ERR * ref
            assert err < FP16_REL * ref, (kind, name, err, ref)  # ~1e-3 of the scale, as the non-streaming graphs
    # dynamic shapes: one graph (one copy of the weights) for every past bucket, each shape set simulated
    dyn = convert_rknn_stream(tiny_src, out, sec, past_buckets=[100, 200], cfg=("split",), shapes="dynamic",
                              log=logs.append)
    assert dyn["files"] == ["flow_chunk.b1.dyn.rknn"]
    entries = dyn["rknn_chunk"]["graphs"]["split"]
    assert [(g["past"], g["file"], g["shapes"]) for g in entries] == [(100, "flow_chunk.b1.dyn.rknn", "dynamic"),
                                                                     (200, "flow_chunk.b1.dyn.rknn", "dynamic")]
    for g in entries:
        assert g["pad_max_abs_err"] < 1e-4
        for name in OUTPUTS:
            assert g["sim_max_abs_err"][name] < FP16_REL * g["sim_ref_max_abs"][name], (g["past"], name)
    with capsys.disabled():  # the numbers docs/rknn-simulator.md keeps
        print("\n" + "\n".join(logs))
        print(json.dumps([*r["graphs"]["split"], *r["graphs"]["batch"], *entries], indent=1))


# --- RKNNLite on the simulator --------------------------------------------------------------------------------


class _Server:
    def __init__(self, python: Path) -> None:
        self.proc = subprocess.Popen([str(python), str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.lock = threading.Lock()
        self.built: dict[str, int] = {}
        self.tmp = tempfile.TemporaryDirectory(prefix="rknn-sim-")
        self.calls = 0

    def ask(self, req: dict) -> dict:
        with self.lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            ans = json.loads(self.proc.stdout.readline() or '{"ok": false, "error": "server died"}')
        if not ans["ok"]:
            raise RuntimeError(ans["error"])
        return ans

    def model(self, onnx: str) -> int:
        if onnx not in self.built:
            self.built[onnx] = self.ask({"op": "build", "onnx": onnx})["id"]
        return self.built[onnx]

    def run(self, mid: int, names: list[str], inputs: list[np.ndarray]) -> list[np.ndarray]:
        with self.lock:
            self.calls += 1
            k = self.calls
        src, dst = Path(self.tmp.name) / f"in{k}.npz", Path(self.tmp.name) / f"out{k}.npz"
        np.savez(src, **dict(zip(names, inputs, strict=True)))
        self.ask({"op": "run", "id": mid, "inputs": str(src), "out": str(dst)})
        with np.load(dst) as z:
            outs = [z[f"arr_{i}"] for i in range(len(z.files))]
        src.unlink()
        dst.unlink()
        return outs

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.tmp.cleanup()


@pytest.fixture(scope="module")
def server():
    s = _Server(RKNN_PY)
    yield s
    s.close()


@pytest.fixture
def sim_rknnlite(server, monkeypatch):
    import onnx

    class RKNNLite:
        NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2 = 0, 1, 2, 4

        def __init__(self, verbose: bool = False) -> None:
            self.path: str | None = None
            self.mid: int | None = None

        def load_rknn(self, path: str) -> int:
            self.path = path  # the test's ".rknn" holds the ONNX graph the simulator builds
            return 0 if Path(path).is_file() else -1

        def init_runtime(self, core_mask: int = 0) -> int:
            self.mid = server.model(str(Path(self.path).resolve()))
            self.names = [i.name for i in onnx.load(self.path, load_external_data=False).graph.input]
            return 0

        def inference(self, inputs):
            if any(a.dtype != np.float32 for a in inputs):
                return None
            return server.run(self.mid, self.names, inputs)

        def release(self) -> None:
            self.mid = None

    pkg, api = types.ModuleType("rknnlite"), types.ModuleType("rknnlite.api")
    api.RKNNLite = RKNNLite
    pkg.api = api
    monkeypatch.setitem(sys.modules, "rknnlite", pkg)
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    return RKNNLite


@needs_toolkit
def test_streaming_request_in_the_simulator(sim_rknnlite, server, stream_bundle, tmp_path, capsys):
    import torch

    from pipeline.engines.cosyvoice3.convert.dit_torch import load_dit

    for name in stream_bundle.manifest["files"]:
        (tmp_path / name).symlink_to(stream_bundle.path(name))
    dit = load_dit(torch.load(TINY / "flow.pt", map_location="cpu", weights_only=True))
    export_npu_chunk_onnx(dit, tmp_path / "b1.p300.onnx", batch=1, chunk=50, past=300)
    (tmp_path / chunk_file_name(1, 300)).symlink_to(tmp_path / "b1.p300.onnx")  # the toolkit wants .onnx
    bundle = make_bundle(stream_bundle, (tmp_path, chunk_geometry(dit, 50)), past=(300,), kinds=("split",))
    with np.load(TINY / "streaming_goldens.npz") as z:
        sg = {k: z[k] for k in z.files}
    flow = Flow.from_bundle(stream_bundle)
    cf = ChunkedFlow.from_bundle(bundle, flow, cache="fp16", backend="rknn", npu={"detect": _present,
                                                                                   "log": lambda m: None})
    assert isinstance(cf.est, RknnChunkEstimator) and cf.est.cfg == "split"
    calls0 = server.calls
    got = _stream(cf, sg, "pad")  # prompt 37 tokens + 100 streamed: 274 frames, past ≤ 250
    want = _stream(ChunkedFlow.from_bundle(stream_bundle, flow, cache="fp16"), sg, "pad")
    rows = []
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        err, scale = float(np.abs(g - w).max()), float(np.abs(w).max())
        gold = sg["pad_final_causal_mel" if k == len(got) - 1 else f"pad_c{k}_mel"][0]
        rows.append((k, g.shape[1], err, scale, float(np.abs(g - gold).max())))
        assert np.isfinite(g).all() and err < FP16_REL * scale, (k, err, scale)
    assert server.calls - calls0 == 2 * 10 * 6  # two rows × 10 steps × (1 voice chunk + 5 request chunks)
    assert len(_prompt(sg, "pad").speech_tokens) == 37
    with capsys.disabled():
        print("\nsimulator streaming ('pad' request, CFG split, p300): call, frames, mel max abs err against the "
              "ONNX chunk graph (max |mel|), against upstream's goldens")
        for r in rows:
            print(f"  c{r[0]}: {r[1]} frames, {r[2]:.3g} ({r[3]:.3g}), goldens {r[4]:.3g}")
