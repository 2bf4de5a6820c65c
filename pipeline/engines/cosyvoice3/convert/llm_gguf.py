"""Convert the CosyVoice3 LLM (``llm.pt``) into llama.cpp GGUF files plus the text side tables.

The GGUF is a plain ``qwen2`` model whose vocabulary is the *speech* vocabulary: ``token_embd`` is
``speech_embedding`` and ``output`` is ``llm_decoder``, tokenizer model ``"none"`` (llama.cpp then
creates dummy tokens 0..V-1). Text never goes through llama.cpp as ids: the runtime looks rows up in
``text_embedding.npy`` (``embed_tokens``) and feeds them as embeddings. Quantized variants are made
from an F32 GGUF by llama.cpp's own quantizer, so they match what llama.cpp itself would produce.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines.cosyvoice3.convert import upstream
from pipeline.engines.cosyvoice3.tokenizer import UPSTREAM_CLASS
from pipeline.shared.errors import SourceError
from pipeline.shared.fsutil import atomic_path, atomic_save_npy, atomic_write_bytes
from pipeline.shared.llama import quantize_gguf

QUANTS = ("f32", "f16", "q8_0", "q4_k_m", "q4_0")
GGUF_NAME = "llm-{}.gguf"
TEXT_EMBEDDING = "text_embedding.npy"
TOKENIZER = "tokenizer.json"

_PREFIX = "llm.model.model."

# Qwen2's own added tokens (what CosyVoice-BlankEN's tokenizer_config.json declares).
QWEN2_ADDED = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}


def _load_state_dict(path: Path) -> dict[str, np.ndarray]:
    import torch

    if not path.is_file():
        raise SourceError(f"{path} is missing (the CosyVoice3 LLM checkpoint)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise SourceError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SourceError(f"{path} is not a state dict of tensors")
    if "llm_embedding.weight" in sd or "llm_decoder.bias" in sd:
        raise SourceError(f"{path} looks like a CosyVoice2 LLM (llm_embedding / llm_decoder.bias); "
                          "only CosyVoice3 is supported")
    return {k: v.detach().to(torch.float32).contiguous().numpy() for k, v in sd.items()}


def _dims(qwen: dict, sd: dict[str, np.ndarray], ckpt: Path) -> dict[str, Any]:
    try:
        hidden = int(qwen["hidden_size"])
        layers = int(qwen["num_hidden_layers"])
        heads = int(qwen["num_attention_heads"])
        kv_heads = int(qwen.get("num_key_value_heads", heads))
        inter = int(qwen["intermediate_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"{ckpt.parent}/CosyVoice-BlankEN/config.json: missing or bad Qwen2 field {e}") from e
    if hidden % heads or heads % kv_heads:
        raise SourceError(f"config.json: hidden {hidden}, heads {heads}, kv heads {kv_heads} "
                          "are inconsistent")
    head_dim = int(qwen.get("head_dim") or hidden // heads)
    if head_dim * heads != hidden:
        raise SourceError(f"config.json: head_dim {head_dim} x heads {heads} != hidden {hidden}")
    for key in ("embed_tokens.weight", "norm.weight"):
        if _PREFIX + key not in sd:
            raise SourceError(f"{ckpt} has no {_PREFIX + key}; not a CosyVoice3 LLM checkpoint")
    for key in ("speech_embedding.weight", "llm_decoder.weight"):
        if key not in sd:
            raise SourceError(f"{ckpt} has no {key}; not a CosyVoice3 LLM checkpoint")
    return {
        "hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv_heads, "head_dim": head_dim,
        "intermediate": inter,
        "rope_theta": float(qwen.get("rope_theta", 1e6)),
        "rms_norm_eps": float(qwen.get("rms_norm_eps", 1e-6)),
        "text_vocab": int(sd[_PREFIX + "embed_tokens.weight"].shape[0]),
        "speech_vocab": int(sd["speech_embedding.weight"].shape[0]),
        "context_length": int(qwen.get("max_position_embeddings", 32768)),
    }


def _gguf_tensors(sd: dict[str, np.ndarray], d: dict[str, Any], ckpt: Path) -> dict[str, np.ndarray]:
    """GGUF tensor name -> array in PyTorch (out, in) layout, every shape checked against ``d``."""
    h, hd, inter = d["hidden"], d["head_dim"], d["intermediate"]
    q, kv = d["heads"] * hd, d["kv_heads"] * hd
    sv = d["speech_vocab"]
    want: list[tuple[str, str, tuple[int, ...]]] = [
        ("token_embd.weight", "speech_embedding.weight", (sv, h)),
        ("output.weight", "llm_decoder.weight", (sv, h)),
        ("output_norm.weight", _PREFIX + "norm.weight", (h,)),
    ]
    for i in range(d["layers"]):
        p, b = f"{_PREFIX}layers.{i}.", f"blk.{i}."
        want += [
            (b + "attn_norm.weight", p + "input_layernorm.weight", (h,)),
            (b + "attn_q.weight", p + "self_attn.q_proj.weight", (q, h)),
            (b + "attn_q.bias", p + "self_attn.q_proj.bias", (q,)),
            (b + "attn_k.weight", p + "self_attn.k_proj.weight", (kv, h)),
            (b + "attn_k.bias", p + "self_attn.k_proj.bias", (kv,)),
            (b + "attn_v.weight", p + "self_attn.v_proj.weight", (kv, h)),
            (b + "attn_v.bias", p + "self_attn.v_proj.bias", (kv,)),
            (b + "attn_output.weight", p + "self_attn.o_proj.weight", (h, q)),
            (b + "ffn_norm.weight", p + "post_attention_layernorm.weight", (h,)),
            (b + "ffn_gate.weight", p + "mlp.gate_proj.weight", (inter, h)),
            (b + "ffn_up.weight", p + "mlp.up_proj.weight", (inter, h)),
            (b + "ffn_down.weight", p + "mlp.down_proj.weight", (h, inter)),
        ]
    out = {}
    for gname, key, shape in want:
        if key not in sd:
            raise SourceError(f"{ckpt} has no {key} (config.json says {d['layers']} layers)")
        if tuple(sd[key].shape) != shape:
            raise SourceError(f"{ckpt}: {key} has shape {tuple(sd[key].shape)}, "
                              f"config.json implies {shape}")
        out[gname] = sd[key]
    extra = sorted(k for k in sd if k.startswith(f"{_PREFIX}layers.{d['layers']}."))
    if extra:
        raise SourceError(f"{ckpt} has more layers than config.json's {d['layers']} ({extra[0]})")
    text = sd[_PREFIX + "embed_tokens.weight"]
    if text.ndim != 2 or text.shape[1] != h:
        raise SourceError(f"{ckpt}: embed_tokens has shape {text.shape}, expected (*, {h})")
    return out


def _write_f32_gguf(path: Path, tensors: dict[str, np.ndarray], d: dict[str, Any]) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), arch="qwen2")
    w.add_name("CosyVoice3 speech LM")
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
    w.add_vocab_size(d["speech_vocab"])
    for name, arr in tensors.items():
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build_text_tokenizer(blank_en: Path, version: str = "cosyvoice3"):
    """The text tokenizer upstream builds from CosyVoice-BlankEN (its own vocab.json and merges.txt), honouring
    the added tokens its tokenizer_config.json declares (as ``AutoTokenizer.from_pretrained`` does); ``version``
    as cosyvoice3.yaml's ``get_tokenizer`` (:func:`pipeline.engines.cosyvoice3.convert.config.tokenizer_version`)."""
    from pipeline.engines.cosyvoice3.tokenizer import build_tokenizer

    declared = [spec for _, spec in sorted(_declared_added_tokens(blank_en).items())]
    return build_tokenizer(blank_en / "vocab.json", blank_en / "merges.txt", added_tokens=declared, version=version)


