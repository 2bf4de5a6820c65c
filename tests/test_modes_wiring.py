"""Modes, speed and control tags where a user meets them: ``CosyVoiceRK``, the worker's speak payload and
``say`` (the page and the gradio API: tests/test_webui.py). On the tiny random bundle."""

import contextlib
import io

import numpy as np
import pytest
import soundfile as sf
from conftest import PROMPTS, ZH_PROMPT_TEXT

from pipeline.engines.cosyvoice3.modes import check_request, instruct_text
from pipeline.engines.cosyvoice3.tags import check_tags
from pipeline.engines.cosyvoice3.tts import CosyVoiceRK
from pipeline.shared.errors import InputError
from pipeline.shared.text import SYSTEM_PREFIX, normalize
from pipeline.worker import Worker, WorkerConfig

PROMPT = PROMPTS / "zero_shot_prompt.wav"
TEXT = "Привет! Это мой голос."
HAPPY = "Please say a sentence very happily."


# ------------------------------------------------------------------------------------ no model
@pytest.mark.parametrize("typed", [HAPPY, f"  {HAPPY} ", f"You are a helpful assistant. {HAPPY}<|endofprompt|>",
                                   f"You are a helpful assistant.{HAPPY}", f"{HAPPY}<|endofprompt|>"])
def test_instruction_gets_cosyvoice3s_form_once(typed):
    assert instruct_text(typed) == f"You are a helpful assistant. {HAPPY}<|endofprompt|>"


@pytest.mark.parametrize("bad, msg", [(None, "instruction is empty"), ("  ", "instruction is empty"),
                                      ("You are a helpful assistant.<|endofprompt|>", "instruction is empty"),
                                      ("a <|im_start|> b", "may not contain <|…|> markup"),
                                      ("x" * 301, "301 characters, the limit is 300")])
def test_bad_instructions_are_refused_with_the_reason(bad, msg):
    with pytest.raises(InputError, match=msg.replace("|", r"\|")):
        instruct_text(bad)


def test_request_checks():
    assert check_request("instruct", HAPPY, 1.5) == ("instruct2", HAPPY, 1.5)
    assert check_request("cross-lingual", None, "2") == ("cross_lingual", None, 2.0)
    with pytest.raises(InputError, match="used only in the instruct mode"):
        check_request("zero_shot", HAPPY, 1.0)  # never silently dropped
    for speed in (0, 10, 0.49, "fast"):
        with pytest.raises(InputError, match="speed must be"):
            check_request("zero_shot", None, speed)


KNOWN = "[breath]Раз [laughter] <strong>два</strong>, [quick_breath] <laughter>три</laughter> [sigh][cough][noise]"


@pytest.mark.parametrize("lang, text", [("ru", f"{KNOWN} 15 книг."), ("en", f"{KNOWN} 15 books."),
                                        ("zh", f"{KNOWN}十五本书。[j][ǐ]"), ("ja", f"{KNOWN}十五冊。")])
def test_known_tags_pass_the_normalizer_untouched(lang, text):
    out = normalize(text, lang)
    for tag in ("[breath]", "[laughter]", "<strong>два</strong>", "[quick_breath]", "<laughter>три</laughter>",
                "[sigh][cough][noise]"):
        assert tag in out, (lang, out)
    assert "15" not in out  # the text around the tags is still normalised
    check_tags(text)


@pytest.mark.parametrize("text, msg", [
    ("Раз [whisper] два", r"unknown tag \[whisper\]: the tags CosyVoice3 knows are \[breath\]"),
    ("Раз [Breath] два", r"unknown tag \[Breath\]: tags are lowercase: write \[breath\]"),
    ("a <b>bold</b> word", "unknown tag <b>"),
    ("Раз <strong>два три.", "<strong> is opened but not closed: add </strong>"),
    ("Раз два</laughter> три.", "</laughter> closes nothing"),
    ("<strong>a <laughter>b</strong> c</laughter>", "</strong> comes while <laughter> inside its span is still open"),
])
def test_unknown_or_unbalanced_tags_are_refused(text, msg):
    with pytest.raises(InputError, match=msg):
        check_tags(text)


def test_bracketed_numbers_and_comparisons_are_text():
    check_tags("См. [1] и [2024]; a < b > c")


