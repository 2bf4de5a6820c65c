"""Qwen3-TTS LM pieces without goldens: sampling rules (spec §8.2), the real-width qwen3 body in llama.cpp against a
numpy reference (head_dim 128 != hidden / heads, §13.1), input errors, and the torch-free runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.qwen3_tts.convert.lm_gguf import write_f32_gguf
from pipeline.engines.qwen3_tts.lm_body import LMBody
from pipeline.engines.qwen3_tts.sampling import SamplingConfig, pick, talker_scores, warp
from pipeline.shared.errors import InputError
from pipeline.shared.llama import quantize_gguf

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(__file__).parent / "fixtures" / "tiny-qwen3-tts"


# --- sampling ----------------------------------------------------------------------------------

def test_talker_scores_rules():
    logits = np.linspace(-3, 3, 3072).astype(np.float32)
    logits[5], logits[7] = -2.0, 2.0
    s = talker_scores(logits, [5, 7, 7], eos_id=2150, repetition_penalty=1.05, min_new_tokens=2)
    assert s[5] == np.float32(-2.0) * np.float32(1.05) and s[7] == np.float32(2.0) / np.float32(1.05)  # once each
    assert s[2150] == logits[2150]  # 3 generated >= min_new_tokens: EOS allowed
    assert np.isneginf(s[2048:2150]).all() and np.isneginf(s[2151:]).all()
    assert np.array_equal(s[8:2048], logits[8:2048])
    early = talker_scores(logits, [5], eos_id=2150)
    assert np.isneginf(early[2150])  # fewer than 2 generated
    assert np.isfinite(early[:2048]).all()


def test_warp_top_k_keeps_ties_and_top_p():
    s = np.array([1.0, 3.0, 3.0, 2.0, 0.5], np.float32)
    w = warp(s, SamplingConfig(temperature=1.0, top_k=2, top_p=1.0))
    assert np.isfinite(w).tolist() == [False, True, True, False, False]
    w = warp(s, SamplingConfig(temperature=0.5, top_k=0, top_p=1.0))
    assert np.allclose(w, s / 0.5)
    p = np.array([0.5, 0.3, 0.15, 0.05])
    w = warp(np.log(p).astype(np.float32), SamplingConfig(temperature=1.0, top_k=0, top_p=0.7))
    assert np.isfinite(w).tolist() == [True, True, False, False]  # cumulative 0.5 + 0.3 covers 0.7


def test_pick_greedy_and_seeded_draws():
    s = np.array([0.0, 2.0, 1.0, -np.inf], np.float32)
    assert pick(s, SamplingConfig(do_sample=False), None) == 1
    cfg = SamplingConfig(temperature=1.0, top_k=2, top_p=1.0)
    draws = [pick(s, cfg, np.random.default_rng(i)) for i in range(400)]
    assert set(draws) == {1, 2}  # top-2 only, never the masked id
    freq = draws.count(1) / len(draws)
    assert abs(freq - 1 / (1 + np.exp(-1.0))) < 0.08
    a = [pick(s, cfg, r) for r in [np.random.default_rng(3)] * 20]
    b = [pick(s, cfg, r) for r in [np.random.default_rng(3)] * 20]
    assert a == b
    with pytest.raises(ValueError):
        pick(s, cfg, None)


# --- real-width qwen3 body ---------------------------------------------------------------------

DIMS = {"hidden": 1024, "layers": 1, "heads": 16, "kv_heads": 8, "head_dim": 128, "intermediate": 3072,
        "rope_theta": 1e6, "rms_norm_eps": 1e-6, "context_length": 4096}


def _random_body(seed: int, d: dict, vocab: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    h, hd, f = d["hidden"], d["head_dim"], d["intermediate"]

    def lin(o: int, i: int) -> np.ndarray:
        return (r.standard_normal((o, i)) / np.sqrt(i)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return r.uniform(0.7, 1.3, n).astype(np.float32)

    t = {"token_embd.weight": r.standard_normal((vocab, h)).astype(np.float32),
         "output.weight": lin(vocab, h), "output_norm.weight": norm(h)}
    for i in range(d["layers"]):
        b = f"blk.{i}."
        t.update({b + "attn_norm.weight": norm(h), b + "attn_q.weight": lin(d["heads"] * hd, h),
                  b + "attn_k.weight": lin(d["kv_heads"] * hd, h), b + "attn_v.weight": lin(d["kv_heads"] * hd, h),
                  b + "attn_output.weight": lin(h, d["heads"] * hd), b + "attn_q_norm.weight": norm(hd),
                  b + "attn_k_norm.weight": norm(hd), b + "ffn_norm.weight": norm(h),
                  b + "ffn_gate.weight": lin(f, h), b + "ffn_up.weight": lin(f, h), b + "ffn_down.weight": lin(h, f)})
    return t


def _reference(t: dict[str, np.ndarray], d: dict, x: np.ndarray) -> np.ndarray:
    """Stock Qwen3 decoder in float64 (spec §6.1): q/k RMSNorm before NeoX RoPE, GQA, causal, SwiGLU."""
    eps, hd, nh, nkv = d["rms_norm_eps"], d["head_dim"], d["heads"], d["kv_heads"]

    def rms(v, w):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w.astype(np.float64)

    n = x.shape[0]
    half = hd // 2
    ang = np.arange(n)[:, None] * d["rope_theta"] ** (-np.arange(half) * 2.0 / hd)[None]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]

    def rope(v):
        a, b = v[..., :half], v[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)

    x = x.astype(np.float64)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(d["layers"]):
        w = {k[len(f"blk.{i}."):]: v.astype(np.float64) for k, v in t.items() if k.startswith(f"blk.{i}.")}
        h = rms(x, w["attn_norm.weight"])
        q = rope(rms((h @ w["attn_q.weight"].T).reshape(n, nh, hd), w["attn_q_norm.weight"]))
        k = rope(rms((h @ w["attn_k.weight"].T).reshape(n, nkv, hd), w["attn_k_norm.weight"]))
        v = (h @ w["attn_v.weight"].T).reshape(n, nkv, hd)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + np.einsum("hqk,khd->qhd", att, v).reshape(n, nh * hd) @ w["attn_output.weight"].T
        h = rms(x, w["ffn_norm.weight"])
        gate = h @ w["ffn_gate.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w["ffn_up.weight"].T)) @ w["ffn_down.weight"].T
    return rms(x, t["output_norm.weight"])


def test_real_width_qwen3_body(tmp_path):
    """One layer of the 0.6B talker's shape (hidden 1024, 16/8 heads, head_dim 128, MLP 3072, vocab 3072)."""
    t = _random_body(0, DIMS, 3072)
    f32 = tmp_path / "body-f32.gguf"
    write_f32_gguf(f32, t, DIMS, "real-width test body")
    x = np.random.default_rng(1).standard_normal((7, 1024)).astype(np.float32)
    want = _reference(t, DIMS, x)
    with LMBody(f32, n_ctx=64, exact=True, n_threads=1) as body:
        assert (body.n_embd, body.n_layer) == (1024, 1)
        got = np.concatenate([body.forward(x[:5], all_hidden=True), body.forward(x[5:6])[None],
                              body.forward(x[6:])[None]])
        body.reset()
        again = body.forward(x)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() < 1e-4 * scale
    assert np.abs(again - want[-1]).max() < 1e-4 * scale
    q8 = tmp_path / "body-q8_0.gguf"
    quantize_gguf(f32, q8, "q8_0")
    assert q8.stat().st_size < 0.4 * f32.stat().st_size
    with LMBody(q8, n_ctx=64, n_threads=1) as body:
        got = body.forward(x, all_hidden=True)
    assert np.abs(got - want).max() < 0.05 * scale


