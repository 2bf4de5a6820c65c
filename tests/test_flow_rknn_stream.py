"""The streaming flow's RKNN chunk estimator (pipeline.engines.cosyvoice3.flow_rknn_stream), without a board.

``rknnlite.api.RKNNLite`` is the in-process stand-in of tests/test_flow_rknn.py: it keeps the runtime's API and
refusals (fixed input shapes, float32 inputs, ``None`` from a failed inference) and runs the fixed-shape ONNX
chunk graph stored in the ".rknn" file with ONNX Runtime FP32. Everything else is the backend's own code: past
bucket choice, padding of the chunk and of the K/V, the key bias, the float32 time and RoPE tables, the CFG
split over two runtimes on NPU cores 0 and 1 (or one batch-2 graph), the CPU fallbacks and the backend choice.

Tolerances: the stand-in computes in FP32, so against the ONNX chunk graph the outputs agree to summation order
(``EXACT_TOL``, as the non-streaming RKNN tests), and whole streaming requests meet upstream's goldens at the
fixture's 1e-3 (the fp16 K/V cache of the default path included, as tests/test_streaming.py). The fp16 error of
the NPU itself is measured in the simulator (tests/test_rknn_sim.py).
"""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from test_flow_rknn import StandInRKNNLite

from pipeline.engines.cosyvoice3.convert.dit_chunk_npu import export_npu_chunk_onnx
from pipeline.engines.cosyvoice3.convert.rknn_stream_export import chunk_file_name, chunk_geometry, manifest_section
from pipeline.engines.cosyvoice3.engine import PromptFeatures
from pipeline.engines.cosyvoice3.flow import Flow
from pipeline.engines.cosyvoice3.flow_rknn import CORE_MASKS
from pipeline.engines.cosyvoice3.flow_rknn_stream import (
    NPU_CFG_ENV,
    NPU_KV_ENV,
    RknnChunkEstimator,
    make_chunk_estimator,
)
from pipeline.engines.cosyvoice3.flow_stream import ChunkedFlow, ChunkEstimator, chunk_graph_paths
from pipeline.shared.bundle import Bundle, file_entry
from pipeline.shared.errors import BackendError, InputError

PAST = (100, 700)  # the streaming goldens' request reaches 650 past frames
EXACT_TOL = 1e-4
TOL = 1e-3


@pytest.fixture
def standin(monkeypatch):
    cls = type("RKNNLite", (StandInRKNNLite,), {"instances": []})
    pkg, api = types.ModuleType("rknnlite"), types.ModuleType("rknnlite.api")
    api.RKNNLite = cls
    pkg.api = api
    monkeypatch.setitem(sys.modules, "rknnlite", pkg)
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    return cls


@pytest.fixture(scope="module")
def npu_dir(stream_bundle, tmp_path_factory) -> tuple[Path, dict]:
    """The stream bundle's files plus static chunk graphs (ONNX bytes as ".rknn", for the stand-in)."""
    import torch

    from pipeline.engines.cosyvoice3.convert.dit_torch import load_dit

    out = tmp_path_factory.mktemp("npu-stream")
    for name in stream_bundle.manifest["files"]:
        (out / name).symlink_to(stream_bundle.path(name))
    dit = load_dit(torch.load(TINY / "flow.pt", map_location="cpu", weights_only=True))
    for b in (1, 2):
        for p in PAST:
            export_npu_chunk_onnx(dit, out / chunk_file_name(b, p), batch=b, chunk=50, past=p)
    export_npu_chunk_onnx(dit, out / chunk_file_name(1, None), batch=1, chunk=50, past=PAST[0], dynamic_past=True)
    (out / "flow_chunk.broken.rknn").write_bytes(b"not a graph")
    return out, chunk_geometry(dit, 50)


