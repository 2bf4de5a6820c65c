"""CosyVoice3's text tokenizer as the converter builds it from a checkpoint's CosyVoice-BlankEN files (here this
repository's Qwen2 copies, assets/qwen2-tokenizer, with the fixture yaml's get_tokenizer.version).

The special-token ids are CosyVoice3's whatever the merges. Ordinary-text ids are Qwen2's: the release's BlankEN
merges.txt is a trimmed list (134,935 of Qwen2's 151,387 merges), so real CosyVoice3 ids for ordinary text can differ;
``convert`` builds from the checkpoint's own files (tests/test_release_checkpoint.py checks that)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer, models

from pipeline.engines.cosyvoice3.tokenizer import (
    COSYVOICE3_SPECIAL_TOKENS,
    ENDOFPROMPT_ID,
    QWEN2_ADDED_TOKENS,
    TextTokenizer,
    _special,
    build_tokenizer,
)
from pipeline.shared.errors import BundleError, SourceError

QWEN2 = Path(__file__).parent.parent / "assets" / "qwen2-tokenizer"


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory, tiny_src) -> Path:
    from pipeline.engines.cosyvoice3.convert.config import load_source_config, tokenizer_version
    from pipeline.engines.cosyvoice3.convert.llm_gguf import build_text_tokenizer

    tmp = tmp_path_factory.mktemp("tok")
    blank = tmp / "CosyVoice-BlankEN"
    blank.mkdir()
    for n in ("vocab.json", "merges.txt"):
        (blank / n).write_bytes((QWEN2 / n).read_bytes())
    version, _ = tokenizer_version(load_source_config(tiny_src)["yaml"])
    assert version == "cosyvoice3"
    path = tmp / "tokenizer.json"
    build_text_tokenizer(blank, version).save(str(path))
    return path


@pytest.fixture(scope="module")
def tok(tokenizer_json) -> TextTokenizer:
    # Loaded the way the runtime loads it: from the saved tokenizer.json.
    return TextTokenizer.from_file(tokenizer_json)


def test_special_token_list_matches_upstream_layout():
    toks = COSYVOICE3_SPECIAL_TOKENS
    assert len(toks) == len(set(toks)) == 280
    assert toks[:4] == ["<|im_start|>", "<|im_end|>", "<|endofprompt|>", "[breath]"]
    assert toks[19] == "<|endofsystem|>"
    # 84 CMU phones (151664..151747) then 176 pinyin units (151748..151923), upstream commit ace7c47.
    cmu, pinyin = toks[20:104], toks[104:]
    assert (cmu[0], cmu[-1], len(cmu)) == ("[AA]", "[ZH]", 84)
    assert (pinyin[0], pinyin[-1], len(pinyin)) == ("[a]", "[ǜ]", 176)
    assert all(t.startswith("[") and t.endswith("]") for t in cmu + pinyin)
    assert QWEN2_ADDED_TOKENS == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def test_known_qwen2_ids(tok):
    assert tok.encode("Hello") == [9707]
    assert tok.encode("你好") == [108386]
    assert tok.encode("You are a helpful assistant.") == [2610, 525, 264, 10950, 17847, 13]
    # Reference ids from Qwen's own tokenizer.json (same BPE) for Russian text.
    assert tok.encode("Привет, мир! Как дела?") == [53645, 26991, 8178, 11, 137144, 0, 128654, 129691, 30]


@pytest.mark.parametrize(("token", "tid"), [
    ("<|endoftext|>", 151643), ("<|im_start|>", 151644), ("<|im_end|>", 151645), ("<|endofprompt|>", 151646),
    ("[breath]", 151647), ("<strong>", 151648), ("</strong>", 151649), ("[laughter]", 151651),
    ("<laughter>", 151656), ("</laughter>", 151657), ("[mn]", 151662), ("<|endofsystem|>", 151663),
    ("[AA]", 151664), ("[ZH]", 151747), ("[a]", 151748), ("[ǜ]", 151923),
])
def test_special_ids(tok, token, tid):
    assert tok.encode(token) == [tid]
    assert tok.token_to_id(token) == tid


def test_every_special_token_encodes_to_its_list_position(tok):
    for i, t in enumerate(COSYVOICE3_SPECIAL_TOKENS):
        assert tok.encode(t) == [151644 + i], t
    assert len(tok) == 151924


def test_specials_are_matched_literally_inside_text(tok):
    ids = tok.encode("Hello [breath] мир<strong>你好</strong>")
    assert ids == [9707, 220, 151647, 137144, 151648, 108386, 151649]
    assert tok.encode("a[breath]b")[1] == 151647
    prefix = tok.encode("You are a helpful assistant.<|endofprompt|>")
    assert prefix[-1] == ENDOFPROMPT_ID == tok.endofprompt_id
    assert prefix.count(ENDOFPROMPT_ID) == 1


def test_no_bos_or_eos(tok):
    ids = tok.encode("Hello")
    assert 151643 not in ids and 151644 not in ids and 151645 not in ids


@pytest.mark.parametrize("text", [
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "The quick brown fox jumps over the lazy dog.\n  Two spaces.",
    "今天天气很好，我们去公园散步吧。",
    "カタカナとひらがな、漢字。",
    "Привет [breath] мир, <strong>очень</strong> рад [laughter] видеть 你好 😀 café",
    "You are a helpful assistant.<|endofprompt|>Ёлки-палки!",
])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_decode_can_skip_specials(tok):
    assert tok.decode(tok.encode("да [breath] нет"), skip_special_tokens=True) == "да  нет"


def test_endofprompt_id_matches_converter_constant():
    from pipeline.engines.cosyvoice3.convert import upstream

    assert upstream.ENDOFPROMPT_ID == ENDOFPROMPT_ID


def test_build_rejects_missing_files(tmp_path):
    with pytest.raises(SourceError, match="missing"):
        build_tokenizer(tmp_path / "vocab.json", QWEN2 / "merges.txt")


def test_build_rejects_a_vocab_that_shifts_special_ids(tmp_path):
    vocab = json.loads((QWEN2 / "vocab.json").read_text(encoding="utf-8"))
    vocab["<|object_ref_start|>"] = len(vocab)  # a Qwen2.5-style extra entry would move <|endofprompt|>
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(SourceError, match="151644 entries"):
        build_tokenizer(tmp_path / "vocab.json", QWEN2 / "merges.txt")


def test_build_rejects_non_bpe_files(tmp_path):
    (tmp_path / "vocab.json").write_text("not json", encoding="utf-8")
    with pytest.raises(SourceError, match="not a BPE vocabulary"):
        build_tokenizer(tmp_path / "vocab.json", QWEN2 / "merges.txt")


def test_self_check_rejects_shifted_tokenizer():
    bad = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    bad.add_special_tokens([_special(t) for t in QWEN2_ADDED_TOKENS + COSYVOICE3_SPECIAL_TOKENS])
    with pytest.raises(BundleError, match=r"encodes to \[5\].*\[151646\]"):
        TextTokenizer(bad)


def test_from_file_errors(tmp_path):
    with pytest.raises(BundleError, match="missing"):
        TextTokenizer.from_file(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(BundleError, match="not a readable tokenizer.json"):
        TextTokenizer.from_file(tmp_path / "tokenizer.json")


def _fake_bundle(root: Path, tokenizer: str | None):
    manifest = {"frontend": {"tokenizer": tokenizer}, "constants": {"endofprompt_id": ENDOFPROMPT_ID},
                "files": {tokenizer: {}} if tokenizer else {}}

    def path(name: str) -> Path:
        if name not in manifest["files"]:
            raise BundleError(f"bundle {root} has no file {name!r}")
        return root / name

    return SimpleNamespace(root=root, manifest=manifest, path=path)


def test_from_bundle(tokenizer_json):
    tok = TextTokenizer.from_bundle(_fake_bundle(tokenizer_json.parent, tokenizer_json.name))
    assert tok.encode("<|endofprompt|>") == [ENDOFPROMPT_ID]


def test_from_bundle_without_tokenizer(tmp_path):
    with pytest.raises(BundleError, match="this bundle has no text tokenizer"):
        TextTokenizer.from_bundle(_fake_bundle(tmp_path, None))
