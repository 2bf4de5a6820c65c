"""`cosyvoice-rk normalize`: what will be read, one segment per line, without any model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.engines.cosyvoice3.tokenizer import TextTokenizer, build_tokenizer
from pipeline.shared.text import TextFrontend
from pipeline.shared.text.preview import REPO_TOKENIZER, preview, preview_tokenizer

RU = ("Встретимся 1 мая в 12:30 на ул. Ленина, д. 5. [breath] Возьми 2 кг яблок и 500 руб. "
      "Москва — столица России, крупнейший по численности населения город России и её субъект, самый населённый "
      "из городов, полностью расположенных в Европе; в ней 13 149 803 человека. ") * 3


def test_normalize_prints_one_segment_per_line(capsys, tmp_path):
    assert main(["normalize", "--language", "ru", "--bundle", str(tmp_path / "no-bundle"), RU]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    tok = TextTokenizer(build_tokenizer(REPO_TOKENIZER / "vocab.json", REPO_TOKENIZER / "merges.txt"))
    assert lines == TextFrontend(tok).split(RU, "ru")
    assert len(lines) > 1
    assert lines[0].startswith("Встретимся первого мая в двенадцать тридцать на улице Ленина, дом пять.")
    assert "segments counted with the Qwen2 tokenizer files" in err and "(no bundle)" in err


def test_normalize_reports_bad_text_like_say(capsys, tmp_path):
    assert main(["normalize", "--bundle", str(tmp_path), "Привет [smile]"]) == 2
    assert "error: unknown tag [smile]" in capsys.readouterr().err
    assert main(["normalize", "--language", "de", "--bundle", str(tmp_path), "Hallo"]) == 2
    assert "unknown language 'de'" in capsys.readouterr().err


def _bundle_with_tokenizer(root: Path) -> Path:
    """A bundle folder with just a manifest and the tokenizer: what the preview reads (no model files)."""
    from pipeline.shared.bundle import FORMAT, FORMAT_VERSION

    root.mkdir()
    build_tokenizer(REPO_TOKENIZER / "vocab.json", REPO_TOKENIZER / "merges.txt").save(str(root / "tokenizer.json"))
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "constants": {}, "llm": {}, "flow": {},
                "hift": {}, "files": {"tokenizer.json": {}}, "frontend": {"tokenizer": "tokenizer.json"}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_normalize_uses_the_bundle_tokenizer(capsys, tmp_path):
    bundle = _bundle_with_tokenizer(tmp_path / "bundle")
    assert main(["normalize", "--language", "ru", "--bundle", str(bundle), RU]) == 0
    out, err = capsys.readouterr()
    assert f"the bundle's tokenizer ({bundle.resolve()})" in err
    assert out.splitlines() == preview(RU, "ru", None)  # same vocabulary, same cuts


def test_a_broken_bundle_is_an_error_not_a_fallback(capsys, tmp_path):
    (tmp_path / "manifest.json").write_text("{")
    assert main(["normalize", "--bundle", str(tmp_path), "Привет"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_preview_matches_the_frontend(tmp_path):
    segs = preview("Сегодня 1 мая. [laughter]", "ru", tmp_path)
    assert segs == ["Сегодня первое мая. [laughter]."]  # split_text ends the text with a terminator
    _, source = preview_tokenizer(tmp_path)
    assert str(REPO_TOKENIZER) in source


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
