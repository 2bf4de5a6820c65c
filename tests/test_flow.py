"""Flow stage: converter output and numpy/ORT runtime against upstream goldens (tiny fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.cosyvoice3.convert.config import load_source_config
from pipeline.engines.cosyvoice3.convert.flow_export import ESTIMATOR_SRC, FLOW_PT, FRONTEND_KEYS, convert_flow
from pipeline.engines.cosyvoice3.flow import Flow, OrtEstimator, t_span
from pipeline.shared.bundle import Bundle, file_entry
from pipeline.shared.errors import Cancelled, InputError, SourceError

NOISE_TABLE = Path(__file__).parent / "fixtures" / "cosyvoice3-noise" / "flow_rand_noise.npy"
MEL_TOL = 1e-3  # fixture README: mel 1e-3 abs


def _err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


@pytest.fixture(scope="module")
def converted(tiny_src: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("flow")
    section = convert_flow(tiny_src, out, load_source_config(tiny_src))
    return out, section


@pytest.fixture(scope="module")
def bundle(converted) -> Bundle:
    out, section = converted
    sec = dict(section)
    files = {n: file_entry(out / n) for n in sec.pop("files")}
    return Bundle(out, {"flow": sec, "files": files})


@pytest.fixture(scope="module")
def flow(bundle: Bundle) -> Flow:
    return Flow.from_bundle(bundle, n_threads=1)


@pytest.fixture(scope="module")
def inputs(goldens) -> dict:
    p = len(goldens["in_prompt_speech_token"])
    return {
        "tokens": goldens["in_flow_token"].astype(np.int64),
        "prompt_tokens": goldens["in_prompt_speech_token"].astype(np.int64),
        "prompt_mel": goldens["in_prompt_feat"][0][: 2 * p],
        "embedding": goldens["in_embedding"],
    }


# --- converter -------------------------------------------------------------------------------------------


def test_manifest_section(converted, tiny_src: Path):
    out, sec = converted
    assert sec["frontend"] == "flow_frontend.npz" and sec["noise"] == "flow_noise.npy"
    assert sec["estimator"] == {"onnx": "flow_estimator.onnx"}
    assert sorted(sec["files"]) == sorted(["flow_frontend.npz", "flow_noise.npy", "flow_estimator.onnx"])
    assert all((out / n).is_file() for n in sec["files"])
    assert (sec["n_timesteps"], sec["inference_cfg_rate"], sec["t_scheduler"]) == (10, 0.7, "cosine")
    assert (sec["token_mel_ratio"], sec["pre_lookahead_len"], sec["pre_lookahead_channels"]) == (2, 3, 64)
    assert (sec["mel_bins"], sec["spk_embed_dim"], sec["vocab_size"]) == (80, 192, 6561)
    assert sec["dims"] == {"dim": 64, "depth": 2, "heads": 2, "dim_head": 32, "ff_mult": 2, "mel_dim": 80,
                           "mu_dim": 80, "spk_dim": 80, "out_channels": 80, "static_chunk_size": 50,
                           "num_decoding_left_chunks": -1}
    assert sec["prompt_mel"] == {"sample_rate": 24000, "n_fft": 1920, "num_mels": 80, "hop_size": 480,
                                 "win_size": 1920, "fmin": 0.0, "fmax": None}
    assert (out / "flow_estimator.onnx").read_bytes() == (tiny_src / ESTIMATOR_SRC).read_bytes()
    assert not (out / "flow_estimator.onnx").samefile(tiny_src / ESTIMATOR_SRC)


def test_frontend_arrays_equal_checkpoint(converted, tiny_src: Path):
    import torch

    sd = torch.load(tiny_src / FLOW_PT, map_location="cpu", weights_only=True)
    with np.load(converted[0] / "flow_frontend.npz") as z:
        assert sorted(z.files) == sorted(FRONTEND_KEYS)
        for k, key in FRONTEND_KEYS.items():
            assert z[k].dtype == np.float32
            assert np.array_equal(z[k], sd[key].numpy()), k


def test_noise_file_equals_upstream_table(converted, goldens):
    noise = np.load(converted[0] / "flow_noise.npy")
    table = np.load(NOISE_TABLE)
    assert noise.dtype == np.float32 and noise.shape == (1, 80, 15000)
    assert np.array_equal(noise, table)
    t = goldens["flow_noise"].shape[2]
    assert np.array_equal(noise[:, :, :t], goldens["flow_noise"])
    # spec §4.3 fingerprint (torch 2.3.1), printed to 8 digits there
    first = np.array([-1.1258398, -1.1523602, -0.2505786, -0.4338788, 0.8487104])
    np.testing.assert_allclose(noise[0, 0, :5], first, rtol=0, atol=1e-7)
    assert abs(noise.sum(dtype=np.float64) - -1291.2013939) < 1e-6
    assert abs(np.abs(noise).sum(dtype=np.float64) - 957198.5414) < 1e-3


# --- runtime pieces vs goldens ------------------------------------------------------------------------------


def test_speaker_projection(flow: Flow, goldens):
    spks = flow.frontend.speaker(goldens["in_embedding"])
    err = _err(spks, goldens["flow_spks"][0])
    print(f"flow_spks max abs err {err:.3g}")
    assert err <= 1e-5


def test_pre_lookahead(flow: Flow, goldens):
    tok = np.concatenate([goldens["in_prompt_speech_token"], goldens["in_flow_token"]]).astype(np.int64)
    h = flow.frontend.pre_lookahead(flow.frontend.embedding[tok])
    err = _err(h, goldens["flow_pre_lookahead_out"][0])
    print(f"flow_pre_lookahead_out max abs err {err:.3g}")
    assert err <= 1e-3


def test_prepare(flow: Flow, goldens, inputs):
    mu, spks, cond, mask = flow.prepare(**inputs)
    err = _err(mu, goldens["flow_mu"][0])
    print(f"flow_mu max abs err {err:.3g}")
    assert err <= 1e-3
    assert _err(spks, goldens["flow_spks"][0]) <= 1e-5
    assert np.array_equal(cond, goldens["flow_cond"][0])
    assert np.array_equal(mask, goldens["flow_mask"][0])
    assert mu.dtype == spks.dtype == cond.dtype == mask.dtype == np.float32


def test_t_span(goldens):
    assert np.array_equal(t_span(10, "cosine"), goldens["flow_t_span"])
    assert np.array_equal(t_span(10, "linear"), np.linspace(0, 1, 11, dtype=np.float32))


def test_estimator_first_call(bundle: Bundle, goldens):
    est = OrtEstimator(bundle.path("flow_estimator.onnx"), n_threads=1)
    assert est.name == est.backend == "onnxruntime-cpu"
    g = {k: goldens[f"flow_est0_{k}"] for k in ("x", "mask", "mu", "t", "spks", "cond")}
    out = est(**g)
    err = _err(out, goldens["flow_est0_out"])
    print(f"flow_est0_out max abs err {err:.3g}")
    assert out.dtype == np.float32
    assert err <= 1e-4


class _Replay:
    """Estimator that records its inputs and answers with upstream's recorded outputs."""

    name = backend = "replay"

    def __init__(self, outs: np.ndarray) -> None:
        self.outs, self.calls = outs, []

    def __call__(self, x, mask, mu, t, spks, cond):
        self.calls.append([a.copy() for a in (x, mask, mu, t, spks, cond)])
        return self.outs[len(self.calls) - 1]


