"""`cosyvoice-rk quality`: the metrics against hand-computed cases, the CER path with an injected transcriber, a
deliberately broken LLM scoring worse than an intact one, and the CLI's JSON having every documented field."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.cosyvoice3.quality import AsrStatus, QualityOptions, load_asr, load_sentences, run_quality
from pipeline.engines.cosyvoice3.quality_metrics import (
    cer,
    cosine,
    levenshtein,
    log_softmax,
    logprob_agreement,
    mel_distance,
    normalize_for_cer,
    token_agreement,
)
from pipeline.engines.cosyvoice3.quality_report import (
    ASR_FIELDS,
    BUNDLE_FIELDS,
    JSON_FIELDS,
    LLM_FIELDS,
    MEL_FIELDS,
    REFERENCE_FIELDS,
    SENTENCE_FIELDS,
    SENTENCE_SET_FIELDS,
    SETTING_FIELDS,
    VOICE_FIELDS,
    format_table,
)
from pipeline.shared.errors import BundleError, InputError

ROOT = Path(__file__).resolve().parents[1]
PROMPT = ROOT / "tests" / "fixtures" / "prompts" / "zero_shot_prompt.wav"
PROMPT_TEXT = "希望你以后能够做的比我还好呦。"


# --- metrics, by hand ------------------------------------------------------------------------------------------

def test_levenshtein_hand_cases():
    assert levenshtein("kitten", "sitting") == 3  # k→s, e→i, +g
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == 2  # -f, +n
    assert levenshtein("abc", "abc") == 0


def test_cer_hand_cases():
    assert cer("Привет, мир!", "привет мир") == 0.0  # case, punctuation and spaces do not count
    assert cer("Ёлка", "елка") == 0.0  # ё is read as е
    assert cer("abcd", "abxd") == 0.25  # 1 substitution / 4
    assert cer("abcd", "") == 1.0  # 4 deletions / 4
    assert cer("ab", "abcd") == 1.0  # 2 insertions / 2: it can reach and pass 1
    assert cer("今天天气很好。", "今天天汽很好") == pytest.approx(1 / 6)
    assert cer("Ｈｅｌｌｏ", "hello") == 0.0  # NFKC: full-width letters
    assert normalize_for_cer("Съешь же, ещё!") == "съешьжееще"
    with pytest.raises(ValueError, match="no characters"):
        cer("?!", "x")


def test_cosine_mel_token_and_logprob_metrics():
    assert cosine([1, 0], [1, 0]) == pytest.approx(1.0)
    assert cosine([1, 0], [0, 2]) == pytest.approx(0.0)
    assert cosine([1, 1], [-1, -1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cosine([0, 0], [1, 0])
    r = np.array([[3.0, 4.0]])
    assert mel_distance(r, r) == {"max_abs": 0.0, "mean_abs": 0.0, "rel_l2": 0.0}
    d = mel_distance(r, np.array([[3.0, 4.5]]))
    assert d == {"max_abs": 0.5, "mean_abs": 0.25, "rel_l2": pytest.approx(0.1)}  # 0.5 / ‖(3, 4)‖
    assert mel_distance(r, np.zeros((1, 3))) is None  # lengths differ: no frame-by-frame distance
    assert token_agreement([1, 2, 3, 4], [1, 2, 9, 4]) == (0.75, 2)
    assert token_agreement([1, 2], [1, 2, 3, 4]) == (0.5, 2)
    assert token_agreement([5, 6], [5, 6]) == (1.0, None)
    ref = log_softmax(np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    same = logprob_agreement(ref, ref, [0, 1])
    assert same == {"top1_agreement": 1.0, "kl_mean": 0.0, "logprob_delta_mean": 0.0}
    other = log_softmax(np.array([[0.0, 2.0, 0.0], [0.0, 1.0, 0.0]]))
    a = logprob_agreement(ref, other, [0])
    assert a["top1_agreement"] == 0.5
    p = np.exp(ref[0])
    assert a["kl_mean"] == pytest.approx(float((p * (ref[0] - other[0])).sum()) / 2)
    assert a["logprob_delta_mean"] == pytest.approx(abs(ref[0, 0] - other[0, 0]))


def test_sentence_set_is_russian_first_and_covers_the_frontend_languages():
    sentences, sha = load_sentences()
    assert sentences[0].language == "ru" and len(sha) == 64
    assert {s.language for s in sentences} == {"ru", "en", "zh", "ja"}
    assert not any(re.search(r"\d", s.text) for s in sentences)  # an ASR would write numbers its own way
    assert [s.language for s in load_sentences(["en"])[0]] == ["en", "en"]
    with pytest.raises(InputError, match="no xx sentences"):
        load_sentences(["xx"])


# --- the run -----------------------------------------------------------------------------------------------------

def _break_gguf(bundle_root: Path) -> None:
    """Add a "broken" LLM to the bundle: the F32 GGUF with every block weight drowned in noise as large as
    the weight itself, registered in the manifest (so the bundle still loads and passes its hash check)."""
    import gguf

    from pipeline.shared.bundle import file_entry

    src, dst = bundle_root / "llm-f32.gguf", bundle_root / "llm-broken.gguf"
    shutil.copyfile(src, dst)
    reader = gguf.GGUFReader(dst, "r+")
    rng = np.random.default_rng(1)
    damaged = 0
    for t in reader.tensors:
        if t.name.startswith("blk.") and t.tensor_type == gguf.GGMLQuantizationType.F32 and t.data.ndim == 2:
            t.data[...] += rng.standard_normal(t.data.shape).astype(np.float32) * float(t.data.std())
            damaged += 1
    assert damaged > 0
    del reader
    mpath = bundle_root / "manifest.json"
    m = json.loads(mpath.read_text())
    m["llm"]["gguf"]["broken"] = dst.name
    m["files"][dst.name] = file_entry(dst)
    mpath.write_text(json.dumps(m, indent=1))


@pytest.fixture(scope="module")
def qbundle(tmp_path_factory):
    """A tiny random bundle with F32, Q8_0 and a deliberately broken GGUF."""
    from pipeline.engines.cosyvoice3.convert.random_bundle import make_random_bundle

    out = tmp_path_factory.mktemp("quality") / "tiny"
    b = make_random_bundle(out, size="tiny", seed=0, quants=["f32", "q8_0"], hift_noise_seconds=30.0,
                           log=lambda m: None)
    _break_gguf(b.root)
    return b.root


class FakeTranscriber:
    """Stands in for pipeline.shared.asr's Transcriber: says ``text`` whatever it hears, and records what it got."""

    def __init__(self, text: str) -> None:
        self.text, self.calls = text, []

    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str | None = None) -> str:
        self.calls.append((len(audio), audio.dtype, sample_rate, language))
        return self.text


