"""Talker and code predictor -> llama.cpp ``qwen3`` GGUF files (spec §13.1, §13.2).

Both bodies are stock Qwen3 decoders (q/k RMSNorm before NeoX RoPE, GQA, SwiGLU). The talker's 3-section M-RoPE
is plain NeoX RoPE because its three position streams are equal (§6.2), so ``rope_scaling`` is not written.
``key_length``/``value_length`` carry head_dim, which differs from hidden/heads in the real model (128 vs 64).
The vocabulary is dummy tokens (tokenizer model ``none``): every input is an embedding row, and the heads are
applied in numpy from the final-normed hidden, so ``token_embd``/``output`` only have to exist. The talker
still gets its real ones (codec_embedding / codec_head); the code predictor gets codec_embedding.0 / lm_head.0.
Quantized files come from the F32 file through llama.cpp's own ``llama_model_quantize``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.errors import SourceError

QUANTS = ("f32", "f16", "q8_0", "q4_k_m", "q4_0")


def body_dims(cfg: dict, where: str) -> dict[str, Any]:
    """The qwen3 body dims of a talker_config / code_predictor_config dict."""
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        d = {
            "hidden": hidden, "layers": int(cfg["num_hidden_layers"]), "heads": heads,
            "kv_heads": int(cfg.get("num_key_value_heads") or heads),
            "head_dim": int(cfg.get("head_dim") or hidden // heads),
            "intermediate": int(cfg["intermediate_size"]),
            "rope_theta": float(cfg.get("rope_theta", 10000.0)),
            "rms_norm_eps": float(cfg.get("rms_norm_eps", 1e-6)),
            "context_length": int(cfg.get("max_position_embeddings", 32768)),
        }
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"config.json {where}: missing or bad field {e}") from e
    if d["heads"] % d["kv_heads"]:
        raise SourceError(f"config.json {where}: {d['heads']} heads are not a multiple of {d['kv_heads']} kv heads")
    return d


def body_tensors(sd: dict[str, np.ndarray], prefix: str, d: dict[str, Any], *, token_embd: str, output: str,
                 src: Path) -> dict[str, np.ndarray]:
    """GGUF tensor name -> array (PyTorch (out, in) layout) for the Qwen3 body under ``prefix``, shapes checked."""
    h, hd, inter = d["hidden"], d["head_dim"], d["intermediate"]
    q, kv = d["heads"] * hd, d["kv_heads"] * hd
    want: list[tuple[str, str, tuple[int, ...] | None]] = [
        ("token_embd.weight", token_embd, None),
        ("output.weight", output, None),
        ("output_norm.weight", prefix + "norm.weight", (h,)),
    ]
    for i in range(d["layers"]):
        p, b = f"{prefix}layers.{i}.", f"blk.{i}."
        want += [
            (b + "attn_norm.weight", p + "input_layernorm.weight", (h,)),
            (b + "attn_q.weight", p + "self_attn.q_proj.weight", (q, h)),
            (b + "attn_k.weight", p + "self_attn.k_proj.weight", (kv, h)),
            (b + "attn_v.weight", p + "self_attn.v_proj.weight", (kv, h)),
            (b + "attn_output.weight", p + "self_attn.o_proj.weight", (h, q)),
            (b + "attn_q_norm.weight", p + "self_attn.q_norm.weight", (hd,)),
            (b + "attn_k_norm.weight", p + "self_attn.k_norm.weight", (hd,)),
            (b + "ffn_norm.weight", p + "post_attention_layernorm.weight", (h,)),
            (b + "ffn_gate.weight", p + "mlp.gate_proj.weight", (inter, h)),
            (b + "ffn_up.weight", p + "mlp.up_proj.weight", (inter, h)),
            (b + "ffn_down.weight", p + "mlp.down_proj.weight", (h, inter)),
        ]
    out: dict[str, np.ndarray] = {}
    for gname, key, shape in want:
        if key not in sd:
            raise SourceError(f"{src} has no {key} (config.json says {d['layers']} layers)")
        arr = sd[key]
        if shape is None and (arr.ndim != 2 or arr.shape[1] != h):
            raise SourceError(f"{src}: {key} has shape {arr.shape}, expected (*, {h})")
        if shape is not None and tuple(arr.shape) != shape:
            raise SourceError(f"{src}: {key} has shape {tuple(arr.shape)}, config.json implies {shape}")
        out[gname] = arr
    if any(k.startswith(f"{prefix}layers.{d['layers']}.") for k in sd):
        raise SourceError(f"{src} has more layers under {prefix} than config.json's {d['layers']}")
    for k in sd:
        if k.startswith(prefix + "layers.") and k.endswith(".bias"):
            raise SourceError(f"{src}: {k}: attention/MLP biases are not supported (attention_bias must be false)")
    return out


def write_f32_gguf(path: Path, tensors: dict[str, np.ndarray], d: dict[str, Any], name: str) -> None:
    """An F32 ``qwen3`` GGUF with a dummy vocabulary of ``token_embd``'s row count."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch="qwen3")
    w.add_name(name)
    w.add_context_length(d["context_length"])
    w.add_embedding_length(d["hidden"])
    w.add_block_count(d["layers"])
    w.add_feed_forward_length(d["intermediate"])
    w.add_head_count(d["heads"])
    w.add_head_count_kv(d["kv_heads"])
    w.add_key_length(d["head_dim"])
    w.add_value_length(d["head_dim"])
    w.add_rope_freq_base(d["rope_theta"])
    w.add_layer_norm_rms_eps(d["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("none")
    w.add_vocab_size(int(tensors["token_embd.weight"].shape[0]))
    for tname, arr in tensors.items():
        w.add_tensor(tname, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
