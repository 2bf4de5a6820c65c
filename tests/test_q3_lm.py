"""Qwen3-TTS talker + code predictor against the tiny fixture's goldens (spec §2, §5–§8, §13.1–13.2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.qwen3_tts.code_predictor import CodePredictor
from pipeline.engines.qwen3_tts.convert.lm_convert import convert_lm
from pipeline.engines.qwen3_tts.convert.lm_safetensors import read_safetensors
from pipeline.engines.qwen3_tts.generate import GenerationConfig, Trace, generate_codes
from pipeline.engines.qwen3_tts.lm_session import Qwen3LM
from pipeline.engines.qwen3_tts.lm_tables import LMTables
from pipeline.engines.qwen3_tts.prefill import build_talker_prompt
from pipeline.engines.qwen3_tts.sampling import SamplingConfig
from pipeline.engines.qwen3_tts.talker import Talker
from pipeline.engines.qwen3_tts.text_tokens import TextTokens
from pipeline.shared.errors import BundleError, InputError

SRC = Path(__file__).parent / "fixtures" / "tiny-qwen3-tts"
TEXT = "Hello world, this is a tiny test."
REF_TEXT = "希望你以后能够做的比我还好呦。"
LAYOUTS = {"icl": (True, False), "icl_nonstream": (True, True), "xvec": (False, False),
           "xvec_nonstream": (False, True)}
TOL = 1e-3  # README: logits <= 1e-3 abs on an F32 GGUF


@pytest.fixture(scope="module")
def g() -> dict[str, np.ndarray]:
    with np.load(SRC / "goldens.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def conv(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("q3lm")
    return out, convert_lm(SRC, out, ["f32", "q8_0", "q4_k_m"])


@pytest.fixture(scope="module")
def tables(conv) -> LMTables:
    out, m = conv
    return LMTables(out, m["files"], m["ids"])


@pytest.fixture(scope="module")
def talker(conv, tables):
    out, m = conv
    with Talker(out / m["talker_gguf"]["f32"], tables, n_ctx=256, exact=True, n_threads=1) as t:
        yield t


@pytest.fixture(scope="module")
def cp(conv, tables):
    out, m = conv
    with CodePredictor(out / m["code_predictor_gguf"]["f32"], tables, exact=True, n_threads=1) as c:
        yield c


def prompt_for(layout: str, tables: LMTables, ids: dict, g: dict):
    icl, non_streaming = LAYOUTS[layout]
    kw = {"ref_ids": g["in_ref_text_ids"], "ref_codes": g["prompt_codes"]} if icl else {}
    return build_talker_prompt(tables, ids, g["in_text_ids"], g["prompt_spk_embedding"], language="English",
                               non_streaming=non_streaming, **kw)


def test_manifest(conv):
    out, m = conv
    for name in m["all_files"]:
        assert (out / name).is_file(), name
    assert m["talker_gguf"] == {"f32": "talker-f32.gguf", "q8_0": "talker-q8_0.gguf", "q4_k_m": "talker-q4_k_m.gguf"}
    assert "cp_mtp_proj_weight" not in m["files"]  # same hidden size: Identity
    assert m["text_proj_dtype"] == "float32"
    assert m["dims"]["talker"] == {"hidden": 16, "layers": 2, "heads": 2, "kv_heads": 1, "head_dim": 16,
                                   "intermediate": 32, "rope_theta": 1e6, "rms_norm_eps": 1e-6,
                                   "context_length": 32768}
    assert m["dims"]["code_predictor"]["layers"] == 2 and m["dims"]["num_code_groups"] == 16
    assert (m["dims"]["codec_vocab"], m["dims"]["cp_vocab"], m["dims"]["text_vocab"]) == (3072, 2048, 151936)
    ids = m["ids"]
    assert (ids["codec_eos_token_id"], ids["codec_bos_id"], ids["tts_pad_token_id"]) == (2150, 2149, 151671)
    assert ids["codec_language_id"]["english"] == 2050 and ids["codec_language_id"]["russian"] == 2069
    assert m["sampling"] == {"do_sample": True, "temperature": 0.9, "top_k": 50, "top_p": 1.0,
                             "repetition_penalty": 1.05, "max_new_tokens": 8192, "subtalker_dosample": True,
                             "subtalker_temperature": 0.9, "subtalker_top_k": 50, "subtalker_top_p": 1.0}
    json.dumps(m)  # goes into a manifest


def test_bf16_read_is_exact():
    import torch
    from safetensors.torch import load_file

    ours = read_safetensors(SRC / "model.safetensors", prefix="talker.code_predictor.")
    ref = load_file(str(SRC / "model.safetensors"))
    assert len(ours) > 10
    for k, v in ours.items():
        assert ref[k].dtype == torch.bfloat16
        assert np.array_equal(v, ref[k].to(torch.float32).numpy()), k


def test_tokenizer_ids(conv, g):
    out, m = conv
    tok = TextTokens(out / m["files"]["tokenizer"])
    assert tok.target_ids(TEXT) == g["in_text_ids"].tolist()
    assert tok.ref_ids(REF_TEXT) == g["in_ref_text_ids"].tolist()
    assert tok.target_ids("\n" + TEXT + "\n") == g["in_text_ids"].tolist()  # edge newlines would shift the slices
    assert tok.encode("<tts_pad><tts_text_bos><tts_text_eod>") == [151671, 151672, 151673]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_prefill_layouts(layout, conv, tables, g):
    p = prompt_for(layout, tables, conv[1]["ids"], g)
    want, trail = g[f"talker_prefill_{layout}"], g[f"talker_trailing_{layout}"]
    assert p.prefill.shape == want.shape and p.trailing.shape == trail.shape
    assert np.abs(p.prefill - want).max() < 1e-5
    assert np.abs(p.trailing - trail).max() < 1e-5
    assert np.abs(p.pad - g["talker_tts_pad_embed"]).max() < 1e-6


def test_auto_language_has_one_control_row_less(conv, tables, g):
    ids = conv[1]["ids"]
    auto = build_talker_prompt(tables, ids, g["in_text_ids"], g["prompt_spk_embedding"], language="Auto")
    assert auto.prefill.shape[0] == g["talker_prefill_xvec"].shape[0] - 1
    # row 3 = pad + C(nothink) instead of pad + C(think)
    assert np.abs(auto.prefill[3] - (tables.tts_pad + tables.codec([2155])[0])).max() < 1e-6
    xvec = g["talker_prefill_xvec"]  # rows 3..6: think, think_bos, language, think_eos
    assert np.abs(auto.prefill[4] - xvec[4]).max() < 1e-5
    assert np.abs(auto.prefill[5:] - xvec[6:]).max() < 1e-5


def test_teacher_forced_talker(talker, conv, tables, g):
    p = prompt_for("icl", tables, conv[1]["ids"], g)
    rows = tables.frame_rows(g["in_tf_codes"]) + np.stack([p.text_row(k) for k in range(len(g["in_tf_codes"]))])
    assert np.abs(rows - g["talker_tf_frame_rows"]).max() < 1e-5
    h0, logits0 = talker.prefill(g["talker_prefill_icl"])
    hs = talker.forward_all(g["talker_tf_frame_rows"])
    hidden = np.concatenate([h0[None], hs])
    logits = hidden @ tables.codec_head.T
    assert np.abs(hidden - g["talker_tf_hidden"]).max() < TOL
    assert np.abs(logits - g["talker_tf_logits"]).max() < TOL
    assert np.abs(logits0 - g["talker_tf_logits"][0]).max() < TOL
    assert np.array_equal(logits.argmax(1), g["talker_tf_logits"].argmax(1))


def test_code_predictor(cp, g):
    greedy = SamplingConfig(do_sample=False)
    logits = np.empty((15, 2048), np.float32)
    for k in range(g["cp_in_rows"].shape[0]):
        code0 = int(g["in_tf_codes"][k, 0])
        codes = cp.predict(g["cp_in_rows"][k, 0], code0, greedy, logits_out=logits)
        assert np.array_equal(codes, g["cp_greedy_codes"][k]), k
        if k < g["cp_logits"].shape[0]:
            assert np.abs(logits - g["cp_logits"][k]).max() < TOL, k


def test_greedy_end_to_end(talker, cp, conv, tables, g):
    m = conv[1]
    p = prompt_for("icl", tables, m["ids"], g)
    cfg = GenerationConfig.from_sampling(m["sampling"], do_sample=False, subtalker_dosample=False, max_new_tokens=8)
    trace, seen = Trace(), []
    codes = generate_codes(talker, cp, p, m["ids"]["codec_eos_token_id"], cfg, trace=trace, progress=seen.append)
    assert np.array_equal(codes, g["greedy_codes"])
    assert trace.code0 == g["greedy_code0"].tolist()
    assert seen == list(range(1, 8))
    assert np.abs(np.stack(trace.talker_logits) - g["greedy_talker_logits"]).max() < TOL
    scores, want = np.stack(trace.talker_scores), g["greedy_talker_scores"]
    assert np.array_equal(np.isneginf(scores), np.isneginf(want))
    fin = np.isfinite(want)
    assert np.abs(scores[fin] - want[fin]).max() < TOL
    assert np.abs(np.stack(trace.cp_inputs) - g["greedy_cp_inputs"]).max() < TOL
    assert np.abs(np.stack(trace.cp_logits) - g["greedy_cp_logits"]).max() < TOL


def test_sampled_run_is_reproducible(talker, cp, conv, tables, g):
    m = conv[1]
    p = prompt_for("icl", tables, m["ids"], g)
    cfg = GenerationConfig.from_sampling(m["sampling"], max_new_tokens=6)
    eos = m["ids"]["codec_eos_token_id"]
    a = generate_codes(talker, cp, p, eos, cfg, rng=np.random.default_rng(7))
    b = generate_codes(talker, cp, p, eos, cfg, rng=np.random.default_rng(7))
    c = generate_codes(talker, cp, p, eos, cfg, rng=np.random.default_rng(8))
    assert a.shape == (5, 16) and np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() < 2048
    with pytest.raises(ValueError, match="Generator"):
        generate_codes(talker, cp, p, eos, cfg)


def test_stops_on_eos_and_should_stop(talker, cp, conv, tables, g, monkeypatch):
    m = conv[1]
    p = prompt_for("xvec", tables, m["ids"], g)
    eos = m["ids"]["codec_eos_token_id"]
    cfg = GenerationConfig.from_sampling({}, do_sample=False, subtalker_dosample=False, max_new_tokens=20)
    plain = talker.logits

    def eos_wins(h):
        out = plain(h)
        out[eos] = 1e9  # taken wherever it is not masked
        return out

    monkeypatch.setattr(talker, "logits", eos_wins)
    trace = Trace()
    codes = generate_codes(talker, cp, p, eos, cfg, trace=trace)
    monkeypatch.undo()
    assert trace.code0[-1] == eos and len(trace.code0) == 3  # EOS masked for 2 steps, then taken
    assert codes.shape == (2, 16) and eos not in codes[:, 0]
    calls = []
    codes = generate_codes(talker, cp, p, eos, cfg, should_stop=lambda: len(calls) >= 3 or bool(calls.append(1)))
    assert codes.shape == (4, 16)


def test_quantized_gguf_decodes(conv, tables, g):
    out, m = conv
    p = prompt_for("icl", tables, m["ids"], g)
    cfg = GenerationConfig.from_sampling({}, do_sample=False, subtalker_dosample=False, max_new_tokens=4)
    for q in ("q8_0", "q4_k_m"):
        with Talker(out / m["talker_gguf"][q], tables, n_ctx=128, n_threads=1) as t, \
                CodePredictor(out / m["code_predictor_gguf"][q], tables, n_threads=1) as c:
            trace = Trace()
            codes = generate_codes(t, c, p, 2150, cfg, trace=trace)
            assert codes.shape == (3, 16)
            want = g["greedy_talker_logits"][0]
            err = np.abs(trace.talker_logits[0] - want).max()
            assert np.isfinite(err) and err < 0.1 * np.abs(want).max(), (q, err)


def test_float16_text_table(tmp_path, conv, g):
    m = convert_lm(SRC, tmp_path, ["f32"], text_dtype="float16")
    t = LMTables(tmp_path, m["files"], m["ids"])
    assert t.text_proj.dtype == np.float16 and isinstance(t.text_proj, np.memmap)
    assert np.abs(t.tts_pad - g["talker_tts_pad_embed"]).max() < 1e-6  # exact float32 copy
    p = prompt_for("xvec", t, m["ids"], g)
    scale = np.abs(g["talker_prefill_xvec"]).max()
    assert np.abs(p.prefill - g["talker_prefill_xvec"]).max() < 2e-3 * scale


def test_session_from_text(conv, g):
    out, m = conv
    with Qwen3LM(out, m, quant="f32", n_ctx=128, exact=True, n_threads=1) as lm:
        assert lm.quant == "f32"
        p = lm.prompt(TEXT, g["prompt_spk_embedding"], language="English", ref_text=REF_TEXT,
                      ref_codes=g["prompt_codes"])
        assert np.abs(p.prefill - g["talker_prefill_icl"]).max() < 1e-5
        streamed = []
        codes = lm.generate(p, do_sample=False, subtalker_dosample=False, max_new_tokens=8, on_frame=streamed.append)
        assert np.array_equal(codes, g["greedy_codes"])
        assert np.array_equal(np.stack(streamed), codes)
        x = lm.prompt(TEXT, g["prompt_spk_embedding"], language="english", non_streaming=True)
        assert np.abs(x.prefill - g["talker_prefill_xvec_nonstream"]).max() < 1e-5
        with pytest.raises(InputError):
            lm.prompt(TEXT, g["prompt_spk_embedding"], ref_codes=g["prompt_codes"])
    with pytest.raises(BundleError, match="no f16"):
        Qwen3LM(out, m, quant="f16")


def test_gguf_metadata(conv):
    import gguf

    out, m = conv
    r = gguf.GGUFReader(str(out / m["talker_gguf"]["f32"]))

    def field(name):
        f = r.fields[name]
        return f.parts[f.data[0]].tobytes().decode() if f.types[0] == gguf.GGUFValueType.STRING \
            else f.parts[f.data[0]][0]

    assert field("general.architecture") == "qwen3"
    assert (field("qwen3.attention.key_length"), field("qwen3.attention.value_length")) == (16, 16)
    assert field("qwen3.rope.freq_base") == 1e6 and field("qwen3.block_count") == 2
    names = {t.name: t for t in r.tensors}
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.1.attn_q_norm.weight",
            "blk.1.attn_k_norm.weight"} <= set(names)
    sd = read_safetensors(SRC / "model.safetensors", prefix="talker.")
    assert np.array_equal(np.asarray(names["output.weight"].data), sd["talker.codec_head.weight"])
    assert np.array_equal(np.asarray(names["blk.1.attn_q.weight"].data),
                          sd["talker.model.layers.1.self_attn.q_proj.weight"])
    cpr = gguf.GGUFReader(str(out / m["code_predictor_gguf"]["f32"]))
    assert len([t for t in cpr.tensors if t.name.endswith("attn_q.weight")]) == 2


def test_source_errors(tmp_path):
    import shutil

    from pipeline.shared.errors import SourceError

    src = tmp_path / "ckpt"
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("speech_tokenizer", "goldens.npz"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["talker_config"]["num_hidden_layers"] = 3
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceError, match="layers.2"):
        convert_lm(src, tmp_path / "out", ["f32"])
    del cfg["talker_config"]["code_predictor_config"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceError, match="code_predictor_config"):
        convert_lm(src, tmp_path / "out", ["f32"])
    shutil.copy(SRC / "config.json", src / "config.json")
    (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SourceError, match="not a readable safetensors"):
        convert_lm(src, tmp_path / "out", ["f32"])
    with pytest.raises(ValueError, match="quants"):
        convert_lm(src, tmp_path / "out", ["q3"])
