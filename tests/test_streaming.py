"""The O(n) streaming path against upstream's streaming goldens (tests/fixtures/tiny-cosyvoice3/README.md)."""

from __future__ import annotations

import copy
import json
import threading

import numpy as np
import pytest
from conftest import TINY

from pipeline.engines.cosyvoice3.engine import Engine, PromptCacheLRU, PromptFeatures
from pipeline.engines.cosyvoice3.flow import Flow
from pipeline.engines.cosyvoice3.flow_stream import ChunkedFlow
from pipeline.engines.cosyvoice3.streaming import SilentFilter, emission_points
from pipeline.engines.cosyvoice3.verify_stream import run_verify_streaming
from pipeline.engines.cosyvoice3.vocoder import HiFT
from pipeline.engines.cosyvoice3.vocoder_stream import HiFTStream, decoder_context
from pipeline.shared.errors import Cancelled, InputError

TOL = 1e-3


@pytest.fixture(scope="module")
def sg() -> dict[str, np.ndarray]:
    with np.load(TINY / "streaming_goldens.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def parts(stream_bundle):
    flow = Flow.from_bundle(stream_bundle)
    hift = HiFT.from_bundle(stream_bundle)
    return flow, hift


def _engine(bundle, parts, cache: str = "fp32") -> Engine:
    flow, hift = parts
    e = Engine(bundle, None, None, flow, hift)
    e.flow_cache_type = cache
    return e


def _prompt(sg, pre: str) -> PromptFeatures:
    if pre == "stream":
        return PromptFeatures(sg["in_prompt_speech_token"], sg["in_prompt_feat"][0], sg["in_embedding"])
    return PromptFeatures(sg[f"{pre}_prompt_speech_token"], sg[f"{pre}_prompt_feat"][0], sg["in_embedding"])


def _calls(sg, pre: str):
    offs, ns, fin = sg[f"{pre}_token_offset"], sg[f"{pre}_n_tokens"], sg[f"{pre}_finalize"]
    return [(int(o), int(n), bool(f)) for o, n, f in zip(offs, ns, fin, strict=True)]


@pytest.mark.parametrize("pre", ["stream", "pad"])
@pytest.mark.parametrize("voice_cache", [False, True])
@pytest.mark.parametrize("max_chunks", [1, 8])
def test_chunked_flow_matches_upstream_chunks(stream_bundle, parts, sg, pre, voice_cache, max_chunks):
    """One chunk per estimator call, or several with the graph's in-call chunk mask (the goldens' later calls
    hold up to four chunks): both are upstream's chunk-masked flow."""
    cf = ChunkedFlow.from_bundle(stream_bundle, parts[0], cache="fp32")
    cf.max_chunks = max_chunks
    prompt = _prompt(sg, pre)
    p = len(prompt.speech_tokens)
    pc = cf.build_prompt_cache(prompt) if voice_cache else None
    if voice_cache:
        assert pc.frames == cf.voice_frames(p) > 0
    req = cf.start(prompt, pc)
    toks, have = sg["in_stream_token"].tolist(), 0
    for k, (_off, n, fin) in enumerate(_calls(sg, pre)):
        upto = 2 * (p + n) if fin else 2 * (p + n - 3)
        mel = cf.advance(req, toks[have:n], upto, finalize=fin)
        have = n
        want = sg[f"{pre}_final_causal_mel" if fin else f"{pre}_c{k}_mel"][0]
        assert mel.shape == want.shape
        assert np.abs(mel - want).max() < TOL, (k, np.abs(mel - want).max())


def test_several_chunks_per_call_are_the_same_chunks(stream_bundle, parts, sg):
    """Guards the in-call mask: without it a call of several prompt chunks lets early frames see later ones."""
    p = _prompt(sg, "stream")
    prompt = PromptFeatures(np.tile(p.speech_tokens, 3), np.tile(p.mel, (3, 1)), p.embedding)  # 150 tokens
    mels = []
    for mc in (1, 4):
        cf = ChunkedFlow.from_bundle(stream_bundle, parts[0], cache="fp32")
        cf.max_chunks = mc
        assert cf.voice_frames(150) == 250
        req = cf.start(prompt)
        mels.append(cf.advance(req, sg["in_stream_token"][:78].tolist(), 2 * (150 + 75), finalize=False))
        assert (req.stats["chunks"], req.stats["calls"]) == (9, 9 if mc == 1 else 2 + 1)
    assert np.abs(mels[0] - mels[1]).max() < 1e-5


def test_time_table_spares_the_time_graph(stream_bundle, parts, sg, tmp_path):
    """The bundle's table holds the time graph's output for its schedule: the graph is not loaded (a missing
    file here), and the mel is the same as with the modulation computed by the graph."""
    from pipeline.engines.cosyvoice3.flow_stream import ChunkEstimator, chunk_graph_paths

    chunk, time_graph, table = chunk_graph_paths(stream_bundle, "fp32")
    assert table is not None
    mels = []
    for est in (ChunkEstimator(chunk, tmp_path / "absent.onnx", table, n_threads=1),
                ChunkEstimator(chunk, time_graph, None, n_threads=1)):
        cf = ChunkedFlow(parts[0], est, chunk_frames=50)
        req = cf.start(_prompt(sg, "stream"))
        mels.append(cf.advance(req, sg["in_stream_token"][:78].tolist(), 2 * (50 + 75), finalize=False))
    assert np.abs(mels[0] - mels[1]).max() < 1e-6


def test_old_chunk_graph_layout_is_refused(stream_bundle, tmp_path):
    from pipeline.engines.cosyvoice3.flow_stream import chunk_graph_paths
    from pipeline.shared.errors import BundleError

    b = copy.copy(stream_bundle)
    b.manifest = json.loads(json.dumps(stream_bundle.manifest))
    del b.manifest["flow"]["estimator"]["onnx_chunk"]["format"]
    with pytest.raises(BundleError, match="older layout; convert it again"):
        chunk_graph_paths(b, "fp16")


def test_fp16_cache_stays_close(stream_bundle, parts, sg):
    cf = ChunkedFlow.from_bundle(stream_bundle, parts[0], cache="fp16")
    assert cf.est.cache_dtype == np.float16
    prompt = _prompt(sg, "stream")
    req = cf.start(prompt)
    mel = cf.advance(req, sg["in_stream_token"][:78].tolist(), 2 * (50 + 75), finalize=False)
    want = np.concatenate([sg["stream_c0_mel"][0], sg["stream_c1_mel"][0]], axis=1)
    assert np.abs(mel - want).max() < TOL


def test_full_attention_through_chunk_graph(stream_bundle, parts, goldens):
    cf = ChunkedFlow.from_bundle(stream_bundle, parts[0], cache="fp32")
    prompt = PromptFeatures(goldens["in_prompt_speech_token"], goldens["in_prompt_feat"][0], goldens["in_embedding"])
    mel = cf.full(prompt, goldens["in_flow_token"])
    assert np.abs(mel - goldens["flow_mel"][0]).max() < TOL


def test_advance_refuses_missing_lookahead(stream_bundle, parts, sg):
    cf = ChunkedFlow.from_bundle(stream_bundle, parts[0], cache="fp32")
    req = cf.start(_prompt(sg, "stream"))
    with pytest.raises(InputError, match="more tokens"):
        cf.advance(req, sg["in_stream_token"][:26].tolist(), 2 * (50 + 25), finalize=False)


@pytest.mark.parametrize("pre", ["stream", "pad"])
def test_hift_stream_matches_upstream_calls(parts, sg, pre):
    s = HiFTStream(parts[1])
    for k, (_, _, fin) in enumerate(_calls(sg, pre)):
        audio = s.push(sg[f"{pre}_c{k}_mel"][0], finalize=fin)
        want = sg[f"{pre}_c{k}_speech"][0]
        assert audio.shape == want.shape
        assert np.abs(audio - want).max() < TOL
    assert s.done


def test_hift_stream_window_is_wide_enough(parts, sg):
    """Decoder samples after a window of decoder_context() frames do not depend on anything before it: change
    the mel and source there and they stay bit-identical; with a window that is too small they change."""
    hift = parts[1]
    spf = hift.samples_per_frame
    mel = np.concatenate([sg["stream_c0_mel"][0], sg["stream_c1_mel"][0]], axis=1)
    src = hift.source(hift.f0(mel).astype(np.float32))
    full = hift.decode(mel, src, finalize=True)
    e = 100

    def after_change(ctx: int) -> np.ndarray:
        ws = e - ctx
        m, s = mel.copy(), src.copy()
        m[:, :ws] += 2.0
        s[: ws * spf] *= -0.5
        return hift.decode(m, s, finalize=True)[e * spf:]

    assert np.array_equal(after_change(decoder_context(hift.params)), full[e * spf:])
    assert not np.array_equal(after_change(10), full[e * spf:])


def test_emission_points_follow_upstream(sg):
    for pre in ("stream", "pad"):
        offs = sg[f"{pre}_token_offset"].tolist()
        p = len(sg["in_prompt_speech_token"] if pre == "stream" else sg[f"{pre}_prompt_speech_token"])
        pts = emission_points(p)
        assert [0] + [next(pts) for _ in offs[1:]] == offs
    pts = emission_points(50, grow=False)
    assert [next(pts) for _ in range(4)] == [25, 50, 75, 100]


def test_silent_filter_is_upstreams():
    from pipeline.engines.cosyvoice3.sampling import filter_silent

    toks = [1, 1, 1, 1, 1, 1, 1, 7, 1, 1, 2, 2, 2, 2, 2, 2, 9]
    f = SilentFilter([1, 2], 5)
    assert [t for t in toks if f.keep(t)] == filter_silent(toks, [1, 2], 5)


@pytest.mark.parametrize("final", ["causal", "full"])
def test_engine_stream_equals_upstream_audio(stream_bundle, parts, sg, final):
    e = _engine(stream_bundle, parts)
    prompt = _prompt(sg, "stream")
    audio, res = [], None
    for item in e.synthesize_stream([1], [2], prompt, tokens=sg["in_stream_token"], final=final):
        if isinstance(item, np.ndarray):
            audio.append(item)
        else:
            res = item
    got = np.concatenate(audio)
    want = (sg["stream_causal_audio"][0] if final == "causal"
            else np.concatenate([sg[f"stream_c{k}_speech"][0] for k in range(5)]))
    assert got.shape == want.shape
    assert np.abs(got - want).max() < TOL
    assert len(audio) == 5 and res.stats["emissions"] == 5
    assert np.array_equal(res.audio, got)
    assert res.stats["ttfa_s"] > 0


def test_prompt_cache_is_reused_and_changes_nothing(stream_bundle, parts, sg):
    e = _engine(stream_bundle, parts)
    prompt = _prompt(sg, "stream")
    runs = []
    for use in (False, True, True):
        items = list(e.synthesize_stream([1], [2], prompt, tokens=sg["in_stream_token"][:60],
                                         use_prompt_cache=use, schedule="chunk"))
        runs.append(items[-1])
    assert not runs[1].stats["prompt_cache_hit"] and runs[2].stats["prompt_cache_hit"]
    assert runs[2].stats["prompt_cache_mb"] > 0
    assert np.array_equal(runs[1].audio, runs[2].audio)
    assert np.abs(runs[0].audio - runs[1].audio).max() < 1e-5


def test_stream_cancel_stops_threads(stream_bundle, parts, sg):
    e = _engine(stream_bundle, parts)
    stop = threading.Event()
    got = []
    with pytest.raises(Cancelled):
        for item in e.synthesize_stream([1], [2], _prompt(sg, "stream"), tokens=sg["in_stream_token"],
                                        schedule="chunk", should_stop=stop.is_set):
            got.append(item)
            stop.set()
    assert len(got) == 1
    assert not [t for t in threading.enumerate() if t.name in ("cv-llm", "cv-flow")]


def test_stream_consumer_can_stop_early(stream_bundle, parts, sg):
    e = _engine(stream_bundle, parts)
    gen = e.synthesize_stream([1], [2], _prompt(sg, "stream"), tokens=sg["in_stream_token"], schedule="chunk")
    next(gen)
    gen.close()
    assert not [t for t in threading.enumerate() if t.name in ("cv-llm", "cv-flow")]


def test_prompt_cache_lru_budget():
    class Item:
        def __init__(self, mb):
            self.nbytes = mb * 2**20

    lru = PromptCacheLRU(budget_mb=10)
    lru.put("a", Item(4))
    lru.put("b", Item(4))
    assert lru.get("a") is not None  # a is now the most recent
    lru.put("c", Item(4))
    assert lru.get("b") is None and lru.get("a") is not None and lru.get("c") is not None
    lru.put("big", Item(50))  # one entry over the budget is kept on its own
    assert len(lru) == 1 and lru.get("big") is not None


def test_verify_streaming_passes_on_fixture(stream_bundle, sg):
    res = run_verify_streaming(stream_bundle, sg, log=lambda m: None)
    assert res and all(r.passed for r in res), [r for r in res if not r.passed]
    names = {r.stage for r in res}
    assert {"stream_estimator", "stream_final_causal_audio", "pad_c2_full_attn_mel", "stream_schedule"} <= names


def test_verify_streaming_catches_a_wrong_golden(stream_bundle, sg):
    bad = dict(sg)
    bad["stream_c1_mel"] = sg["stream_c1_mel"] + 0.01
    res = {r.stage: r for r in run_verify_streaming(stream_bundle, bad, log=lambda m: None)}
    assert not res["stream_c1_mel"].passed and res["stream_c0_mel"].passed


@pytest.mark.parametrize("yields", ["every", "never"])
def test_llm_takes_turns_with_the_flow(stream_bundle, parts, sg, monkeypatch, yields):
    """llm_yields="every" (the default with the flow on the CPU): without the voice's cache the LLM starts only
    after the prompt part is solved, and it never goes on with a token while a flow call runs (the stages share
    the cores). "never" overlaps them (shown to differ)."""
    import time

    calls: list[tuple[float, float]] = []
    real = ChunkedFlow.advance

    def advance(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return real(self, *a, **kw)
        finally:
            calls.append((t0, time.perf_counter()))

    monkeypatch.setattr(ChunkedFlow, "advance", advance)
    resumed: list[float] = []
    toks = [int(t) for t in sg["in_stream_token"]]

    def source(on_token, should_stop):
        resumed.append(time.perf_counter())  # the LLM starts
        for i, tok in enumerate(toks):
            time.sleep(0.002)  # a token's decode
            on_token(i, tok)
            resumed.append(time.perf_counter())

    e = _engine(stream_bundle, parts)
    items = list(e.synthesize_stream([1], [2], _prompt(sg, "stream"), tokens=source, use_prompt_cache=False,
                                     schedule="chunk", llm_yields=yields))
    assert items[-1].stats["llm_yields"] == yields and len(calls) >= 3
    during = sum(any(a < t < b for a, b in calls) for t in resumed)
    assert (resumed[0] > calls[0][1] and during == 0) == (yields == "every")
