from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-cosyvoice3"
NOISE = FIXTURES / "cosyvoice3-noise"


@pytest.fixture(scope="session")
def tiny_src() -> Path:
    return TINY


@pytest.fixture(scope="session")
def goldens() -> dict[str, np.ndarray]:
    with np.load(TINY / "goldens.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """The tiny fixture converted once by the project's converter (F32 + Q8_0 GGUF)."""
    from pipeline.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return convert_checkpoint(TINY, out, quants=["f32", "q8_0"], hift_noise_seconds=4.0, log=lambda m: None)
