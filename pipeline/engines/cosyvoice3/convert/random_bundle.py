"""``make-random-bundle``: random weights in upstream's checkpoint format, through the normal converter.

The result is marked ``"random_weights": true`` in its manifest. It speaks no language: it exercises
every code path at real cost (``full``: the real CosyVoice3 shapes) or in seconds (``tiny``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.engines.cosyvoice3.convert.bundle_writer import convert_checkpoint
from pipeline.engines.cosyvoice3.testmodels import make_test_campplus, make_test_speech_tokenizer
from pipeline.shared.bundle import Bundle
from pipeline.shared.fsutil import check_target_dir

DEFAULT_QUANTS = {"tiny": ("f32",), "full": ("f32", "q4_k_m")}


def make_random_bundle(out: Path | str, *, size: str = "tiny", seed: int = 0,
                       quants: str | Sequence[str] | None = None, overwrite: bool = False,
                       hift_noise_seconds: float = 60.0, flow_int8: bool = True,
                       log: Callable[[str], None] = print) -> Bundle:
    from pipeline.engines.cosyvoice3.convert.random_checkpoint import make_random_checkpoint

    if size not in DEFAULT_QUANTS:
        raise ValueError(f"size must be tiny or full, not {size!r}")
    out = Path(out)
    check_target_dir(out, overwrite=overwrite)  # before the checkpoint is made, not after
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".random-ckpt-", dir=out.parent) as tmp:
        ckpt = Path(tmp) / "ckpt"
        log(f"random {size} checkpoint (seed {seed})")
        make_random_checkpoint(ckpt, size=size, seed=seed, log=log)
        # stand-ins with the real signatures of the shipped prompt models (test models, not CAMPPlus/S3)
        make_test_campplus(ckpt / "campplus.onnx", seed=seed)
        make_test_speech_tokenizer(ckpt / "speech_tokenizer_v3.onnx", seed=seed)
        bundle = convert_checkpoint(
            ckpt, out, quants=quants or DEFAULT_QUANTS[size], hift_noise_seconds=hift_noise_seconds,
            overwrite=overwrite, random_weights=True, flow_int8=flow_int8, log=log,
            extra_manifest={"random": {"size": size, "seed": seed,
                                       "note": "random weights and stand-in prompt models: not speech"}},
        )
        shutil.rmtree(ckpt, ignore_errors=True)
    return bundle
