"""A Qwen3-TTS checkpoint folder → a Qwen3-TTS bundle, written whole or not at all.

Stages: talker + code predictor GGUFs, text and codec tables, tokenizer (:mod:`.lm_convert`); prompt encoder and
speaker encoder ONNX (:mod:`.prompt_export`); decoder ONNX (:mod:`.decoder_export`). The manifest names the engine
(``"engine": "qwen3-tts"``) and holds each stage's section as the stage converter returned it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.shared.bundle import FORMAT, FORMAT_VERSION, MANIFEST, Bundle, file_entry
from pipeline.shared.errors import SourceError
from pipeline.shared.fsutil import atomic_dir, atomic_write_json

ENGINE = "qwen3-tts"
QUANTS = ("f32", "f16", "q8_0", "q4_k_m", "q4_0")
DEFAULT_QUANTS = ("f32", "q8_0")
REQUIRED = ("config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt",
            "tokenizer_config.json", "speech_tokenizer/config.json", "speech_tokenizer/model.safetensors")


def is_qwen3_tts_checkpoint(src: Path | str) -> bool:
    """Whether ``src`` looks like a Qwen3-TTS checkpoint (its config.json says ``model_type: qwen3_tts``)."""
    try:
        cfg = json.loads((Path(src) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get("model_type") == "qwen3_tts"


def check_source(src: Path) -> dict[str, Any]:
    """The checkpoint's config.json, after checking the folder holds what the converter reads."""
    if not src.is_dir():
        raise SourceError(f"checkpoint folder {src} does not exist")
    missing = [n for n in REQUIRED if not (src / n).is_file()]
    if missing:
        raise SourceError(f"{src} is not a complete Qwen3-TTS checkpoint: missing {', '.join(missing)} "
                          "(`cosyvoice-rk download --engine qwen3-tts DIR` fetches them)")
    cfg = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if cfg.get("model_type") != "qwen3_tts":
        raise SourceError(f"{src}/config.json has model_type {cfg.get('model_type')!r}, not qwen3_tts")
    if cfg.get("tts_model_type", "base") != "base":
        raise SourceError(f"{src} is a Qwen3-TTS {cfg.get('tts_model_type')!r} model; only the Base model "
                          "(voice cloning) is supported")
    return cfg


def convert_qwen3_checkpoint(src: Path | str, out: Path | str, *, quants: Sequence[str] = DEFAULT_QUANTS,
                             overwrite: bool = False, random_weights: bool = False,
                             extra_manifest: dict[str, Any] | None = None,
                             log: Callable[[str], None] = print) -> Bundle:
    """Convert ``src`` into a bundle at ``out``; returns the loaded (hash-checked) bundle."""
    from pipeline.engines.qwen3_tts.convert.decoder_export import convert_decoder
    from pipeline.engines.qwen3_tts.convert.lm_convert import convert_lm
    from pipeline.engines.qwen3_tts.convert.prompt_export import convert_prompt_side

    src, out = Path(src), Path(out)
    quants = [q.strip().lower() for q in quants if q.strip()]
    bad = [q for q in quants if q not in QUANTS]
    if bad or not quants:
        raise SourceError(f"unknown quantization {', '.join(bad) or '(none)'}; choose from {', '.join(QUANTS)}")
    cfg = check_source(src)
    with atomic_dir(out, overwrite=overwrite) as work:
        log(f"talker + code predictor → GGUF ({', '.join(quants)}), text and codec tables")
        lm = convert_lm(src, work, quants)
        log("prompt encoder and speaker encoder → ONNX")
        prompt = convert_prompt_side(src, work)
        log("decoder → ONNX")
        decoder = convert_decoder(src, work)
        names = sorted({*lm.pop("all_files"), *prompt["files"], *decoder["files"]})
        files = {n: file_entry(work / n) for n in names}
        fingerprint = hashlib.sha256("".join(files[n]["sha256"] for n in names).encode()).hexdigest()[:16]
        sr = int(decoder["dims"]["sample_rate"])
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "engine": ENGINE,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "random_weights": bool(random_weights), "fingerprint": fingerprint,
            "source": {"model": f"Qwen3-TTS {cfg.get('tts_model_size', '?')} {cfg.get('tts_model_type', 'base')}",
                       "checkpoint": str(src.resolve())},
            "constants": {"sample_rate": sr, "samples_per_frame": int(decoder["dims"]["samples_per_frame"]),
                          "sampling": dict(lm["sampling"])},
            "lm": lm, "prompt": prompt, "decoder": decoder, "files": files,
            **(extra_manifest or {}),
        }
        atomic_write_json(work / MANIFEST, manifest)
    log(f"bundle written to {out} (fingerprint {fingerprint})")
    return Bundle.load(out)
