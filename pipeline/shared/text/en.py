"""English text normalisation (num2words ``en``)."""

from __future__ import annotations

import re

from num2words import num2words

from pipeline.shared.text.common import _sentence_end, _spell_digits

_EN_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
                "£": ("pound", "pounds", "penny", "pence")}
_EN_ABBREVIATIONS: list[tuple[str, str]] = [
    (r"Mrs\.", "Missus"), (r"Mr\.", "Mister"), (r"Ms\.", "Miz"), (r"Dr\.", "Doctor"), (r"e\.g\.", "for example"),
    (r"i\.e\.", "that is"), (r"etc\.", "et cetera"), (r"vs\.", "versus"),
]
_EN_ABBR_RE = re.compile(r"(?<![\w.])(?:" + "|".join(f"(?P<a{i}>{p})" for i, (p, _) in
                                                      enumerate(_EN_ABBREVIATIONS)) + r")")
_EN_MULT = r"thousand|million|billion|trillion"
_EN_YEAR_CONTEXT = {"in", "since", "by", "from", "until", "till", "to", "of", "year", "before", "after",
                    "during", "around", "circa", "and"}


def _en_card(digits: str) -> str:
    if len(digits) > 1 and digits[0] == "0" or len(digits) > 15:
        return " ".join(num2words(int(d), lang="en") for d in digits)
    return num2words(int(digits), lang="en").replace(",", "")  # "one thousand five hundred", no pause


def _en_amount(num: str) -> str:
    whole, _, frac = num.partition(".")
    words = _en_card(whole)
    return words + " point " + " ".join(_en_card(d) for d in frac) if frac else words


def _en_money(cur: str, num: str, mult: str | None) -> str:
    one, many, sub_one, sub_many = _EN_CURRENCY[cur]
    if mult:
        return f"{_en_amount(num)} {mult} {many}"
    whole, _, frac = num.partition(".")
    if frac and len(frac) != 2:
        return f"{_en_amount(num)} {many}"
    words = f"{_en_card(whole)} {one if whole == '1' else many}"
    if frac and int(frac):
        words += f" and {_en_card(str(int(frac)))} {sub_one if int(frac) == 1 else sub_many}"
    return words


def _en_abbreviation(m: re.Match) -> str:
    words = _EN_ABBREVIATIONS[int(m.lastgroup[1:])][1]
    return words + ("." if m.group().endswith("etc.") and _sentence_end(m.string, m.end()) else "")


def _en_year_or_number(m: re.Match) -> str:
    digits = m.group()
    prev = re.search(r"([A-Za-z]+)\s+$", m.string[max(0, m.start() - 12):m.start()])
    if (len(digits) == 4 and 1100 <= int(digits) <= 2099 and prev and prev.group(1).lower() in _EN_YEAR_CONTEXT):
        return num2words(int(digits), lang="en", to="year")
    return _en_card(digits)


def _en_time(m: re.Match) -> str:
    h, mins = _en_card(str(int(m["h"]))), m["m"]
    if mins == "00":
        return f"{h} o'clock"
    return f"{h} oh {_en_card(mins[1])}" if mins[0] == "0" else f"{h} {_en_card(mins)}"


def _normalize_en(text: str) -> str:
    """English: money ("$5", "$5.99", "€3 million"), percent, ordinals ("1st"), times ("9:05"), decimals,
    negatives, thousands separators, years after "in"/"since"/… ("in 1999" → "nineteen ninety-nine"),
    a few abbreviations (Mr., Dr., e.g., i.e., etc., vs.)."""
    text = _EN_ABBR_RE.sub(_en_abbreviation, text)
    text = text.replace("&", " and ")
    text = re.sub(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?![\d])", lambda m: m.group().replace(",", ""), text)
    text = re.sub(r"(?<![\w.])-(?=[$€£]?\d)", "minus ", text)
    text = re.sub(r"(?P<cur>[$€£])\s?(?P<num>\d+(?:\.\d+)?)(?:\s?(?P<mult>" + _EN_MULT + r")\b)?",
                  lambda m: _en_money(m["cur"], m["num"], m["mult"]), text)
    text = re.sub(r"(?P<num>\d+(?:\.\d+)?)\s?(?:(?P<mult>" + _EN_MULT + r")\s)?(?P<cur>[$€£])",
                  lambda m: _en_money(m["cur"], m["num"], m["mult"]), text)
    text = re.sub(r"(\d+(?:\.\d+)?)\s?%", lambda m: _en_amount(m[1]) + " percent", text)
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", lambda m: num2words(int(m[1]), lang="en", to="ordinal"), text)
    text = re.sub(r"(?<![\d:.])(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)(?![\d:])", _en_time, text)
    text = re.sub(r"(?<![\d.])\d+\.\d+(?![\d.])", lambda m: _en_amount(m.group()), text)
    return _spell_digits(text, _en_year_or_number)
