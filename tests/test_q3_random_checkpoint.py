"""Random-weight Qwen3-TTS checkpoints (pipeline/engines/qwen3_tts/convert/random_checkpoint.py).

``tiny`` is written and compared with the tiny-qwen3-tts fixture byte for byte where the format fixes the bytes
(configs, tokenizer files, safetensors headers); ``full`` is checked through its planned header only (spec §1.1,
§1.2, §1.4, §1.5): writing it takes ~2.5 GB.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.qwen3_tts.convert import random_checkpoint as rc
from pipeline.shared.errors import InputError

FIX = Path(__file__).parent / "fixtures" / "tiny-qwen3-tts"
SAME_BYTES = ("config.json", "generation_config.json", "tokenizer_config.json", "vocab.json", "merges.txt",
              "speech_tokenizer/config.json", "speech_tokenizer/configuration.json",
              "speech_tokenizer/preprocessor_config.json")
ST_FILES = (rc.MODEL_FILE, rc.SPEECH_FILE)


def _header(path: Path) -> tuple[bytes, dict]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        raw = f.read(n)
    return raw, json.loads(raw)


def _bf16_tensors(path: Path) -> dict[str, np.ndarray]:
    raw, h = _header(path)
    data = path.read_bytes()[8 + len(raw):]
    return {k: rc.bf16_to_f32(np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], "<u2")).reshape(v["shape"])
            for k, v in h.items() if k != "__metadata__"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    logs: list[str] = []
    out = rc.make_random_checkpoint(tmp_path_factory.mktemp("q3") / "tiny", "tiny", seed=7, log=logs.append)
    assert len(logs) == 2
    return out


# ------------------------------------------------------------------------------------------- tiny, written

def test_tiny_files_are_the_release_set(tiny):
    got = sorted(str(p.relative_to(tiny)) for p in tiny.rglob("*") if p.is_file())
    assert got == sorted((*SAME_BYTES, *ST_FILES))
    assert not list(tiny.parent.glob(".*"))  # no temp folder left beside it


@pytest.mark.parametrize("rel", SAME_BYTES)
def test_tiny_configs_and_tokenizer_equal_fixture_bytes(tiny, rel):
    assert (tiny / rel).read_bytes() == (FIX / rel).read_bytes()


@pytest.mark.parametrize("rel", ST_FILES)
def test_tiny_safetensors_header_equals_fixture(tiny, rel):
    """Same names, shapes, dtypes, offsets (and so the same file size) as the package-written fixture."""
    got, ref = _header(tiny / rel), _header(FIX / rel)
    assert got[0] == ref[0]
    assert (tiny / rel).stat().st_size == (FIX / rel).stat().st_size
    plan = rc.tensor_plan("tiny")[rel]
    assert {k: (tuple(v["shape"]), v["dtype"]) for k, v in ref[1].items() if k != "__metadata__"} == plan


def test_tiny_safetensors_parse_with_the_package(tiny):
    st = pytest.importorskip("safetensors")
    torch = pytest.importorskip("torch")
    with st.safe_open(str(tiny / rc.MODEL_FILE), "pt") as f:
        ref = _bf16_tensors(tiny / rc.MODEL_FILE)
        for k in f.keys():
            t = f.get_tensor(k)
            assert t.dtype == torch.bfloat16
            assert np.array_equal(t.float().numpy(), ref[k]), k
    from safetensors.numpy import load_file

    sp = load_file(str(tiny / rc.SPEECH_FILE))
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in sp.values())


def test_tiny_values_follow_the_fixture_recipe(tiny):
    m = _bf16_tensors(tiny / rc.MODEL_FILE)
    assert all(np.isfinite(v).all() for v in m.values())
    assert abs(m["talker.model.codec_embedding.weight"].std() - 1) < 0.02
    assert abs(m["talker.codec_head.weight"].std() - 4 / math.sqrt(16)) < 0.02  # logit heads x4
    w = m["talker.model.layers.0.mlp.down_proj.weight"]
    assert 0.5 < w.std() * math.sqrt(w.shape[1]) < 1.5
    norms = [v for k, v in m.items() if k.endswith("norm.weight")]
    assert all(0.69 < v.min() and v.max() < 1.31 for v in norms)
    from safetensors.numpy import load_file

    sp = load_file(str(tiny / rc.SPEECH_FILE))
    usage = sp["decoder.quantizer.rvq_first.vq.layers.0._codebook.cluster_usage"]
    assert 0.5 <= usage.min() and usage.max() <= 2
    centroids = sp["decoder.quantizer.rvq_first.vq.layers.0._codebook.embedding_sum"] / usage[:, None]
    assert abs(centroids.std() - 1) < 0.05
    assert sp["encoder.quantizer.semantic_residual_vector_quantizer.layers.0.codebook.initialized"].tolist() == [1.0]
    scales = sp["decoder.pre_transformer.layers.0.mlp_layer_scale.scale"]
    assert 0.1 <= scales.min() and scales.max() <= 0.5


def test_tiny_text_rows_have_frame_scale(tiny):
    """text_projection(text_embedding(id)) ~ std 4, like a frame row (sum of 16 unit code embeddings)."""
    m = _bf16_tensors(tiny / rc.MODEL_FILE)
    x = m["talker.model.text_embedding.weight"][::37]
    p = "talker.text_projection.linear_fc"
    h = x @ m[p + "1.weight"].T + m[p + "1.bias"]
    y = (h / (1 + np.exp(-h))) @ m[p + "2.weight"].T + m[p + "2.bias"]
    assert 3.5 < y.std() < 4.5


def test_decoder_reference_reproduces_fixture_waveform():
    """The numpy decoder used to calibrate the last conv equals upstream's (fixture goldens) on the fixture weights."""
    from safetensors.numpy import load_file

    g = np.load(FIX / "goldens.npz")
    wav = rc.decoder_waveform(load_file(str(FIX / rc.SPEECH_FILE)), rc.speech_config("tiny")["decoder_config"],
                              g["in_dec_codes"])
    assert np.abs(np.clip(wav, -1, 1) - g["dec_wav"]).max() < 1e-3