def _declared_added_tokens(blank_en: Path) -> dict[int, tuple[str, dict]]:
    """``added_tokens_decoder`` of tokenizer_config.json, or Qwen2's three when the file is absent."""
    default = {i: (t, {"special": True, "normalized": False}) for i, t in QWEN2_ADDED.items()}
    cfg_path = blank_en / "tokenizer_config.json"
    if not cfg_path.is_file():
        return default
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        decl = cfg.get("added_tokens_decoder") or {}
        out = {}
        for tid, spec in decl.items():
            flags = {k: bool(spec[k]) for k in ("special", "normalized", "lstrip", "rstrip", "single_word")
                     if k in spec}
            out[int(tid)] = (str(spec["content"]), flags)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SourceError(f"{cfg_path}: unreadable ({e})") from e
    return out or default


def _check_tokenizer(tok, blank_en: Path) -> None:
    ids = tok.encode(upstream.SYSTEM_PREFIX).ids
    eop = tok.encode("<|endofprompt|>").ids
    if eop != [upstream.ENDOFPROMPT_ID] or upstream.ENDOFPROMPT_ID not in ids:
        raise SourceError(
            f"{blank_en}: <|endofprompt|> encodes to {eop}, "
            f"CosyVoice3 hard-codes [{upstream.ENDOFPROMPT_ID}]. "
            "The tokenizer must have exactly the Qwen2 added tokens 151643..151645 before CosyVoice3's list "
            "(a Qwen2.5/Qwen3 tokenizer_config.json declares more and shifts every special id)"
        )


