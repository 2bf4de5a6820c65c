"""Qwen3-TTS streaming (pipeline/engines/qwen3_tts/streaming.py) on a bundle converted from the tiny fixture:
chunks join to the segment, agree with the one-pass path, arrive while frames are still being generated, and
cancel, errors and closing the generator leave no thread behind."""

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import PROMPTS, ZH_PROMPT_TEXT

from pipeline.engines import open_tts
from pipeline.engines.qwen3_tts.decoder import icl_cut
from pipeline.engines.qwen3_tts.streaming import emission_points
from pipeline.shared.errors import Cancelled, InputError
from pipeline.worker import Worker, WorkerConfig

Q3 = Path(__file__).parent / "fixtures" / "tiny-qwen3-tts"
PROMPT = PROMPTS / "zero_shot_prompt.wav"
SPF = 1920
WAV_TOL = 1e-3  # the decoder's float32 rounding bound (stream graph vs one-shot graph; measured ~1.5e-4)
TEXT = "Hello world, this is a test."


@pytest.fixture(scope="module")
def q3_bundle(tmp_path_factory):
    from pipeline.engines.qwen3_tts.convert.bundle_writer import convert_qwen3_checkpoint

    return convert_qwen3_checkpoint(Q3, tmp_path_factory.mktemp("q3s") / "bundle", quants=["q8_0"],
                                    log=lambda m: None)


@pytest.fixture(scope="module")
def tts(q3_bundle, tmp_path_factory):
    with open_tts(q3_bundle, speakers_dir=tmp_path_factory.mktemp("spk"), n_threads=1) as t:
        yield t


@pytest.fixture(scope="module")
def voice(tts):
    return tts.voice_from_audio(PROMPT, ZH_PROMPT_TEXT)


def generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "q3-generate"]


def test_the_bundle_streams_and_says_why(tts):
    assert tts.streams and tts.capabilities.streaming
    assert tts.placement["stream"] is True and "q3_decoder_stream.onnx" in tts.placement["stream_reason"]


@pytest.mark.parametrize("mode", ["zero_shot", "cross_lingual"])
def test_chunks_join_to_the_segment_and_agree_with_the_one_pass_path(tts, voice, mode):
    streamed = list(tts.create_chunks(TEXT, voice, language="en", seed=7, mode=mode))
    again = list(tts.create_chunks(TEXT, voice, language="en", seed=7, mode=mode))
    one = list(tts.create_chunks(TEXT, voice, language="en", seed=7, mode=mode, stream=False))
    assert [c.index for c in streamed] == list(range(len(streamed)))
    segs = [c.segment_result for c in streamed if c.segment_result is not None]
    assert len(one) == len(segs) and all(c.segment_result is not None for c in one)
    points = emission_points()
    for seg, ref in zip(segs, (c.segment_result for c in one), strict=True):
        mine = [c for c in streamed if c.segment == seg.index]
        assert mine[-1].segment_result is seg and all(c.segment_result is None for c in mine[:-1])
        assert np.array_equal(np.concatenate([c.audio for c in mine]), seg.audio)  # sample-exact
        assert np.array_equal(seg.result.codes, ref.result.codes)  # same seed, same codes
        assert set(seg.result.timings) == set(ref.result.timings)  # the page lists the same stages
        n = len(seg.result.codes)
        assert n * 0.08 > 2 and len(mine) >= 3  # a multi-second segment comes in several chunks
        assert seg.result.stats["lm_wait_s"] > 0  # generation paused until the first chunk was decoded
        # every chunk but the last ends at an emission point (4, 12, 28, 44, ... frames)
        ends = np.cumsum([len(c.audio) for c in mine[:-1]]) // SPF
        assert list(ends) == [next(points) for _ in ends]
        # ICL: upstream's cut int(T12/(T12+n)*len) may be one sample before T12*1920; then the one-pass audio
        # has that extra sample at its start (not for this text: n = 198 frames here, 50 in cross_lingual)
        t12 = len(voice.features.codes) if mode == "zero_shot" else 0
        off = t12 * SPF - icl_cut(t12, n, (t12 + n) * SPF) if t12 else 0
        assert len(seg.audio) == n * SPF and len(ref.audio) == len(seg.audio) + off
        assert np.abs(seg.audio - ref.audio[off:]).max() <= WAV_TOL
    # the decoder is called at the emission points whatever the thread's timing: a seed repeats exactly
    assert np.array_equal(np.concatenate([c.audio for c in streamed]), np.concatenate([c.audio for c in again]))