def make_bundle(stream_bundle, npu_dir, past=PAST, *, kinds=("split", "batch"), broken: bool = False) -> Bundle:
    out, geo = npu_dir
    m = copy.deepcopy(stream_bundle.manifest)
    graphs = {k: [{"past": p, "batch": b, "file": "flow_chunk.broken.rknn" if broken else chunk_file_name(b, p)}
                  for p in past] for k, b in (("split", 1), ("batch", 2)) if k in kinds}
    m["flow"]["estimator"]["rknn_chunk"] = manifest_section(geo, graphs)
    for gs in graphs.values():
        for g in gs:
            m["files"][g["file"]] = file_entry(out / g["file"])
    return Bundle(out, m)


def _present(target: str) -> tuple[bool, str]:
    return True, "test: NPU present"


def _absent(target: str) -> tuple[bool, str]:
    return False, "test: no NPU"


@pytest.fixture(scope="module")
def sg() -> dict[str, np.ndarray]:
    with np.load(TINY / "streaming_goldens.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def flow(stream_bundle) -> Flow:
    return Flow.from_bundle(stream_bundle)


def _err(a, b) -> float:
    assert np.shape(a) == np.shape(b), (np.shape(a), np.shape(b))
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _feeds(est, rng, *, n: int, voice: int, past: int) -> dict[str, np.ndarray]:
    f32 = np.float32

    def kv(t: int) -> np.ndarray:
        return rng.standard_normal((est.depth, 2, est.heads, t, est.dim_head), dtype=f32)

    x = rng.standard_normal((2, 80, n), dtype=f32)  # t: one value for both CFG rows, as the solver feeds it
    return {"x": x, "mu": rng.standard_normal((2, 80, n), dtype=f32),
            "cond": rng.standard_normal((2, 80, n), dtype=f32),
            "spks": rng.standard_normal((2, 80), dtype=f32), "t": np.array([0.3, 0.3], f32),
            "offset": np.array([voice + past], np.int64),
            "conv1_cache": rng.standard_normal((2, est.dim, est.conv_context), dtype=f32),
            "conv2_cache": rng.standard_normal((2, est.dim, est.conv_context), dtype=f32),
            "k_voice": kv(voice), "v_voice": kv(voice), "k_past": kv(past), "v_past": kv(past)}


@pytest.mark.parametrize("cfg", ["split", "batch"])
def test_each_call_equals_the_onnx_chunk_graph(standin, stream_bundle, npu_dir, cfg):
    out, geo = npu_dir
    ref = ChunkEstimator(*chunk_graph_paths(stream_bundle, "fp32"), n_threads=1)
    b = 1 if cfg == "split" else 2
    est = RknnChunkEstimator({p: out / chunk_file_name(b, p) for p in PAST}, geo, cfg=cfg, cache_dtype=np.float32,
                             log=lambda m: None)
    rng = np.random.default_rng(0)
    for n, voice, past, bucket in ((50, 0, 0, 100), (50, 50, 50, 100), (50, 0, 700, 700), (37, 100, 450, 700)):
        feeds = _feeds(est, rng, n=n, voice=voice, past=past)
        got, want = est(feeds), ref(feeds)
        assert est.last_choice == {"backend": "rknn-npu", "past": bucket, "padding": bucket - voice - past, "frames": n}
        for k in range(3):
            assert _err(got[k], want[k]) < EXACT_TOL, (n, voice, past, k)
        if n == 50:
            assert _err(got[3], want[3]) < EXACT_TOL and _err(got[4], want[4]) < EXACT_TOL
        else:  # a short chunk is the last: its conv tails are the padded chunk's, never to be carried
            assert np.isnan(got[3]).all() and np.isnan(got[4]).all()
        assert len(est(feeds, kv=False)) == 1
    rts = standin.instances
    if cfg == "split":  # two runtimes per bucket, rows on cores 0 and 1, each fed one row
        assert [r.core_mask for r in rts] == [CORE_MASKS["0"], CORE_MASKS["1"]] * 2
        fed = rts[2].calls[-1]
        assert fed["x"].shape == (1, 80, 50)
        assert fed["k_past"].shape == (geo["depth"], 1, geo["heads"], 700, geo["dim_head"])
    else:
        assert [r.core_mask for r in rts] == [CORE_MASKS["auto"]] * 2
        fed = rts[1].calls[-1]
        assert fed["x"].shape == (2, 80, 50)
    # the short chunk after 550 past frames: keys 550..699 (past padding) and 700+37.. (chunk padding) masked
    assert (fed["key_bias"][:, :550] == 0).all() and (fed["key_bias"][:, 550:700] < -1e3).all()
    assert (fed["key_bias"][:, 700:737] == 0).all() and (fed["key_bias"][:, 737:] < -1e3).all()
    assert not fed["x"][..., 37:].any()
    assert not fed["k_past"][:, :, :, 550:].any() and fed["k_past"][:, :, :, 549].all()  # 700 → 550: re-zeroed
    est.close()
    assert all(r.released for r in rts)


def _prompt(sg, pre: str) -> PromptFeatures:
    if pre == "stream":
        return PromptFeatures(sg["in_prompt_speech_token"], sg["in_prompt_feat"][0], sg["in_embedding"])
    return PromptFeatures(sg[f"{pre}_prompt_speech_token"], sg[f"{pre}_prompt_feat"][0], sg["in_embedding"])


def _stream(cf: ChunkedFlow, sg, pre: str, voice_cache: bool = True) -> list[np.ndarray]:
    prompt = _prompt(sg, pre)
    p = len(prompt.speech_tokens)
    req = cf.start(prompt, cf.build_prompt_cache(prompt) if voice_cache else None)
    toks, have, mels = sg["in_stream_token"].tolist(), 0, []
    offs, ns, fin = sg[f"{pre}_token_offset"], sg[f"{pre}_n_tokens"], sg[f"{pre}_finalize"]
    for n, f in zip(ns.tolist(), fin.tolist(), strict=True):
        mels.append(cf.advance(req, toks[have:n], 2 * (p + n) if f else 2 * (p + n - 3), finalize=bool(f)))
        have = n
    assert len(mels) == len(offs)
    return mels


def _want(sg, pre: str, k: int, last: bool) -> np.ndarray:
    return sg[f"{pre}_final_causal_mel" if last else f"{pre}_c{k}_mel"][0]


@pytest.mark.parametrize("cfg", ["split", "batch"])
def test_streaming_on_the_npu_backend_matches_upstream(standin, stream_bundle, npu_dir, flow, sg, cfg):
    logs: list[str] = []
    bundle = make_bundle(stream_bundle, npu_dir)
    cf = ChunkedFlow.from_bundle(bundle, flow, cache="fp16", backend="rknn",
                                 npu={"cfg": cfg, "log": logs.append, "detect": _present})
    assert isinstance(cf.est, RknnChunkEstimator) and cf.est.cache_dtype == np.float16
    ref = ChunkedFlow.from_bundle(stream_bundle, flow, cache="fp16")
    for pre in ("stream", "pad"):
        got, want = _stream(cf, sg, pre), _stream(ref, sg, pre)
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            assert _err(g, w) < EXACT_TOL, (pre, k)
            assert _err(g, _want(sg, pre, k, k == len(got) - 1)) < TOL, (pre, k)
    assert any(m.startswith("streaming flow on the RKNN NPU (asked for: test: NPU present)") and f"CFG {cfg}" in m
               for m in logs)
    assert not any("such calls run on ONNX Runtime CPU" in m for m in logs)  # every chunk ran on the "NPU"
    assert {Path(r.path).name for r in standin.instances} == {chunk_file_name(1 if cfg == "split" else 2, p)
                                                              for p in PAST}


def test_fp16_kv_inputs_from_the_environment(standin, stream_bundle, npu_dir, monkeypatch):
    """``COSYVOICE_RK_NPU_KV=fp16`` hands the fp16 cache to the runtime as is (the simulator accepts float16
    inputs with identical outputs, docs/rknn-simulator.md §3); a runtime that refuses them is an error."""
    b = make_bundle(stream_bundle, npu_dir, kinds=("split",))
    rng = np.random.default_rng(1)
    ref, _ = make_chunk_estimator(b, "rknn", log=lambda m: None, detect=_present)
    feeds = _feeds(ref, rng, n=50, voice=50, past=60)
    for k in ("k_voice", "v_voice", "k_past", "v_past"):
        feeds[k] = feeds[k].astype(np.float16)  # the fp16 cache ChunkedFlow keeps
    want = ref(feeds)
    monkeypatch.setenv(NPU_KV_ENV, "fp16")
    est, why = make_chunk_estimator(b, "rknn", log=lambda m: None, detect=_present)
    assert est.kv_input == "fp16" and "K/V in fp16" in why
    with pytest.raises(BackendError, match="RKNN inference failed"):  # the stand-in takes float32 only
        est(feeds)
    real = standin.inference

    def inference(self, inputs, **kw):
        specs = [i.name for i in self.sess.get_inputs()]
        if [a.dtype for a in inputs] != [np.float16 if n in ("k_past", "v_past") else np.float32 for n in specs]:
            return None
        return real(self, [np.asarray(a, np.float32) for a in inputs])

    monkeypatch.setattr(standin, "inference", inference)
    got = est(feeds)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)
    with pytest.raises(InputError, match="K/V input type 'int8'"):
        RknnChunkEstimator({100: npu_dir[0] / chunk_file_name(1, 100)}, npu_dir[1], kv_input="int8")


