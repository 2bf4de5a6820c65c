"""The Qwen3-TTS engine end to end: verify on the fixture, the converter's bundle, cloning and speech through the
engines' interface, the worker, and the CLI (download from a fake hub, make-random-bundle, say)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROMPTS, ZH_PROMPT_TEXT
from fake_hub import FakeHub

from pipeline.engines import open_tts
from pipeline.engines.base import TTSEngine
from pipeline.shared.errors import Cancelled, InputError
from pipeline.shared.presets import SpeakerStore
from pipeline.worker import Worker, WorkerConfig

Q3 = Path(__file__).parent / "fixtures" / "tiny-qwen3-tts"
PROMPT = PROMPTS / "zero_shot_prompt.wav"


def cli(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def q3_bundle(tmp_path_factory):
    from pipeline.engines.qwen3_tts.convert.bundle_writer import convert_qwen3_checkpoint

    return convert_qwen3_checkpoint(Q3, tmp_path_factory.mktemp("q3") / "bundle", quants=["f32", "q8_0"],
                                    log=lambda m: None)


@pytest.fixture(scope="module")
def tts(q3_bundle, tmp_path_factory):
    with open_tts(q3_bundle, speakers_dir=tmp_path_factory.mktemp("spk"), n_threads=1) as t:
        yield t


def test_verify_passes_on_the_fixture_and_fails_on_a_changed_golden(tmp_path):
    r = cli("verify", "--checkpoint", Q3, "--goldens", Q3 / "goldens.npz", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    stages = {s["stage"] for s in report["stages"]}
    assert {"prompt_codes", "speaker_embedding", "prefill_rows", "talker_tf_logits", "cp_greedy_codes",
            "greedy_codes", "decoder_wav", "voice_clone_wav"} <= stages
    with np.load(Q3 / "goldens.npz") as z:
        g = {k: z[k] for k in z.files}
    g["talker_tf_logits"] = g["talker_tf_logits"].copy()
    g["talker_tf_logits"][3, 7] += 2e-3  # twice the tolerance, on one value
    g["greedy_code0"] = g["greedy_code0"].copy()
    g["greedy_code0"][-1] = (g["greedy_code0"][-1] + 1) % 2048
    np.savez(tmp_path / "bad.npz", **g)
    r = cli("verify", "--checkpoint", Q3, "--goldens", tmp_path / "bad.npz", "--json")
    assert r.returncode == 1
    failed = [s["stage"] for s in json.loads(r.stdout)["stages"] if not s["passed"]]
    assert failed == ["talker_tf_logits", "greedy_code0"]


def test_the_bundle_names_its_engine_and_opens_behind_the_interface(q3_bundle, tts):
    assert q3_bundle.engine == "qwen3-tts" and q3_bundle.manifest["lm"]["default_quant"] == "q8_0"
    assert isinstance(tts, TTSEngine)
    caps = tts.capabilities
    assert caps.engine == "qwen3-tts" and caps.modes == ("zero_shot", "cross_lingual") and not caps.speed
    assert tts.sample_rate == 24000 and tts.quant == "q8_0"


def test_a_voice_is_cloned_saved_with_its_engine_and_speaks(tts):
    p, info = tts.add_voice("Ли", PROMPT, ZH_PROMPT_TEXT, language="zh")
    assert p.meta["engine"] == "qwen3-tts" and info["duration"] > 3
    v = tts.load_voice("Ли")
    assert v.features.codes.shape[1] == 16 and v.features.embedding.shape == (16,) and not v.warnings
    a1, sr = tts.create("Hello world. This is a test.", "Ли", language="en", seed=5)
    a2, _ = tts.create("Hello world. This is a test.", "Ли", language="en", seed=5)
    assert sr == 24000 and np.array_equal(a1, a2) and len(a1) > 0 and np.isfinite(a1).all()
    segs = list(tts.create_stream("Hello world. This is a test.", "Ли", language="en", seed=5))
    assert all(len(s.audio) % 1920 in (0, 1919) for s in segs)  # whole frames (the ICL cut may take one sample)
    x, _ = tts.create("Привет!", "Ли", language="ru", seed=1, mode="cross_lingual")
    assert len(x) % 1920 == 0 and len(x) > 0  # x-vector mode: no prompt cut


@pytest.mark.parametrize("kw,match", [
    ({"mode": "instruct2", "instruct": "softly"}, "CosyVoice3's"),
    ({"speed": 1.5}, "no speed control"),
    ({"temperature": 5.0}, "temperature 5.0 is out of range"),
])
def test_what_qwen3_tts_lacks_is_refused_by_name(tts, kw, match):
    with pytest.raises(InputError, match=match):
        list(tts.create_chunks("Hello.", tts.voice_from_audio(PROMPT, ZH_PROMPT_TEXT), language="en", **kw))


def test_control_tags_are_refused_not_read(tts):
    with pytest.raises(InputError, match=r"no control tags \(\[breath\]"):
        tts.create("Hello [breath] world.", tts.voice_from_audio(PROMPT, ZH_PROMPT_TEXT), language="en")


def test_cancel_stops_a_segment_while_it_is_made(tts):
    v = tts.voice_from_audio(PROMPT, ZH_PROMPT_TEXT)
    frames: list[int] = []

    def progress(stage, info):
        if stage == "tokens":
            frames.append(info["n"])

    with pytest.raises(Cancelled, match="stopped after 2 frames"):
        tts.create("Hello world, this is a long test sentence.", v, language="en", seed=1, on_progress=progress,
                   should_stop=lambda: len(frames) >= 2)
    assert frames == [1, 2]


def test_the_registry_says_what_qwen3_tts_offers(tts):
    from pipeline.engines import ENGINES

    caps, info = tts.capabilities, ENGINES["qwen3-tts"]
    assert (caps.modes, caps.speed, caps.tags) == (info.modes, info.speed, info.tags)


def test_language_temperature_and_the_frame_cap_reach_the_talker(tts, monkeypatch):
    from pipeline.engines.qwen3_tts.tts import max_frames

    seen = {}
    prompt, generate = tts.lm.prompt, tts.lm.generate
    def spy(name, fn):
        def call(*a, **kw):
            seen[name] = kw
            return fn(*a, **kw)
        return call

    monkeypatch.setattr(tts.lm, "prompt", spy("prompt", prompt))
    monkeypatch.setattr(tts.lm, "generate", spy("generate", generate))
    tts.create("Привет!", tts.voice_from_audio(PROMPT, ZH_PROMPT_TEXT), language="ru", seed=1, temperature=0.5)
    assert seen["prompt"]["language"] == "russian"
    assert seen["generate"]["temperature"] == pytest.approx(0.5 * 0.9)  # scales the checkpoint's 0.9
    n_tokens = len(tts.lm.tokens.encode("Привет!"))
    assert seen["generate"]["max_new_tokens"] == max_frames(n_tokens, 8192) == 15 * n_tokens + 50
    assert max_frames(1000, 8192) == 8192  # never above the checkpoint's own limit
    # the talker's context holds the longest segment's prefill and frame cap
    from pipeline.engines.qwen3_tts.voice import talker_context
    from pipeline.shared.text import HARD_MAX_TOKENS

    assert tts.lm.talker.n_ctx == talker_context(HARD_MAX_TOKENS) >= 256 + max_frames(HARD_MAX_TOKENS, 8192)


def test_a_cosyvoice3_voice_is_recomputed_for_qwen3_tts(tts):
    p, _ = tts.add_voice("Other", PROMPT, ZH_PROMPT_TEXT, language="zh")
    meta = json.loads((p.path / "preset.json").read_text())
    meta.update(engine="cosyvoice3", bundle_fingerprint="cv3")
    (p.path / "preset.json").write_text(json.dumps(meta))
    np.savez(p.path / "features.npz", speech_tokens=np.arange(10), mel=np.zeros((20, 80), np.float32),
             embedding=np.zeros(192, np.float32))
    v = tts.load_voice("Other")
    assert v.features.codes.shape[1] == 16 and not v.warnings
    assert SpeakerStore(tts.store.root).load("Other").engine == "qwen3-tts"


def test_the_worker_runs_a_qwen3_tts_bundle(q3_bundle, tmp_path):
    w = Worker(WorkerConfig(str(q3_bundle.root), str(tmp_path / "spk"), n_threads=1), max_queue=2)
    try:
        assert w.wait_ready(120) == "ready", w.last_error
        assert w.status()["bundle"]["quant"] == "q8_0"
        job = w.submit("add_voice", {"name": "Ann", "audio": PROMPT.read_bytes(), "transcript": ZH_PROMPT_TEXT,
                                     "language": "zh"})
        assert job.wait(120)["type"] == "done"
        final = w.submit("speak", {"text": "Hello there.", "voice": "Ann", "language": "en", "seed": 3}).wait(300)
        assert final["type"] == "done", final
        assert final["result"]["segments"] == 1 and final["result"]["duration"] > 0
        bad = w.submit("speak", {"text": "Hi.", "voice": "Ann", "language": "en", "mode": "instruct",
                                 "instruct": "softly"}).wait(120)
        assert bad["type"] == "error" and "Qwen3-TTS" in bad["message"]
    finally:
        w.close()


def test_download_fetches_only_the_needed_files(tmp_path):
    from pipeline.engines.qwen3_tts.download import NEEDED_FILES, REPO_ID

    with FakeHub(Q3, REPO_ID) as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HUB_ETAG_TIMEOUT="30")
        r = cli("download", "--engine", "qwen3-tts", tmp_path / "ckpt", env=env)
    assert r.returncode == 0, r.stderr
    got = sorted(str(p.relative_to(tmp_path / "ckpt")) for p in (tmp_path / "ckpt").rglob("*")
                 if p.is_file() and ".cache" not in p.parts)
    assert got == sorted(NEEDED_FILES)
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == (Q3 / "model.safetensors").read_bytes()


def test_cosyvoice3_options_are_refused_for_qwen3_tts(tmp_path):
    r = cli("convert", Q3, tmp_path / "b", "--rknn", "rk3588")
    assert r.returncode != 0 and "--rknn: CosyVoice3 options" in r.stderr


def test_cli_saves_a_voice_and_speaks_with_a_qwen3_tts_bundle(q3_bundle, tmp_path):
    common = ["--bundle", q3_bundle.root, "--speakers-dir", tmp_path / "spk", "--threads", 1]
    r = cli("speakers", "add", "Ли", *common, "--prompt-wav", PROMPT, "--prompt-text", ZH_PROMPT_TEXT,
            "--language", "zh")
    assert r.returncode == 0, r.stderr
    assert SpeakerStore(tmp_path / "spk").load("Ли").engine == "qwen3-tts"
    r = cli("say", *common, "--speaker", "Ли", "--text", "Привет!", "--language", "ru", "--seed", 2,
            "-o", tmp_path / "out.wav")
    assert r.returncode == 0, r.stderr
    import soundfile as sf

    audio, sr = sf.read(tmp_path / "out.wav")
    assert sr == 24000 and len(audio) > 0
    r = cli("say", *common, "--speaker", "Ли", "--text", "Привет!", "--language", "ru", "--speed", 1.5,
            "-o", tmp_path / "fast.wav")
    assert r.returncode != 0 and "no speed control" in r.stderr
