"""Modes and speed against upstream's modes goldens (tests/fixtures/tiny-cosyvoice3/README.md)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY

from pipeline.engines.cosyvoice3.engine import Engine, PromptFeatures
from pipeline.engines.cosyvoice3.modes import check_speed, llm_inputs, mode_name, speed_mel
from pipeline.engines.cosyvoice3.verify_modes import run_verify_modes
from pipeline.shared.errors import InputError


@pytest.fixture(scope="module")
def mg() -> dict[str, np.ndarray]:
    with np.load(TINY / "modes_goldens.npz") as z:
        return {k: z[k] for k in z.files}


def test_speed_mel_is_bit_exact(goldens, mg):
    out = speed_mel(goldens["flow_mel"][0], float(mg["speed"]))
    assert np.array_equal(out, mg["speed_mel"][0])
    assert speed_mel(goldens["flow_mel"][0], 1.0) is not None
    assert speed_mel(goldens["flow_mel"][0], 0.5).shape == (80, 160)


@pytest.mark.parametrize("bad", [0, 0.49, 2.01, 10, "fast", None, float("nan")])
def test_speed_range(bad):
    with pytest.raises(InputError, match="speed must be"):
        check_speed(bad)


def test_mode_names():
    assert mode_name("instruct") == "instruct2" and mode_name("cross-lingual") == "cross_lingual"
    with pytest.raises(InputError, match="unknown mode 'sft'"):
        mode_name("sft")


def test_llm_inputs_per_mode(mg):
    tts = mg["zero_shot_tts_text"].tolist()
    toks = mg["zero_shot_llm_prompt_speech_token"].tolist()
    prefix = mg["cross_lingual_tts_text"][: len(mg["cross_lingual_tts_text"]) - len(tts)].tolist()
    for mode, given in (("zero_shot", mg["zero_shot_prompt_text"].tolist()), ("cross_lingual", prefix),
                        ("instruct2", mg["instruct2_prompt_text"].tolist())):
        p, t, s = llm_inputs(mode, given, tts, toks)
        assert p == mg[f"{mode}_prompt_text"].tolist()
        assert t == mg[f"{mode}_tts_text"].tolist()
        assert s == mg[f"{mode}_llm_prompt_speech_token"].tolist()


def test_verify_modes_passes_and_catches(tiny_bundle, goldens, mg):
    res = run_verify_modes(tiny_bundle, mg, goldens, log=lambda m: None)
    assert {r.stage for r in res} >= {"cross_lingual_lm_input", "instruct2_min_max_len", "speed_mel"}
    assert all(r.passed for r in res), [r for r in res if not r.passed]
    bad = dict(mg)
    bad["instruct2_lm_input"] = mg["instruct2_lm_input"] + 1e-3
    res = {r.stage: r for r in run_verify_modes(tiny_bundle, bad, goldens, log=lambda m: None)}
    assert not res["instruct2_lm_input"].passed and res["zero_shot_lm_input"].passed


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    e = Engine.load(tiny_bundle, quant="f32", exact=True, log=lambda m: None)
    yield e
    e.close()


def test_engine_prefill_per_mode_matches_rows(engine, goldens, mg):
    """The logits after each mode's prefill equal those after feeding upstream's lm_input rows."""
    prompt = PromptFeatures(goldens["in_prompt_speech_token"], goldens["in_prompt_feat"][0][:100],
                            goldens["in_embedding"])
    tts = mg["zero_shot_tts_text"]
    prefix = mg["cross_lingual_tts_text"][: len(mg["cross_lingual_tts_text"]) - len(tts)]
    for mode, given in (("zero_shot", mg["zero_shot_prompt_text"]), ("cross_lingual", prefix),
                        ("instruct2", mg["instruct2_prompt_text"])):
        p, t, s = llm_inputs(mode, given, tts, prompt.speech_tokens)
        got = engine._prefill(np.asarray(t), np.asarray(p), prompt, None, tail=s)
        engine.lm.reset()
        want = engine.lm.prefill(mg[f"{mode}_lm_input"])
        assert np.abs(got - want).max() < 1e-3, mode


def test_synthesize_modes_and_speed(engine, goldens, mg):
    prompt = PromptFeatures(goldens["in_prompt_speech_token"], goldens["in_prompt_feat"][0][:100],
                            goldens["in_embedding"])
    tts = mg["zero_shot_tts_text"].tolist()
    instr = mg["instruct2_prompt_text"].tolist()
    r1 = engine.synthesize(tts, instr, prompt, mode="instruct", rng=np.random.default_rng(0))
    r15 = engine.synthesize(tts, instr, prompt, mode="instruct", rng=np.random.default_rng(0), speed=1.5)
    assert r1.tokens == r15.tokens  # speed does not touch the LLM
    frames = len(r1.audio) // 480
    assert len(r15.audio) == 480 * int(frames / 1.5)
    with pytest.raises(InputError, match="turn streaming off"):
        next(engine.synthesize_stream(tts, instr, prompt, mode="instruct", speed=1.5))
