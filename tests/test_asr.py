"""Automatic prompt transcription (pipeline/shared/asr.py) with the tiny random models of
pipeline/shared/asr_testmodels.py, which
have the real models' files and signatures: onnx-asr's loading, preprocessing and decoding run as with the real
ones. The texts are random; what is checked is the routing by language, the wiring, and our own parts (Whisper's
language detection, resampling) against independent references."""

import json
import re
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
from conftest import PROMPTS

from pipeline.shared.asr import (
    ASR_RATE,
    MANIFEST,
    AsrError,
    AsrMissing,
    language_tokens,
    load_transcriber,
    to_asr_audio,
    transcribe_bytes,
)
from pipeline.shared.asr_testmodels import make_test_asr, read_vocab_text
from pipeline.shared.errors import CosyVoiceRKError

PROMPT = PROMPTS / "zero_shot_prompt.wav"


@pytest.fixture(scope="module")
def transcriber(test_asr):
    return load_transcriber(test_asr)


@pytest.fixture(scope="module")
def prompt():
    audio, sr = sf.read(PROMPT, dtype="float32")
    return audio, sr


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_language_picks_the_model(transcriber, prompt, test_asr):
    audio, sr = prompt
    ru = transcriber.recognize(audio, sr, "ru")
    en = transcriber.recognize(audio, sr, "en")
    assert ru.model == "gigaam-v3-e2e-ctc" and ru.language == "ru" and not ru.detected
    assert en.model == "whisper-base" and en.language == "en" and not en.detected
    assert ru.text and set(ru.text) <= set("абвгдеёжзийклмнопрстуфхцчшщъыьэюя,.Д ")
    assert en.text and set(en.text) <= read_vocab_text(test_asr / "whisper-base")
    assert transcriber.transcribe(audio, sr, "ru") == ru.text  # the API other code uses
    auto = transcriber.recognize(audio, sr, "auto")
    assert auto.detected and auto.language == transcriber.detect_language(to_asr_audio(audio, sr))
    assert auto.model == ("gigaam-v3-e2e-ctc" if auto.language == "ru" else "whisper-base")
    assert transcriber.recognize(audio, sr, None) == auto


def test_any_rate_and_channels_are_resampled_to_16k(transcriber, prompt):
    audio, sr = prompt
    assert sr != ASR_RATE
    import soxr

    at16 = soxr.resample(audio, sr, ASR_RATE).astype(np.float32)
    assert transcriber.transcribe(audio, sr, "ru") == transcriber.transcribe(at16, ASR_RATE, "ru")
    stereo = np.stack([audio, audio], axis=1)
    assert transcriber.transcribe(stereo, sr, "ru") == transcriber.transcribe(audio, sr, "ru")


