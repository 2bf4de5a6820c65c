"""Random-weight checkpoints in upstream format
(pipeline/engines/cosyvoice3/convert/random_checkpoint.py), tiny size only."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
safetensors_torch = pytest.importorskip("safetensors.torch")

import torch.nn.functional as F  # noqa: E402

from pipeline.engines.cosyvoice3.convert.config import load_source_config, load_yaml_config  # noqa: E402
from pipeline.engines.cosyvoice3.convert.dit_torch import INPUT_NAMES, load_dit  # noqa: E402
from pipeline.engines.cosyvoice3.convert.random_checkpoint import (  # noqa: E402
    DIMS,
    TEXT_VOCAB,
    TOKENIZER_ASSETS,
    flow_state_dict,
    hift_state_dict,
    llm_state_dict,
    make_random_checkpoint,
    render_yaml,
)
from pipeline.shared.errors import SourceError  # noqa: E402

PARTS = ("llm", "flow", "hift")
# The only tensors whose shapes differ from the fixture: the fixture's text vocab is 1000 rows, ours is real.
TEXT_ROWS = {"llm.model.model.embed_tokens.weight", "llm.model.lm_head.weight"}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    logs: list[str] = []
    out = make_random_checkpoint(tmp_path_factory.mktemp("rand") / "tiny", "tiny", seed=5, log=logs.append)
    assert not any("no vendored" in m for m in logs)
    return out


@pytest.fixture(scope="module")
def tiny_cfg(tiny_ckpt) -> dict:
    return load_yaml_config(tiny_ckpt / "cosyvoice3.yaml")


@pytest.mark.parametrize("part", PARTS)
def test_keys_order_and_shapes_equal_fixture(tiny_ckpt, tiny_src, part):
    ref, got = _load(tiny_src / f"{part}.pt"), _load(tiny_ckpt / f"{part}.pt")
    assert list(got) == list(ref)
    for k, v in ref.items():
        assert got[k].dtype == torch.float32, k
        if k in TEXT_ROWS:
            assert tuple(got[k].shape) == (TEXT_VOCAB, v.shape[1]), k
        else:
            assert got[k].shape == v.shape, k
        assert torch.isfinite(got[k]).all(), k


def test_llm_tied_head_and_safetensors(tiny_ckpt, tiny_src):
    sd = _load(tiny_ckpt / "llm.pt")
    assert torch.equal(sd["llm.model.lm_head.weight"], sd["llm.model.model.embed_tokens.weight"])
    st = safetensors_torch.load_file(str(tiny_ckpt / "CosyVoice-BlankEN" / "model.safetensors"))
    ref = safetensors_torch.load_file(str(tiny_src / "CosyVoice-BlankEN" / "model.safetensors"))
    assert sorted(st) == sorted(ref)
    for k, v in st.items():
        assert v.dtype == torch.float32
        assert torch.equal(v, sd["llm.model." + k]), k


def test_qwen_config(tiny_ckpt, tiny_src):
    blank, ref_blank = tiny_ckpt / "CosyVoice-BlankEN", tiny_src / "CosyVoice-BlankEN"
    cfg = json.loads((blank / "config.json").read_text())
    ref = json.loads((ref_blank / "config.json").read_text())
    assert cfg == dict(ref, vocab_size=TEXT_VOCAB)
    assert json.loads((blank / "generation_config.json").read_text()) == json.loads(
        (ref_blank / "generation_config.json").read_text())
    for name in ("vocab.json", "merges.txt"):
        assert (blank / name).read_bytes() == (TOKENIZER_ASSETS / name).read_bytes()


def test_yaml_parses_like_fixture(tiny_ckpt, tiny_src, tiny_cfg):
    src = load_source_config(tiny_ckpt)
    assert src["yaml"] == load_yaml_config(tiny_src / "cosyvoice3.yaml") == tiny_cfg
    assert src["qwen"]["hidden_size"] == 64


def test_full_yaml_has_real_dims(tmp_path):
    (tmp_path / "cosyvoice3.yaml").write_text(render_yaml(DIMS["full"]))
    y = load_yaml_config(tmp_path / "cosyvoice3.yaml")
    assert (y["llm_input_size"], y["llm_output_size"]) == (896, 896)
    assert y["flow"]["pre_lookahead_layer"]["channels"] == 1024
    est = y["flow"]["decoder"]["estimator"]
    assert (est["dim"], est["depth"], est["heads"], est["dim_head"], est["ff_mult"]) == (1024, 22, 16, 64, 2)
    assert est["static_chunk_size"] == 50
    assert (y["hift"]["base_channels"], y["hift"]["f0_predictor"]["cond_channels"]) == (512, 512)
    tiny = load_yaml_config_text(tmp_path, render_yaml(DIMS["tiny"]))
    # Nothing but the substituted dims differs.
    assert _strip_dims(y) == _strip_dims(tiny)


def load_yaml_config_text(tmp: Path, text: str) -> dict:
    (tmp / "other.yaml").write_text(text)
    return load_yaml_config(tmp / "other.yaml")


def _strip_dims(y: dict) -> dict:
    y = json.loads(json.dumps(y))
    for k in ("llm_input_size", "llm_output_size"):
        del y[k]
    y["llm"].pop("llm_input_size"), y["llm"].pop("llm_output_size")
    del y["flow"]["pre_lookahead_layer"]["channels"]
    for k in ("dim", "depth", "heads", "dim_head", "ff_mult"):
        del y["flow"]["decoder"]["estimator"][k]
    del y["hift"]["base_channels"], y["hift"]["f0_predictor"]["cond_channels"]
    del y["hifigan"]  # holds a copy of the hift section
    return y


def _digest(sd: dict, keys: list[str]) -> str:
    h = hashlib.sha256()
    for k in keys:
        h.update(sd[k].numpy().tobytes())
    return h.hexdigest()


SAMPLE_KEYS = {
    "llm": ["llm.model.model.embed_tokens.weight", "llm.model.model.layers.1.mlp.down_proj.weight",
            "speech_embedding.weight"],
    "flow": ["input_embedding.weight", "decoder.estimator.transformer_blocks.1.attn.to_k.weight"],
    "hift": ["conv_pre.parametrizations.weight.original1", "f0_predictor.classifier.weight"],
}


def test_deterministic_for_seed(tiny_ckpt, tiny_cfg):
    d = DIMS["tiny"]
    makers = {"llm": llm_state_dict, "flow": flow_state_dict, "hift": hift_state_dict}
    for part, make in makers.items():
        on_disk = _digest(_load(tiny_ckpt / f"{part}.pt"), SAMPLE_KEYS[part])
        assert _digest(make(d, tiny_cfg, 5), SAMPLE_KEYS[part]) == on_disk, part
        assert _digest(make(d, tiny_cfg, 6), SAMPLE_KEYS[part]) != on_disk, part


def test_estimator_onnx_is_the_flow_weights(tiny_ckpt):
    dit = load_dit(_load(tiny_ckpt / "flow.pt"))
    sess = ort.InferenceSession(str(tiny_ckpt / "flow.decoder.estimator.fp32.onnx"),
                                providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    frames = 70
    feeds = {"x": rng.standard_normal((2, 80, frames)), "mask": np.ones((2, 1, frames)),
             "mu": rng.standard_normal((2, 80, frames)), "t": rng.random(2), "spks": rng.standard_normal((2, 80)),
             "cond": rng.standard_normal((2, 80, frames))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    feeds["mask"][1, 0, 50:] = 0
    with torch.no_grad():
        ref = dit(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)).numpy()
    out = sess.run(None, feeds)[0]
    assert np.abs(out - ref).max() <= 1e-4
    assert 0.1 < float(np.std(out)) < 10.0  # sane velocity scale


def test_weight_norm_g_differs_from_v_norm(tiny_ckpt):
    sd = _load(tiny_ckpt / "hift.pt")
    gaps = []
    for k, g in sd.items():
        if k.endswith("original0"):
            v = sd[k[: -len("0")] + "1"]
            assert g.shape == (v.shape[0], 1, 1)
            assert (g > 0).all(), k
            gaps.append(float((g.flatten() - v.flatten(1).norm(dim=1)).abs().max()))
    assert min(gaps) > 1e-3


def _f0(sd: dict, mel: torch.Tensor) -> torch.Tensor:
    """Upstream CausalConvRNNF0Predictor in float64 (conv0 'right'-padded by 3, the others 'left' by 2)."""
    x = mel.double()
    for i in (0, 2, 4, 6, 8):
        p = f"f0_predictor.condnet.{i}."
        g = sd[p + "parametrizations.weight.original0"].double()
        v = sd[p + "parametrizations.weight.original1"].double()
        w = g * v / v.flatten(1).norm(dim=1)[:, None, None]
        x = F.pad(x, (0, 3) if i == 0 else (2, 0))
        x = F.elu(F.conv1d(x, w, sd[p + "bias"].double()))
    out = x.transpose(1, 2) @ sd["f0_predictor.classifier.weight"].double().T + sd["f0_predictor.classifier.bias"]
    return out.squeeze(-1).abs()


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_f0_in_plausible_range(size, tiny_cfg, goldens, tmp_path):
    cfg = tiny_cfg if size == "tiny" else load_yaml_config_text(tmp_path, render_yaml(DIMS["full"]))
    mel = torch.from_numpy(goldens["in_prompt_feat"]).transpose(1, 2)  # a real prompt's log-mel
    for seed in (0, 1, 2):
        f0 = _f0(hift_state_dict(DIMS[size], cfg, seed), mel)
        voiced = float((f0 > 10).double().mean())
        assert 0.5 <= voiced <= 1.0, (seed, voiced)
        assert float(f0.max()) < 600.0, (seed, float(f0.max()))


def test_refuses_non_empty_folder_and_unknown_size(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("keep")
    with pytest.raises(SourceError, match="not an empty folder"):
        make_random_checkpoint(tmp_path / "x", "tiny")
    assert (tmp_path / "x" / "file").read_text() == "keep"
    with pytest.raises(SourceError, match="unknown random checkpoint size"):
        make_random_checkpoint(tmp_path / "y", "medium")
    assert not (tmp_path / "y").exists()


def test_missing_tokenizer_is_logged_and_skipped(tmp_path):
    logs: list[str] = []
    out = make_random_checkpoint(tmp_path / "ck", "tiny", seed=1, tokenizer_dir=tmp_path / "nothing",
                                 log=logs.append)
    assert any("no vendored Qwen2 tokenizer" in m for m in logs)
    assert not (out / "CosyVoice-BlankEN" / "vocab.json").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["CosyVoice-BlankEN", "cosyvoice3.yaml", "llm.pt", "flow.pt", "hift.pt", "flow.decoder.estimator.fp32.onnx"])
    assert not list(tmp_path.glob(".ck.partial-*"))


def test_converter_accepts_it(tiny_ckpt, tmp_path):
    from pipeline.engines.cosyvoice3.convert import convert_checkpoint

    bundle = convert_checkpoint(tiny_ckpt, tmp_path / "bundle", quants=["f32"], hift_noise_seconds=2.0,
                                random_weights=True, log=lambda m: None)
    assert bundle.manifest["random_weights"] is True
    assert bundle.manifest["llm"]["dims"]["text_vocab"] == TEXT_VOCAB
    assert bundle.manifest["flow"]["dims"]["dim"] == DIMS["tiny"].dit_dim
    assert math.isclose(bundle.manifest["hift"]["samples_per_frame"], 480)