def convert_llm(src: Path, out: Path, cfg: dict, quants: list[str], llm_file: str = "llm.pt") -> dict:
    """Write ``llm-<quant>.gguf`` files, ``text_embedding.npy`` and (if possible) ``tokenizer.json``.

    ``llm_file``: the LLM checkpoint in ``src`` (``llm.pt``, or upstream's RL-tuned ``llm.rl.pt``).
    Returns the manifest's ``llm`` section (see module docstring for the file layout).
    """
    src, out = Path(src), Path(out)
    quants = list(dict.fromkeys(quants))
    bad = [q for q in quants if q not in QUANTS]
    if not quants or bad:
        raise ValueError(f"quants must be a non-empty subset of {QUANTS}, got {quants}")
    yml_llm = cfg["yaml"]["llm"]
    try:
        size = int(yml_llm["speech_token_size"])
        smp = yml_llm["sampling"]
        sampling = {"top_p": float(smp["top_p"]), "top_k": int(smp["top_k"]),
                    "win_size": int(smp["win_size"]), "tau_r": float(smp["tau_r"])}
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"{src}/cosyvoice3.yaml: llm.speech_token_size / llm.sampling missing "
                          f"or bad ({e})") from e

    sd = _load_state_dict(src / llm_file)
    d = _dims(cfg["qwen"], sd, src / llm_file)
    if d["speech_vocab"] < size + 4:
        raise SourceError(f"{src / llm_file}: speech_embedding has {d['speech_vocab']} rows, "
                          f"fewer than speech_token_size {size} + 4 special tokens")
    tensors = _gguf_tensors(sd, d, src / llm_file)
    tok = tok_version = None
    blank_en = src / "CosyVoice-BlankEN"
    if (blank_en / "vocab.json").is_file() and (blank_en / "merges.txt").is_file():
        from pipeline.engines.cosyvoice3.convert.config import tokenizer_version

        tok_version = tokenizer_version(cfg["yaml"])
        tok = build_text_tokenizer(blank_en, tok_version[0])  # checked before the slow GGUF work
        _check_tokenizer(tok, blank_en)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []

    gguf_files = {q: GGUF_NAME.format(q) for q in quants}
    tmp_f32: Path | None = None
    try:
        if "f32" in quants:
            f32_path = out / gguf_files["f32"]
            with atomic_path(f32_path) as tmp:
                _write_f32_gguf(tmp, tensors, d)
        else:
            fd, tmp_name = tempfile.mkstemp(prefix=".llm-f32.", suffix=".gguf.tmp", dir=out)
            os.close(fd)
            f32_path = tmp_f32 = Path(tmp_name)
            _write_f32_gguf(f32_path, tensors, d)
        for q in quants:
            if q != "f32":
                with atomic_path(out / gguf_files[q]) as dst:
                    quantize_gguf(f32_path, dst, q)
    finally:
        if tmp_f32 is not None:
            tmp_f32.unlink(missing_ok=True)
    files += gguf_files.values()
    del tensors

    atomic_save_npy(out / TEXT_EMBEDDING, np.ascontiguousarray(sd[_PREFIX + "embed_tokens.weight"]))
    files.append(TEXT_EMBEDDING)

    tokenizer = None
    if tok is not None:
        atomic_write_bytes(out / TOKENIZER, tok.to_str(pretty=False).encode("utf-8"))
        tokenizer = TOKENIZER
        files.append(TOKENIZER)

    return {
        "gguf": gguf_files,
        "default_quant": "q4_k_m" if "q4_k_m" in gguf_files else quants[0],
        "text_embedding": TEXT_EMBEDDING,
        "tokenizer": tokenizer,
        # which of upstream's tokenizers tokenizer.json is, and why (None: no tokenizer files in the checkpoint)
        "tokenizer_version": None if tok_version is None else {"version": tok_version[0],
                                                               "upstream_class": UPSTREAM_CLASS[tok_version[0]],
                                                               "why": tok_version[1]},
        "checkpoint": llm_file,
        "dims": d,
        "constants": {
            "speech_token_size": size, "sos": size, "eos": size + 1, "task_id": size + 2, "fill": size + 3,
            "speech_vocab": d["speech_vocab"],
            "endofprompt_id": upstream.ENDOFPROMPT_ID if tokenizer else None,
            "sampling": sampling,
            "min_token_text_ratio": upstream.MIN_TOKEN_TEXT_RATIO,
            "max_token_text_ratio": upstream.MAX_TOKEN_TEXT_RATIO,
            "silent_tokens": list(upstream.SILENT_TOKENS),
            "max_silent_run": upstream.MAX_SILENT_RUN,
        },
        "files": files,
    }