def _opts(bundle: Path, **kw) -> QualityOptions:
    return QualityOptions(bundle=bundle, prompt_wav=PROMPT, prompt_text=PROMPT_TEXT, prompt_language="zh",
                          threads=1, **kw)


def _setting(rep: dict, quant: str, flow: str = "full", steps: int = 10) -> dict:
    return next(s for s in rep["settings"] if (s["quant"], s["flow"], s["flow_steps"]) == (quant, flow, steps))


def test_a_broken_llm_and_fewer_steps_score_worse(qbundle):
    rep = run_quality(_opts(qbundle, quants=["q8_0", "broken"], flow_steps=[2], languages=["ru", "en"]),
                      asr=AsrStatus(None, "no ASR here"))
    assert [s["name"] for s in rep["settings"]][0] == "f32 / full / 10 steps"
    ref, q8, broken = _setting(rep, "f32"), _setting(rep, "q8_0"), _setting(rep, "broken")
    assert ref["is_reference"] and ref["llm"]["top1_agreement"] == 1.0 and ref["llm"]["kl_mean"] == 0.0
    assert ref["flow_mel"]["rel_l2"] == 0.0 and ref["llm"]["token_agreement"] == 1.0
    # the damage is seen: the broken LLM's distributions are far from F32's, Q8_0's are close
    assert broken["llm"]["kl_mean"] > 10 * q8["llm"]["kl_mean"] and broken["llm"]["kl_mean"] > 0.05
    assert broken["llm"]["top1_agreement"] < q8["llm"]["top1_agreement"]
    assert broken["llm"]["logprob_delta_mean"] > 5 * q8["llm"]["logprob_delta_mean"]
    assert 0 < q8["llm"]["kl_mean"] < 0.05  # Q8_0 is not F32, and not far from it
    # the flow's distance is a property of the flow setting: 2 Euler steps are far from 10, 10 are exact
    two = _setting(rep, "f32", steps=2)
    assert two["flow_mel"]["rel_l2"] > 0.05 and _setting(rep, "broken", steps=2)["flow_mel"] == two["flow_mel"]
    assert q8["flow_mel"]["rel_l2"] == 0.0
    for s in rep["settings"]:
        assert s["cer"] is None and all(x["cer"] is None for x in s["sentences"])
        assert s["audio_s"] > 0 and s["wall_s"] > 0 and -1 <= s["speaker_similarity"] <= 1
    assert rep["asr"] == {"available": False, "reason": "no ASR here"}
    table = format_table(rep)
    assert "RANDOM WEIGHTS" in table and "CER: absent (no ASR here)" in table and "broken / full / 10 steps" in table


