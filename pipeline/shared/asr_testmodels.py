"""TEST MODELS for automatic transcription: a tiny random GigaAM v3 E2E CTC and a tiny random Whisper in the
on-disk formats ``cosyvoice-rk download --asr`` fetches (same file names, ONNX input/output names, dtypes and
ranks, vocabulary files, ``config.json``, ``asr.json``), so tests run the real loading path of
:mod:`pipeline.shared.asr` (onnx-asr's preprocessing, ONNX Runtime, onnx-asr's decoding) without the network.

Their text is random but deterministic:

- GigaAM (``v3_e2e_ctc.int8.onnx``): ``features`` (B, 64, T) float32, ``feature_lengths`` (B,) int64 →
  ``log_probs`` (B, (T-1)//4+1, V) float32: a stride-4 convolution then log-softmax over a Cyrillic vocabulary.
- Whisper (``onnx/encoder_model.onnx``: ``input_features`` (B, 80, 3000) → ``last_hidden_state`` (B, 1500, D);
  ``onnx/decoder_model_merged.onnx``: ``input_ids``, ``encoder_hidden_states``, ``past_key_values.*``,
  ``use_cache_branch`` → ``logits``, ``present.*``): token embeddings plus the mean encoder state, a running
  mean of the self-attention cache as context; the end-of-text logit grows with the position, so every
  decoding ends within a few dozen tokens. Vocabulary: lower-case Latin letters and the space.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.engines.cosyvoice3.testmodels import _save
from pipeline.shared.asr import FORMAT, FORMAT_VERSION, MANIFEST
from pipeline.shared.asr_download import MODELS
from pipeline.shared.fsutil import atomic_write_bytes, atomic_write_json

WHISPER_LANGS = ("en", "zh", "de", "es", "ru", "ja", "fr")
_D, _H, _LAYERS = 16, 2, 1


def manifest_entries() -> list[dict]:
    """The two models as ``asr.json`` lists them (the entries ``download --asr`` writes)."""
    return [dict(entry) for _, _, entry in MODELS]


def make_test_asr(dest: Path | str, seed: int = 0) -> Path:
    """Write the tiny test ASR folder (both models and ``asr.json``) to ``dest``."""
    dest = Path(dest)
    entries = manifest_entries()
    make_test_gigaam(dest / entries[0]["folder"], seed)
    make_test_whisper(dest / entries[1]["folder"], seed + 1)
    atomic_write_json(dest / MANIFEST, {"format": FORMAT, "version": FORMAT_VERSION, "models": entries,
                                        "test_model": True})
    return dest


def make_test_gigaam(folder: Path | str, seed: int = 0) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    vocab = ["\u2581", *(chr(ord("а") + i) for i in range(32)), ",", ".", "\u2581Д", "<blk>"]
    atomic_write_bytes(folder / "v3_e2e_ctc_vocab.txt",
                       "".join(f"{tok} {i}\n" for i, tok in enumerate(vocab)).encode())
    atomic_write_json(folder / "config.json", {"model_type": "gigaam", "version": "v3", "features_size": 64,
                                               "subsampling_factor": 4})
    rng = np.random.default_rng(seed)
    v = len(vocab)
    w = (rng.standard_normal((v, 64, 3)) * 0.05).astype(np.float32)
    b = (rng.standard_normal(v) * 0.5).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["features", "w", "b"], ["conv"], kernel_shape=[3], strides=[4], pads=[1, 1]),
         helper.make_node("Transpose", ["conv"], ["logits"], perm=[0, 2, 1]),
         helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=-1),
         # the lengths are an input of the real model; here they only pass through a no-op to keep them used
         helper.make_node("Identity", ["feature_lengths"], ["unused_lengths"])],
        "test_gigaam_v3_e2e_ctc",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", 64, "T"]),
         helper.make_tensor_value_info("feature_lengths", TensorProto.INT64, ["B"])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["B", "T4", v])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return _save(graph, folder / "v3_e2e_ctc.int8.onnx", "GigaAM v3 E2E CTC")


def _whisper_vocab() -> tuple[dict[str, int], dict[str, int]]:
    letters = [chr(ord("a") + i) for i in range(26)] + ["\u0120"]  # Ġ: the byte-level BPE space
    vocab = {tok: i for i, tok in enumerate(letters)}
    vocab["<|endoftext|>"] = len(vocab)
    added = ["<|startoftranscript|>", *(f"<|{x}|>" for x in WHISPER_LANGS), "<|translate|>", "<|transcribe|>",
             "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    added_tokens = {tok: len(vocab) + i for i, tok in enumerate(added)}
    return vocab, added_tokens


def make_test_whisper(folder: Path | str, seed: int = 0) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    vocab, added = _whisper_vocab()
    atomic_write_json(folder / "vocab.json", vocab)
    atomic_write_json(folder / "added_tokens.json", added)
    atomic_write_json(folder / "config.json", {"model_type": "whisper", "num_mel_bins": 80, "d_model": _D,
                                               "decoder_layers": _LAYERS, "decoder_attention_heads": _H})
    n_vocab = len(vocab) + len(added)
    eos = vocab["<|endoftext|>"]
    rng = np.random.default_rng(seed)
    hd = _D // _H
    f = TensorProto.FLOAT

    enc_w = (rng.standard_normal((_D, 80, 3)) * 0.1).astype(np.float32)
    enc = helper.make_graph(
        [helper.make_node("Conv", ["input_features", "w"], ["c"], kernel_shape=[3], strides=[2], pads=[1, 1]),
         helper.make_node("Tanh", ["c"], ["t"]),
         helper.make_node("Transpose", ["t"], ["last_hidden_state"], perm=[0, 2, 1])],
        "test_whisper_encoder",
        [helper.make_tensor_value_info("input_features", f, ["B", 80, 3000])],
        [helper.make_tensor_value_info("last_hidden_state", f, ["B", 1500, _D])],
        [numpy_helper.from_array(enc_w, "w")])
    _save(enc, folder / "onnx" / "encoder_model.onnx", "Whisper encoder")

    eos_onehot = np.zeros(n_vocab, np.float32)
    eos_onehot[eos] = 1.0
    inits = [
        numpy_helper.from_array((rng.standard_normal((n_vocab, _D)) * 1.0).astype(np.float32), "emb"),
        numpy_helper.from_array((rng.standard_normal((_D, _D)) * 0.5).astype(np.float32), "w_enc"),
        numpy_helper.from_array((rng.standard_normal((_D, _D)) * 1.5).astype(np.float32), "w_ctx"),
        numpy_helper.from_array((rng.standard_normal((_D, n_vocab)) * 1.0).astype(np.float32), "w_out"),
        numpy_helper.from_array(eos_onehot * 0.4, "eos_slope"),
        numpy_helper.from_array(eos_onehot * -8.0, "eos_bias"),
        numpy_helper.from_array(np.array([0, 0, _H, hd], np.int64), "heads_shape"),
        numpy_helper.from_array(np.array([0, 1, _D], np.int64), "ctx_shape"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "input_ids"], ["x"]),  # (B, S, D)
        helper.make_node("ReduceMean", ["encoder_hidden_states"], ["enc_mean"], axes=[1], keepdims=1),  # (B,1,D)
        helper.make_node("MatMul", ["enc_mean", "w_enc"], ["enc_ctx"]),
        helper.make_node("Reshape", ["x", "heads_shape"], ["x4"]),  # (B, S, H, hd)
        helper.make_node("Transpose", ["x4"], ["new_kv"], perm=[0, 2, 1, 3]),  # (B, H, S, hd)
        helper.make_node("Reshape", ["encoder_hidden_states", "heads_shape"], ["e4"]),
        helper.make_node("Transpose", ["e4"], ["enc_kv"], perm=[0, 2, 1, 3]),  # (B, H, 1500, hd)
    ]
    outputs = [helper.make_tensor_value_info("logits", f, ["B", "S", n_vocab])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"]),
              helper.make_tensor_value_info("encoder_hidden_states", f, ["B", "E", _D])]
    ctx = None
    for layer in range(_LAYERS):
        for part in ("decoder", "encoder"):
            for kv in ("key", "value"):
                name = f"{layer}.{part}.{kv}"
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{name}", f,
                                                            ["B", _H, f"P_{part}", hd]))
                outputs.append(helper.make_tensor_value_info(f"present.{name}", f,
                                                             ["B", _H, f"N_{part}", hd]))
                if part == "decoder":
                    # as optimum's merged decoder: the cache is used only on the use_cache branch (onnx-asr's
                    # first step passes an empty cache with batch 0)
                    then = helper.make_graph([helper.make_node("Concat", [f"past_key_values.{name}", "new_kv"],
                                                               [f"cat.{name}"], axis=2)], f"with_past.{name}", [],
                                             [helper.make_tensor_value_info(f"cat.{name}", f, None)])
                    orelse = helper.make_graph([helper.make_node("Identity", ["new_kv"], [f"new.{name}"])],
                                               f"no_past.{name}", [],
                                               [helper.make_tensor_value_info(f"new.{name}", f, None)])
                    nodes.append(helper.make_node("If", ["use_cache_branch"], [f"present.{name}"],
                                                  then_branch=then, else_branch=orelse))
                else:
                    nodes.append(helper.make_node("Identity", ["enc_kv"], [f"present.{name}"]))
        ctx = f"present.{layer}.decoder.key"
    inputs.append(helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1]))
    nodes += [
        helper.make_node("ReduceMean", [ctx], ["ctx_mean"], axes=[2], keepdims=1),  # (B, H, 1, hd)
        helper.make_node("Transpose", ["ctx_mean"], ["ctx_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "ctx_shape"], ["ctx3"]),  # (B, 1, D)
        helper.make_node("MatMul", ["ctx3", "w_ctx"], ["ctx_proj"]),
        helper.make_node("Add", ["x", "enc_ctx"], ["h0"]),
        helper.make_node("Add", ["h0", "ctx_proj"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "w_out"], ["raw"]),
        # the end-of-text logit: slope * (tokens so far) + bias, so that decoding stops
        helper.make_node("Shape", [ctx], ["ctx_shape_all"]),
        helper.make_node("Gather", ["ctx_shape_all", "axis2"], ["n_tok"], axis=0),
        helper.make_node("Cast", ["n_tok"], ["n_tok_f"], to=f),
        helper.make_node("Mul", ["eos_slope", "n_tok_f"], ["eos_ramp"]),
        helper.make_node("Add", ["raw", "eos_ramp"], ["raw2"]),
        helper.make_node("Add", ["raw2", "eos_bias"], ["logits"]),
    ]
    dec = helper.make_graph(nodes, "test_whisper_decoder_merged", inputs, outputs, inits)
    _save(dec, folder / "onnx" / "decoder_model_merged.onnx", "Whisper decoder (merged)")
    return folder


def read_vocab_text(folder: Path | str) -> set[str]:
    """The characters the test Whisper can write (for tests)."""
    vocab = json.loads((Path(folder) / "vocab.json").read_text(encoding="utf-8"))
    return {t.replace("\u0120", " ") for t in vocab if not t.startswith("<|")}