def test_one_dynamic_shape_graph_serves_every_bucket(standin, stream_bundle, npu_dir, flow, sg, monkeypatch):
    """``--flow-stream-shapes dynamic``: both buckets name one file; one pair of runtimes serves them."""
    def inference(self, inputs, **kw):  # the stand-in, with the graph's symbolic past length accepted
        specs = self.sess.get_inputs()
        if any(a.dtype != np.float32 or len(a.shape) != len(sp.shape) or any(
                isinstance(d, int) and d != s for d, s in zip(sp.shape, a.shape, strict=True))
               for sp, a in zip(specs, inputs, strict=True)):
            return None
        self.calls.append({sp.name: a.shape for sp, a in zip(specs, inputs, strict=True)})
        return self.sess.run(None, {sp.name: a for sp, a in zip(specs, inputs, strict=True)})

    monkeypatch.setattr(standin, "inference", inference)
    b = make_bundle(stream_bundle, npu_dir, kinds=("split",))
    for g in b.manifest["flow"]["estimator"]["rknn_chunk"]["graphs"]["split"]:
        g["file"] = chunk_file_name(1, None)
    b.manifest["files"][chunk_file_name(1, None)] = file_entry(npu_dir[0] / chunk_file_name(1, None))
    cf = ChunkedFlow.from_bundle(b, flow, backend="rknn", npu={"log": lambda m: None, "detect": _present})
    mels = _stream(cf, sg, "stream")
    for k, m in enumerate(mels):
        assert _err(m, _want(sg, "stream", k, k == len(mels) - 1)) < TOL
    assert [Path(r.path).name for r in standin.instances] == [chunk_file_name(1, None)] * 2
    pasts = {c["k_past"][3] for c in standin.instances[0].calls}
    assert pasts == set(PAST)  # both shape sets used, by the same runtime