def test_solver_arithmetic_is_upstreams(flow: Flow, goldens):
    """Fed upstream's estimator outputs, the Euler/CFG updates reproduce upstream's x bit for bit."""
    replay = _Replay(goldens["flow_est_out"])
    f = Flow(flow.frontend, replay, flow.noise, n_timesteps=10, inference_cfg_rate=0.7, t_scheduler="cosine")
    g = {k: goldens[f"flow_{k}"][0] for k in ("mu", "mask", "spks", "cond", "noise")}
    x = f.solve(g["mu"], g["mask"], g["spks"], g["cond"], g["noise"])
    assert len(replay.calls) == 10
    for i, (xi, mask, mu, t, spks, cond) in enumerate(replay.calls):
        assert np.array_equal(xi, np.stack([goldens["flow_est_x"][i]] * 2)), i
        assert np.array_equal(t, goldens["flow_est_t"][i]), i
        assert np.array_equal(mask, goldens["flow_est0_mask"])
        assert np.array_equal(mu, goldens["flow_est0_mu"])
        assert np.array_equal(spks, goldens["flow_est0_spks"])
        assert np.array_equal(cond, goldens["flow_est0_cond"])
    n_prompt = goldens["flow_mu"].shape[2] - goldens["flow_mel"].shape[2]
    assert np.array_equal(x[:, n_prompt:], goldens["flow_mel"][0])