def test_where_upstreams_cut_takes_one_sample_more_the_stream_is_its_tail(tts, voice, monkeypatch):
    """The stream starts at sample T12*1920 of [prompt; generated]; for some n upstream's float cut
    int(T12/(T12+n)*len) is T12*1920 - 1, and the one-pass audio has one more sample at its start."""
    t12 = len(voice.features.codes)
    n = next(k for k in range(1, 400) if icl_cut(t12, k, (t12 + k) * SPF) != t12 * SPF)
    real = tts.lm.generate
    # max_new_tokens = n + 1 gives n frames (the last code 0 is dropped) unless EOS comes first (it does not)
    monkeypatch.setattr(tts.lm, "generate", lambda prompt, **kw: real(prompt, **{**kw, "max_new_tokens": n + 1}))
    streamed = list(tts.create_chunks(TEXT, voice, language="en", seed=7))
    one = list(tts.create_chunks(TEXT, voice, language="en", seed=7, stream=False))
    monkeypatch.setattr(tts, "prompt_decode", "each")
    each = list(tts.create_chunks(TEXT, voice, language="en", seed=7, stream=False))
    seg, ref, up = streamed[-1].segment_result, one[-1].segment_result, each[-1].segment_result
    assert len(seg.result.codes) == n and np.array_equal(seg.result.codes, ref.result.codes)
    assert len(ref.audio) == len(up.audio) == len(seg.audio) + 1 == n * SPF + 1
    assert np.abs(seg.audio - ref.audio[1:]).max() <= WAV_TOL
    # the one-pass audio with the prompt decoded once leads with the primed prompt's last sample, as upstream's
    assert np.abs(ref.audio - up.audio).max() <= WAV_TOL


@pytest.mark.parametrize("mode", ["zero_shot", "cross_lingual"])
def test_one_pass_decodes_a_voices_prompt_once_and_agrees_with_upstreams_decode(tts, voice, mode, monkeypatch):
    """stream=False with the stream decoder: the prompt codes are decoded once per voice (primed, kept) and only
    the generated frames per request; the audio is upstream's decode of [prompt; generated] within rounding."""
    tts._primed.clear()
    primings = []
    real = tts._primed.base.primed
    monkeypatch.setattr(tts._primed.base, "primed", lambda *a, **kw: primings.append(1) or real(*a, **kw))
    once = [list(tts.create_chunks(TEXT, voice, language="en", seed=s, mode=mode, stream=False)) for s in (7, 8)]
    assert len(primings) == (1 if mode == "zero_shot" else 0)  # two requests, one priming (x-vector: none)
    monkeypatch.setattr(tts, "prompt_decode", "each")
    each = [list(tts.create_chunks(TEXT, voice, language="en", seed=s, mode=mode, stream=False)) for s in (7, 8)]
    for a, b in zip(sum(once, []), sum(each, []), strict=True):
        assert np.array_equal(a.segment_result.result.codes, b.segment_result.result.codes)
        assert len(a.audio) == len(b.audio) and np.abs(a.audio - b.audio).max() <= WAV_TOL
    with pytest.raises(InputError, match="prompt_decode"):
        open_tts(tts.bundle, speakers_dir=tts.store.root, prompt_decode="twice")


def test_the_first_chunk_arrives_while_frames_are_still_generated(tts, voice):
    first_chunk = threading.Event()
    held = []

    def progress(stage, info):
        if stage == "tokens" and info["n"] == 20:  # generation halts at frame 20 until the first chunk is out
            held.append(first_chunk.wait(30))

    chunks = []
    for c in tts.create_chunks(TEXT, voice, language="en", seed=7, on_progress=progress):
        chunks.append(c)
        first_chunk.set()
    assert held == [True]
    assert len(chunks[0].audio) == 4 * SPF and chunks[0].segment_result is None


def test_cancel_mid_stream_stops_within_a_chunk_and_ends_the_thread(tts, voice):
    stop = threading.Event()
    got = []
    with pytest.raises(Cancelled):
        for c in tts.create_chunks(TEXT, voice, language="en", seed=7, should_stop=stop.is_set):
            got.append(c)
            if len(got) == 2:
                stop.set()
    assert len(got) == 2 and not generation_threads()


