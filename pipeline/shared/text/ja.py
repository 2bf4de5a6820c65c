"""Japanese: width forms, punctuation and numbers (num2words ``ja``)."""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

from pipeline.shared.text.zh import _replace_blank

_JA_PUNCT = str.maketrans({"!": "！", "?": "？", ",": "、", ":": "：", ";": "；", "~": "〜", ".": "。"})


def _ja_amount(num: str) -> str:
    whole, _, frac = num.partition(".")
    words = num2words(int(whole), lang="ja")
    return words + ("点" + "".join(num2words(int(d), lang="ja") for d in frac) if frac else "")


def _normalize_ja(text: str) -> str:
    """Japanese: full-width letters/digits and half-width kana unified (NFKC on those forms only),
    ASCII punctuation to Japanese full-width, numbers as kanji numerals (num2words ja), percent
    (パーセント), times (時/分), brackets removed as in upstream's zh path. Kana and kanji are kept."""
    text = re.sub(r"[\uff01-\uffef]+", lambda m: unicodedata.normalize("NFKC", m.group()), text)
    text = re.sub(r"(\d+(?:\.\d+)?)\s?%", lambda m: _ja_amount(m[1]) + "パーセント", text)
    text = re.sub(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])",
                  lambda m: _ja_amount(str(int(m[1]))) + "時" + (_ja_amount(str(int(m[2]))) + "分"
                                                                 if m[2] != "00" else ""), text)
    text = re.sub(r"(?<![\dA-Za-z.])-(?=\d)", "マイナス", text)
    text = re.sub(r"\d+(?:\.\d+)?", lambda m: _ja_amount(m.group()), text)
    text = _replace_blank(text).translate(_JA_PUNCT)
    for c in "()（）【】`":
        text = text.replace(c, "")
    return text
