"""Audio chunks on a tiny random bundle: ``CosyVoiceRK.create_chunks``, the engine seam it is built on, and
``say -o -`` (raw PCM on stdout as it is made)."""

import os
import pty
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import PROMPTS, ZH_PROMPT_TEXT

from pipeline.cli import pcm16
from pipeline.engines.cosyvoice3.tts import CosyVoiceRK
from pipeline.shared.errors import Cancelled

PROMPT = PROMPTS / "zero_shot_prompt.wav"
MEDIUM = "Раз, два, три. Четыре, пять! " * 20  # 4 segments


@pytest.fixture(scope="module")
def tts(random_bundle, tmp_path_factory):
    with CosyVoiceRK(random_bundle, speakers_dir=tmp_path_factory.mktemp("spk"), n_threads=1) as t:
        yield t


@pytest.fixture(scope="module")
def voice(tts):
    return tts.voice_from_audio(PROMPT, ZH_PROMPT_TEXT, language="zh")


@pytest.fixture(scope="module")
def seed(tts, voice):
    """A seed that gives speech in every segment of MEDIUM (random weights stop at once for some seeds)."""
    from pipeline.shared.errors import InputError

    for s in [2, *range(100, 130)]:
        try:
            tts.create(MEDIUM, voice, language="ru", seed=s)
            return s
        except InputError:
            continue
    raise AssertionError("no seed in 30 gives speech in every segment with this random bundle")


def _split_seam(tts, monkeypatch, parts: int = 3) -> None:
    """Make the engine seam deliver each segment as ``parts`` pieces plus an empty one, then the result on an
    empty last piece: the shape the streaming engine's ``synthesize_stream`` may have."""
    real = tts._segment_chunks

    def split(*args, **kw):
        for audio, is_last, res in real(*args, **kw):
            assert is_last
            for piece in np.array_split(audio, parts):
                yield piece, False, None
            yield np.zeros(0, np.float32), False, None
            yield np.zeros(0, np.float32), True, res

    monkeypatch.setattr(tts, "_segment_chunks", split)


@pytest.mark.parametrize("stream", [True, False])
def test_chunks_join_to_the_audio_and_carry_each_segment(tts, voice, seed, stream):
    audio, sr = tts.create(MEDIUM, voice, language="ru", seed=seed, stream=stream)
    chunks = list(tts.create_chunks(MEDIUM, voice, language="ru", seed=seed, stream=stream))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    # streaming: pieces of a segment as the engine finishes them; else one chunk per segment
    assert len(chunks) > 4 if stream else len(chunks) == 4
    assert all(c.sample_rate == sr == 24000 and c.segments == 4 and c.audio.dtype == np.float32 for c in chunks)
    assert np.array_equal(np.concatenate([c.audio for c in chunks]), audio)
    ends = [c for c in chunks if c.segment_result is not None]
    assert [c.segment for c in ends] == [c.segment_result.index for c in ends] == [0, 1, 2, 3]
    assert chunks[-1] is ends[-1]
    for seg in (c.segment_result for c in ends):
        mine = [c.audio for c in chunks if c.segment == seg.index]
        assert np.array_equal(np.concatenate(mine), seg.audio) and seg.result.tokens and seg.text.strip()


def test_sub_segment_chunks_from_the_engine_seam(tts, voice, seed, monkeypatch):
    whole = [s.audio for s in tts.create_stream(MEDIUM, voice, language="ru", seed=seed)]
    _split_seam(tts, monkeypatch)
    chunks = list(tts.create_chunks(MEDIUM, voice, language="ru", seed=seed, stream=False))
    # three pieces per segment; the empty piece in the middle is dropped, the empty last one carries the segment
    assert len(chunks) == 16 and [c.index for c in chunks] == list(range(16))
    assert [c.segment for c in chunks] == [i for i in range(4) for _ in range(4)]
    assert [c.segment_result is not None for c in chunks] == [False, False, False, True] * 4
    assert all(len(c.audio) == 0 for c in chunks[3::4])
    assert np.array_equal(np.concatenate([c.audio for c in chunks]), np.concatenate(whole))
    # segments (and so create_stream/create) stay whole
    assert [len(s.audio) for s in tts.create_stream(MEDIUM, voice, language="ru", seed=seed)] == \
        [len(a) for a in whole]