def test_solve_with_goldens_noise(flow: Flow, goldens, inputs):
    mu, spks, cond, mask = flow.prepare(**inputs)
    trace: list = []
    x = flow.solve(mu, mask, spks, cond, goldens["flow_noise"][0], trace=trace)
    assert len(trace) == 10
    step_err = max(_err(s["out"], goldens["flow_est_out"][i]) for i, s in enumerate(trace))
    assert all(np.array_equal(s["t"], goldens["flow_est_t"][i]) for i, s in enumerate(trace))
    err = _err(x[:, 2 * len(inputs["prompt_tokens"]):], goldens["flow_mel"][0])
    print(f"flow_est_out max abs err over steps {step_err:.3g}; flow_mel max abs err {err:.3g}")
    assert step_err <= 1e-4
    assert err <= MEL_TOL


def test_call_with_bundle_noise(flow: Flow, goldens, inputs):
    steps: list = []
    mel = flow(**inputs, on_step=lambda i, n: steps.append((i, n)))
    err = _err(mel, goldens["flow_mel"][0])
    print(f"flow_mel (bundle noise) max abs err {err:.3g}")
    assert mel.dtype == np.float32 and mel.shape == (80, 2 * len(inputs["tokens"]))
    assert err <= MEL_TOL
    assert steps == [(i, 10) for i in range(1, 11)]
    # injected noise takes the place of the table
    mel2 = flow(**inputs, noise=goldens["flow_noise"])
    assert np.array_equal(mel, mel2)
    mel3 = flow(**inputs, noise=np.zeros_like(goldens["flow_noise"][0]))
    assert _err(mel3, mel) > 1e-2


def test_should_stop_cancels_before_estimator(flow: Flow, inputs):
    replay = _Replay(np.zeros((10, 2, 80, 180), np.float32))
    f = Flow(flow.frontend, replay, flow.noise, n_timesteps=10, inference_cfg_rate=0.7, t_scheduler="cosine")
    with pytest.raises(Cancelled):
        f(**inputs, should_stop=lambda: True)
    assert replay.calls == []
    calls = iter([False, False, True])
    with pytest.raises(Cancelled, match="step 3"):
        f(**inputs, should_stop=lambda: next(calls))
    assert len(replay.calls) == 2


def test_input_errors(flow: Flow, inputs):
    short = Flow(flow.frontend, flow.estimator, flow.noise[:, :, :100], n_timesteps=10,
                 inference_cfg_rate=0.7, t_scheduler="cosine")
    assert short.noise_frames == 100 and flow.noise_frames == 15000
    with pytest.raises(InputError, match="180 mel frames.*holds 100"):
        short(**inputs)
    with pytest.raises(InputError, match="prompt mel"):
        flow(**{**inputs, "prompt_mel": inputs["prompt_mel"][:-1]})
    with pytest.raises(InputError, match="6561"):
        flow(**{**inputs, "tokens": np.array([1, 2, 6561])})
    with pytest.raises(InputError, match="no speech tokens"):
        flow(**{**inputs, "tokens": np.array([], np.int64)})
    with pytest.raises(InputError, match="192"):
        flow(**{**inputs, "embedding": np.ones(80, np.float32)})
    with pytest.raises(InputError, match="noise"):
        flow(**inputs, noise=np.zeros((80, 10), np.float32))


# --- bad sources -------------------------------------------------------------------------------------------


def _source_copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).symlink_to(p.resolve())
    return dst


def _replace(d: Path, name: str, data: bytes) -> None:
    (d / name).unlink()
    (d / name).write_bytes(data)


def test_missing_flow_pt(tiny_src: Path, tmp_path: Path):
    src = _source_copy(tiny_src, tmp_path / "src")
    (src / FLOW_PT).unlink()
    with pytest.raises(SourceError, match=r"flow\.pt is missing"):
        convert_flow(src, tmp_path / "out", load_source_config(tiny_src))
    assert not (tmp_path / "out").exists()


def test_corrupt_flow_pt(tiny_src: Path, tmp_path: Path):
    src = _source_copy(tiny_src, tmp_path / "src")
    _replace(src, FLOW_PT, (tiny_src / FLOW_PT).read_bytes()[:1000])
    with pytest.raises(SourceError, match=r"flow\.pt is corrupt"):
        convert_flow(src, tmp_path / "out", load_source_config(tiny_src))


