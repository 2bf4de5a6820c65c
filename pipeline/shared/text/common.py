"""Shared pieces of the text frontend: languages, input checks, markup rule, language detection, whitespace."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Protocol

from pipeline.engines.cosyvoice3.tokenizer import ENDOFPROMPT
from pipeline.shared.errors import InputError
from pipeline.shared.text.tags import _TAG_RE

LANGUAGES = ("ru", "en", "zh", "ja", "auto")
MAX_TEXT_CHARS = 5000
# Upstream never caps a segment (one long sentence is one LLM run). 120 text tokens allow up to 20x as many
# speech tokens (max_token_text_ratio), which with a 30 s prompt (750 tokens) still fits a 4096 context.
HARD_MAX_TOKENS = 120
SYSTEM_PREFIX = "You are a helpful assistant." + ENDOFPROMPT


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


# --------------------------------------------------------------------------------------------------
# Input checks, markup, tags

def check_language(language: str) -> None:
    """Raise :class:`InputError` unless ``language`` is one of :data:`LANGUAGES`."""
    if language not in LANGUAGES:
        raise InputError(f"unknown language {language!r}; choose one of {', '.join(LANGUAGES)}")


def _check_text(text: str, max_chars: int = MAX_TEXT_CHARS) -> None:
    if not isinstance(text, str):
        raise InputError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError("text is empty: type something to say")
    if len(text) > max_chars:
        raise InputError(f"text is too long: {len(text)} characters, the limit is {max_chars}; "
                         "split it into several requests")


def has_markup(text: str) -> bool:
    """Upstream's bypass rule: text with both ``<|`` and ``|>`` is neither normalised nor split."""
    return "<|" in text and "|>" in text


# --------------------------------------------------------------------------------------------------
# Language detection

def _script_counts(text: str) -> dict[str, int]:
    t = _TAG_RE.sub(" ", text)
    return {
        "kana": len(re.findall(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9d]", t)),
        "han": len(re.findall(r"[\u3400-\u4dbf\u4e00-\u9fff]", t)),
        "cyr": len(re.findall(r"[\u0400-\u04ff]", t)),
        "lat": len(re.findall(r"[A-Za-z]", t)),
    }


def detect_language(text: str) -> str:
    """``ja`` if kana outweigh Cyrillic, else ``zh`` for Han characters, ``ru`` for any Cyrillic, ``en``
    for Latin letters, and ``ru`` when there are no letters at all. Kanji-only Japanese reads as ``zh``:
    pass ``ja`` explicitly for it."""
    c = _script_counts(text)
    if c["kana"] + c["han"] > c["cyr"]:
        return "ja" if c["kana"] else "zh"
    if c["cyr"]:
        return "ru"
    return "en" if c["lat"] else "ru"


def _resolve_language(text: str, language: str) -> str:
    if language == "auto":
        return detect_language(text)
    if language == "en" and _script_counts(text)["cyr"]:
        return "ru"  # English number words must never land in Russian text
    return language


# --------------------------------------------------------------------------------------------------
# Shared whitespace handling

_SPACES = re.compile(r"[\t\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_ZERO_WIDTH = re.compile(r"[\u200b-\u200d\u2060\ufeff]")


def _prepare(text: str, lang: str) -> str:
    """NFC, unified spaces, and line breaks turned into sentence ends where a sentence clearly ended."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _ZERO_WIDTH.sub("", _SPACES.sub(" ", text))
    cjk = lang in ("zh", "ja")

    def brk(m: re.Match) -> str:
        c = m.group(1)
        return c + ("。" if cjk else ".") + ("" if cjk else " ") if c.isalnum() else c + ("" if cjk else " ")

    text = re.sub(r"(\S) *\n\s*", brk, text.strip())
    return re.sub(r" {2,}", " ", text)


def _sentence_end(s: str, end: int) -> bool:
    """True if position ``end`` is the end of a sentence (end of text, or a space then a capital; tag
    placeholders in between are skipped)."""
    return re.match(r"(?:\s*[\ue000-\uf8ff])*(?:\s*$|\s+[A-ZА-ЯЁ«\"])", s[end:]) is not None


def _spell_digits(text: str, words: Callable[[re.Match], str]) -> str:
    """Digit runs ("COVID-19", "A4") as words, spaced off adjacent letters."""
    def rep(m: re.Match) -> str:
        s, i, j = m.string, m.start(), m.end()
        left = " " if i > 0 and s[i - 1].isalpha() else ""
        right = " " if j < len(s) and s[j].isalpha() else ""
        return left + words(m) + right
    return re.sub(r"\d+", rep, text)
