"""``bench --engine qwen3-tts`` on a tiny random bundle: the report's fields, their consistency, the worker-equivalent
RSS process, the refusals, and the message when the upstream reference environment is missing."""

import json
import math
import subprocess
import sys

import pytest

from pipeline.engines.qwen3_tts.bench import (
    CONFIG_FIELDS,
    JSON_FIELDS,
    METRICS,
    SHAPE_FIELDS,
    Q3BenchOptions,
    run_bench,
)
from pipeline.engines.qwen3_tts.bench_profile import PROFILE_PARTS
from pipeline.engines.qwen3_tts.bench_ref import missing_env_message
from pipeline.shared.errors import BackendError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from pipeline.engines.qwen3_tts.convert.random_bundle import make_random_bundle

    return make_random_bundle(tmp_path_factory.mktemp("q3b") / "bundle", size="tiny", log=lambda m: None)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_the_report_has_every_field_finite_and_consistent(tiny):
    rep = run_bench(Q3BenchOptions(tiny, threads=1, prompt_frames=6, prompt_text_tokens=4, text_tokens=5, frames=4,
                                   repeat=2, profile_frames=2))
    assert set(JSON_FIELDS) <= set(rep)
    assert set(CONFIG_FIELDS) <= set(rep["config"]) and set(SHAPE_FIELDS) <= set(rep["shapes"])
    assert rep["reference"] is None and rep["config"]["threads"] == 1
    for k, unit, _ in METRICS:
        m = rep["metrics"][k]
        assert m["unit"] == unit and all(math.isfinite(m[s]) and m[s] >= 0 for s in ("min", "median", "max")), k
        assert m["min"] <= m["median"] <= m["max"], k
    med = {k: v["median"] for k, v in rep["metrics"].items()}
    assert rep["shapes"]["frames"] == 4 and rep["shapes"]["audio_s"] == pytest.approx(4 * 0.08)
    # the prompt (6 frames) is decoded once per voice (voice_prime_s), the request decodes its 4 frames
    assert rep["config"]["prompt_decode"] == "once" and med["voice_prime_s"] > 0
    assert rep["shapes"]["decoded_audio_s"] == pytest.approx(4 * 0.08)
    # every repeat is one request, so its total holds its parts
    assert med["generate_s"] >= med["prefill_s"] + med["cp_s"] + med["talker_steps_s"] - 1e-9
    assert med["total_s"] >= med["generate_s"] + med["decoder_s"] - 1e-6
    assert med["total_with_prompt_s"] >= med["total_s"]
    assert med["rtf"] == pytest.approx(med["total_s"] / rep["shapes"]["audio_s"], rel=0.5)
    assert med["cp_ms_per_step"] == pytest.approx(med["cp_ms_per_frame"] / 15)
    assert 0 < sum(rep["shares"].values()) <= 100.5
    p = rep["code_predictor_profile"]
    assert set(PROFILE_PARTS) == set(p["parts_ms_per_frame"]) and p["frames"] == 2
    assert p["llama_decode_calls_per_frame"] == 15  # one 2-row prefill + 14 single rows
    assert all(math.isfinite(v) and v >= 0 for v in p["parts_ms_per_frame"].values())
    w = rep["worker_rss"]
    assert w["quant"] == "f32" and w["frames"] == 4 and w["peak_rss_mb"] >= w["rss_after_load_mb"] > 0
    json.dumps(rep)


def test_prompt_decode_each_decodes_the_prompt_with_every_request_as_upstream(tiny):
    rep = run_bench(Q3BenchOptions(tiny, threads=1, prompt_frames=6, prompt_text_tokens=4, text_tokens=5, frames=4,
                                   repeat=1, profile_frames=1, worker_rss=False, prompt_decode="each"))
    assert rep["config"]["prompt_decode"] == "each" and rep["metrics"]["voice_prime_s"]["median"] < 1e-3
    assert rep["shapes"]["decoded_audio_s"] == pytest.approx(10 * 0.08)
    r = cli("bench", "--engine", "qwen3-tts", "--bundle", tiny.root, "--prompt-decode", "twice")
    assert r.returncode == 2 and "--prompt-decode" in r.stderr


def test_the_reference_without_its_environment_says_how_to_make_it(tiny, tmp_path):
    opts = Q3BenchOptions(tiny, reference=True, ref_python=tmp_path / "nope" / "python", worker_rss=False)
    with pytest.raises(BackendError, match="setup-qwen-tts-ref-env.sh"):
        run_bench(opts)
    assert "--ref-python" in missing_env_message()
    r = cli("bench", "--engine", "qwen3-tts", "--bundle", tiny.root, "--reference", "--ref-python",
            tmp_path / "nope" / "python")
    assert r.returncode == 2 and "setup-qwen-tts-ref-env.sh" in r.stderr


def test_options_of_the_other_engine_are_refused(tiny, tmp_path):
    r = cli("bench", "--engine", "qwen3-tts", "--bundle", tiny.root, "--tokens", "10", "--flow-fast")
    assert r.returncode == 2 and "--tokens, --flow-fast: CosyVoice3 bench options" in r.stderr
    r = cli("bench", "--bundle", tiny.root, "--prompt-tokens", "10")  # a Qwen3-TTS bundle picks its engine
    assert r.returncode == 2 and "--prompt-tokens: CosyVoice3 bench options" in r.stderr
    r = cli("bench", "--bundle", tmp_path / "cosyvoice3-bundle", "--frames", "10")
    assert r.returncode == 2 and "--frames: Qwen3-TTS bench options" in r.stderr