def test_body_input_errors(tmp_path):
    d = {**DIMS, "hidden": 64, "heads": 2, "kv_heads": 1, "head_dim": 64, "intermediate": 64}
    write_f32_gguf(tmp_path / "small.gguf", _random_body(0, d, 8), d, "small")
    with LMBody(tmp_path / "small.gguf", n_ctx=8, n_threads=1) as body:
        with pytest.raises(InputError):
            body.forward(np.zeros((2, 63), np.float32))
        body.forward(np.zeros((body.n_ctx, 64), np.float32))  # llama.cpp may round n_ctx up
        from pipeline.shared.errors import BackendError

        with pytest.raises(BackendError, match="context full"):
            body.forward(np.zeros((1, 64), np.float32))


# --- runtime without torch ---------------------------------------------------------------------

NO_TORCH = """
import sys
sys.modules["torch"] = None
from pathlib import Path
import numpy as np
from pipeline.engines.qwen3_tts import code_predictor, generate, lm_body, lm_session, lm_tables, prefill, sampling
from pipeline.engines.qwen3_tts import talker, text_tokens
from pipeline.engines.qwen3_tts.convert.lm_convert import convert_lm  # the converter's own imports, lazily torch-free
out = Path(sys.argv[1])
m = convert_lm(Path(sys.argv[2]), out, ["f32"])
t = lm_tables.LMTables(out, m["files"], m["ids"])
tok = text_tokens.TextTokens(out / m["files"]["tokenizer"])
p = prefill.build_talker_prompt(t, m["ids"], tok.target_ids("Hi there."), np.zeros(t.hidden, np.float32))
with talker.Talker(out / m["talker_gguf"]["f32"], t, n_ctx=64, n_threads=1) as tk, \\
        code_predictor.CodePredictor(out / m["code_predictor_gguf"]["f32"], t, n_threads=1) as cp:
    cfg = generate.GenerationConfig.from_sampling(m["sampling"], max_new_tokens=3)
    codes = generate.generate_codes(tk, cp, p, m["ids"]["codec_eos_token_id"], cfg, rng=np.random.default_rng(0))
assert codes.shape == (2, 16), codes.shape
assert "torch" not in [k for k, v in sys.modules.items() if v is not None]
print("ok")
"""


