"""Case and gender of a Russian count from the word it governs, read with pymorphy3 (OpenCorpora dictionary).

A number takes the case of its noun in the oblique cases ("с двумя друзьями", "о пяти книгах", "трём детям")
and agrees in gender with it ("одна ночь", "сто одну книгу"). The preposition before the number alone cannot
tell "с двух сторон" from "с двумя друзьями"; the form of the next noun can. It also tells an ordinal written
without its suffix ("на 5 этаже" → на пятом этаже) from a count. The analyser is loaded on first
use (~0.6 s and ~27 MB on x86), only for text with a number followed by a Russian word.
"""

from __future__ import annotations

import functools
from typing import Any

_CASE = {"nomn": "n", "gent": "g", "gen2": "g", "datv": "d", "accs": "a", "acc2": "a", "ablt": "i", "loct": "p",
         "loc2": "p"}
_GENDER = {"masc": "m", "femn": "f", "neut": "n"}
_AGREEING = {"ADJF", "PRTF", "NUMR"}  # words between the number and its noun ("двум новым книгам")
_TIME_OF_DAY = {"утра", "дня", "вечера", "ночи"}  # "в 5 утра" is a count of hours, not "пятого утра"


@functools.cache
def _analyzer() -> Any:
    import pymorphy3

    return pymorphy3.MorphAnalyzer(lang="ru")


def count_agreement(num: int, words: list[str], prep_case: str | None) -> tuple[str | None, str | None]:
    """(case, gender) for the integer count ``num`` before ``words`` (the next few lower-case words).

    The governed noun is the first noun among ``words``, after agreeing adjectives/participles. Its case is
    used only where it is unambiguous for a count: dative, instrumental and prepositional (plural after
    numbers not ending in 1, singular after those that do), and the accusative singular of feminine nouns
    after a number ending in 1 ("книгу"). Otherwise the case is ``prep_case`` (from the preposition, None
    if there is none). ``prep_case`` wins when the noun allows it ("о книге" vs "к книге"). Gender is the
    noun's (None when the dictionary gives none or there is no noun).
    """
    one = num % 10 == 1 and num % 100 != 11
    want_number = "sing" if one else "plur"
    morph = _analyzer()
    noun = None
    for w in words[:3]:
        parses = morph.parse(w)
        if parses[0].tag.POS == "NOUN":  # the likeliest reading decides the part of speech ("по" is no noun)
            if "Fixd" in parses[0].tag:
                return prep_case, None  # indeclinable ("фото", "кафе"): its form tells nothing
            # rare readings (a surname "Машину" in the dative) are ignored
            noun = [p for p in parses if p.tag.POS == "NOUN" and p.tag.number == want_number
                    and p.score >= 0.1 * parses[0].score]
            break
        if parses[0].tag.POS not in _AGREEING:
            break
    if not noun:
        return prep_case, None
    gender = next((_GENDER[p.tag.gender] for p in noun if p.tag.gender in _GENDER), None)
    cases = [_CASE.get(p.tag.case or "") for p in noun]  # by score
    oblique = [c for c in cases if c in ("d", "i", "p")]
    if one and gender == "f" and "a" in cases and "n" not in cases:
        oblique.append("a")  # "книгу", not "ночь" (nominative and accusative alike)
    if not oblique:
        return prep_case, gender
    return (prep_case if prep_case in oblique else oblique[0]), gender


def ordinal_reading(num: int, words: list[str]) -> tuple[str, str] | None:
    """(case, gender) when the count ``num`` must be an ordinal written without its suffix: the next noun is
    singular in a case a count of ``num`` cannot govern ("на 5 этаже" → на пятом этаже, "к 3 уроку", "с 5 этажа",
    "в 10 часу"). None otherwise. Numbers ending in 1 ("на 1 этаже") and the genitive singular after 2-4
    ("2 этажа") are counts."""
    one = num % 10 == 1 and num % 100 != 11
    few = 2 <= num % 10 <= 4 and not 12 <= num % 100 <= 14
    if one:
        return None
    morph = _analyzer()
    for w in words[:3]:
        parses = morph.parse(w)
        top = parses[0]
        if top.tag.POS == "NOUN":
            if w in _TIME_OF_DAY or "Fixd" in top.tag or top.tag.number != "sing" or any(
                    p.tag.POS == "NOUN" and p.tag.number == "plur" and p.score >= 0.1 * top.score for p in parses):
                return None
            case = _CASE.get(top.tag.case or "")
            if case in ("d", "i", "p") or (case == "g" and not few):
                return case, _GENDER.get(top.tag.gender or "", "m")
            return None
        if top.tag.POS not in _AGREEING:
            return None
    return None
