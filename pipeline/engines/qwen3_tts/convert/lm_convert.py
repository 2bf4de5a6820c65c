"""Qwen3-TTS talker + code predictor + text side -> bundle files (spec §1.5, §2, §5, §13.0–13.2).

Files written into ``out_dir``:
- ``talker-<q>.gguf`` / ``code_predictor-<q>.gguf``: ``qwen3`` bodies (see :mod:`.lm_gguf`), F32 first, then the
  requested quants made from it by llama.cpp.
- ``text_proj.npy`` (text_vocab, H): proj(id) = text_projection(text_embedding[id]) precomputed for every id.
  Text reaches the talker only through this MLP (§2.2), so the runtime needs just one row per token. For the
  0.6B model that is 151936 x 1024 = 311 MB as float16 instead of 622 MB of text_embedding (151936 x 2048 fp16)
  plus a 2048x2048 + 2048x1024 MLP per token. Stored float16 when float32 would exceed 64 MB (the real
  model), float32 otherwise (the tiny fixture, so its goldens hold exactly); the runtime mmaps it.
- ``tts_text_rows.npy`` (3, H) float32: proj of <tts_pad>, <tts_text_bos>, <tts_text_eod>, exact even when the
  big table is float16 (the pad row is added to every generated frame).
- ``talker_codec_embedding.npy`` (3072, H), ``talker_codec_head.npy`` (3072, H),
  ``cp_codec_embedding.npy`` (15, 2048, H), ``cp_lm_head.npy`` (15, 2048, H_cp), float32; and when the code
  predictor is narrower than the talker, ``cp_mtp_proj_weight.npy`` (H_cp, H) / ``cp_mtp_proj_bias.npy`` (H_cp,).
- ``text_tokenizer.json``: the ``tokenizers`` tokenizer (:mod:`.lm_tokenizer`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.errors import SourceError
from pipeline.shared.fsutil import atomic_path, atomic_save_npy, atomic_write_bytes
from pipeline.shared.llama import quantize_gguf

from .lm_gguf import QUANTS, body_dims, body_tensors, write_f32_gguf
from .lm_safetensors import read_safetensors
from .lm_tokenizer import build_tokenizer

TALKER_GGUF = "talker-{}.gguf"
CP_GGUF = "code_predictor-{}.gguf"
FILES = {
    "text_proj": "text_proj.npy", "tts_text_rows": "tts_text_rows.npy",
    "talker_codec_embedding": "talker_codec_embedding.npy", "talker_codec_head": "talker_codec_head.npy",
    "cp_codec_embedding": "cp_codec_embedding.npy", "cp_lm_head": "cp_lm_head.npy",
    "cp_mtp_proj_weight": "cp_mtp_proj_weight.npy", "cp_mtp_proj_bias": "cp_mtp_proj_bias.npy",
    "tokenizer": "text_tokenizer.json",
}
TEXT_PROJ_F32_LIMIT = 64 << 20
_T, _CP = "talker.model.", "talker.code_predictor."
_SAMPLING_KEYS = {"do_sample": bool, "temperature": float, "top_k": int, "top_p": float,
                  "repetition_penalty": float, "max_new_tokens": int, "subtalker_dosample": bool,
                  "subtalker_temperature": float, "subtalker_top_k": int, "subtalker_top_p": float}
# The package's hard defaults (spec §8.1), used for keys generation_config.json lacks.
SAMPLING_DEFAULTS = {"do_sample": True, "temperature": 0.9, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.05,
                     "max_new_tokens": 2048, "subtalker_dosample": True, "subtalker_temperature": 0.9,
                     "subtalker_top_k": 50, "subtalker_top_p": 1.0}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"{path} is missing or unreadable ({e})") from e


def text_projection(sd: dict[str, np.ndarray], ids: np.ndarray | slice, chunk: int = 4096) -> np.ndarray:
    """proj(id) = fc2(silu(fc1(text_embedding[id]))) in float32 (spec §2.2)."""
    emb = sd[_T + "text_embedding.weight"][ids]
    w1, b1 = sd["talker.text_projection.linear_fc1.weight"], sd["talker.text_projection.linear_fc1.bias"]
    w2, b2 = sd["talker.text_projection.linear_fc2.weight"], sd["talker.text_projection.linear_fc2.bias"]
    out = np.empty((emb.shape[0], w2.shape[0]), dtype=np.float32)
    for s in range(0, emb.shape[0], chunk):
        h = emb[s:s + chunk] @ w1.T + b1
        h = h / (1.0 + np.exp(-h))
        out[s:s + chunk] = h @ w2.T + b2
    return out


def _ids(cfg: dict, tcfg: dict) -> dict[str, Any]:
    try:
        ids = {k: int(cfg[k]) for k in ("im_start_token_id", "im_end_token_id", "tts_pad_token_id",
                                         "tts_bos_token_id", "tts_eos_token_id")}
        ids.update({k: int(tcfg[k]) for k in ("codec_pad_id", "codec_bos_id", "codec_eos_token_id",
                                               "codec_think_id", "codec_nothink_id", "codec_think_bos_id",
                                               "codec_think_eos_id")})
        ids["codec_language_id"] = {str(k).lower(): int(v) for k, v in tcfg["codec_language_id"].items()
                                    if "dialect" not in str(k).lower()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SourceError(f"config.json: missing or bad special id {e}") from e
    return ids


def _sampling(ckpt_dir: Path) -> dict[str, Any]:
    path = ckpt_dir / "generation_config.json"
    gen = _read_json(path) if path.is_file() else {}
    out = dict(SAMPLING_DEFAULTS)
    for k, typ in _SAMPLING_KEYS.items():
        if k in gen:
            try:
                out[k] = typ(gen[k])
            except (TypeError, ValueError) as e:
                raise SourceError(f"{path}: bad {k} ({e})") from e
    return out


def _write_ggufs(out_dir: Path, name_fmt: str, tensors: dict, d: dict, quants: list[str], title: str) -> dict:
    files = {q: name_fmt.format(q) for q in quants}
    tmp_f32: Path | None = None
    try:
        if "f32" in quants:
            f32 = out_dir / files["f32"]
            with atomic_path(f32) as tmp:
                write_f32_gguf(tmp, tensors, d, title)
        else:
            fd, tmp_name = tempfile.mkstemp(prefix=".f32.", suffix=".gguf.tmp", dir=out_dir)
            os.close(fd)
            f32 = tmp_f32 = Path(tmp_name)
            write_f32_gguf(f32, tensors, d, title)
        for q in quants:
            if q != "f32":
                with atomic_path(out_dir / files[q]) as dst:
                    quantize_gguf(f32, dst, q)
    finally:
        if tmp_f32 is not None:
            tmp_f32.unlink(missing_ok=True)
    return files


def convert_lm(ckpt_dir: Path, out_dir: Path, quants: list[str], *, text_dtype: str = "auto") -> dict:
    """Convert the talker, code predictor and text side of ``ckpt_dir`` into ``out_dir``.

    ``quants``: subset of f32/f16/q8_0/q4_k_m/q4_0 for both GGUFs. ``text_dtype``: ``auto`` (see module
    docstring), ``float16`` or ``float32`` for ``text_proj.npy``. Returns the manifest section: file names and the
    dims, ids and sampling defaults the runtime needs.
    """
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    quants = list(dict.fromkeys(quants))
    if not quants or any(q not in QUANTS for q in quants):
        raise ValueError(f"quants must be a non-empty subset of {QUANTS}, got {quants}")
    if text_dtype not in ("auto", "float16", "float32"):
        raise ValueError(f"text_dtype must be auto, float16 or float32, not {text_dtype!r}")
    cfg = _read_json(ckpt_dir / "config.json")
    tcfg = cfg.get("talker_config")
    cpcfg = (tcfg or {}).get("code_predictor_config")
    if not isinstance(tcfg, dict) or not isinstance(cpcfg, dict):
        raise SourceError(f"{ckpt_dir}/config.json has no talker_config.code_predictor_config; not Qwen3-TTS")
    td, cd = body_dims(tcfg, "talker_config"), body_dims(cpcfg, "code_predictor_config")
    ids = _ids(cfg, tcfg)
    groups = int(tcfg.get("num_code_groups", 16))
    tok = build_tokenizer(ckpt_dir)  # checked before the slow work
    src = ckpt_dir / "model.safetensors"
    sd = read_safetensors(src, prefix="talker.")
    if _T + "text_embedding.weight" not in sd:
        raise SourceError(f"{src} has no {_T}text_embedding.weight; not a Qwen3-TTS checkpoint")

    h, hc = td["hidden"], cd["hidden"]
    talker_t = body_tensors(sd, _T, td, token_embd=_T + "codec_embedding.weight", output="talker.codec_head.weight",
                            src=src)
    # token_embd is never read (inputs are embeddings) but must be [V, H_cp]: codec_embedding.0 is talker-wide
    placeholder = _CP + ("model.codec_embedding.0.weight" if h == hc else "lm_head.0.weight")
    cp_t = body_tensors(sd, _CP + "model.", cd, token_embd=placeholder, output=_CP + "lm_head.0.weight", src=src)
    try:
        cp_emb = np.stack([sd[f"{_CP}model.codec_embedding.{j}.weight"] for j in range(groups - 1)])
        cp_head = np.stack([sd[f"{_CP}lm_head.{j}.weight"] for j in range(groups - 1)])
    except KeyError as e:
        raise SourceError(f"{src}: missing code predictor table {e} ({groups - 1} expected)") from e
    if cp_emb.shape[2] != h or cp_head.shape[2] != hc or cp_emb.shape[1] != cp_head.shape[1]:
        raise SourceError(f"{src}: code predictor tables {cp_emb.shape} / {cp_head.shape} do not fit hidden {h}/{hc}")
    mtp_w, mtp_b = sd.get(_CP + "small_to_mtp_projection.weight"), sd.get(_CP + "small_to_mtp_projection.bias")
    if (mtp_w is None) != (h == hc) or (mtp_w is not None and (mtp_w.shape != (hc, h) or mtp_b is None)):
        raise SourceError(f"{src}: small_to_mtp_projection does not fit talker hidden {h} / code predictor {hc}")

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    talker_files = _write_ggufs(out_dir, TALKER_GGUF, talker_t, td, quants, "Qwen3-TTS talker")
    cp_files = _write_ggufs(out_dir, CP_GGUF, cp_t, cd, quants, "Qwen3-TTS code predictor")
    del talker_t, cp_t

    table = text_projection(sd, slice(None))
    if text_dtype == "auto":
        text_dtype = "float32" if table.nbytes <= TEXT_PROJ_F32_LIMIT else "float16"
    special = [ids["tts_pad_token_id"], ids["tts_bos_token_id"], ids["tts_eos_token_id"]]
    tables = {"text_proj": table.astype(text_dtype), "tts_text_rows": table[special],
              "talker_codec_embedding": sd[_T + "codec_embedding.weight"],
              "talker_codec_head": sd["talker.codec_head.weight"],
              "cp_codec_embedding": cp_emb, "cp_lm_head": cp_head}
    if mtp_w is not None:
        tables.update(cp_mtp_proj_weight=mtp_w, cp_mtp_proj_bias=mtp_b)
    for key, arr in tables.items():
        atomic_save_npy(out_dir / FILES[key], np.ascontiguousarray(arr))
        files[key] = FILES[key]
    atomic_write_bytes(out_dir / FILES["tokenizer"], tok.to_str(pretty=False).encode("utf-8"))
    files["tokenizer"] = FILES["tokenizer"]

    return {
        "talker_gguf": talker_files,
        "code_predictor_gguf": cp_files,
        "default_quant": "q8_0" if "q8_0" in quants else quants[0],
        "files": files,
        "text_proj_dtype": text_dtype,
        "dims": {"talker": td, "code_predictor": cd, "num_code_groups": groups,
                 "codec_vocab": int(sd[_T + "codec_embedding.weight"].shape[0]),
                 "cp_vocab": int(cp_head.shape[1]), "text_vocab": int(table.shape[0])},
        "ids": ids,
        "sampling": _sampling(ckpt_dir),
        "all_files": sorted([*talker_files.values(), *cp_files.values(), *files.values()]),
    }
