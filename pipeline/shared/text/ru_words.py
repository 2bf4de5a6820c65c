"""Russian number words and the nouns they govern: cardinals and ordinals in a case, agreement tables."""

from __future__ import annotations

import re
from dataclasses import dataclass

from num2words import num2words

_CASES = "ngdaip"


@dataclass(frozen=True)
class _Noun:
    sg: tuple[str, ...]  # n g d a i p
    pl: tuple[str, ...]
    gender: str = "m"
    few: str | None = None  # after 2-4 in the nominative/accusative, when not the genitive singular

    def form(self, case: str, plural: bool = False) -> str:
        return (self.pl if plural else self.sg)[_CASES.index(case)]


def _hard(stem: str) -> _Noun:
    return _Noun((stem, stem + "а", stem + "у", stem, stem + "ом", stem + "е"),
                 (stem + "ы", stem + "ов", stem + "ам", stem + "ы", stem + "ами", stem + "ах"))


def _fem(stem: str, y: str = "ы", gen_pl: str | None = None) -> _Noun:
    return _Noun((stem + "а", stem + y, stem + "е", stem + "у", stem + "ой", stem + "е"),
                 (stem + y, gen_pl or stem, stem + "ам", stem + y, stem + "ами", stem + "ах"), "f")


def _zero_gen(stem: str) -> _Noun:
    """Units whose genitive plural has no ending after numbers ("пять ватт", "десять гигабайт")."""
    n = _hard(stem)
    return _Noun(n.sg, n.pl[:1] + (stem,) + n.pl[2:])


_ADJ_ENDINGS = {"ый": (("ый", "ого", "ому", "ый", "ым", "ом"), ("ые", "ых", "ым", "ые", "ыми", "ых")),
                "ий": (("ий", "ого", "ому", "ий", "им", "ом"), ("ие", "их", "им", "ие", "ими", "их"))}


def _adj(adjective: str, noun: _Noun) -> _Noun:
    """"квадратный" + метр: every form, and "два квадратных метра" after 2-4."""
    stem, kind = adjective[:-2], adjective[-2:]
    sg, pl = _ADJ_ENDINGS[kind]
    return _Noun(tuple(f"{stem}{a} {n}" for a, n in zip(sg, noun.sg, strict=True)),
                 tuple(f"{stem}{a} {n}" for a, n in zip(pl, noun.pl, strict=True)), noun.gender,
                 f"{stem}{pl[1]} {noun.sg[1]}")


_NOUNS: dict[str, _Noun] = {
    "рубль": _Noun(("рубль", "рубля", "рублю", "рубль", "рублём", "рубле"),
                   ("рубли", "рублей", "рублям", "рубли", "рублями", "рублях")),
    "копейка": _fem("копейк", "и", "копеек"),
    "евро": _Noun(("евро",) * 6, ("евро",) * 6),
    "тысяча": _Noun(("тысяча", "тысячи", "тысяче", "тысячу", "тысячей", "тысяче"),
                    ("тысячи", "тысяч", "тысячам", "тысячи", "тысячами", "тысячах"), "f"),
    "минута": _fem("минут"), "секунда": _fem("секунд"), "штука": _fem("штук", "и"),
    "человек": _Noun(("человек", "человека", "человеку", "человека", "человеком", "человеке"),
                     ("люди", "человек", "людям", "людей", "людьми", "людях")),
    "год": _Noun(("год", "года", "году", "год", "годом", "году"),
                 ("годы", "годов", "годам", "годы", "годами", "годах")),
    "век": _Noun(("век", "века", "веку", "век", "веком", "веке"),
                 ("века", "веков", "векам", "века", "веками", "веках")),
    **{w: _hard(w) for w in ("доллар", "цент", "фунт", "процент", "градус", "километр", "метр", "сантиметр",
                             "миллиметр", "килограмм", "грамм", "литр", "час", "миллион", "миллиард",
                             "триллион", "миллилитр", "миллиграмм", "гектар", "киловатт-час")},
    **{w: _zero_gen(w) for w in ("ватт", "киловатт", "мегаватт", "герц", "килогерц", "мегагерц", "гигагерц",
                                 "байт", "килобайт", "мегабайт", "гигабайт", "терабайт")},
    "тонна": _fem("тонн"),
}
_NOUNS.update({
    "квадратный метр": _adj("квадратный", _NOUNS["метр"]),
    "квадратный километр": _adj("квадратный", _NOUNS["километр"]),
    "квадратный сантиметр": _adj("квадратный", _NOUNS["сантиметр"]),
    "кубический метр": _adj("кубический", _NOUNS["метр"]),
    "кубический сантиметр": _adj("кубический", _NOUNS["сантиметр"]),
})
_SUBUNIT = {"рубль": "копейка", "доллар": "цент", "евро": "цент"}

