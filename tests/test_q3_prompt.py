"""Qwen3-TTS prompt side against the tiny fixture's goldens (spec §3, §4).

The torch modules (host side) are checked stage by stage; the run-time path (numpy mel + ONNX Runtime graphs
from the converter) must give the golden codes exactly and the golden speaker embedding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.engines.qwen3_tts.convert.prompt_export import (  # noqa: E402
    PROMPT_ENCODER_FILE,
    SPEAKER_ENCODER_FILE,
    build_mimi_encoder,
    build_speaker_encoder,
    code_tie_flips,
    convert_prompt_side,
)
from pipeline.engines.qwen3_tts.prompt import PromptEncoder, prompt_audio_24k  # noqa: E402
from pipeline.engines.qwen3_tts.speaker_mel import speaker_log_mel  # noqa: E402
from pipeline.shared.errors import BackendError, InputError  # noqa: E402

TINY = Path(__file__).parent / "fixtures" / "tiny-qwen3-tts"
REL_TOL = 1e-4  # README: encoder intermediates and speaker embedding <= 1e-4 relative to their scale


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def g() -> dict[str, np.ndarray]:
    with np.load(TINY / "goldens.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("q3prompt")
    return out, convert_prompt_side(TINY, out)


@pytest.fixture(scope="module")
def runtime(converted) -> PromptEncoder:
    out, section = converted
    files = {"prompt_encoder": out / section["prompt_encoder"], "speaker_encoder": out / section["speaker_encoder"]}
    return PromptEncoder(files, section["dims"], n_threads=1)


@pytest.fixture(scope="module")
def mimi():
    return build_mimi_encoder(TINY)[0]


def test_torch_encoder_stages_match_goldens(mimi, g):
    with torch.no_grad():
        st = mimi.stages(torch.from_numpy(g["in_ref_wav"])[None])
    errs = {
        "seanet": _rel_err(st["seanet"].numpy(), g["prompt_enc_seanet_out"]),
        "transformer": _rel_err(st["transformer"].numpy(), g["prompt_enc_transformer_out"]),
        "downsample": _rel_err(st["downsample"].numpy(), g["prompt_enc_downsample_out"]),
    }
    assert all(e <= REL_TOL for e in errs.values()), errs
    np.testing.assert_array_equal(st["codes"].numpy(), g["prompt_codes"])


def test_rvq_distance_is_torch_cdist(mimi, g):
    """The graph's distance formula is cdist's matrix-product path: to the bit with cdist's operand layout (a
    transposed view), and the same nearest centroids with the graph's stored (transposed, contiguous) layout."""
    with torch.no_grad():
        z = mimi.stages(torch.from_numpy(g["in_ref_wav"])[None])["downsample"].T
        x = z @ mimi.rvq.sem_proj
        book = mimi.rvq.book(0)
        ref = torch.cdist(x[None], book[: mimi.rvq.dim].T[None], p=2)[0]
        assert torch.equal(mimi.rvq.nearest_dist(x, book.T.contiguous().T), ref)
        assert torch.equal(mimi.rvq.nearest_dist(x, book).argmin(-1), ref.argmin(-1))


def test_code_check_tolerates_only_ties(mimi, g):
    """The converter's ORT-vs-torch code check: equal codes pass, a code that is not a near-tie raises."""
    with torch.no_grad():
        codes, latent = mimi(torch.from_numpy(g["in_ref_wav"])[None])
    ref = codes.numpy()
    assert code_tie_flips(mimi, latent, ref, ref.copy()) == 0
    bad = ref.copy()
    bad[3, 5] = (bad[3, 5] + 1) % 2048
    with pytest.raises(BackendError, match="frame 3 codebook 5"):
        code_tie_flips(mimi, latent, ref, bad)


def test_converter_section(converted):
    out, section = converted
    assert (out / PROMPT_ENCODER_FILE).is_file() and (out / SPEAKER_ENCODER_FILE).is_file()
    assert set(section["files"]) == {PROMPT_ENCODER_FILE, SPEAKER_ENCODER_FILE}
    d = section["dims"]
    assert (d["sample_rate"], d["samples_per_frame"], d["num_codebooks"], d["speaker_dim"]) == (24000, 1920, 16, 16)
    c = section["checks"]
    assert c["latent_max_abs_diff"] < 1e-5 and c["embedding_max_abs_diff"] < 1e-5, c
    assert c["code_frames_checked"] > 0 and c["code_frames_tie_flipped"] == 0
    json.dumps(section)  # goes into the bundle manifest as is