def test_runtime_does_not_import_torch(tmp_path):
    r = subprocess.run([sys.executable, "-c", NO_TORCH, str(tmp_path), str(SRC)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_prompt_input_errors(tmp_path):
    from pipeline.engines.qwen3_tts.convert.lm_convert import convert_lm
    from pipeline.engines.qwen3_tts.lm_tables import LMTables
    from pipeline.engines.qwen3_tts.prefill import build_talker_prompt
    from pipeline.engines.qwen3_tts.text_tokens import TextTokens

    m = convert_lm(SRC, tmp_path, ["f32"])
    t = LMTables(tmp_path, m["files"], m["ids"])
    tok = TextTokens(tmp_path / m["files"]["tokenizer"])
    ids = tok.target_ids("Hi.")
    spk = np.zeros(t.hidden, np.float32)
    with pytest.raises(InputError, match="unknown language"):
        build_talker_prompt(t, m["ids"], ids, spk, language="Klingon")
    assert build_talker_prompt(t, m["ids"], ids, spk, language="RUSSIAN").prefill.shape[0] == 10
    with pytest.raises(InputError, match="speaker embedding"):
        build_talker_prompt(t, m["ids"], ids, np.zeros(3, np.float32))
    with pytest.raises(InputError, match="both"):
        build_talker_prompt(t, m["ids"], ids, spk, ref_codes=np.zeros((2, 16), np.int64))
    with pytest.raises(InputError, match="empty"):
        tok.target_ids(" \n")
    with pytest.raises(InputError, match="merges"):
        tok.target_ids(" \nHi")


def test_narrow_code_predictor_uses_mtp_projection(tmp_path):
    """1.7B layout: code predictor narrower than the talker, small_to_mtp_projection (Linear + bias) maps every
    input row (spec §1.2, §7). Checked against the numpy Qwen3 reference on the projected rows."""
    import json
    import shutil

    from safetensors.numpy import save_file

    from pipeline.engines.qwen3_tts.code_predictor import CodePredictor
    from pipeline.engines.qwen3_tts.convert.lm_convert import convert_lm
    from pipeline.engines.qwen3_tts.convert.lm_safetensors import read_safetensors
    from pipeline.engines.qwen3_tts.lm_tables import LMTables

    src = tmp_path / "ckpt"
    shutil.copytree(SRC, src, ignore=shutil.ignore_patterns("speech_tokenizer", "goldens.npz", "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    d = {**DIMS, "hidden": 8, "layers": 1, "heads": 2, "kv_heads": 1, "head_dim": 16, "intermediate": 32}
    cfg["talker_config"]["code_predictor_config"].update(hidden_size=8, num_hidden_layers=1)
    (src / "config.json").write_text(json.dumps(cfg))
    sd = {k: v for k, v in read_safetensors(SRC / "model.safetensors").items()
          if ".code_predictor.model.layers" not in k}
    body = _random_body(3, d, 2048)
    names = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
             "attn_k_norm": "self_attn.k_norm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    for gname, hname in names.items():
        sd[f"talker.code_predictor.model.layers.0.{hname}.weight"] = body[f"blk.0.{gname}.weight"]
    sd["talker.code_predictor.model.norm.weight"] = body["output_norm.weight"]
    r = np.random.default_rng(4)
    for j in range(15):
        sd[f"talker.code_predictor.lm_head.{j}.weight"] = r.standard_normal((2048, 8)).astype(np.float32)
    sd["talker.code_predictor.small_to_mtp_projection.weight"] = r.standard_normal((8, 16)).astype(np.float32) / 4
    sd["talker.code_predictor.small_to_mtp_projection.bias"] = r.standard_normal(8).astype(np.float32) / 10
    save_file(sd, str(src / "model.safetensors"))

    out = tmp_path / "out"
    m = convert_lm(src, out, ["f32"])
    assert {"cp_mtp_proj_weight", "cp_mtp_proj_bias"} <= set(m["files"])
    t = LMTables(out, m["files"], m["ids"])
    past = r.standard_normal(16).astype(np.float32)
    logits = np.empty((15, 2048), np.float32)
    from pipeline.engines.qwen3_tts.sampling import SamplingConfig

    with CodePredictor(out / m["code_predictor_gguf"]["f32"], t, exact=True, n_threads=1) as cp:
        codes = cp.predict(past, 5, SamplingConfig(do_sample=False), logits_out=logits)
    mtp = "talker.code_predictor.small_to_mtp_projection."
    w, b = sd[mtp + "weight"], sd[mtp + "bias"]
    rows = [past, sd["talker.model.codec_embedding.weight"][5]]
    rows += [sd[f"talker.code_predictor.model.codec_embedding.{j}.weight"][codes[j]] for j in range(14)]
    hid = _reference(body, d, np.stack(rows) @ w.T + b)[1:]
    want = np.stack([sd[f"talker.code_predictor.lm_head.{j}.weight"] @ hid[j] for j in range(15)])
    assert np.abs(logits - want).max() < 1e-4 * np.abs(want).max()
    assert np.array_equal(codes, want.argmax(1))