# (pattern, noun, words after the noun). Patterns are tried in order; the year rule has already taken
# "г." after a number ("г" without a dot is grams, as Russian typography writes it).
_RU_UNITS: list[tuple[str, str, str]] = [
    (r"руб\.?|р\.|₽|RUB", "рубль", ""), (r"коп\.?", "копейка", ""), (r"долл\.?|USD|\$", "доллар", ""),
    (r"евро|EUR|€", "евро", ""), (r"GBP|£", "фунт", ""), (r"%", "процент", ""),
    (r"°\s?[CС]|℃", "градус", " Цельсия"), (r"°", "градус", ""),
    (r"км/ч", "километр", " в час"), (r"м/с", "метр", " в секунду"),
    (r"м²|м2|кв\.\s?м\.?", "квадратный метр", ""), (r"км²|км2|кв\.\s?км\.?", "квадратный километр", ""),
    (r"см²|см2|кв\.\s?см\.?", "квадратный сантиметр", ""), (r"м³|м3|куб\.\s?м\.?", "кубический метр", ""),
    (r"см³|см3|куб\.\s?см\.?", "кубический сантиметр", ""), (r"мм\s?рт\.\s?ст\.", "миллиметр", " ртутного столба"),
    (r"кВт[·⋅*]?ч", "киловатт-час", ""), (r"кВт", "киловатт", ""), (r"МВт", "мегаватт", ""), (r"Вт", "ватт", ""),
    (r"ГГц", "гигагерц", ""), (r"МГц", "мегагерц", ""), (r"кГц", "килогерц", ""), (r"Гц", "герц", ""),
    (r"ТБ|Тб", "терабайт", ""), (r"ГБ|Гб", "гигабайт", ""), (r"МБ|Мб", "мегабайт", ""), (r"КБ|Кб", "килобайт", ""),
    (r"мл", "миллилитр", ""), (r"мг", "миллиграмм", ""), (r"га", "гектар", ""),
    (r"т(?=[\s,;:!?)]|$|\.(?!\s?[а-яё]\.))", "тонна", ""),
    (r"км", "километр", ""),
    (r"см", "сантиметр", ""), (r"мм", "миллиметр", ""), (r"м", "метр", ""), (r"кг", "килограмм", ""),
    (r"гр\.?|г", "грамм", ""), (r"л", "литр", ""), (r"ч", "час", ""), (r"мин\.?", "минута", ""),
    (r"сек\.?", "секунда", ""), (r"шт\.?", "штука", ""), (r"чел\.?", "человек", ""),
]
_RU_MULTS: list[tuple[str, str]] = [(r"тыс\.?", "тысяча"), (r"млн\.?", "миллион"), (r"млрд\.?", "миллиард"),
                                    (r"трлн\.?", "триллион")]

# Case a preposition gives the number after it. "в"/"на"/"за" take the accusative with plain counts
# ("на 15 процентов"); years and centuries use the noun's own form instead ("в 2024 году").
_PREP_CASE: dict[str, str] = {
    **dict.fromkeys("от до из с со около после без для у более менее свыше кроме против вместо среди "
                    "вокруг возле мимо порядка больше меньше выше ниже позже позднее старше младше".split(), "g"),
    **dict.fromkeys("к ко благодаря согласно".split(), "d"),
    **dict.fromkeys("над под перед между".split(), "i"),
    **dict.fromkeys("о об обо при".split(), "p"),
    **dict.fromkeys("в во на за через про".split(), "a"),
}
_INSTR_PREPS = {"с", "со", "за", "над", "под", "перед", "между"}
_MONTHS = ("января февраля марта апреля мая июня июля августа сентября октября ноября декабря").split()
_NUM = r"\d+(?:[.,]\d+)?"


def _prev_word(s: str, start: int) -> str:
    m = re.search(r"(?:^|[^\w-])([А-Яа-яЁё]+)\s+$", s[max(0, start - 24):start])
    return m.group(1).lower() if m else ""


def _next_word(s: str, end: int) -> str:
    m = re.match(r" ([а-яё]+)", s[end:])
    return m.group(1) if m else ""