def test_runtime_codes_exact(runtime, g):
    codes = runtime.codes(g["in_ref_wav"])
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, g["prompt_codes"])


def test_runtime_codes_are_causal(runtime, g):
    """A prefix of whole frames gives the first codes of the longer prompt (spec §3.2)."""
    wav = g["in_ref_wav"]
    np.testing.assert_array_equal(runtime.codes(wav[: 11 * 1920]), g["prompt_codes"][:11])
    assert runtime.codes(wav[: 11 * 1920 + 1]).shape == (12, 16)
    for n in (1, 100, 1919):
        assert runtime.codes(wav[:n]).shape == (1, 16)


def test_speaker_mel_matches_golden(g):
    mel = speaker_log_mel(g["in_ref_wav"])
    assert mel.dtype == np.float32
    assert _rel_err(mel, g["prompt_spk_mel"]) <= REL_TOL


def test_torch_speaker_encoder_matches_golden(g):
    net = build_speaker_encoder(TINY)[0]
    with torch.no_grad():
        emb = net(torch.from_numpy(g["prompt_spk_mel"])[None]).numpy()
    assert _rel_err(emb, g["prompt_spk_embedding"]) <= REL_TOL


def test_runtime_speaker_embedding(runtime, g):
    emb = runtime.speaker_embedding(g["in_ref_wav"])
    assert emb.dtype == np.float32 and emb.shape == (16,)
    assert _rel_err(emb, g["prompt_spk_embedding"]) <= REL_TOL


def test_encode_at_24k_is_identity_resample(runtime, g):
    codes, emb = runtime.encode(g["in_ref_wav"], 24000)
    np.testing.assert_array_equal(codes, g["prompt_codes"])
    assert _rel_err(emb, g["prompt_spk_embedding"]) <= REL_TOL


@pytest.mark.parametrize(("sr", "n"), [(16000, 16001), (44100, 44117), (48000, 48000)])
def test_resample_is_librosa_soxr_hq(sr, n):
    librosa = pytest.importorskip("librosa")
    y = (0.1 * np.random.default_rng(sr).standard_normal(n)).astype(np.float32)
    np.testing.assert_array_equal(prompt_audio_24k(y, sr), librosa.resample(y, orig_sr=sr, target_sr=24000))
    stereo = np.stack([y, -0.5 * y], axis=1)
    np.testing.assert_array_equal(prompt_audio_24k(stereo, 24000), stereo.mean(axis=-1, dtype=np.float32))


def test_bad_prompt_audio(runtime):
    with pytest.raises(InputError):
        runtime.codes(np.zeros(0, np.float32))
    with pytest.raises(InputError):
        runtime.speaker_embedding(np.full(4000, np.nan, np.float32))
    with pytest.raises(InputError, match="too short"):
        runtime.speaker_embedding(np.zeros(600, np.float32))
    with pytest.raises(InputError):
        prompt_audio_24k(np.zeros((2, 3, 4), np.float32), 24000)


def test_runtime_does_not_import_torch(converted, g, tmp_path):
    out, section = converted
    np.save(tmp_path / "wav.npy", g["in_ref_wav"])
    code = f"""
import sys, json
import numpy as np
class _NoTorch:  # an import of torch fails; sys.modules stays free of it (scipy probes sys.modules["torch"])
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchaudio"):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
from pipeline.engines.qwen3_tts import prompt, speaker_mel  # noqa: F401
from pipeline.engines.qwen3_tts.prompt import PromptEncoder
section = json.loads({json.dumps(json.dumps(section))})
out = {str(out)!r}
pe = PromptEncoder({{k: out + "/" + section[k] for k in ("prompt_encoder", "speaker_encoder")}}, section["dims"], 1)
wav = np.load({str(tmp_path / "wav.npy")!r})
codes, emb = pe.encode(wav, 24000)
assert not [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("torch", "torchaudio")]
print(codes.shape, emb.shape)
"""
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr
    assert "(30, 16) (16,)" in r.stdout