def _ctc_reference(folder, audio16):
    """GigaAM's pipeline written out independently: onnx-asr's features, the ONNX model run directly, greedy CTC
    (collapse repeats, drop blanks), sentencepiece ▁ → space."""
    from onnx_asr.preprocessors.numpy_preprocessor import GigaamPreprocessorNumpy

    feats, lens = GigaamPreprocessorNumpy("gigaam_v3")(audio16[None], np.array([len(audio16)], np.int64))
    sess = ort.InferenceSession(str(folder / "v3_e2e_ctc.int8.onnx"), providers=["CPUExecutionProvider"])
    (logp,) = sess.run(["log_probs"], {"features": feats, "feature_lengths": lens})
    vocab = {}
    for line in (folder / "v3_e2e_ctc_vocab.txt").read_text(encoding="utf-8").splitlines():
        tok, i = line.rsplit(" ", 1)
        vocab[int(i)] = tok
    blank = next(i for i, tok in vocab.items() if tok == "<blk>")
    n = int((lens[0] - 1) // 4 + 1)
    ids = logp[0, :n].argmax(-1)
    out, prev = [], None
    for i in ids:
        if i != prev and i != blank:
            out.append(vocab[int(i)])
        prev = i
    return " ".join("".join(out).replace("\u2581", " ").split())


def test_gigaam_text_matches_an_independent_ctc_decoding(transcriber, prompt, test_asr):
    audio, sr = prompt
    ref = _ctc_reference(test_asr / "gigaam-v3-e2e-ctc", to_asr_audio(audio, sr))
    assert len(ref) > 5
    assert transcriber.transcribe(audio, sr, "ru") == ref


def _whisper_sessions(folder):
    so = ["CPUExecutionProvider"]
    return (ort.InferenceSession(str(folder / "onnx" / "encoder_model.onnx"), providers=so),
            ort.InferenceSession(str(folder / "onnx" / "decoder_model_merged.onnx"), providers=so))


def _whisper_logits(dec, enc_out, ids):
    """The decoder without its cache (use_cache_branch false: the whole sequence each step)."""
    feeds = {"input_ids": np.array([ids], np.int64), "encoder_hidden_states": enc_out,
             "use_cache_branch": np.array([False])}
    for x in dec.get_inputs():
        if x.name.startswith("past_key_values."):
            feeds[x.name] = np.zeros((1, x.shape[1], 0, x.shape[3]), np.float32)
    return dec.run(["logits"], feeds)[0][0, -1]


def test_whisper_language_detection_and_text_match_an_independent_loop(transcriber, prompt, test_asr):
    from onnx_asr.preprocessors.numpy_preprocessor import WhisperPreprocessorNumpy

    folder = test_asr / "whisper-base"
    audio16 = to_asr_audio(*prompt)
    tokens = json.loads((folder / "vocab.json").read_text()) | json.loads((folder / "added_tokens.json").read_text())
    feats, _ = WhisperPreprocessorNumpy("whisper80")(audio16[None], np.array([len(audio16)], np.int64))
    enc, dec = _whisper_sessions(folder)
    (enc_out,) = enc.run(["last_hidden_state"], {"input_features": feats})
    sot, eot = tokens["<|startoftranscript|>"], tokens["<|endoftext|>"]
    logits = _whisper_logits(dec, enc_out, [sot])
    langs = {tok[2:-2]: i for tok, i in tokens.items() if tok[2:-2] in ("en", "zh", "de", "es", "ru", "ja", "fr")}
    assert language_tokens(tokens) == langs  # the specials (<|transcribe|> …) are not languages
    best = max(langs, key=lambda code: logits[langs[code]])
    assert transcriber.detect_language(audio16) == best

    texts = []
    for lang in ("en", "ja"):
        ids = [sot, tokens[f"<|{lang}|>"], tokens["<|transcribe|>"], tokens["<|notimestamps|>"]]
        while len(ids) < 448 and ids[-1] != eot:
            ids.append(int(_whisper_logits(dec, enc_out, ids).argmax()))
        inv = {i: tok for tok, i in tokens.items()}
        text = "".join(inv[i] for i in ids[4:] if not inv[i].startswith("<|")).replace("\u0120", " ")
        assert ids[-1] == eot and len(text) > 3
        assert transcriber.transcribe(audio16, ASR_RATE, lang) == " ".join(text.split())
        texts.append(text)
    assert texts[0] != texts[1]  # the language token reaches the decoder


def test_a_language_no_model_covers_is_refused(transcriber, prompt):
    with pytest.raises(AsrError, match=r"no speech recognition model for language 'xx'.*covered: ru"):
        transcriber.transcribe(*prompt, "xx")


def test_bad_audio_is_refused(transcriber):
    with pytest.raises(AsrError, match="no samples"):
        transcriber.transcribe(np.zeros(0, np.float32), 16000)
    with pytest.raises(AsrError, match="invalid samples"):
        transcriber.transcribe(np.full(16000, np.nan, np.float32), 16000)
    with pytest.raises(AsrError, match="cannot be read"):
        transcribe_bytes(transcriber, b"not audio at all")


def test_without_the_model_the_message_says_how_to_get_it(tmp_path, test_asr):
    with pytest.raises(AsrMissing, match=r"not found in .*: get it with \./cv download --asr"):
        load_transcriber(tmp_path / "nothing")
    assert issubclass(AsrMissing, CosyVoiceRKError)
    part = tmp_path / "part"
    (part / "whisper-base").mkdir(parents=True)
    with pytest.raises(AsrMissing, match=r"incomplete \(asr.json is missing\): run \./cv download --asr again, "
                                         r"it resumes"):
        load_transcriber(part)
    bad = tmp_path / "bad"
    make_test_asr(bad)
    (bad / MANIFEST).write_text("{", encoding="utf-8")
    with pytest.raises(AsrMissing, match=r"asr.json cannot be read"):
        load_transcriber(bad)
    gone = tmp_path / "gone"
    make_test_asr(gone)
    (gone / "whisper-base" / "onnx" / "encoder_model.onnx").unlink()
    with pytest.raises(AsrMissing, match=r"whisper-base .* cannot be loaded .*get it again with \./cv download --asr"):
        load_transcriber(gone).transcribe(np.ones(16000, np.float32) * 0.1, 16000, "en")


def test_the_russian_page_says_it_in_russian(tmp_path):
    from webui.i18n import localize

    with pytest.raises(AsrMissing) as e:
        load_transcriber(tmp_path / "nothing")
    ru = localize(str(e.value), "ru")
    assert ru != str(e.value) and "./cv download --asr" in ru and "модель распознавания речи" in ru


def test_worker_transcribes_and_picks_up_a_model_downloaded_while_it_runs(random_bundle, tmp_path, transcriber):
    from pipeline.worker import Worker, WorkerConfig

    asr = tmp_path / "asr"
    w = Worker(WorkerConfig(str(random_bundle.root), str(tmp_path / "spk"), n_threads=1, asr_dir=str(asr)))
    try:
        assert w.wait_ready(120) == "ready", w.last_error
        data = PROMPT.read_bytes()
        final = w.submit("transcribe", {"audio": data, "language": "ru"}).wait(120)
        assert final["type"] == "error" and final["kind"] == "AsrMissing" and "download --asr" in final["message"]
        make_test_asr(asr)  # e.g. `download --asr` finished meanwhile: no restart needed
        final = w.submit("transcribe", {"audio": data, "language": "ru"}).wait(120)
        assert final["type"] == "done", final
        r = final["result"]
        assert r == {"text": transcriber.transcribe(*sf.read(PROMPT, dtype="float32"), "ru"), "language": "ru",
                     "model": "gigaam-v3-e2e-ctc", "detected": False}
        final = w.submit("transcribe", {"audio": data, "language": "auto"}).wait(120)
        assert final["type"] == "done" and final["result"]["detected"]
        assert w.status()["state"] == "ready"
    finally:
        w.close()


def test_speakers_add_and_say_without_prompt_text_transcribe(random_bundle, tmp_path, test_asr, transcriber):
    base = ["--bundle", random_bundle.root, "--speakers-dir", tmp_path / "spk", "--threads", "1"]
    expected = transcriber.transcribe(*sf.read(PROMPT, dtype="float32"), "ru")

    r = cli("speakers", "add", "Вера", "--prompt-wav", PROMPT, "--language", "ru", *base,
            "--asr-dir", tmp_path / "no-asr")
    assert r.returncode == 2 and "./cv download --asr" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "spk").exists() or not any((tmp_path / "spk").iterdir())  # nothing half-saved

    r = cli("speakers", "add", "Вера", "--prompt-wav", PROMPT, "--language", "ru", *base, "--asr-dir", test_asr)
    assert r.returncode == 0, r.stderr
    assert f"transcript (gigaam-v3-e2e-ctc, language ru): {expected}" in r.stderr
    preset = json.loads(next((tmp_path / "spk").glob("*/preset.json")).read_text(encoding="utf-8"))
    assert preset["transcript"] == expected

    # --language auto: the language Whisper detected is saved as the voice's
    r = cli("speakers", "add", "Ада", "--prompt-wav", PROMPT, "--language", "auto", *base, "--asr-dir", test_asr)
    assert r.returncode == 0, r.stderr
    detected = re.search(r"transcript \(\S+, detected language (\w+)\)", r.stderr).group(1)
    presets = [json.loads(p.read_text(encoding="utf-8")) for p in (tmp_path / "spk").glob("*/preset.json")]
    assert [p["language"] for p in presets if p["name"] == "Ада"] == [detected]

    out = tmp_path / "out.wav"
    for seed in (1, *range(100, 110)):  # random weights stop at once for some seeds
        r = cli("say", "--prompt-wav", PROMPT, "--text", "Привет!", "--language", "ru", "--seed", seed, "-o", out,
                *base, "--asr-dir", test_asr)
        if r.returncode == 0 or "no speech tokens" not in r.stderr:
            break
    assert r.returncode == 0, r.stderr
    assert f"transcript (gigaam-v3-e2e-ctc, language ru): {expected}" in r.stderr and out.is_file()

    r = cli("say", "--prompt-wav", PROMPT, "--text", "Привет!", "--mode", "cross_lingual", "-o", out, *base,
            "--asr-dir", tmp_path / "no-asr")  # needs no transcript: none is made, no model needed
    assert "transcript (" not in r.stderr and "download --asr" not in r.stderr