# ------------------------------------------------------------------------------------ CosyVoiceRK
@pytest.fixture(scope="module")
def tts(random_bundle, tmp_path_factory):
    with CosyVoiceRK(random_bundle, speakers_dir=tmp_path_factory.mktemp("spk"), n_threads=1) as t:
        t.add_voice("Анна", PROMPT, ZH_PROMPT_TEXT, language="zh")
        yield t


@pytest.fixture
def calls(tts, monkeypatch):
    """What the engine is asked for: (text ids, LLM prompt text ids, mode, speed, prefix state given)."""
    seen = []
    real = tts.engine.synthesize

    def spy(text_ids, prompt_text_ids, prompt, **kw):
        seen.append((list(text_ids), list(prompt_text_ids), kw.get("mode"), kw.get("speed"), kw.get("prefix_state")))
        return real(text_ids, prompt_text_ids, prompt, **kw)

    monkeypatch.setattr(tts.engine, "synthesize", spy)
    return seen


def _speak(tts, voice, **kw):
    """``create`` with the first seed that gives speech tokens (random weights stop at once for some seeds)."""
    for seed in [1, *range(100, 130)]:
        try:
            return tts.create(TEXT, voice, language="ru", seed=seed, stream=False, **kw), seed
        except InputError as e:
            if "no speech tokens" not in str(e):
                raise
    raise AssertionError("no seed gives speech")


def test_each_mode_gives_the_llm_its_prompt_text_with_a_saved_voice(tts, calls):
    saved = tts.load_voice("Анна")
    enc = tts.tokenizer.encode
    for mode, instruct, want in (("zero_shot", None, saved.prompt_ids),
                                 ("cross_lingual", None, enc(SYSTEM_PREFIX)),
                                 ("instruct", HAPPY, enc(f"You are a helpful assistant. {HAPPY}<|endofprompt|>"))):
        calls.clear()
        (audio, sr), _ = _speak(tts, "Анна", mode=mode, instruct=instruct)
        assert len(audio) and sr == 24000
        text_ids, prompt_ids, m, speed, prefix = calls[-1]
        assert prompt_ids == want, mode  # instruct with a saved voice keeps the instruction (upstream drops it)
        assert m == {"instruct": "instruct2"}.get(mode, mode) and speed == 1.0
        assert (prefix is not None) == (mode == "zero_shot")  # the cached prefix holds the transcript


def test_a_voice_without_transcript_speaks_cross_lingual_and_instruct_only(tts, calls):
    bare = tts.voice_from_audio(PROMPT, None)
    assert bare.prompt_ids == [] and bare.transcript == ""
    _speak(tts, bare, mode="cross_lingual")
    _, seed = _speak(tts, bare, mode="instruct", instruct="请用广东话表达。")
    # the streaming engine takes the modes too (here it streams: more than one chunk for the part)
    chunks = list(tts.create_chunks(TEXT, bare, language="ru", seed=seed, mode="instruct", instruct="请用广东话表达。"))
    assert len(chunks) > 1 and chunks[-1].segment_result.result.stats.get("chunks")
    with pytest.raises(InputError, match="zero_shot needs the words of the prompt recording"):
        tts.create(TEXT, bare, language="ru")
    # the system prefix typed into cross-lingual text (upstream's example form) is not doubled
    calls.clear()
    with contextlib.suppress(InputError):
        tts.create(SYSTEM_PREFIX + "[breath]Привет.[breath]", bare, language="ru", seed=1, mode="cross_lingual",
                   stream=False)
    assert calls and calls[-1][1] == [] and calls[-1][0][:len(tts.tokenizer.encode(SYSTEM_PREFIX))] == \
        tts.tokenizer.encode(SYSTEM_PREFIX)