def test_cancel_stops_within_one_chunk_and_ends_the_engine_generator(tts, voice, monkeypatch):
    asked, closed = [], []

    def engine(*args, **kw):
        try:
            for i in range(5):
                asked.append(i)
                yield np.full(100, i, np.float32), i == 4, None
        finally:
            closed.append(True)

    monkeypatch.setattr(tts, "_segment_chunks", engine)
    stop = []
    got = []
    with pytest.raises(Cancelled):
        for c in tts.create_chunks("Раз, два, три.", voice, language="ru", should_stop=lambda: bool(stop)):
            got.append(c.index)
            stop.append(True)  # the cancel lands while the listener has the first chunk
    assert got == [0] and asked == [0] and closed == [True]


def test_chunks_that_are_not_the_segment_audio_are_refused(tts, voice, seed, monkeypatch):
    real = tts._segment_chunks

    def lossy(*args, **kw):
        for audio, _, res in real(*args, **kw):
            yield audio[:-1], False, None  # one sample short of the result's audio
            yield np.zeros(0, np.float32), True, res

    monkeypatch.setattr(tts, "_segment_chunks", lossy)
    with pytest.raises(RuntimeError, match=r"chunks \(\d+ samples\) are not its segment audio"):
        list(tts.create_chunks(MEDIUM, voice, language="ru", seed=seed, stream=False))


def test_engine_must_end_a_segment_with_its_result(tts, voice, monkeypatch):
    def engine(*args, **kw):
        yield np.zeros(3, np.float32), True, None

    monkeypatch.setattr(tts, "_segment_chunks", engine)
    with pytest.raises(RuntimeError, match="without its SynthesisResult"):
        list(tts.create_chunks("Раз.", voice, language="ru"))


def _say(random_bundle, tmp_path, seed, out, *extra, **kw):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "say", "--bundle", str(random_bundle.root),
                           "--speakers-dir", str(tmp_path / "spk"), "--prompt-wav", str(PROMPT), "--prompt-text",
                           ZH_PROMPT_TEXT, "--text", MEDIUM, "--language", "ru", "--seed", str(seed), "--threads",
                           "1", *extra, "-o", str(out)], timeout=300, **kw)


def test_say_streams_raw_pcm_to_stdout(random_bundle, tts, voice, seed, tmp_path):
    r = _say(random_bundle, tmp_path, seed, "-", capture_output=True)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "s16le, mono, 24000 Hz" in err and "aplay -f S16_LE -r 24000 -c 1" in err
    # stdout holds the samples and nothing else: the joined chunks of the same request, as 16-bit PCM
    chunks = [c.audio for c in tts.create_chunks(MEDIUM, voice, language="ru", seed=seed, stream=True)]
    assert r.stdout == pcm16(np.concatenate(chunks))
    assert len(chunks) > 4 and "first audio after" in err
    # the same rounding as the WAV writer: `-o x.wav` holds the same samples
    r = _say(random_bundle, tmp_path, seed, tmp_path / "x.wav", capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    wav, sr = sf.read(tmp_path / "x.wav", dtype="int16")
    assert sr == 24000 and wav.tobytes() == pcm16(np.concatenate(chunks))
    # --no-stream: upstream's non-streaming synthesis (full attention), the same tokens, other samples
    r = _say(random_bundle, tmp_path, seed, "-", "--no-stream", capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    whole, _ = tts.create(MEDIUM, voice, language="ru", seed=seed, stream=False)
    assert r.stdout == pcm16(whole) and len(whole) == len(np.concatenate(chunks))

    h = subprocess.run([sys.executable, "-m", "pipeline.cli", "say", "--help"], capture_output=True, text=True)
    assert "s16le" in h.stdout and "aplay -f S16_LE -r 24000 -c 1" in " ".join(h.stdout.split())


def test_say_refuses_raw_pcm_to_a_terminal(tmp_path):
    leader, follower = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "say", "--bundle", str(tmp_path / "nope"),
                            "--speaker", "x", "--text", "hi", "-o", "-"], stdout=follower, stderr=subprocess.PIPE,
                           text=True, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert r.returncode == 2 and "stdout, which is a terminal" in r.stderr and "aplay" in r.stderr


def test_prepare_stream_solves_a_saved_voices_prompt_cache_ahead(tts, seed):
    tts.add_voice("warm", PROMPT.read_bytes(), ZH_PROMPT_TEXT, language="zh")
    from pipeline.engines.cosyvoice3.engine import PromptCacheLRU

    tts.engine.prompt_caches = PromptCacheLRU(1200)  # nothing solved yet
    assert tts.prepare_stream("warm") > 0
    chunks = list(tts.create_chunks(MEDIUM, "warm", language="ru", seed=seed, stream=True))
    results = [c.segment_result.result for c in chunks if c.segment_result is not None]
    assert results and all(r.stats["prompt_cache_hit"] for r in results)
