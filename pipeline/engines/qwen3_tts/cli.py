"""The Qwen3-TTS side of ``download``, ``convert``, ``verify`` and ``make-random-bundle`` (``pipeline.cli`` picks
the engine: ``--engine qwen3-tts``, or a checkpoint or bundle that is Qwen3-TTS)."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline.shared.errors import InputError

Log = Callable[[str], None]
_COSYVOICE3_ONLY = ("rl", "asr", "rknn", "flow_buckets", "flow_stream_buckets", "flow_stream_cfg",
                    "flow_stream_shapes", "no_flow_int8", "llm", "streaming", "streaming_goldens")


def _refuse_cosyvoice3_options(a: argparse.Namespace) -> None:
    given = [k for k in _COSYVOICE3_ONLY if getattr(a, k, None) not in (None, False)]
    if given:
        opts = ", ".join("--" + k.replace("_", "-") for k in given)
        raise InputError(f"{opts}: CosyVoice3 options; Qwen3-TTS has no such part (leave them out)")


def _quants(spec: str | None, default: str) -> list[str]:
    return [q.strip().lower() for q in (spec or default).split(",") if q.strip()]


def cmd_download(a: argparse.Namespace, log: Log) -> int:
    from pipeline.engines.qwen3_tts.download import download

    _refuse_cosyvoice3_options(a)
    if a.dir is None:
        raise InputError("give the folder to download into, e.g. "
                         "`cosyvoice-rk download --engine qwen3-tts models/qwen3-tts`")
    download(a.dir, revision=a.revision, log=log)
    return 0


def cmd_convert(a: argparse.Namespace, log: Log) -> int:
    from pipeline.engines.qwen3_tts.convert.bundle_writer import convert_qwen3_checkpoint

    _refuse_cosyvoice3_options(a)
    convert_qwen3_checkpoint(a.src, a.out, quants=_quants(a.quant, "f32,q8_0,q4_k_m"), overwrite=a.overwrite,
                             log=log)
    return 0


def cmd_verify(a: argparse.Namespace, log: Log) -> int:
    from pipeline.engines.qwen3_tts.verify import format_table, load_goldens, run_verify
    from pipeline.shared.bundle import Bundle

    _refuse_cosyvoice3_options(a)
    goldens = load_goldens(a.goldens)
    with tempfile.TemporaryDirectory(prefix="cosyvoice-rk-verify-") as tmp:
        if a.bundle:
            bundle = Bundle.load(a.bundle)
        else:
            from pipeline.engines.qwen3_tts.convert.bundle_writer import convert_qwen3_checkpoint

            log(f"converting {a.checkpoint} (F32 GGUFs) into a temporary bundle")
            bundle = convert_qwen3_checkpoint(a.checkpoint, Path(tmp) / "bundle", quants=["f32"], log=log)
        results = run_verify(bundle, goldens, log=log)
    ok = all(r.passed for r in results)
    if a.json:
        print(json.dumps({"passed": ok, "stages": [r.as_dict() for r in results]}, indent=1))
    else:
        print(format_table(results))
        print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def cmd_make_random_bundle(a: argparse.Namespace, log: Log) -> int:
    from pipeline.engines.qwen3_tts.convert.random_bundle import make_random_bundle

    if a.no_flow_int8:
        raise InputError("--no-flow-int8: a CosyVoice3 option; Qwen3-TTS has no flow (leave it out)")
    make_random_bundle(a.out, size=a.size, seed=a.seed, quants=_quants(a.quant, "f32" if a.size == "tiny"
                                                                         else "f32,q8_0,q4_k_m"),
                       overwrite=a.overwrite, log=log)
    return 0