def test_tiny_decoder_output_scale(tiny):
    from safetensors.numpy import load_file

    codes = np.random.default_rng(0).integers(0, 2048, (40, 16))
    wav = rc.decoder_waveform(load_file(str(tiny / rc.SPEECH_FILE)), rc.speech_config("tiny")["decoder_config"], codes)
    assert wav.shape == (40 * 1920,) and np.isfinite(wav).all()
    assert 0.1 < wav.std() < 0.22 and np.abs(wav).max() < 1.5


def test_same_seed_same_bytes_other_seed_other_weights(tiny, tmp_path):
    again = rc.make_random_checkpoint(tmp_path / "again", "tiny", seed=7, log=lambda m: None)
    other = rc.make_random_checkpoint(tmp_path / "other", "tiny", seed=8, log=lambda m: None)
    for rel in ST_FILES:
        assert _sha(again / rel) == _sha(tiny / rel)
        assert _sha(other / rel) != _sha(tiny / rel)


# ------------------------------------------------------------------------------------------- writing discipline

def test_failure_leaves_no_folder(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(rc, "_rescale_last_conv", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        rc.make_random_checkpoint(tmp_path / "ck", "tiny", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "ck"
    out.mkdir()  # an empty folder is fine
    rc.make_random_checkpoint(out, "tiny", seed=1, log=lambda m: None)
    before = _sha(out / rc.MODEL_FILE)
    with pytest.raises(InputError, match="not empty"):
        rc.make_random_checkpoint(out, "tiny", seed=2, log=lambda m: None)
    assert _sha(out / rc.MODEL_FILE) == before
    (out / "stray.txt").write_text("x")
    rc.make_random_checkpoint(out, "tiny", seed=2, overwrite=True, log=lambda m: None)
    assert _sha(out / rc.MODEL_FILE) != before and not (out / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    with pytest.raises(InputError, match="size"):
        rc.make_random_checkpoint(tmp_path / "x", "huge")
    with pytest.raises(InputError, match="size"):
        rc.tensor_plan("huge")
    with pytest.raises(InputError, match="seed"):
        rc.make_random_checkpoint(tmp_path / "x", "tiny", seed=-1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


# ------------------------------------------------------------------------------------------- full, planned only

@pytest.fixture(scope="module")
def full_plan() -> dict:
    return rc.tensor_plan("full")


def test_full_model_shapes_spec_1_5(full_plan):
    p = full_plan[rc.MODEL_FILE]
    assert {v[1] for v in p.values()} == {"BF16"}
    expect = {
        "talker.model.codec_embedding.weight": (3072, 1024), "talker.model.text_embedding.weight": (151936, 2048),
        "talker.model.layers.27.self_attn.q_proj.weight": (2048, 1024),
        "talker.model.layers.27.self_attn.k_proj.weight": (1024, 1024),
        "talker.model.layers.27.self_attn.v_proj.weight": (1024, 1024),
        "talker.model.layers.27.self_attn.o_proj.weight": (1024, 2048),
        "talker.model.layers.27.self_attn.q_norm.weight": (128,),
        "talker.model.layers.27.self_attn.k_norm.weight": (128,),
        "talker.model.layers.27.mlp.gate_proj.weight": (3072, 1024),
        "talker.model.layers.27.mlp.up_proj.weight": (3072, 1024),
        "talker.model.layers.27.mlp.down_proj.weight": (1024, 3072),
        "talker.model.layers.27.input_layernorm.weight": (1024,), "talker.model.norm.weight": (1024,),
        "talker.text_projection.linear_fc1.weight": (2048, 2048), "talker.text_projection.linear_fc1.bias": (2048,),
        "talker.text_projection.linear_fc2.weight": (1024, 2048), "talker.text_projection.linear_fc2.bias": (1024,),
        "talker.codec_head.weight": (3072, 1024),
        "talker.code_predictor.model.layers.4.self_attn.q_proj.weight": (2048, 1024),
        "talker.code_predictor.model.norm.weight": (1024,),
        "talker.code_predictor.model.codec_embedding.14.weight": (2048, 1024),
        "talker.code_predictor.lm_head.14.weight": (2048, 1024),
        "speaker_encoder.blocks.0.conv.weight": (512, 128, 5),
        "speaker_encoder.blocks.3.res2net_block.blocks.6.conv.weight": (64, 64, 3),
        "speaker_encoder.mfa.conv.weight": (1536, 1536, 1), "speaker_encoder.asp.tdnn.conv.weight": (128, 4608, 1),
        "speaker_encoder.asp.conv.weight": (1536, 128, 1), "speaker_encoder.fc.weight": (1024, 3072, 1),
    }
    assert {k: p[k][0] for k in expect} == expect
    assert not any(k.startswith("talker.model.layers.28.") or k.startswith("talker.code_predictor.model.layers.5.")
                   or "small_to_mtp" in k or ("bias" in k and ".layers." in k) for k in p)
    assert "speaker_encoder.blocks.1.res2net_block.blocks.7.conv.weight" not in p


def test_full_model_parameter_count_spec_1_1(full_plan):
    p = full_plan[rc.MODEL_FILE]

    def count(pred) -> int:
        return sum(math.prod(s) for k, (s, _) in p.items() if pred(k))

    assert count(lambda k: True) == 914_643_008  # exact (§1.1); x2 bytes = 1.83 GB
    assert count(lambda k: k.startswith("talker.model.layers.0.")) == 15_730_944  # 15.73 M per layer
    assert count(lambda k: "text_embedding" not in k) == 603_478_080  # the "0.6B"
    assert round(count(lambda k: k.startswith("speaker_encoder.")) / 1e5) == 89  # 8.9 M
    assert round(count(lambda k: k.startswith("talker.code_predictor.model.layers.")) / 1e5) == 787  # 78.7 M


def test_full_speech_tokenizer_shapes_and_count(full_plan):
    p = full_plan[rc.SPEECH_FILE]
    assert {v[1] for v in p.values()} == {"F32"}
    expect = {
        "encoder.encoder.layers.0.conv.weight": (64, 1, 7), "encoder.encoder.layers.12.conv.weight": (1024, 512, 16),
        "encoder.encoder.layers.14.conv.weight": (512, 1024, 3),
        "encoder.encoder_transformer.layers.7.mlp.fc1.weight": (2048, 512),
        "encoder.downsample.conv.weight": (512, 512, 4),
        "encoder.quantizer.semantic_residual_vector_quantizer.input_proj.weight": (256, 512, 1),
        "encoder.quantizer.acoustic_residual_vector_quantizer.output_proj.weight": (512, 256, 1),
        "encoder.quantizer.acoustic_residual_vector_quantizer.layers.30.codebook.embed_sum": (2048, 256),
        "decoder.quantizer.rvq_rest.vq.layers.14._codebook.embedding_sum": (2048, 256),
        "decoder.quantizer.rvq_first.input_proj.weight": (256, 512, 1),
        "decoder.quantizer.rvq_first.output_proj.weight": (512, 256, 1), "decoder.pre_conv.conv.weight": (1024, 512, 3),
        "decoder.pre_transformer.input_proj.weight": (512, 1024),
        "decoder.pre_transformer.output_proj.weight": (1024, 512),
        "decoder.pre_transformer.layers.7.self_attn.q_proj.weight": (1024, 512),
        "decoder.pre_transformer.layers.7.self_attn.o_proj.weight": (512, 1024),
        "decoder.pre_transformer.layers.7.mlp.gate_proj.weight": (1024, 512),
        "decoder.pre_transformer.layers.7.mlp.down_proj.weight": (512, 1024),
        "decoder.upsample.1.0.conv.weight": (1024, 1024, 2), "decoder.upsample.1.1.dwconv.conv.weight": (1024, 1, 7),
        "decoder.upsample.1.1.pwconv1.weight": (4096, 1024), "decoder.decoder.0.conv.weight": (1536, 1024, 7),
        "decoder.decoder.1.block.1.conv.weight": (1536, 768, 16), "decoder.decoder.4.block.1.conv.weight": (192, 96, 6),
        "decoder.decoder.4.block.4.conv1.conv.weight": (96, 96, 7), "decoder.decoder.5.alpha": (96,),
        "decoder.decoder.6.conv.weight": (1, 96, 7),
    }
    assert {k: p[k][0] for k in expect} == expect
    assert "encoder.quantizer.acoustic_residual_vector_quantizer.layers.31.codebook.embed_sum" not in p

    def count(pred) -> int:
        return sum(math.prod(s) for k, (s, _) in p.items() if pred(k))

    buffers = count(lambda k: k.startswith("encoder.") and ".codebook." in k)
    assert buffers == 32 * (2048 * 256 + 2048 + 1)  # 16.8 M codebook buffers
    assert round(count(lambda k: k.startswith("encoder.")) / 1e5) - round(buffers / 1e5) == 394  # 39.4 M params
    assert round(count(lambda k: k.startswith("decoder.")) / 1e5) == 1143  # 114.3 M
    assert count(lambda k: True) == 170_557_441  # "170.5 M" in §1.1; x4 bytes = 682 MB


def test_full_configs_spec_1_2_and_1_4():
    ref, got = json.loads((FIX / "config.json").read_text()), rc.model_config("full")
    assert got.keys() == ref.keys()
    assert got["talker_config"].keys() == ref["talker_config"].keys()
    tc, cp = got["talker_config"], got["talker_config"]["code_predictor_config"]
    assert cp.keys() == ref["talker_config"]["code_predictor_config"].keys()
    assert got["speaker_encoder_config"] == {"enc_dim": 1024, "sample_rate": 24000}  # the release's compact form
    assert (tc["num_hidden_layers"], tc["hidden_size"], tc["num_attention_heads"], tc["num_key_value_heads"],
            tc["head_dim"], tc["intermediate_size"], tc["text_hidden_size"]) == (28, 1024, 16, 8, 128, 3072, 2048)
    assert tc["rope_scaling"]["mrope_section"] == [24, 20, 20]
    assert (cp["num_hidden_layers"], cp["hidden_size"], cp["num_attention_heads"], cp["num_key_value_heads"],
            cp["head_dim"], cp["intermediate_size"]) == (5, 1024, 16, 8, 128, 3072)
    sref, s = json.loads((FIX / "speech_tokenizer" / "config.json").read_text()), rc.speech_config("full")
    assert s.keys() == sref.keys() and s["encoder_config"].keys() == sref["encoder_config"].keys()
    extra = {"num_semantic_quantizers", "semantic_codebook_size", "vector_quantization_hidden_dimension"}
    assert s["decoder_config"].keys() == sref["decoder_config"].keys() | extra
    e, d = s["encoder_config"], s["decoder_config"]
    assert (e["num_filters"], e["hidden_size"], e["num_hidden_layers"], e["num_quantizers"], e["codebook_dim"]) == (
        64, 512, 8, 32, 256)
    assert (d["latent_dim"], d["hidden_size"], d["num_hidden_layers"], d["num_attention_heads"], d["head_dim"],
            d["codebook_dim"], d["decoder_dim"]) == (1024, 512, 8, 16, 64, 512, 1536)