def test_past_longer_than_the_buckets_runs_on_the_cpu_and_says_so(standin, stream_bundle, npu_dir, flow, sg):
    logs: list[str] = []
    bundle = make_bundle(stream_bundle, npu_dir, past=(100,))
    cf = ChunkedFlow.from_bundle(bundle, flow, backend="rknn", npu={"log": logs.append, "detect": _present})
    mels = _stream(cf, sg, "stream")
    for k, m in enumerate(mels):
        assert _err(m, _want(sg, "stream", k, k == len(mels) - 1)) < TOL
    over = [m for m in logs if "exceed the largest RKNN streaming graph p100" in m]
    assert len(over) == 1 and "run on ONNX Runtime CPU" in over[0]
    cf = ChunkedFlow.from_bundle(bundle, flow, backend="rknn",
                                 npu={"log": logs.append, "detect": _present, "overflow": "error"})
    with pytest.raises(BackendError, match="past frames exceed the largest RKNN streaming graph p100"):
        _stream(cf, sg, "stream")


def test_full_attention_call_runs_on_the_cpu(standin, stream_bundle, npu_dir, flow, goldens):
    logs: list[str] = []
    cf = ChunkedFlow.from_bundle(make_bundle(stream_bundle, npu_dir), flow, backend="rknn",
                                 npu={"log": logs.append, "detect": _present})
    prompt = PromptFeatures(goldens["in_prompt_speech_token"], goldens["in_prompt_feat"][0], goldens["in_embedding"])
    assert _err(cf.full(prompt, goldens["in_flow_token"]), goldens["flow_mel"][0]) < TOL
    assert any("a call of 180 frames at once (full attention) is longer than the NPU chunk of 50" in m for m in logs)


