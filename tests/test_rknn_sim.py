"""RKNN conversion (pipeline.engines.cosyvoice3.convert.rknn_export + rknn_worker)
and the rknn-toolkit2 PC simulator check.

The simulator tests need the toolkit's own environment (``scripts/setup-rknn-env.sh`` → ``.venv-rknn``) and are
skipped without it; ``docs/rknn-simulator.md`` keeps the output of a run. The rest runs everywhere.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.cosyvoice3.convert.config import load_source_config
from pipeline.engines.cosyvoice3.convert.flow_export import convert_flow
from pipeline.engines.cosyvoice3.convert.rknn_export import (
    DEFAULT_MAX_REL_ERR,
    SDPA_FUSION_RULE,
    check_sim_error,
    convert_rknn,
    find_rknn_python,
    parse_buckets,
    rknn_file_name,
    run_worker,
    sim_inputs,
)
from pipeline.engines.cosyvoice3.flow_rknn import RKNN_INPUTS
from pipeline.shared.errors import BackendError, SourceError

RKNN_PY = find_rknn_python()
needs_toolkit = pytest.mark.skipif(
    RKNN_PY is None,
    reason="no rknn-toolkit2 environment (.venv-rknn); create it with scripts/setup-rknn-env.sh (~1 min)",
)
SIM_BUCKETS = (100, 200)  # the tiny fixture's 180 frames fall in s200


@pytest.fixture(scope="module")
def flow_dir(tiny_src: Path, tmp_path_factory) -> tuple[Path, dict, dict]:
    out = tmp_path_factory.mktemp("rknnconv")
    cfg = load_source_config(tiny_src)
    return out, cfg, convert_flow(tiny_src, out, cfg)


# --- everywhere -------------------------------------------------------------------------------------------------


def test_parse_buckets():
    assert parse_buckets("1000, 200,300,200") == [200, 300, 1000]
    assert parse_buckets([500]) == [500]
    for bad in ("", "200,abc", "4"):
        with pytest.raises(SourceError):
            parse_buckets(bad)


def test_sim_inputs_look_like_a_padded_cfg_step():
    f = sim_inputs(200, 80, 80)
    valid = math.ceil(0.8 * 200)
    assert f["mask"][:, 0, :valid].all() and not f["mask"][:, 0, valid:].any()
    assert np.array_equal(f["x"][0], f["x"][1]) and not f["x"][..., valid:].any()
    assert not f["mu"][1].any() and not f["spks"][1].any() and not f["cond"][1].any()
    assert f["cond"][0, :, : int(0.3 * valid)].any() and not f["cond"][0, :, int(0.3 * valid):].any()
    assert f["t"].shape == (2,) and np.array_equal(sim_inputs(200, 80, 80)["x"], f["x"])  # fixed


def test_check_sim_error_refuses_out_of_line_graphs():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 80, 50)).astype(np.float32) * 3
    close = ref + 1e-3 * rng.standard_normal(ref.shape).astype(np.float32)
    err, scale = check_sim_error(close, ref, 40, max_rel_err=DEFAULT_MAX_REL_ERR)
    assert 0 < err < 1e-2 and scale == pytest.approx(np.abs(ref[..., :40]).max())
    garbage = close.copy()
    garbage[..., 45:] = 1e6  # padded frames are not judged
    assert check_sim_error(garbage, ref, 40, max_rel_err=DEFAULT_MAX_REL_ERR)[0] == err
    with pytest.raises(BackendError, match="exceeds 0.05"):
        check_sim_error(np.zeros_like(ref), ref, 40, max_rel_err=DEFAULT_MAX_REL_ERR)  # the all-zeros failure
    nan = close.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(BackendError, match="non-finite"):
        check_sim_error(nan, ref, 40, max_rel_err=DEFAULT_MAX_REL_ERR)


def test_convert_without_toolkit_env_says_how_to_get_it(flow_dir, tiny_src, tmp_path):
    out, cfg, sec = flow_dir
    with pytest.raises(BackendError, match="scripts/setup-rknn-env.sh"):
        convert_rknn(tiny_src, out, cfg, sec, buckets=[200], rknn_python=tmp_path / "nope" / "python",
                     log=lambda m: None)
    with pytest.raises(SourceError, match="RKNN target 'rk3566' is not supported"):
        convert_rknn(tiny_src, out, cfg, sec, target="rk3566", log=lambda m: None)


def test_worker_reports_a_missing_toolkit(tmp_path, monkeypatch):
    # Without rknn-toolkit2 the worker must answer in JSON, not crash. A shadow `rknn` package that fails to
    # import stands for the missing toolkit, whatever this interpreter has installed.
    (tmp_path / "rknn").mkdir()
    (tmp_path / "rknn" / "__init__.py").write_text("raise ImportError('No module named rknn.api')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    with pytest.raises(BackendError, match=r"cannot import rknn-toolkit2 .*scripts/setup-rknn-env.sh"):
        run_worker(Path(sys.executable), {"target": "rk3588", "graphs": []})


# --- with the toolkit -------------------------------------------------------------------------------------------


@needs_toolkit
def test_simulator_conversion_of_the_tiny_flow(flow_dir, tiny_src, capsys):
    out, cfg, sec = flow_dir
    logs: list[str] = []
    res = convert_rknn(tiny_src, out, cfg, sec, buckets=list(SIM_BUCKETS), log=logs.append)
    r = res["rknn"]
    assert res["files"] == [rknn_file_name(n) for n in SIM_BUCKETS]
    assert all((out / f).stat().st_size > 0 for f in res["files"])
    assert not (out / ".rknn-build").exists() and not list(out.glob("*.s*.onnx"))
    assert (r["target"], r["toolkit"], r["dtype"], r["inputs"]) == ("rk3588", "2.5.0", "float16", list(RKNN_INPUTS))
    assert r["time_embedding"] == {"dim": 256, "scale": 1000.0, "max_period": 10000.0}
    assert [b["seq"] for b in r["buckets"]] == list(SIM_BUCKETS)
    for b in r["buckets"]:
        assert b["file"] == rknn_file_name(b["seq"]) and b["disable_rules"] == []
        assert b["pad_max_abs_err"] < 1e-4
        assert 0 < b["sim_max_abs_err"] < DEFAULT_MAX_REL_ERR * b["sim_ref_max_abs"]
        # fp16 with the time embedding kept in float32: ~1e-3 of the output scale (0.3 before that fix)
        assert b["sim_max_abs_err"] < 0.01 * b["sim_ref_max_abs"]
    with capsys.disabled():  # the numbers docs/rknn-simulator.md keeps
        print("\n" + "\n".join(logs))
        print(json.dumps(r["buckets"], indent=1))


@needs_toolkit
def test_toolkit_sdpa_fusion_bug_and_workaround(tmp_path):
    """rknn-toolkit2 2.5.0 crashes in build() on 3-D single-head attention (KeyError 'q_mm'); the worker
    retries with the fusion rule disabled and says so."""
    import onnx
    from onnx import TensorProto, numpy_helper
    from onnx import helper as h

    rng = np.random.default_rng(0)
    d, n = 32, 64
    inits = [numpy_helper.from_array((rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32), w)
             for w in ("Wq", "Wk", "Wv")]
    nodes = [h.make_node("MatMul", ["x", w], [o]) for w, o in (("Wq", "q"), ("Wk", "k"), ("Wv", "v"))]
    nodes += [h.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), h.make_node("MatMul", ["q", "kt"], ["s"]),
              h.make_node("Softmax", ["s"], ["p"], axis=-1), h.make_node("MatMul", ["p", "v"], ["y"])]
    graph = h.make_graph(nodes, "attn3d", [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, n, d])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, [1, n, d])], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "attn.onnx")
    x = rng.standard_normal((1, n, d)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    job = {"target": "rk3588", "simulate": True, "disable_rules_fallback": [SDPA_FUSION_RULE],
           "graphs": [{"seq": n, "onnx": str(tmp_path / "attn.onnx"), "rknn": str(tmp_path / "attn.rknn"),
                       "inputs": str(tmp_path / "in.npz"), "sim_out": str(tmp_path / "sim.npy")}]}
    (g,) = run_worker(RKNN_PY, job)["graphs"]
    assert g["ok"] and g["disable_rules"] == [SDPA_FUSION_RULE]
    assert [a["disable_rules"] for a in g["attempts"]] == [[], [SDPA_FUSION_RULE]]
    assert g["attempts"][0]["error"] == "KeyError: 'q_mm'" and g["attempts"][1]["error"] is None
    q, k, v = (x[0] @ numpy_helper.to_array(i) for i in inits)
    s = q @ k.T
    p = np.exp(s - s.max(-1, keepdims=True))
    ref = (p / p.sum(-1, keepdims=True)) @ v
    assert np.abs(np.load(tmp_path / "sim.npy")[0] - ref).max() < 0.05 * np.abs(ref).max()