def test_cer_comes_from_the_injected_transcriber(qbundle):
    sentences, _ = load_sentences(["ru"])
    fake = FakeTranscriber(sentences[0].text)  # "hears" the first sentence every time
    rep = run_quality(_opts(qbundle, quants=["f32"], languages=["ru"]), asr=AsrStatus(fake))
    ref = rep["settings"][0]
    assert rep["asr"] == {"available": True, "reason": None}
    by_id = {x["id"]: x for x in ref["sentences"]}
    heard = [x for x in ref["sentences"] if x["audio_s"] > 0]
    assert len(fake.calls) == len(heard) > 0
    assert all(n > 0 and dtype == np.float32 and sr == 24000 and lang == "ru" for n, dtype, sr, lang in fake.calls)
    assert by_id["ru-1"]["audio_s"] > 0 and by_id["ru-1"]["cer"] == 0.0
    assert by_id["ru-1"]["transcript"] == sentences[0].text
    for s in sentences[1:]:
        x = by_id[s.id]
        want = levenshtein(normalize_for_cer(s.text), normalize_for_cer(sentences[0].text))
        assert x["char_errors"] == want and x["chars"] == len(normalize_for_cer(s.text))
        assert x["cer"] == pytest.approx(want / x["chars"]) and x["cer"] > 0.3
    pooled = sum(x["char_errors"] for x in ref["sentences"]) / sum(x["chars"] for x in ref["sentences"])
    assert ref["cer"] == pytest.approx(pooled)


def test_without_asr_the_cer_is_absent_with_the_reason(tmp_path):
    status = load_asr(tmp_path / "no-such-asr-model")
    assert status.transcriber is None and "--asr" in status.reason


def test_a_saved_voice_is_scored(qbundle, tmp_path):
    from pipeline.engines.cosyvoice3.tts import CosyVoiceRK

    with CosyVoiceRK(qbundle, speakers_dir=tmp_path, n_threads=1, log=lambda m: None) as tts:
        tts.add_voice("Anna", PROMPT, PROMPT_TEXT, language="zh")
    rep = run_quality(QualityOptions(bundle=qbundle, voice="anna", speakers_dir=tmp_path, quants=["f32"],
                                     languages=["en"], threads=1), asr=AsrStatus(None, "-"))
    assert rep["voice"]["name"] == "Anna" and rep["voice"]["language"] == "zh"
    assert rep["voice"]["transcript"] == PROMPT_TEXT and [s["quant"] for s in rep["settings"]] == ["f32"]


def test_bad_requests_get_specific_messages(qbundle, tmp_path):
    with pytest.raises(InputError, match="no q4_k_m LLM"):
        run_quality(_opts(qbundle, quants=["q4_k_m"]), asr=AsrStatus(None, "-"))
    with pytest.raises(InputError, match="--voice NAME"):
        run_quality(QualityOptions(bundle=qbundle), asr=AsrStatus(None, "-"))
    no_f32 = tmp_path / "no-f32"
    shutil.copytree(qbundle, no_f32)
    m = json.loads((no_f32 / "manifest.json").read_text())
    del m["llm"]["gguf"]["f32"], m["files"]["llm-f32.gguf"]
    (no_f32 / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="no F32 GGUF, the reference"):
        run_quality(_opts(no_f32), asr=AsrStatus(None, "-"))


