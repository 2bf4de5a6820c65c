"""`cosyvoice-rk bench` runs on the tiny random bundle and its JSON has every field (no timing assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.engines.cosyvoice3.bench import (
    CONFIG_FIELDS,
    FAST_FIELDS,
    FAST_METRICS,
    JSON_FIELDS,
    MACHINE_FIELDS,
    MEL_ERROR_FIELDS,
    METRICS,
    SHAPE_FIELDS,
    BenchOptions,
    forced_decode,
    format_report,
    run_bench,
)
from pipeline.shared.errors import InputError

SMALL = ["--repeat", "1", "--prompt-tokens", "6", "--prompt-text-tokens", "10", "--text-tokens", "5",
         "--tokens", "12", "--threads", "1"]


def _check_stats(s: dict, unit: str) -> None:
    assert set(s) == {"min", "median", "max", "unit"} and s["unit"] == unit
    assert all(math.isfinite(s[k]) for k in ("min", "median", "max"))
    assert s["min"] <= s["median"] <= s["max"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def no_int8_bundle(tmp_path_factory):
    """A random bundle converted with ``flow_int8=False``: the fast mode builds its INT8 graph on first use."""
    from pipeline.engines.cosyvoice3.convert.random_bundle import make_random_bundle

    out = tmp_path_factory.mktemp("noint8") / "tiny"
    return make_random_bundle(out, size="tiny", seed=0, hift_noise_seconds=30.0, flow_int8=False,
                              log=lambda m: None)


def _bench(random_bundle, cache, *extra: str) -> dict:
    env = {**os.environ, "COSYVOICE_RK_CACHE": str(cache)}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "bench", "--bundle", str(random_bundle.root), *SMALL,
                        *extra, "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_bench_json_has_every_field(random_bundle, cache):
    rep = _bench(random_bundle, cache)
    assert set(rep) == set(JSON_FIELDS)
    assert set(MACHINE_FIELDS) <= set(rep["machine"])
    assert set(CONFIG_FIELDS) <= set(rep["config"])
    assert set(SHAPE_FIELDS) <= set(rep["shapes"])
    assert set(rep["metrics"]) == {k for k, _, _ in METRICS}
    for k, unit, _ in METRICS:
        _check_stats(rep["metrics"][k], unit)
    cfg, shapes = rep["config"], rep["shapes"]
    assert cfg["random_weights"] is True and cfg["quant"] == "f32" and cfg["llm_threads"] == 1
    assert cfg["flow_threads"] == 1 and cfg["hift_threads"] == 1 and cfg["kv_type"] == "f16"
    assert cfg["flow_steps"] == 10 and cfg["flow_estimator"] == "fp32"
    assert cfg["flow_backend"] == "auto" and "ONNX Runtime" in cfg["flow_backend_reason"]
    assert rep["backends"] == {"llm": "llama.cpp", "flow": "onnxruntime-cpu", "vocoder": "onnxruntime-cpu"}
    # [sos] + prompt text + text + [task] + prompt speech; the cache covers [sos] + prompt text
    assert shapes["prefill_positions"] == 1 + 10 + 5 + 1 + 6
    assert shapes["prefill_cached_positions"] == 5 + 1 + 6
    assert shapes["mel_frames"] == 2 * (6 + 12) and shapes["generated_mel_frames"] == 24
    assert shapes["audio_s"] == pytest.approx(24 * 480 / 24000)
    assert set(rep["shares"]) == {"prefill", "decode", "flow", "hift"}
    assert rep["peak_rss_mb"] > 0 and rep["prefix_state_bytes"] > 0 and rep["fast"] is None


def test_bench_fast_flow_reports_mel_error(no_int8_bundle, cache):
    rep = _bench(no_int8_bundle, cache, "--flow-fast", "--flow-steps", "5")
    f = rep["fast"]
    assert set(FAST_FIELDS) <= set(f)
    assert f["estimator"] == "int8" and f["flow_steps"] == 5
    for k, unit, _ in FAST_METRICS:
        _check_stats(f["metrics"][k], unit)
    assert set(f["mel_error"]) == set(MEL_ERROR_FIELDS)
    assert 0 < f["mel_error"]["max_abs"] < 10 and f["speedup_flow"] > 0
    assert any(cache.rglob("*.onnx")), "the INT8 estimator is built once into the cache"


def test_converted_bundle_carries_its_int8_estimator(random_bundle, tmp_path):
    cache = tmp_path / "cache"
    rep = _bench(random_bundle, cache, "--flow-fast")
    assert rep["fast"]["estimator"] == "int8" and rep["fast"]["flow_steps"] == 10
    assert not any(cache.rglob("*.onnx")), "the bundle's own INT8 graph is used, nothing is built"


def test_bench_table_and_fp32_fast_mode(random_bundle, cache, monkeypatch):
    monkeypatch.setenv("COSYVOICE_RK_CACHE", str(cache))
    opts = BenchOptions(random_bundle, repeat=1, prompt_tokens=4, prompt_text_tokens=9, text_tokens=3, tokens=8,
                        threads=1, flow_fast=True, fast_estimator="fp32", flow_steps=10)
    rep = run_bench(opts)
    # the same estimator and step count as full fidelity: the same mel
    assert rep["fast"]["estimator"] == "fp32" and rep["fast"]["mel_error"]["max_abs"] < 1e-5
    text = format_report(rep)
    for k, _, _ in METRICS:
        assert k in text
    assert "fast flow" in text and "cached speaker prefix" in text and "peak RSS" in text


def test_forced_decode_never_stops_early():
    class LM:
        def step(self, tok: int) -> np.ndarray:
            x = np.full(20, -5.0, np.float32)
            x[15:] = 10.0  # stop ids dominate: an unforced decode would end at once
            return x

    def argmax(logp, decoded, rng):
        return int(np.argmax(logp))

    toks, _, _ = forced_decode(LM(), LM().step(0), 7, stop_from=15, sampler=argmax, rng=np.random.default_rng(0))
    assert len(toks) == 7 and max(toks) < 15


def test_bench_rejects_bad_sizes(random_bundle):
    with pytest.raises(InputError, match="--tokens"):
        run_bench(BenchOptions(random_bundle, tokens=0))
    with pytest.raises(InputError, match="exceed the LLM context"):
        run_bench(BenchOptions(random_bundle, tokens=100000, repeat=1, threads=1))


def test_flow_fast_upgrade_keeps_full_fidelity(no_int8_bundle, tmp_path):
    import shutil

    from pipeline.engines.cosyvoice3.convert.flow_fast import upgrade_bundle
    from pipeline.engines.cosyvoice3.convert.flow_stream_export import (
        CHUNK_FORMAT,
        CHUNK_NAMES,
        TIME_NAME,
        TIME_TABLE_NAME,
    )
    from pipeline.engines.cosyvoice3.flow import Flow, OrtEstimator
    from pipeline.shared.bundle import Bundle

    root = tmp_path / "b"
    shutil.copytree(no_int8_bundle.root, root)
    before = Bundle.load(root).manifest["flow"]["estimator"]
    # the streaming graphs share flow_estimator.onnx.data and are kept
    chunk = {"onnx_chunk": {**CHUNK_NAMES, "time": TIME_NAME, "time_table": TIME_TABLE_NAME, "format": CHUNK_FORMAT}}
    assert before == {"onnx": "flow_estimator.onnx", "onnx_fused": "flow_estimator.fused.onnx", **chunk}
    upgrade_bundle(root, log=lambda m: None)
    b = Bundle.load(root)
    est = b.manifest["flow"]["estimator"]
    assert est == {"onnx": "flow_estimator.onnx", "onnx_int8": "flow_estimator.int8.onnx",
                   "onnx_fused": "flow_estimator.fused.onnx", **chunk}
    for name in ("flow_estimator.onnx.data", "flow_estimator.fused.onnx", "flow_estimator.int8.onnx",
                 "flow_estimator.int8.onnx.data"):
        assert name in b.manifest["files"]
    assert b.fingerprint == no_int8_bundle.fingerprint
    upgrade_bundle(root, log=lambda m: None)  # idempotent

    rng = np.random.default_rng(3)
    tokens, prompt = rng.integers(0, 6561, 20), rng.integers(0, 6561, 8)
    pmel = rng.normal(-6, 2, (16, 80)).astype(np.float32)
    emb = rng.standard_normal(192).astype(np.float32)
    ref = Flow.from_bundle(no_int8_bundle, OrtEstimator(no_int8_bundle.root / "flow_estimator.onnx",
                                                        n_threads=1))(tokens, prompt, pmel, emb)
    plain = Flow.from_bundle(b, OrtEstimator(root / "flow_estimator.onnx", n_threads=1))
    assert np.array_equal(plain(tokens, prompt, pmel, emb), ref), "the upgrade leaves the plain graph alone"
    full = Flow.from_bundle(b, n_threads=1)
    assert full.estimator.path.name == "flow_estimator.fused.onnx"
    assert np.abs(full(tokens, prompt, pmel, emb) - ref).max() < 1e-4, "fused attention: rounding only"
    fast = Flow.from_bundle(b, n_threads=1, fast=True, n_timesteps=5)
    assert fast.estimator.variant == "int8" and fast.n_timesteps == 5
    mel = fast(tokens, prompt, pmel, emb)
    assert mel.shape == ref.shape and np.isfinite(mel).all()
    assert np.abs(mel - ref).mean() < 0.5 * np.abs(ref - ref.mean()).mean()


def test_mel_check_compares_the_benchmarked_flow_with_the_plain_graph(random_bundle, cache):
    from pipeline.engines.cosyvoice3.bench import MEL_CHECK_FIELDS

    rep = _bench(random_bundle, cache, "--mel-check")
    c = rep["mel_check"]
    assert set(c) == set(MEL_CHECK_FIELDS) and set(c["mel_error"]) == set(MEL_ERROR_FIELDS)
    assert c["estimator"].endswith("flow_estimator.fused.onnx") and c["reference"].startswith("flow_estimator.onnx")
    assert c["reference_flow_s"] > 0 and c["mel_error"]["max_abs"] < 1e-4  # fused attention: rounding only
    assert "mel check: onnxruntime-cpu flow_estimator.fused.onnx against" in format_report(rep)


def test_mel_check_sees_a_different_estimator(random_bundle, monkeypatch):
    """Benchmarked on the INT8 graph (as the NPU's fp16 would be): the check measures a real difference."""
    import pipeline.engines.cosyvoice3.flow_rknn as flow_rknn
    from pipeline.engines.cosyvoice3.flow import OrtEstimator

    int8 = random_bundle.path(random_bundle.manifest["flow"]["estimator"]["onnx_int8"])
    monkeypatch.setattr(flow_rknn, "ort_estimator", lambda bundle, n: OrtEstimator(int8, n_threads=n))
    rep = run_bench(BenchOptions(random_bundle, repeat=1, prompt_tokens=4, prompt_text_tokens=9, text_tokens=3,
                                 tokens=8, threads=1, flow_backend="onnx", mel_check=True))
    c = rep["mel_check"]
    assert c["estimator"].endswith("flow_estimator.int8.onnx")
    assert 1e-4 < c["mel_error"]["max_abs"] < 10 and 0 < c["mel_error"]["rel_l2"] < 0.5


def test_bench_stream_reports_its_fields(random_bundle, cache):
    rep = _bench(random_bundle, cache, "--stream", "--repeat", "1")
    s = rep["stream"]
    for k in ("ttfa_s", "stream_total_s", "stream_total_cold_s"):
        _check_stats(rep["metrics"][k], "s")
        assert 0 < s["metrics"][k]["median"]
    assert s["metrics"]["ttfa_s"]["median"] <= s["metrics"]["stream_total_s"]["median"]
    assert s["prompt_cache"]["mb"] > 0 and s["chunk_times_s"] and s["audio_s"] > 0
    assert s["cache_mel_error"]["max_abs"] < 1e-2  # fp16 against fp32 cache, same tokens
    assert s["stream_peak_rss_mb"] > 0 and s["llm_yields"] == "every"
