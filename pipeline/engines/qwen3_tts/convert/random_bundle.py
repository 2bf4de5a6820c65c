"""``make-random-bundle --engine qwen3-tts``: a random-weight Qwen3-TTS checkpoint in the release's format
(:mod:`.random_checkpoint`), through the normal converter.

The result is marked ``"random_weights": true`` in its manifest. It speaks no language: it exercises every code
path at real cost (``full``: the real Qwen3-TTS-12Hz-0.6B-Base shapes) or in seconds (``tiny``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.engines.qwen3_tts.convert.bundle_writer import convert_qwen3_checkpoint
from pipeline.shared.bundle import Bundle
from pipeline.shared.fsutil import check_target_dir

SIZES = ("tiny", "full")


def make_random_bundle(out: Path | str, *, size: str = "tiny", seed: int = 0, quants: Sequence[str] = ("f32",),
                       overwrite: bool = False, log: Callable[[str], None] = print) -> Bundle:
    from pipeline.engines.qwen3_tts.convert.random_checkpoint import make_random_checkpoint

    if size not in SIZES:
        raise ValueError(f"size must be tiny or full, not {size!r}")
    out = Path(out)
    check_target_dir(out, overwrite=overwrite)  # before the checkpoint is made, not after
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".random-ckpt-", dir=out.parent) as tmp:
        ckpt = Path(tmp) / "ckpt"
        log(f"random Qwen3-TTS {size} checkpoint (seed {seed})")
        make_random_checkpoint(ckpt, size=size, seed=seed, log=log)
        bundle = convert_qwen3_checkpoint(
            ckpt, out, quants=quants, overwrite=overwrite, random_weights=True, log=log,
            extra_manifest={"random": {"size": size, "seed": seed, "note": "random weights: not speech"}})
        shutil.rmtree(ckpt, ignore_errors=True)
    return bundle
