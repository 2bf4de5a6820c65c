"""Voices in, speech out on a tiny random bundle: `say`, presets on disk, the `speakers` command."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import PROMPTS, ZH_PROMPT_TEXT

from pipeline.engines.cosyvoice3.tts import CosyVoiceRK
from pipeline.shared.errors import InputError, PresetError
from pipeline.shared.presets import SpeakerStore, slugify

RU_TEXT = "Привет! В 2024 году мы записали 15 песен."
PROMPT = PROMPTS / "zero_shot_prompt.wav"


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tts(random_bundle, tmp_path_factory):
    with CosyVoiceRK(random_bundle, speakers_dir=tmp_path_factory.mktemp("spk"), n_threads=1) as t:
        yield t


def test_random_bundle_is_marked_and_complete(random_bundle):
    m = random_bundle.manifest
    assert m["random_weights"] is True and m["random"]["size"] == "tiny"
    assert m["frontend"]["tokenizer"] == "tokenizer.json"
    assert m["frontend"]["campplus"] and m["frontend"]["speech_tokenizer"]
    assert m["constants"]["endofprompt_id"] == 151646
    assert m["llm"]["dims"]["text_vocab"] == 151936


def test_say_russian_with_one_off_prompt_is_deterministic(random_bundle, tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"out{i}.wav"
        r = cli("say", "--bundle", random_bundle.root, "--speakers-dir", tmp_path / "spk", "--prompt-wav", PROMPT,
                "--prompt-text", ZH_PROMPT_TEXT, "--text", RU_TEXT, "--language", "ru", "--seed", 3,
                "--threads", 1, "-o", out)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    audio, sr = sf.read(tmp_path / "out0.wav")
    assert sr == 24000
    # random weights: length is bounded by upstream's rule max_len = 20 × text tokens (+ segment joins)
    assert 0.04 < len(audio) / sr < 60
    assert outs[0] == outs[1]
    assert "RTF" in r.stderr


def test_fast_flow_is_opt_in_and_says_so(random_bundle, tmp_path):
    base = ["say", "--bundle", random_bundle.root, "--speakers-dir", tmp_path / "spk", "--prompt-wav", PROMPT,
            "--prompt-text", ZH_PROMPT_TEXT, "--text", RU_TEXT, "--language", "ru", "--seed", 3, "--threads", 1]
    r = cli(*base, "--flow-fast", "--flow-steps", 4, "-o", tmp_path / "fast.wav")
    assert r.returncode == 0, r.stderr
    assert "fast mode asked for (INT8 estimator" in r.stderr and "flow: 4 Euler steps asked for" in r.stderr
    assert sf.info(tmp_path / "fast.wav").samplerate == 24000
    r = cli(*base, "--flow-fast", "--flow-backend", "rknn", "-o", tmp_path / "x.wav")
    assert r.returncode == 2 and "cannot be combined with --flow-backend rknn" in r.stderr
    r = cli(*base, "--flow-fast", "--npu-cores", "7", "-o", tmp_path / "x.wav")
    assert r.returncode == 2 and "NPU core mask '7'" in r.stderr
    r = cli(*base, "--flow-steps", 0, "-o", tmp_path / "x.wav")
    assert r.returncode == 2 and "at least 1 Euler step" in r.stderr
    assert not (tmp_path / "x.wav").exists()
    with CosyVoiceRK(random_bundle, speakers_dir=tmp_path / "spk", n_threads=1, flow_steps=3) as t:
        assert t.engine.flow.n_timesteps == 3 and t.placement["flow_steps"] == 3
        assert t.engine.flow.estimator.path.name == "flow_estimator.fused.onnx"


def test_presets_survive_a_restart(random_bundle, tmp_path):
    spk = tmp_path / "spk"
    with CosyVoiceRK(random_bundle, speakers_dir=spk, n_threads=1) as t:
        p, info = t.add_voice("Анна Петрова", PROMPT, ZH_PROMPT_TEXT, language="zh")
        assert p.slug == "анна-петрова" and (spk / p.slug / "llm_prefix.bin").is_file()
        assert info["prompt_tokens"] > 0
        a, sr = t.create("Раз, два, три.", voice="Анна Петрова", language="ru", seed=5)
    with CosyVoiceRK(random_bundle, speakers_dir=spk, n_threads=1) as t:  # "restart"
        v = t.load_voice("Анна Петрова")
        assert v.prefix_state is not None
        b, _ = t.create("Раз, два, три.", voice=v, language="ru", seed=5)
    assert np.array_equal(a, b)


def test_cached_prefix_equals_full_prefill(tts):
    v = tts.voice_from_audio(PROMPT, ZH_PROMPT_TEXT, language="zh")
    assert v.prefix_state is None
    a = [s.result.tokens for s in tts.create_stream("Один. Два.", v, language="ru", seed=11)]
    v.prefix_state = tts.engine.prompt_prefix_state(v.prompt_ids)
    b = [s.result.tokens for s in tts.create_stream("Один. Два.", v, language="ru", seed=11)]
    assert a == b


def test_preset_from_another_bundle_is_recomputed(tts):
    p, _ = tts.add_voice("stale", PROMPT, ZH_PROMPT_TEXT, language="zh")
    meta_path = p.path / "preset.json"
    meta = json.loads(meta_path.read_text())
    meta["bundle_fingerprint"] = "another-bundle"
    meta_path.write_text(json.dumps(meta))
    np.savez(p.path / "features.npz", speech_tokens=np.zeros(3, np.int64), mel=np.zeros((6, 80), np.float32),
             embedding=np.zeros(192, np.float32))
    v = tts.load_voice("stale")
    assert len(v.features.speech_tokens) > 3
    assert json.loads(meta_path.read_text())["bundle_fingerprint"] == tts.bundle.fingerprint


def test_corrupt_preset_is_reported_and_left_alone(tts):
    tts.add_voice("good", PROMPT, ZH_PROMPT_TEXT, language="zh")
    bad = tts.store.root / "broken"
    bad.mkdir()
    (bad / "preset.json").write_text("{oops")
    listed = {v["slug"]: v for v in tts.store.list()}
    assert "error" in listed["broken"] and "corrupt" in listed["broken"]["error"]
    assert "error" not in listed["good"]
    with pytest.raises(PresetError, match="corrupt"):
        tts.load_voice("broken")
    assert (bad / "preset.json").read_text() == "{oops"


def test_rename_delete_export_import(tts, tmp_path):
    tts.add_voice("Exp", PROMPT, ZH_PROMPT_TEXT, language="zh")
    with pytest.raises(PresetError, match="'exp' is taken by the saved voice 'Exp'"):
        tts.add_voice("exp", PROMPT, ZH_PROMPT_TEXT)
    with pytest.raises(PresetError, match="a voice named 'Exp' already exists"):
        tts.add_voice("Exp", PROMPT, ZH_PROMPT_TEXT)
    new = tts.store.rename("Exp", "Exported voice")
    assert new == "exported-voice" and tts.store.load("Exported voice").name == "Exported voice"
    f = tts.store.export("Exported voice", tmp_path)
    assert f.suffix == ".cvvoice"
    tts.store.delete("Exported voice")
    with pytest.raises(PresetError, match="no voice named"):
        tts.store.load("Exported voice")
    p = tts.import_voice(f)
    assert p.name == "Exported voice" and p.prefix_state is not None
    with pytest.raises(PresetError, match="not a cosyvoice-rk voice file"):
        tts.import_voice(b"PK\x03\x04garbage")


def test_names_cannot_escape(tmp_path):
    store = SpeakerStore(tmp_path / "spk")
    assert slugify("../../etc/passwd") == "etc-passwd"
    assert "/" not in slugify("a/b") and not slugify("..").startswith(".")
    with pytest.raises(PresetError, match="empty"):
        slugify("   ")
    with pytest.raises(PresetError, match="at most 64"):
        slugify("x" * 65)
    with pytest.raises(PresetError):
        store._dir("../outside")


def test_bad_inputs_have_specific_messages(tts, tmp_path):
    v = tts.voice_from_audio(PROMPT, ZH_PROMPT_TEXT, language="zh")
    with pytest.raises(InputError, match="text is empty"):
        list(tts.create_stream("   ", v))
    with pytest.raises(InputError, match="unknown language 'de'"):
        list(tts.create_stream("Hallo", v, language="de"))
    with pytest.raises(InputError, match="transcript is empty"):
        tts.voice_from_audio(PROMPT, " ")
    txt = tmp_path / "notaudio.wav"
    txt.write_text("hello")
    with pytest.raises(InputError, match="not an audio file"):
        tts.add_voice("x", txt, "hello")
    with pytest.raises(InputError, match="13.7 s; cut it to 3–10 s"):
        tts.add_voice("long", PROMPTS / "cross_lingual_prompt.wav", "x")
    assert not tts.store.exists("x") and not tts.store.exists("long")


def test_cli_errors_are_messages(random_bundle, tmp_path):
    r = cli("say", "--bundle", tmp_path / "nope", "--speaker", "x", "--text", "hi", "-o", tmp_path / "o.wav")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = cli("say", "--bundle", random_bundle.root, "--speakers-dir", tmp_path, "--speaker", "nobody",
            "--text", "hi", "-o", tmp_path / "o.wav")
    assert r.returncode == 2 and "no voice named 'nobody'" in r.stderr
    # input errors come before the models load (the bundle here does not even exist)
    for args, msg in ((["--text", " "], "text is empty"), (["--text", "hi", "--language", "xx"], "unknown language"),
                      (["--text", "hi", "--temperature", "0"], "temperature must be a number > 0"),
                      (["--text", "hi", "--temperature", "nan"], "temperature must be a number > 0")):
        r = cli("say", "--bundle", tmp_path / "nope", "--speaker", "x", *args, "-o", tmp_path / "o.wav")
        assert r.returncode == 2 and msg in r.stderr and "does not exist" not in r.stderr, r.stderr
    # no --prompt-text: the prompt is transcribed, and without the ASR model that is said before the models load
    r = cli("say", "--bundle", tmp_path / "nope", "--prompt-wav", PROMPT, "--text", "hi", "-o", tmp_path / "o.wav",
            "--asr-dir", tmp_path / "no-asr")
    assert r.returncode == 2 and "./cv download --asr; or give --prompt-text TEXT" in r.stderr
    assert "does not exist" not in r.stderr
    r = cli("say", "--bundle", tmp_path / "nope", "--prompt-wav", tmp_path / "o.wav", "--prompt-text", "hi",
            "--text", "hi", "-o", tmp_path / "o.wav")
    assert r.returncode == 2 and "o.wav" in r.stderr and "does not exist" in r.stderr and "bundle" not in r.stderr
    add = ["speakers", "add", "Новый", "--speakers-dir", tmp_path / "spk", "--bundle", tmp_path / "nope"]
    r = cli(*add, "--prompt-wav", tmp_path / "missing.wav", "--prompt-text", "hi")
    assert r.returncode == 2 and "missing.wav does not exist" in r.stderr, r.stderr
    r = cli(*add, "--prompt-wav", PROMPT, "--prompt-text", " ")
    assert r.returncode == 2 and "transcript is empty" in r.stderr, r.stderr
    r = cli(*add, "--prompt-wav", PROMPT, "--prompt-text", "hi", "--language", "xx")
    assert r.returncode == 2 and "unknown language 'xx'" in r.stderr, r.stderr
    r = cli("speakers", "list", "--speakers-dir", tmp_path / "empty")
    assert r.returncode == 0 and "no voices" in r.stdout
