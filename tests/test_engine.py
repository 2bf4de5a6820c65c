import numpy as np
import pytest

from pipeline.engines.cosyvoice3.engine import Engine, PromptFeatures
from pipeline.shared.errors import Cancelled, InputError


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    with Engine.load(tiny_bundle, quant="f32", n_threads=1, exact=True) as e:
        yield e


def _prompt(g) -> PromptFeatures:
    tok = g["in_prompt_speech_token"]
    return PromptFeatures(tok, g["in_prompt_feat"][0][: 2 * len(tok)], g["in_embedding"])


def _split_text(g):
    n = len(g["in_text"]) - len(g["in_tts_text"])
    return g["in_text"][n:], g["in_text"][:n]


def test_greedy_synthesis_reproduces_upstream_chain(engine, goldens):
    from pipeline.engines.cosyvoice3.sampling import greedy

    text, prompt_text = _split_text(goldens)
    res = engine.synthesize(text, prompt_text, _prompt(goldens), sampler=greedy)
    assert res.tokens == goldens["llm_greedy_tokens"].tolist()
    assert res.sample_rate == 24000
    # tokens → 2 mel frames each → 480 samples per frame (silent-token runs are cut before the flow)
    assert len(res.audio) == 960 * len(res.tokens) or len(res.audio) < 960 * len(res.tokens)
    assert res.audio.dtype == np.float32 and np.all(np.abs(res.audio) <= 0.99)
    assert set(res.timings) == {"llm", "flow", "vocoder"}
    assert res.backends == {"llm": "llama.cpp", "flow": "onnxruntime-cpu", "vocoder": "onnxruntime-cpu"}
    # the converter's fused-attention graph is what runs (and reproduces the upstream chain above)
    assert engine.flow.estimator.path.name == "flow_estimator.fused.onnx"
    assert engine.flow_backend_reason.startswith("flow on ONNX Runtime CPU: the bundle has no RKNN graphs")


def test_sampling_is_deterministic_for_a_seed(engine, goldens):
    text, prompt_text = _split_text(goldens)
    a = engine.synthesize(text, prompt_text, _prompt(goldens), rng=np.random.default_rng(7))
    b = engine.synthesize(text, prompt_text, _prompt(goldens), rng=np.random.default_rng(7))
    c = engine.synthesize(text, prompt_text, _prompt(goldens), rng=np.random.default_rng(8))
    assert a.tokens == b.tokens and np.array_equal(a.audio, b.audio)
    assert a.tokens != c.tokens


def test_progress_and_cancel(engine, goldens):
    text, prompt_text = _split_text(goldens)
    seen = []
    engine.synthesize(text, prompt_text, _prompt(goldens), rng=np.random.default_rng(1),
                      on_progress=lambda stage, info: seen.append(stage))
    assert seen[0] == "prefill" and "tokens" in seen and seen[-2:] == ["flow", "vocoder"]
    n = {"calls": 0}

    def stop():
        n["calls"] += 1
        return n["calls"] > 3

    with pytest.raises(Cancelled):
        engine.synthesize(text, prompt_text, _prompt(goldens), rng=np.random.default_rng(1), should_stop=stop)


def test_bad_inputs(engine, goldens):
    text, prompt_text = _split_text(goldens)
    with pytest.raises(InputError, match="text is empty"):
        engine.synthesize([], prompt_text, _prompt(goldens))
    tok = goldens["in_prompt_speech_token"]
    with pytest.raises(InputError, match="exactly 2 per token"):
        PromptFeatures(tok, goldens["in_prompt_feat"][0][:-3], goldens["in_embedding"])


def test_cached_prompt_prefix_gives_the_same_tokens(engine, goldens):
    from pipeline.engines.cosyvoice3.sampling import greedy

    text, prompt_text = _split_text(goldens)
    state = engine.prompt_prefix_state(prompt_text)
    res = engine.synthesize(text, prompt_text, _prompt(goldens), sampler=greedy, prefix_state=state)
    assert res.tokens == goldens["llm_greedy_tokens"].tolist()
    with pytest.raises(InputError, match="recomputed"):
        engine.synthesize(text, prompt_text[:-1], _prompt(goldens), sampler=greedy, prefix_state=state)
