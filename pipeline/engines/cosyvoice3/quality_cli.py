"""The ``cosyvoice-rk quality`` subcommand: its options and what it prints (the work is in :mod:`.quality`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from pipeline.shared.errors import InputError


def _list(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def _steps(value: str) -> list[int]:
    try:
        out = [int(x) for x in _list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--flow-steps takes whole numbers, e.g. 5 or 5,7 (not {value!r})") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"--flow-steps must be at least 1 (got {value!r})")
    return out


def add_quality_parser(sub: argparse._SubParsersAction, *, default_bundle: Path, default_speakers: Path,
                       func: Callable[[argparse.Namespace], int]) -> None:
    q = sub.add_parser("quality", help="compare speed settings with the F32 / full-fidelity reference on a fixed "
                                       "multilingual sentence set (speaker similarity, CER, durations, distances)")
    q.add_argument("--bundle", type=Path, default=default_bundle, help="model bundle (env COSYVOICE_RK_BUNDLE)")
    q.add_argument("--quant", action="append", type=_list, default=None,
                   help="GGUF variants to compare, comma list or repeated (default: every GGUF of the bundle); "
                        "f32 is always run, it is the reference")
    q.add_argument("--flow-fast", action="store_true", help="also the fast flow (INT8 estimator)")
    q.add_argument("--flow-steps", type=_steps, default=[],
                   help="also these Euler step counts, e.g. 5 or 3,5 (the bundle's 10 is always run)")
    who = q.add_mutually_exclusive_group()
    who.add_argument("--voice", help="a saved voice (see `speakers list`)")
    who.add_argument("--prompt-wav", type=Path, help="or a 3–10 s recording of the voice (with --prompt-text)")
    q.add_argument("--prompt-text", help="exactly what --prompt-wav says")
    q.add_argument("--language", default="auto", help="language of --prompt-text: ru, en, zh, ja or auto")
    q.add_argument("--speakers-dir", type=Path, default=default_speakers, help="where saved voices live")
    q.add_argument("--languages", type=_list, default=None,
                   help="only the sentences of these languages, e.g. ru or ru,en (default: all: ru, en, zh, ja)")
    q.add_argument("--seed", type=int, default=0, help="sampling seed of the first sentence (+1 per sentence)")
    q.add_argument("--threads", type=int, default=None, help="CPU threads per stage (default: up to 4)")
    q.add_argument("--asr-model", type=Path, default=None, help="the ASR model (default: where `./cv download "
                   "--asr` puts it); without one the CER is reported as absent, with the reason")
    q.add_argument("--out", type=Path, default=None, help="also write every output as OUT/<setting>/<sentence>.wav")
    q.add_argument("--json", action="store_true", help="machine-readable output (fields: docs/quality.md)")
    q.set_defaults(func=func)


def run_quality_cli(a: argparse.Namespace, log: Callable[[str], None]) -> int:
    from pipeline.engines.cosyvoice3.quality import QualityOptions, load_asr, run_quality
    from pipeline.engines.cosyvoice3.quality_report import format_table
    from pipeline.shared.text import check_language

    if a.prompt_wav and not a.prompt_text:
        raise InputError("--prompt-wav needs --prompt-text: exactly what the recording says")
    if a.prompt_text and not a.prompt_wav:
        raise InputError("--prompt-text goes with --prompt-wav (a saved --voice has its own transcript)")
    if not a.voice and not a.prompt_wav:
        raise InputError("give --voice NAME (a saved voice) or --prompt-wav FILE with --prompt-text TEXT")
    check_language(a.language)
    if a.threads is not None and a.threads < 1:
        raise InputError("--threads must be at least 1")
    quants = [q for group in a.quant for q in group] if a.quant else None
    opts = QualityOptions(bundle=a.bundle, quants=quants, flow_fast=a.flow_fast, flow_steps=a.flow_steps,
                          voice=a.voice, speakers_dir=a.speakers_dir, prompt_wav=a.prompt_wav,
                          prompt_text=a.prompt_text, prompt_language=a.language, languages=a.languages,
                          seed=a.seed, threads=a.threads, out_dir=a.out)
    report = run_quality(opts, asr=load_asr(a.asr_model), log=log)
    print(json.dumps(report, indent=1, ensure_ascii=False) if a.json else format_table(report))
    return 0
