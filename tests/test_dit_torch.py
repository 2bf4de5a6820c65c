"""The torch DiT (pipeline/engines/cosyvoice3/convert/dit_torch.py)
against upstream's goldens and upstream's exported ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from pipeline.engines.cosyvoice3.convert.dit_torch import (  # noqa: E402
    INPUT_NAMES,
    OUTPUT_NAME,
    DiT,
    dit_dims_from_state_dict,
    estimator_state_dict,
    export_estimator_onnx,
    load_dit,
)

TOL = 1e-4


@pytest.fixture(scope="module")
def flow_sd(tiny_src) -> dict:
    return torch.load(tiny_src / "flow.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def dit(flow_sd) -> DiT:
    return load_dit(flow_sd)


@pytest.fixture(scope="module")
def upstream_onnx(tiny_src):
    return ort.InferenceSession(str(tiny_src / "flow.decoder.estimator.fp32.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(flow_sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("dit") / "est.onnx"
    export_estimator_onnx(flow_sd, path)  # from the flow.pt dict, not a module
    return path


def _run(model: DiT, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)).numpy()


def _random_feeds(rng: np.random.Generator, frames: int, valid: tuple[int, int]) -> dict[str, np.ndarray]:
    def randn(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    mask = np.zeros((2, 1, frames), np.float32)
    for b, n in enumerate(valid):
        mask[b, 0, :n] = 1.0
    return {"x": randn(2, 80, frames), "mask": mask, "mu": randn(2, 80, frames), "t": rng.random(2).astype(np.float32),
            "spks": randn(2, 80), "cond": randn(2, 80, frames)}


CASES = [(1, (1, 1)), (13, (13, 13)), (64, (40, 64)), (256, (256, 177)), (301, (9, 301))]


def test_dims_and_strict_load(flow_sd, tiny_src):
    meta = json.loads((tiny_src / "meta.json").read_text())["dims"]["dit"]
    dims = dit_dims_from_state_dict(flow_sd)
    assert {k: dims[k] for k in meta} == meta
    assert (dims["mel_dim"], dims["mu_dim"], dims["spk_dim"]) == (80, 80, 80)
    model = DiT(**dims)
    est = estimator_state_dict(flow_sd)
    assert list(model.state_dict()) == list(est)  # same names in the same order as upstream's module
    model.load_state_dict(est, strict=True)


def test_matches_upstream_goldens(dit, goldens):
    feeds = {n: goldens[f"flow_est0_{n}"] for n in INPUT_NAMES}
    err = np.abs(_run(dit, feeds) - goldens["flow_est0_out"]).max()
    assert err <= TOL, err
    # Every Euler step of the CFM (t from 0 to ~0.84, x evolving), same mu/spks/cond/mask as step 0.
    for i in range(goldens["flow_est_out"].shape[0]):
        step = dict(feeds, x=np.repeat(goldens["flow_est_x"][i][None], 2, axis=0), t=goldens["flow_est_t"][i])
        err = np.abs(_run(dit, step) - goldens["flow_est_out"][i]).max()
        assert err <= TOL, (i, err)


def test_matches_upstream_onnx(dit, upstream_onnx, goldens):
    feeds = {n: goldens[f"flow_est0_{n}"] for n in INPUT_NAMES}
    assert np.abs(_run(dit, feeds) - upstream_onnx.run(None, feeds)[0]).max() <= TOL
    rng = np.random.default_rng(7)
    for frames, valid in CASES:
        feeds = _random_feeds(rng, frames, valid)
        ref = upstream_onnx.run(None, feeds)[0]
        err = np.abs(_run(dit, feeds) - ref).max()
        assert err <= TOL, (frames, valid, err)


def test_right_padding_leaves_valid_frames_unchanged(dit):
    rng = np.random.default_rng(3)
    feeds = _random_feeds(rng, 50, (50, 50))
    padded = _random_feeds(rng, 80, (50, 50))  # 30 frames of garbage behind mask 0
    for k in ("x", "mu", "cond"):
        padded[k][:, :, :50] = feeds[k]
    padded["t"], padded["spks"] = feeds["t"], feeds["spks"]
    out, out_pad = _run(dit, feeds), _run(dit, padded)
    assert np.abs(out_pad[:, :, :50] - out).max() <= 1e-5
    # Without the mask the 30 extra frames are attended to and change the first 50 (the mask is what hides them).
    unmasked = dict(padded, mask=np.ones_like(padded["mask"]))
    assert np.abs(_run(dit, unmasked)[:, :, :50] - out).max() > 1e-3


def test_only_head_zero_is_rotated(dit):
    # Upstream quirk: RoPE on the flattened q/k, so heads >= 1 are position-agnostic; shifting the whole
    # sequence in time changes head 0's attention only. Check via the rotary helper directly.
    from pipeline.engines.cosyvoice3.convert.dit_torch import apply_rotary

    freqs = dit.rotary_embed(5)
    q = torch.randn(1, 5, 64)
    rq = apply_rotary(q, freqs)
    assert torch.equal(rq[..., 32:], q[..., 32:])
    assert not torch.allclose(rq[0, 1:, :32], q[0, 1:, :32])
    assert torch.equal(rq[0, 0], q[0, 0])  # position 0: angle 0


def test_export_format(exported):
    m = onnx.load(str(exported))
    assert {o.domain or "ai.onnx": o.version for o in m.opset_import}["ai.onnx"] == 18
    inputs = {i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    assert list(inputs) == list(INPUT_NAMES)
    assert inputs == {"x": [2, 80, "seq_len"], "mask": [2, 1, "seq_len"], "mu": [2, 80, "seq_len"], "t": [2],
                      "spks": [2, 80], "cond": [2, 80, "seq_len"]}
    assert [o.name for o in m.graph.output] == [OUTPUT_NAME]
    # Initializers that keep PyTorch names carry the estimator's names (the converter matches them to flow.pt).
    names = {i.name for i in m.graph.initializer}
    assert "rotary_embed.inv_freq" in names and "transformer_blocks.0.attn_norm.linear.weight" in names


def test_export_matches_upstream_onnx(exported, upstream_onnx, dit):
    mine = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    for frames, valid in CASES:
        feeds = _random_feeds(rng, frames, valid)
        ref = upstream_onnx.run(None, feeds)[0]
        out = mine.run(None, feeds)[0]
        assert out.shape == (2, 80, frames)
        assert np.abs(out - ref).max() <= TOL, (frames, valid)
        assert np.abs(out - _run(dit, feeds)).max() <= TOL, (frames, valid)


def test_all_padding_row_attends_everywhere(dit):
    # Upstream's add_optional_chunk_mask opens a query row with no visible key to all keys (torch path).
    feeds = _random_feeds(np.random.default_rng(5), 20, (20, 0))
    out = _run(dit, feeds)
    assert np.isfinite(out).all()
    opened = _run(dit, dict(feeds, mask=np.ones_like(feeds["mask"])))
    assert np.abs(out - opened).max() <= 1e-6