def _next_words(s: str, end: int, n: int = 3) -> list[str]:
    """Up to ``n`` lower-case Russian words right after ``end``, separated by single spaces."""
    m = re.match(r"(?: [а-яё]+){1," + str(n) + "}", s[end:])
    return m.group().split() if m else []


def _ru_card(digits: str, case: str = "n", gender: str = "m") -> str:
    """Cardinal in a case; leading zeros are read digit by digit ("007" → "ноль ноль семь")."""
    if len(digits) > 1 and digits[0] == "0" or len(digits) > 15:
        return " ".join(num2words(int(d), lang="ru") for d in digits)
    n = int(digits)
    words = num2words(n, lang="ru", case=case, gender=gender, animate=False)
    if 1000 <= n < 2000:
        words = words.split(" ", 1)[1]  # "тысяча пятьсот", not "одна тысяча пятьсот"
    return words


def _ru_ord(n: int, case: str = "n", gender: str = "m", plural: bool = False) -> str:
    return num2words(n, lang="ru", to="ordinal", case=case, gender=gender, plural=plural, animate=False)


_FRACTION_STEMS = {1: "десят", 2: "сот", 3: "тысячн", 4: "десятитысячн", 5: "стотысячн", 6: "миллионн"}


def _fem_adj(stem: str, n: int, case: str) -> str:
    if n % 10 == 1 and n % 100 != 11:
        return stem + {"n": "ая", "a": "ую"}.get(case, "ой")
    return stem + {"d": "ым", "i": "ыми"}.get(case, "ых")


def _ru_decimal(whole: str, frac: str, case: str = "n") -> str:
    """"3,14" → "три целых четырнадцать сотых" (in ``case``)."""
    if len(frac) not in _FRACTION_STEMS:
        return f"{_ru_card(whole, case)} запятая {' '.join(_ru_card(d) for d in frac)}"
    w, f = int(whole), int(frac)
    return (f"{_ru_card(str(w), case, 'f')} {_fem_adj('цел', w, case)} "
            f"{_ru_card(str(f), case, 'f')} {_fem_adj(_FRACTION_STEMS[len(frac)], f, case)}")


def _ru_amount(num: str, case: str, gender: str) -> str:
    whole, _, frac = num.replace(",", ".").partition(".")
    return _ru_decimal(whole, frac, case) if frac else _ru_card(whole, case, gender)


def _agree(noun: _Noun, num: str, case: str) -> str:
    """Form of ``noun`` after the number ``num`` in ``case`` ("2" → рубля, "5" → рублей, "2,5" → рубля)."""
    if re.search(r"[.,]", num):
        return noun.form("g")
    n = int(num)
    one = n % 10 == 1 and n % 100 != 11
    few = 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14
    if case in "na":
        return noun.form(case) if one else (noun.few or noun.form("g")) if few else noun.form("g", plural=True)
    return noun.form(case, plural=not one)


def _guess_gender(num: str, next_word: str, case: str) -> str:
    """Gender for a bare count from the next word's ending ("2 книги" → две, "1 место" → одно)."""
    if not num.isdigit() or case not in "na" or len(next_word) < 3:
        return "m"
    n = int(num)
    if n % 10 == 1 and n % 100 != 11:
        if next_word.endswith(("а", "я")) or case == "a" and next_word.endswith(("у", "ю")):
            return "f"
        if next_word.endswith(("о", "е", "ё")):
            return "n"
    if n % 10 == 2 and n % 100 != 12 and next_word.endswith(("ы", "и")):
        return "f"
    return "m"


def _lookup(table: list[tuple], text: str | None) -> tuple | None:
    if text is None:
        return None
    for row in table:
        if re.fullmatch(row[0], text):
            return row
    return None


def _alternation(table: list[tuple]) -> str:
    return "|".join(row[0] for row in table)


_ROMAN = {"I": 1, "V": 5, "X": 10, "L": 50}


def _roman(s: str) -> int | None:
    total, prev = 0, 0
    for c in reversed(s):
        v = _ROMAN[c]
        total, prev = (total - v, prev) if v < prev else (total + v, v)
    canonical = "".join(sym * cnt for sym, cnt in _roman_digits(total))
    return total if 0 < total <= 89 and canonical == s else None


def _roman_digits(n: int) -> list[tuple[str, int]]:
    out = []
    for value, sym in ((50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        out.append((sym, n // value))
        n %= value
    return out
