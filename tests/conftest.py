from __future__ import annotations

import os

# torch's CPU FFT/GEMM is oneMKL, whose float32 kernels depend on the CPU (AVX-512 vs AVX2 vs SSE): on an AVX-512
# machine the torch reference of upstream's prompt mel is 2.6e-5 from the goldens, which were made on MKL's
# non-AVX2 path. MKL's CPU-independent path (set before torch is imported) reproduces them to 1 ulp.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

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
    from pipeline.engines.cosyvoice3.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return convert_checkpoint(TINY, out, quants=["f32", "q8_0"], hift_noise_seconds=4.0, log=lambda m: None)


PROMPTS = FIXTURES / "prompts"
ZH_PROMPT_TEXT = "希望你以后能够做的比我还好呦。"  # transcript of zero_shot_prompt.wav (upstream asset)


@pytest.fixture(scope="session")
def random_bundle(tmp_path_factory):
    """A tiny random-weight bundle made by the product's own `make-random-bundle` path."""
    from pipeline.engines.cosyvoice3.convert.random_bundle import make_random_bundle

    out = tmp_path_factory.mktemp("rnd") / "tiny"
    return make_random_bundle(out, size="tiny", seed=0, hift_noise_seconds=30.0, log=lambda m: None)


@pytest.fixture(scope="session")
def stream_bundle(tmp_path_factory):
    """The tiny fixture converted with a HiFT noise table long enough for the streaming goldens (11.6 s)."""
    from pipeline.engines.cosyvoice3.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("stream-bundle") / "tiny"
    return convert_checkpoint(TINY, out, quants=["f32"], hift_noise_seconds=12.0, flow_int8=False,
                              log=lambda m: None)


@pytest.fixture(scope="session")
def test_asr(tmp_path_factory) -> Path:
    """The tiny random speech recognition models (pipeline/shared/asr_testmodels.py) in download --asr's layout."""
    from pipeline.shared.asr_testmodels import make_test_asr

    return make_test_asr(tmp_path_factory.mktemp("asr") / "asr")