@pytest.mark.parametrize("args, message", [
    ([], "--voice NAME"),
    (["--prompt-wav", str(PROMPT)], "--prompt-wav needs --prompt-text"),
    (["--voice", "x", "--prompt-text", "y"], "--prompt-text goes with --prompt-wav"),
    (["--voice", "x", "--language", "xx"], "xx"),
])
def test_cli_refuses_bad_options_before_loading(args, message, capsys, tmp_path):
    from pipeline.cli import main

    assert main(["quality", "--bundle", str(tmp_path / "none"), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_flow_steps_must_be_whole_and_positive(capsys):
    from pipeline.cli import main

    for bad in ("0", "x"):
        with pytest.raises(SystemExit):
            main(["quality", "--voice", "x", "--flow-steps", bad])
        assert "--flow-steps" in capsys.readouterr().err


def test_cli_json_has_every_field_and_docs_explain_them(qbundle, tmp_path):
    out = tmp_path / "wavs"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "quality", "--bundle", str(qbundle), "--prompt-wav",
                        str(PROMPT), "--prompt-text", PROMPT_TEXT, "--language", "zh", "--quant", "q8_0",
                        "--flow-fast", "--flow-steps", "3", "--threads", "1", "--asr-model", str(tmp_path / "none"),
                        "--out", str(out), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(rep) == set(JSON_FIELDS)
    for key, fields in (("bundle", BUNDLE_FIELDS), ("voice", VOICE_FIELDS), ("reference", REFERENCE_FIELDS),
                        ("sentence_set", SENTENCE_SET_FIELDS), ("asr", ASR_FIELDS)):
        assert set(rep[key]) == set(fields), key
    assert rep["reference"] == {"quant": "f32", "flow": "full", "flow_steps": 10}
    assert rep["bundle"]["random_weights"] is True and rep["asr"]["available"] is False
    assert "--asr" in rep["asr"]["reason"]
    assert [s["id"] for s in rep["sentence_set"]["sentences"]][0] == "ru-1"
    grid = {(s["quant"], s["flow"], s["flow_steps"]) for s in rep["settings"]}
    assert grid == {(q, f, n) for q in ("f32", "q8_0") for f in ("full", "int8") for n in (10, 3)}
    n_sent = len(rep["sentence_set"]["sentences"])
    for s in rep["settings"]:
        assert set(s) == set(SETTING_FIELDS)
        assert set(s["llm"]) == set(LLM_FIELDS)
        assert set(s["flow_mel"]) == set(MEL_FIELDS) and set(s["output_mel"]) == set(MEL_FIELDS)
        assert len(s["sentences"]) == n_sent
        for x in s["sentences"]:
            assert set(x) == set(SENTENCE_FIELDS)
        assert math.isfinite(s["rtf"]) and s["llm"]["positions"] > 0
        assert s["flow_mel"]["compared"] > 0 and s["flow_mel"]["rel_l2"] is not None
        assert len(list((out / f"{s['quant']}-{s['flow']}-{s['flow_steps']}").glob("*.wav"))) > 0
    assert _setting(rep, "f32", "int8")["flow_mel"]["rel_l2"] > 0  # the INT8 flow is not the fp32 one
    r2 = subprocess.run([sys.executable, "-m", "pipeline.cli", "quality", "--bundle", str(qbundle), "--prompt-wav",
                         str(PROMPT), "--prompt-text", PROMPT_TEXT, "--quant", "f32", "--languages", "ja",
                         "--threads", "1"], capture_output=True, text=True, cwd=ROOT)
    assert r2.returncode == 0, r2.stderr
    assert "f32 / full / 10 steps *" in r2.stdout
    assert any(line.split()[:3] == ["setting", "sim", "sim"] for line in r2.stdout.splitlines())

    doc = (ROOT / "docs" / "quality.md").read_text(encoding="utf-8")
    every = {*JSON_FIELDS, *BUNDLE_FIELDS, *VOICE_FIELDS, *REFERENCE_FIELDS, *SENTENCE_SET_FIELDS, *ASR_FIELDS,
             *SETTING_FIELDS, *LLM_FIELDS, *MEL_FIELDS, *SENTENCE_FIELDS}
    missing = sorted(f for f in every if f"`{f}`" not in doc)
    assert not missing, f"docs/quality.md does not explain {missing}"


def test_output_similarity_is_computed_as_the_prompts(qbundle):
    """The prompt's own audio, scored as an output, has the prompt's embedding (cosine ~1); another recording
    scores lower; silence has none."""
    from pipeline.engines.cosyvoice3.quality import output_embedding
    from pipeline.engines.cosyvoice3.speaker import PromptModels, extract_prompt_features
    from pipeline.shared.audio import load_audio, prepare_prompt, resample
    from pipeline.shared.bundle import Bundle

    b = Bundle.load(qbundle)
    models = PromptModels.from_bundle(b, n_threads=1)
    prepared = prepare_prompt(PROMPT)
    feats, _ = extract_prompt_features(prepared, models, bundle=b)
    self_sim = cosine(feats.embedding, output_embedding(prepared.wav24k, 24000, models.speaker))
    assert self_sim > 0.999
    other, sr = load_audio(ROOT / "tests" / "fixtures" / "prompts" / "cross_lingual_prompt.wav")
    other24 = resample(other[: 5 * sr], sr, 24000)
    assert cosine(feats.embedding, output_embedding(other24, 24000, models.speaker)) < self_sim
    assert output_embedding(np.zeros(24000, np.float32), 24000, models.speaker) is None
