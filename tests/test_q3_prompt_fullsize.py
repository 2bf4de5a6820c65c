"""Qwen3-TTS prompt side at real structure (spec §1.2, §1.4, §1.5) with random weights.

The tiny fixture has 16 quantizers in its file, 2-filter SEANet and 16-wide everything; the release has 32
quantizers (16 kept), codebooks of 2048 × 256, 64 filters, 8 transformer layers of 512 and a speaker
config with only ``enc_dim`` and ``sample_rate`` (the rest from the package defaults). This test writes a
checkpoint with the release's layout — the speaker encoder at full size, the speech tokenizer encoder with the
release's structure but narrower (to stay fast) — converts it and runs the runtime on it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from pipeline.engines.qwen3_tts.convert.prompt_export import check_signal, convert_prompt_side  # noqa: E402
from pipeline.engines.qwen3_tts.prompt import PromptEncoder  # noqa: E402

# The release's MimiConfig (spec §1.4) with narrower widths: 16 filters (64), hidden 128 (512), MLP 256 (2048).
MIMI = {
    "_frame_rate": 12.5, "audio_channels": 1, "num_filters": 16, "upsampling_ratios": [8, 6, 5, 4],
    "kernel_size": 7, "last_kernel_size": 3, "residual_kernel_size": 3, "dilation_growth_rate": 2,
    "num_residual_layers": 1, "compress": 2, "use_causal_conv": True, "pad_mode": "constant", "hidden_size": 128,
    "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 16,
    "intermediate_size": 256, "hidden_act": "gelu", "norm_eps": 1e-5, "layer_scale_initial_scale": 0.01,
    "rope_theta": 10000.0, "max_position_embeddings": 8000, "sliding_window": 250, "num_quantizers": 32,
    "num_semantic_quantizers": 1, "codebook_size": 2048, "codebook_dim": 256,
    "vector_quantization_hidden_dimension": 256, "sampling_rate": 24000,
}
SPEAKER = {"enc_dim": 1024, "sample_rate": 24000}  # as the release writes it
SPK_CH, SPK_K, SPK_SCALE, SPK_SE, SPK_ATT = [512, 512, 512, 512, 1536], [5, 3, 3, 3, 1], 8, 128, 128


def _conv(gen, sd, prefix, cout, cin, k, bias=True):
    sd[f"{prefix}.weight"] = torch.randn(cout, cin, k, generator=gen) / math.sqrt(cin * k)
    if bias:
        sd[f"{prefix}.bias"] = 0.1 * torch.randn(cout, generator=gen)


def _mimi_state(gen) -> dict:
    c, sd = MIMI, {}
    p, nf = "encoder.encoder.layers", c["num_filters"]
    _conv(gen, sd, f"{p}.0.conv", nf, 1, c["kernel_size"])
    i, dim = 1, nf
    for ratio in reversed(c["upsampling_ratios"]):
        _conv(gen, sd, f"{p}.{i}.block.1.conv", dim // 2, dim, c["residual_kernel_size"])
        _conv(gen, sd, f"{p}.{i}.block.3.conv", dim, dim // 2, 1)
        _conv(gen, sd, f"{p}.{i + 2}.conv", 2 * dim, dim, 2 * ratio)
        i, dim = i + 3, 2 * dim
    _conv(gen, sd, f"{p}.{i + 1}.conv", c["hidden_size"], dim, c["last_kernel_size"])
    h, att, m = c["hidden_size"], c["num_attention_heads"] * c["head_dim"], c["intermediate_size"]
    for j in range(c["num_hidden_layers"]):
        q = f"encoder.encoder_transformer.layers.{j}"
        for n in ("input_layernorm", "post_attention_layernorm"):
            sd[f"{q}.{n}.weight"] = 0.7 + 0.6 * torch.rand(h, generator=gen)
            sd[f"{q}.{n}.bias"] = 0.1 * torch.randn(h, generator=gen)
        for n, shape in (("q_proj", (att, h)), ("k_proj", (att, h)), ("v_proj", (att, h)), ("o_proj", (h, att))):
            sd[f"{q}.self_attn.{n}.weight"] = torch.randn(*shape, generator=gen) / math.sqrt(shape[1])
        sd[f"{q}.mlp.fc1.weight"] = torch.randn(m, h, generator=gen) / math.sqrt(h)
        sd[f"{q}.mlp.fc2.weight"] = torch.randn(h, m, generator=gen) / math.sqrt(m)
        for n in ("self_attn_layer_scale", "mlp_layer_scale"):
            sd[f"{q}.{n}.scale"] = 0.1 + 0.4 * torch.rand(h, generator=gen)
    _conv(gen, sd, "encoder.downsample.conv", h, h, 4, bias=False)
    vq, cd = c["vector_quantization_hidden_dimension"], c["codebook_dim"]
    for kind, n in (("semantic", 1), ("acoustic", c["num_quantizers"] - 1)):
        q = f"encoder.quantizer.{kind}_residual_vector_quantizer"
        _conv(gen, sd, f"{q}.input_proj", vq, h, 1, bias=False)
        _conv(gen, sd, f"{q}.output_proj", h, vq, 1, bias=False)
        for j in range(n):
            sd[f"{q}.layers.{j}.codebook.embed_sum"] = torch.randn(c["codebook_size"], cd, generator=gen)
            sd[f"{q}.layers.{j}.codebook.cluster_usage"] = 0.5 + 1.5 * torch.rand(c["codebook_size"], generator=gen)
            sd[f"{q}.layers.{j}.codebook.initialized"] = torch.ones(1)
    return sd


def _speaker_state(gen) -> dict:
    sd, ch, part = {}, SPK_CH, SPK_CH[1] // SPK_SCALE
    _conv(gen, sd, "speaker_encoder.blocks.0.conv", ch[0], 128, SPK_K[0])
    for b in (1, 2, 3):
        p = f"speaker_encoder.blocks.{b}"
        _conv(gen, sd, f"{p}.tdnn1.conv", ch[b], ch[b - 1], 1)
        for j in range(SPK_SCALE - 1):
            _conv(gen, sd, f"{p}.res2net_block.blocks.{j}.conv", part, part, SPK_K[b])
        _conv(gen, sd, f"{p}.tdnn2.conv", ch[b], ch[b], 1)
        _conv(gen, sd, f"{p}.se_block.conv1", SPK_SE, ch[b], 1)
        _conv(gen, sd, f"{p}.se_block.conv2", ch[b], SPK_SE, 1)
    _conv(gen, sd, "speaker_encoder.mfa.conv", ch[4], 3 * ch[1], 1)
    _conv(gen, sd, "speaker_encoder.asp.tdnn.conv", SPK_ATT, 3 * ch[4], 1)
    _conv(gen, sd, "speaker_encoder.asp.conv", ch[4], SPK_ATT, 1)
    _conv(gen, sd, "speaker_encoder.fc", SPEAKER["enc_dim"], 2 * ch[4], 1)
    return {k: v.to(torch.bfloat16) for k, v in sd.items()}


@pytest.fixture(scope="module")
def fullsize(tmp_path_factory) -> tuple[Path, dict]:
    ck = tmp_path_factory.mktemp("q3full")
    gen = torch.Generator().manual_seed(5)
    (ck / "speech_tokenizer").mkdir()
    tok_cfg = {"encoder_config": MIMI, "encoder_valid_num_quantizers": 16, "input_sample_rate": 24000,
               "encode_downsample_rate": 1920, "model_type": "qwen3_tts_tokenizer_12hz"}
    (ck / "speech_tokenizer" / "config.json").write_text(json.dumps(tok_cfg))
    save_file({k: v.contiguous() for k, v in _mimi_state(gen).items()}, str(ck / "speech_tokenizer/model.safetensors"))
    (ck / "config.json").write_text(json.dumps({"speaker_encoder_config": SPEAKER}))
    save_file(_speaker_state(gen), str(ck / "model.safetensors"))
    out = ck / "out"
    return out, convert_prompt_side(ck, out)


def test_fullsize_structure_converts_and_runs(fullsize):
    out, section = fullsize
    d = section["dims"]
    assert (d["num_codebooks"], d["codebook_size"], d["speaker_dim"], d["samples_per_frame"]) == (16, 2048, 1024, 1920)
    c = section["checks"]
    assert c["embedding_max_abs_diff"] <= 1e-4 and c["code_frames_checked"] > 0, c
    pe = PromptEncoder({k: out / section[k] for k in ("prompt_encoder", "speaker_encoder")}, d, n_threads=1)
    wav = check_signal(1.3)
    codes, emb = pe.encode(wav, 24000)
    assert codes.shape == (math.ceil(wav.size / 1920), 16) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 2048
    assert len(np.unique(codes[:, 0])) > 1  # the semantic codes move with the audio
    assert emb.shape == (1024,) and emb.dtype == np.float32 and np.isfinite(emb).all() and np.abs(emb).max() > 0
