"""``cosyvoice-rk`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import CosyVoiceRKError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_download(a: argparse.Namespace) -> int:
    from .download import download

    download(a.dir, revision=a.revision, rl=a.rl, log=_log)
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    from .convert import convert_checkpoint

    convert_checkpoint(a.src, a.out, quants=a.quant, hift_noise_seconds=a.hift_noise_seconds,
                       overwrite=a.overwrite, log=_log)
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from .bundle import Bundle
    from .verify import format_table, load_goldens, run_verify

    goldens = load_goldens(a.goldens)
    with tempfile.TemporaryDirectory(prefix="cosyvoice-rk-verify-") as tmp:
        if a.bundle:
            bundle = Bundle.load(a.bundle)
        else:
            from .convert import convert_checkpoint

            _log(f"converting {a.checkpoint} (F32 GGUF) into a temporary bundle")
            bundle = convert_checkpoint(a.checkpoint, Path(tmp) / "bundle", quants=["f32"],
                                        hift_noise_seconds=a.hift_noise_seconds, log=_log)
        results = run_verify(bundle, goldens, log=_log)
    ok = all(r.passed for r in results)
    if a.json:
        print(json.dumps({"passed": ok, "stages": [r.as_dict() for r in results]}, indent=1))
    else:
        print(format_table(results))
        print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cosyvoice-rk", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("download", help="fetch the upstream Fun-CosyVoice3-0.5B files the converter needs")
    d.add_argument("dir", type=Path)
    d.add_argument("--revision", default=None, help="branch, tag or commit of the model repository")
    d.add_argument("--rl", action="store_true", help="also fetch llm.rl.pt (the RL-tuned LLM)")
    d.set_defaults(func=cmd_download)

    c = sub.add_parser("convert", help="upstream checkpoint folder → device bundle (x86 host, needs torch)")
    c.add_argument("src", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--quant", default="f32,q4_k_m",
                   help="comma list of GGUF variants: f32,f16,q8_0,q4_k_m (default f32,q4_k_m)")
    c.add_argument("--hift-noise-seconds", type=float, default=60.0,
                   help="seconds of HiFT source-noise table to keep (longest audio per segment)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing bundle at OUT")
    c.set_defaults(func=cmd_convert)

    v = sub.add_parser("verify", help="run every stage on golden inputs and compare with golden outputs")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="upstream checkpoint folder (converted to a temp bundle)")
    src.add_argument("--bundle", type=Path, help="an existing bundle (must contain the F32 GGUF)")
    v.add_argument("--goldens", type=Path, required=True, help="goldens.npz made by upstream code")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.add_argument("--hift-noise-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    v.set_defaults(func=cmd_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CosyVoiceRKError as e:
        _log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