def test_closing_the_generator_ends_the_thread(tts, voice):
    gen = tts.create_chunks(TEXT, voice, language="en", seed=7)
    first = next(gen)
    assert len(first.audio) and generation_threads()
    gen.close()
    assert not generation_threads()


def test_an_error_in_the_generation_thread_surfaces_in_the_caller(tts, voice, monkeypatch):
    real = tts.lm.generate

    def failing(prompt, *, on_frame=None, **kw):
        def frame(f, seen=[]):  # noqa: B006 - a counter for this call
            seen.append(f)
            if len(seen) == 6:
                raise RuntimeError("boom in the talker")
            on_frame(f)
        return real(prompt, on_frame=frame, **kw)

    monkeypatch.setattr(tts.lm, "generate", failing)
    got = []
    with pytest.raises(RuntimeError, match="boom in the talker"):
        for c in tts.create_chunks(TEXT, voice, language="en", seed=7):
            got.append(c)
    assert len(got) == 1 and not generation_threads()  # the first 4 frames were heard, the error ended it


def test_a_voice_is_primed_once_and_kept(tts, voice):
    tts.add_voice("Ann", PROMPT, ZH_PROMPT_TEXT, language="zh")
    codes = tts.load_voice("Ann").features.codes
    tts._primed.clear()
    assert tts.prepare_stream("Ann") > 0
    assert tts.prepare_stream("Ann") == 0.0  # primed already (LRU keyed by the codes' hash)
    a, fresh = tts._primed.decoder(codes)
    b, _ = tts._primed.decoder(codes)
    assert not fresh and a is not b and a.n_prompt == b.n_prompt == len(codes) == a.frames
    with pytest.raises(Cancelled):
        tts._primed.clear()
        tts.prepare_stream("Ann", should_stop=lambda: True)
    assert not tts._primed  # a stopped priming keeps nothing


def test_the_worker_streams_chunk_events_for_a_qwen3_bundle(q3_bundle, tmp_path):
    w = Worker(WorkerConfig(str(q3_bundle.root), str(tmp_path / "spk"), n_threads=1), max_queue=2)
    try:
        assert w.wait_ready(120) == "ready", w.last_error
        job = w.submit("speak", {"text": TEXT, "language": "en", "seed": 7, "mode": "cross_lingual",
                                 "prompt": {"audio": PROMPT.read_bytes(), "transcript": ""}})
        events = list(job.events_until_done())
        assert events[-1]["type"] == "done", events[-1]
        chunks = [e for e in events if e["type"] == "chunk"]
        segs = [e for e in events if e["type"] == "segment"]
        assert len(segs) == 1 and len(chunks) >= 3
        assert [c["segment_done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
        assert events.index(chunks[-1]) < events.index(segs[0])
        assert np.array_equal(np.concatenate([c["audio"] for c in chunks]), segs[0]["audio"])
        assert events[-1]["result"]["stream"] is True and 0 < events[-1]["result"]["ttfa_s"]
    finally:
        w.close()


@pytest.mark.parametrize("yields", ["every", "never"])
def test_generation_waits_while_each_chunk_is_decoded(yields):
    """With lm_yields="every" (the default) no frame is generated while the decoder runs: the two share the
    cores, and llama.cpp's barriers stall when the decoder holds one. "never" overlaps them (shown to differ)."""
    import time

    from pipeline.engines.qwen3_tts.streaming import StreamEnd, stream_segment

    busy = threading.Event()
    overlaps = []

    class Decoder:
        num_quantizers = 16

        def push(self, frames):
            busy.set()
            time.sleep(0.03)
            busy.clear()
            return np.zeros(len(frames) * SPF, np.float32)

    def generate(on_frame, stopped):
        frames = []
        for _ in range(30):
            time.sleep(0.003)
            overlaps.append(busy.is_set())
            frames.append(np.zeros(16, np.int64))
            on_frame(frames[-1])
        return np.stack(frames)

    kw = {} if yields == "every" else {"lm_yields": yields}
    items = list(stream_segment(generate, Decoder(), **kw))
    assert isinstance(items[-1], StreamEnd) and items[-1].stats["frames"] == 30
    assert items[-1].stats["lm_yields"] == yields
    assert (sum(overlaps) == 0) == (yields == "every")