def test_flow_pt_missing_tensor_and_bad_shape(tiny_src: Path, tmp_path: Path):
    import torch

    sd = torch.load(tiny_src / FLOW_PT, map_location="cpu", weights_only=True)
    src = _source_copy(tiny_src, tmp_path / "src")
    cfg = load_source_config(tiny_src)
    (src / FLOW_PT).unlink()
    torch.save({k: v for k, v in sd.items() if k != "pre_lookahead_layer.conv2.bias"}, src / FLOW_PT)
    with pytest.raises(SourceError, match=r"flow\.pt has no tensor 'pre_lookahead_layer\.conv2\.bias'"):
        convert_flow(src, tmp_path / "out", cfg)
    cfg["yaml"]["flow"]["pre_lookahead_layer"]["channels"] = 32
    torch.save(sd, src / FLOW_PT)
    with pytest.raises(SourceError, match=r"flow\.pt: pre_lookahead_layer\.conv1\.weight has shape"):
        convert_flow(src, tmp_path / "out", cfg)


def _onnx_identity(names: list[str]) -> bytes:
    """A valid ONNX model: output y = first input, declared rank 3."""
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 80, "T"])
    g = helper.make_graph([helper.make_node("Identity", [names[0]], ["y"])], "g", ins, [out])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return model.SerializeToString()


def test_wrong_estimator_onnx(tiny_src: Path, tmp_path: Path):
    cfg = load_source_config(tiny_src)
    src = _source_copy(tiny_src, tmp_path / "src")
    _replace(src, ESTIMATOR_SRC, b"not an onnx model at all")
    with pytest.raises(SourceError, match=r"flow\.decoder\.estimator\.fp32\.onnx is not a readable ONNX"):
        convert_flow(src, tmp_path / "out", cfg)
    # a valid ONNX that is not the estimator (no DiT weights)
    _replace(src, ESTIMATOR_SRC, _onnx_identity(["a", "b"]))
    with pytest.raises(SourceError, match=r"flow\.decoder\.estimator\.fp32\.onnx has inputs \['a', 'b'\]"):
        convert_flow(src, tmp_path / "out", cfg)
    (src / ESTIMATOR_SRC).unlink()
    with pytest.raises(SourceError, match=r"flow\.decoder\.estimator\.fp32\.onnx is missing"):
        convert_flow(src, tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()


def test_estimator_checks_without_weight_match(tmp_path: Path):
    from pipeline.engines.cosyvoice3.convert.flow_export import check_estimator_onnx

    p = tmp_path / "est.onnx"
    p.write_bytes(_onnx_identity(["a", "b"]))
    with pytest.raises(SourceError, match=r"est\.onnx has inputs \['a', 'b'\]"):
        check_estimator_onnx(p, mel_bins=80, spk_dim=80)
    # right names, but the output is not (2, 80, T)
    p.write_bytes(_onnx_identity(["spks", "x", "mask", "mu", "t", "cond"]))
    with pytest.raises(SourceError, match=r"est\.onnx returned shape \(2, 80\)"):
        check_estimator_onnx(p, mel_bins=80, spk_dim=80)


def test_estimator_from_another_checkpoint(tiny_src: Path, tmp_path: Path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tiny_src / ESTIMATOR_SRC))
    for init in model.graph.initializer:
        if init.name == "proj_out.bias":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.5, init.name))
    src = _source_copy(tiny_src, tmp_path / "src")
    _replace(src, ESTIMATOR_SRC, model.SerializeToString())
    with pytest.raises(SourceError, match=r"fp32\.onnx: weight proj_out\.bias differs from flow\.pt"):
        convert_flow(src, tmp_path / "out", load_source_config(tiny_src))


def _renamed(model):
    """The same graph with every initializer renamed (as an exporter that drops PyTorch names would)."""
    names = {init.name: f"w{i}" for i, init in enumerate(model.graph.initializer)}
    for init in model.graph.initializer:
        init.name = names[init.name]
    for node in model.graph.node:
        for j, n in enumerate(node.input):
            if n in names:
                node.input[j] = names[n]
    return model


def test_estimator_without_pytorch_names_is_checked_numerically(tiny_src: Path, tmp_path: Path):
    import onnx
    from onnx import numpy_helper

    cfg = load_source_config(tiny_src)
    model = _renamed(onnx.load(str(tiny_src / ESTIMATOR_SRC)))
    src = _source_copy(tiny_src, tmp_path / "src")
    _replace(src, ESTIMATOR_SRC, model.SerializeToString())
    convert_flow(src, tmp_path / "ok", cfg)  # same computation, no names: accepted
    big = max(model.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    big.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(big) * 1.5, big.name))
    _replace(src, ESTIMATOR_SRC, model.SerializeToString())
    with pytest.raises(SourceError, match=r"does not compute flow\.pt's estimator"):
        convert_flow(src, tmp_path / "bad", cfg)