def test_backend_choice(standin, stream_bundle, npu_dir):
    logs: list[str] = []
    b = make_bundle(stream_bundle, npu_dir)
    est, why = make_chunk_estimator(b, "onnx", log=logs.append)
    assert isinstance(est, ChunkEstimator) and why.endswith("--flow-backend onnx asked for it")
    est, why = make_chunk_estimator(b, "auto", log=logs.append, detect=_absent)
    assert isinstance(est, ChunkEstimator) and why.endswith("test: no NPU") and "fp16 K/V cache" in why
    est, why = make_chunk_estimator(stream_bundle, "auto", log=logs.append, detect=_present)
    assert isinstance(est, ChunkEstimator) and "the bundle has no RKNN streaming graphs" in why
    est, why = make_chunk_estimator(make_bundle(stream_bundle, npu_dir, kinds=("split",)), "auto", cfg="batch",
                                    log=logs.append, detect=_present)
    assert isinstance(est, ChunkEstimator) and "no RKNN streaming graphs for CFG batch (built: split)" in why
    assert not standin.instances and logs == [m for m in logs if m.startswith("streaming flow on ONNX Runtime CPU")]
    est, why = make_chunk_estimator(b, "auto", log=logs.append, detect=_present)
    assert isinstance(est, RknnChunkEstimator) and why == logs[-1]
    assert "CFG split, chunk 50, past buckets p100/p700, cores 0/1" in why
    assert [Path(r.path).name for r in standin.instances] == [chunk_file_name(1, 100)] * 2  # smallest, at start
    bad = make_bundle(stream_bundle, npu_dir, broken=True)
    est, why = make_chunk_estimator(bad, "auto", log=logs.append, detect=_present)
    assert isinstance(est, ChunkEstimator) and "the NPU was detected (test: NPU present) but the RKNN runtime failed" \
        in why and "init_runtime failed for flow_chunk.broken.rknn" in why
    assert all(r.released for r in standin.instances[2:])
    for backend, bundle, det, msg in (("rknn", bad, _present, "init_runtime failed"),
                                      ("rknn", b, _absent, "--flow-backend rknn: test: no NPU"),
                                      ("rknn", stream_bundle, _present, "has no RKNN streaming graphs")):
        with pytest.raises(BackendError, match=msg):
            make_chunk_estimator(bundle, backend, log=logs.append, detect=det)
    with pytest.raises(InputError, match="CFG mode 'pair'"):
        make_chunk_estimator(b, "auto", cfg="pair", detect=_present)