def test_speed_resamples_and_a_streamed_request_says_it_is_made_whole(tts):
    (a1, _), seed = _speak(tts, "Анна")
    notes = []
    a15 = np.concatenate([c.audio for c in tts.create_chunks(
        TEXT, "Анна", language="ru", seed=seed, speed=1.5, stream=True,
        on_progress=lambda stage, info: notes.append(info["message"]) if stage == "note" else None)])
    assert len(a15) == 480 * int(len(a1) // 480 / 1.5)  # the same tokens, the mel resampled
    assert tts.streams and notes == ["speed 1.5: made without streaming (speed resamples each whole part, as "
                                     "upstream does only without streaming); each part is heard when it is done"]
    whole, _ = tts.create(TEXT, "Анна", language="ru", seed=seed, speed=1.5, stream=False)
    assert np.array_equal(whole, a15)


@pytest.mark.parametrize("kw, msg", [({"speed": 0}, "speed must be"), ({"speed": 10}, "speed must be"),
                                     ({"mode": "instruct", "instruct": " "}, "instruction is empty"),
                                     ({"mode": "sft"}, "unknown mode 'sft'"),
                                     ({"instruct": HAPPY}, "used only in the instruct mode")])
def test_bad_requests_are_refused_before_the_engine_runs(tts, calls, kw, msg):
    with pytest.raises(InputError, match=msg):
        next(tts.create_chunks(TEXT, "Анна", language="ru", **kw))
    assert calls == []


def test_tags_reach_the_llm_as_their_token(tts, calls):
    _speak_text = "Раз [breath] <strong>два</strong>."
    with contextlib.suppress(InputError):
        tts.create(_speak_text, "Анна", language="ru", seed=1, stream=False)
    ids = calls[-1][0]
    for tag in ("[breath]", "<strong>", "</strong>"):
        assert tts.tokenizer.encode(tag)[0] in ids and len(tts.tokenizer.encode(tag)) == 1
    with pytest.raises(InputError, match="<strong> is opened but not closed"):
        tts.create("Раз <strong>два.", "Анна", language="ru")


# ------------------------------------------------------------------------------------ worker and say
def test_worker_speak_payload_mode_instruct_speed(random_bundle, tts, tmp_path):
    (_, _), seed = _speak(tts, "Анна", mode="instruct", instruct=HAPPY)
    (_, _), cl_seed = _speak(tts, "Анна", mode="cross_lingual")  # the one-off below has the same features
    w = Worker(WorkerConfig(str(random_bundle.root), str(tts.store.root), n_threads=1))
    try:
        assert w.wait_ready(120) == "ready", w.last_error
        job = w.submit("speak", {"text": TEXT, "voice": "Анна", "language": "ru", "seed": seed, "mode": "instruct",
                                 "instruct": HAPPY, "speed": 1.5})
        events = list(job.events_until_done())
        done = events[-1]
        assert done["type"] == "done", done
        notes = [e["message"] for e in events if e["type"] == "note"]
        assert len(notes) == 1 and notes[0].startswith("speed 1.5: made without streaming")
        assert done["result"]["stream"] is False and done["result"]["notes"]
        bad = w.submit("speak", {"text": TEXT, "voice": "Анна", "mode": "instruct", "instruct": ""}).wait(60)
        assert bad["type"] == "error" and bad["message"].startswith("the instruction is empty")
        one_off = w.submit("speak", {"text": TEXT, "prompt": {"audio": PROMPT.read_bytes(), "language": "zh"},
                                     "mode": "cross_lingual", "seed": cl_seed, "speed": None}).wait(60)
        assert one_off["type"] == "done", one_off  # no transcript needed; speed None is the default
    finally:
        w.close()


def _say(*args):
    from pipeline.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["say", *map(str, args)])
    return rc, err.getvalue()


def test_say_modes_speed_and_refusals(random_bundle, tts, tmp_path):
    (_, _), seed = _speak(tts, "Анна", mode="cross_lingual")
    out = tmp_path / "x.wav"
    common = ["--bundle", random_bundle.root, "--speakers-dir", tts.store.root, "--threads", "1", "--text", TEXT,
              "--language", "ru", "-o", out]
    rc, log = _say(*common, "--prompt-wav", PROMPT, "--mode", "cross_lingual", "--speed", "1.5", "--seed", seed)
    assert rc == 0, log
    assert "note: speed 1.5: made without streaming" in log and sf.info(out).samplerate == 24000
    for extra, msg in ((["--speaker", "Анна", "--speed", "0"], "speed must be from 0.5 to 2.0"),
                       (["--speaker", "Анна", "--mode", "instruct"], "the instruction is empty"),
                       (["--speaker", "Анна", "--instruct", HAPPY], "used only in the instruct mode"),
                       # zero_shot without --prompt-text transcribes the prompt: here there is no ASR model
                       (["--prompt-wav", PROMPT, "--asr-dir", tmp_path / "no-asr"],
                        "get it with ./cv download --asr; or give --prompt-text TEXT")):
        rc, log = _say(*common, *extra)
        assert rc != 0 and msg in log, log
    rc, log = _say(*[a if a != TEXT else "Раз <strong>два." for a in common], "--speaker", "Анна")
    assert rc != 0 and "<strong> is opened but not closed" in log