def test_cfg_kind_from_the_environment(standin, stream_bundle, npu_dir, monkeypatch):
    monkeypatch.setenv(NPU_CFG_ENV, "batch")
    est, why = make_chunk_estimator(make_bundle(stream_bundle, npu_dir), "rknn", log=lambda m: None, detect=_present)
    assert est.cfg == "batch" and est.batch == 2 and "CFG batch" in why
    assert [Path(r.path).name for r in standin.instances] == [chunk_file_name(2, 100)]


def test_runtime_failures_are_errors(standin, stream_bundle, npu_dir, monkeypatch):
    out, geo = npu_dir
    est = RknnChunkEstimator({100: out / chunk_file_name(1, 100)}, geo, log=lambda m: None)
    feeds = _feeds(est, np.random.default_rng(0), n=50, voice=0, past=20)
    monkeypatch.setattr(standin, "inference", lambda self, inputs, **kw: None)
    with pytest.raises(BackendError, match=r"RKNN inference failed on streaming graph p100 \(row 0, 50 frames, 20"):
        est(feeds)
    with pytest.raises(BackendError, match="cannot read the streaming flow graph"):
        RknnChunkEstimator({100: out / "missing.rknn"}, geo, preload=(100,), log=lambda m: None)
    assert standin.instances[-1].released
    monkeypatch.setitem(sys.modules, "rknnlite.api", None)
    with pytest.raises(BackendError, match="rknn-toolkit-lite2 does not import"):
        RknnChunkEstimator({100: out / chunk_file_name(1, 100)}, geo)


def test_engine_streams_on_the_npu_backend(standin, stream_bundle, npu_dir, flow, sg, monkeypatch):
    """Engine.chunked_flow takes the engine's --flow-backend: with the NPU "present", the whole streamed audio
    of upstream's request comes out of the RKNN chunk estimator (fp32 cache: the fixture's 1e-3 on audio)."""
    from pipeline.engines.cosyvoice3 import flow_rknn
    from pipeline.engines.cosyvoice3.engine import Engine
    from pipeline.engines.cosyvoice3.vocoder import HiFT

    monkeypatch.setattr(flow_rknn, "detect_npu", _present)
    logs: list[str] = []
    e = Engine(make_bundle(stream_bundle, npu_dir), None, None, flow, HiFT.from_bundle(stream_bundle))
    e.flow_cache_type, e.flow_backend, e.log = "fp32", "auto", logs.append
    audio = [x for x in e.synthesize_stream([1], [2], _prompt(sg, "stream"), tokens=sg["in_stream_token"])
             if isinstance(x, np.ndarray)]
    assert isinstance(e.chunked_flow().est, RknnChunkEstimator) and e.chunked_flow().est.cache_dtype == np.float32
    assert any(m.startswith("streaming flow on the RKNN NPU (auto: test: NPU present)") for m in logs)
    assert _err(np.concatenate(audio), sg["stream_causal_audio"][0]) < TOL
    assert sum(len(r.calls) for r in standin.instances) > 0


def test_studio_streams_on_the_npu_only_with_streaming_graphs(stream_bundle, npu_dir):
    """CosyVoiceRK's stream choice: a flow on the NPU streams when the bundle has the RKNN chunk graphs (the
    engine's chunked flow then takes them), and says why not otherwise."""
    from pipeline.engines.cosyvoice3.tts import CosyVoiceRK

    tts = CosyVoiceRK.__new__(CosyVoiceRK)  # the choice reads only the bundle and the engine
    tts.engine = types.SimpleNamespace(flow_cache_type="fp16", flow=types.SimpleNamespace(
        estimator=types.SimpleNamespace(backend="rknn-npu")))
    tts.bundle = make_bundle(stream_bundle, npu_dir)
    ok, why = tts._stream_choice(flow_fast=False)
    assert ok and why.startswith("streaming: chunk-causal flow with K/V caches on the RKNN NPU")
    tts.bundle = stream_bundle
    ok, why = tts._stream_choice(flow_fast=False)
    assert not ok and "the bundle has no streaming NPU graphs (convert it again with --rknn rk3588)" in why
