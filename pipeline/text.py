"""Text frontend: normalisation (Russian first), sentence splitting and tokenisation for CosyVoice3.

Follows upstream's ``CosyVoiceFrontEnd.text_normalize`` (``cosyvoice/cli/frontend.py``,
``cosyvoice/utils/frontend_utils.py``) where it is defined, and adds what upstream leaves to wetext:

- Any text containing both ``<|`` and ``|>`` is returned untouched and as one segment (upstream rule;
  every prompt text with ``<|endofprompt|>`` takes this path).
- Fine-grained tags from the tokenizer's special list (``[breath]``, ``<strong>``, ``[laughter]``, …) are
  never normalised or cut; sentence cuts never fall inside ``<strong>…</strong>`` / ``<laughter>…</laughter>``.
- ``ru``: numbers, ordinals, dates, years, centuries, money, units, percent and common abbreviations
  become Russian words (num2words, with case/gender from simple context rules; see :func:`_normalize_ru`).
- ``en``: numbers, ordinals, money, percent, times and a few abbreviations (num2words ``en``). Never run
  on text containing Cyrillic.
- ``zh``: upstream's zh rules (``replace_blank``, ``.``→``。``, brackets removed, trailing commas → ``。``)
  plus a small Chinese numeral reader in place of wetext.
- ``ja``: full-width/half-width forms unified, Japanese punctuation, numbers via num2words ``ja``.

Splitting is upstream's ``split_paragraph`` (token_max_n 80, token_min_n 60, merge_len 20; zh counts
characters, other languages count tokens) plus a hard cap: no segment has more than ``hard_max_tokens``
tokens, because each segment is a separate LLM run with a bounded context.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from num2words import num2words

from .errors import InputError
from .tags import check_tags
from .tokenizer import COSYVOICE3_SPECIAL_TOKENS, ENDOFPROMPT

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


_TAGS = sorted((t for t in COSYVOICE3_SPECIAL_TOKENS if not t.startswith("<|")), key=len, reverse=True)
_TAG_RE = re.compile("|".join(re.escape(t) for t in _TAGS))
_SPAN_OPEN = {"<strong>", "<laughter>"}
_SPAN_CLOSE = {"</strong>", "</laughter>"}


def _map_plain(text: str, fn: Callable[[str], str]) -> str:
    """Apply ``fn`` to the text between tags; tags are copied unchanged."""
    out, pos = [], 0
    for m in _TAG_RE.finditer(text):
        out += [fn(text[pos:m.start()]) if m.start() > pos else "", m.group()]
        pos = m.end()
    out.append(fn(text[pos:]) if pos < len(text) else "")
    return "".join(out)


def _atoms(text: str) -> list[str]:
    """Characters, except that each tag is one atom."""
    out, pos = [], 0
    for m in _TAG_RE.finditer(text):
        out += list(text[pos:m.start()])
        out.append(m.group())
        pos = m.end()
    out += list(text[pos:])
    return out


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
    """True if position ``end`` is the end of a sentence (end of text, or a space then a capital)."""
    return re.match(r"\s*$|\s+[A-ZА-ЯЁ«\"]", s[end:]) is not None


# --------------------------------------------------------------------------------------------------
# Russian

_CASES = "ngdaip"


@dataclass(frozen=True)
class _Noun:
    sg: tuple[str, ...]  # n g d a i p
    pl: tuple[str, ...]
    gender: str = "m"

    def form(self, case: str, plural: bool = False) -> str:
        return (self.pl if plural else self.sg)[_CASES.index(case)]


def _hard(stem: str) -> _Noun:
    return _Noun((stem, stem + "а", stem + "у", stem, stem + "ом", stem + "е"),
                 (stem + "ы", stem + "ов", stem + "ам", stem + "ы", stem + "ами", stem + "ах"))


def _fem(stem: str, y: str = "ы", gen_pl: str | None = None) -> _Noun:
    return _Noun((stem + "а", stem + y, stem + "е", stem + "у", stem + "ой", stem + "е"),
                 (stem + y, gen_pl or stem, stem + "ам", stem + y, stem + "ами", stem + "ах"), "f")


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
                             "триллион")},
}
_SUBUNIT = {"рубль": "копейка", "доллар": "цент", "евро": "цент"}

# (pattern, noun, words after the noun). Patterns are tried in order; the year rule has already taken
# "г." after a number ("г" without a dot is grams, as Russian typography writes it).
_RU_UNITS: list[tuple[str, str, str]] = [
    (r"руб\.?|р\.|₽|RUB", "рубль", ""), (r"коп\.?", "копейка", ""), (r"долл\.?|USD|\$", "доллар", ""),
    (r"евро|EUR|€", "евро", ""), (r"GBP|£", "фунт", ""), (r"%", "процент", ""),
    (r"°\s?[CС]|℃", "градус", " Цельсия"), (r"°", "градус", ""),
    (r"км/ч", "километр", " в час"), (r"м/с", "метр", " в секунду"), (r"км", "километр", ""),
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
                    "вокруг возле мимо порядка больше меньше выше ниже".split(), "g"),
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
        return noun.form(case) if one else noun.form("g") if few else noun.form("g", plural=True)
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


_RU_NUMDATE = re.compile(r"(?<![\d.,])(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<y>\d{4}|\d{2})(?![\d])"
                         r"(?:\s?(?P<yn>г\.|года)(?!\w))?")
_RU_ISODATE = re.compile(r"(?<![\d.,-])(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})(?![\d])")
_RU_DATE = re.compile(r"(?<![\d.,])(?P<d>\d{1,2})(?:\s?[-–—]\s?(?P<d2>\d{1,2}))?\s(?P<m>" + "|".join(_MONTHS)
                      + r")(?:\s(?P<y>\d{3,4})(?:\s?(?P<yn>г\.|года)(?!\w))?)?")
_RU_YEAR = re.compile(r"(?<![\d.,])(?P<a>\d{3,4})(?:\s?[-–—]\s?(?P<b>\d{2,4}))?\s?"
                      r"(?P<noun>гг\.|г\.|годы|годов|годам|годами|годах|год|года|году|годом)(?!\w)")
_RU_YEAR_FROM = re.compile(r"(?<=\b[сС] )(?P<a>\d{4})(?= (?:по|до) \d{4} ?(?:год|гг?\.))"
                           r"|(?<=\b[оО]т )(?P<b>\d{4})(?= (?:по|до) \d{4} ?(?:год|гг?\.))")
_RU_BARE_YEAR = re.compile(r"(?<=\b[вВ] )(?P<a>1\d{3}|20\d{2})(?=\s*(?:[,.;:!?)]|$))")
_RU_CENTURY = re.compile(r"(?<!\w)(?P<a>[IVXL]+)(?:\s?[-–—]\s?(?P<b>[IVXL]+))?\s?"
                         r"(?P<noun>вв\.|в\.|веками|веках|векам|веков|веком|веке|веку|века|век)(?!\w)")
_RU_TIME = re.compile(r"(?<![\d:.,])(?P<h>[01]?\d|2[0-3]):(?P<m>[0-5]\d)(?![\d:])")
_RU_ORDINAL = re.compile(r"(?<![\d.,])(?P<a>\d+)(?:\s?[-–—]\s?(?P<b>\d+))?-(?P<suf>ого|его|ому|ему|ыми|ими|ый|ий|ой|"
                         r"ая|яя|ое|ее|ые|ие|ым|им|ом|ем|ую|юю|ых|их|го|му|ми|й|я|е|м|х|ю)(?!\w)")
_RU_PREFIX_MONEY = re.compile(r"(?P<cur>[$€£₽])\s?(?P<num>\d+(?:[.,]\d+)?)(?P<mult>\s?(?:"
                              + _alternation(_RU_MULTS) + r")(?!\w))?")
_RU_NUMBER = re.compile(
    r"(?<![\w.,])(?P<sign>[-−+](?=\d))?(?P<a>" + _NUM + r")(?![\d])"
    r"(?:\s?[-–—]\s?(?P<b>" + _NUM + r")(?![\d]))?"
    r"(?:\s?(?P<mult>" + _alternation(_RU_MULTS) + r")(?!\w))?"
    r"(?:\s?(?P<unit>" + _alternation(_RU_UNITS) + r")(?!(?<=\w)\w))?"
)
_ORD_SUFFIX: dict[str, tuple[str, str, bool]] = {
    **dict.fromkeys(("й", "ый", "ий", "ой"), ("n", "m", False)),
    **dict.fromkeys(("я", "ая", "яя"), ("n", "f", False)),
    **dict.fromkeys(("е", "ое", "ее"), ("n", "n", False)),
    **dict.fromkeys(("ые", "ие"), ("n", "m", True)),
    **dict.fromkeys(("го", "ого", "его"), ("g", "m", False)),
    **dict.fromkeys(("му", "ому", "ему"), ("d", "m", False)),
    **dict.fromkeys(("м", "ом", "ем"), ("p", "m", False)),
    **dict.fromkeys(("ым", "им"), ("i", "m", False)),
    **dict.fromkeys(("ю", "ую", "юю"), ("a", "f", False)),
    **dict.fromkeys(("х", "ых", "их"), ("g", "m", True)),
    **dict.fromkeys(("ми", "ыми", "ими"), ("i", "m", True)),
}
# Abbreviations that can end a sentence keep its period; the others (г., ул., см., …) come before a word.
_RU_ABBREVIATIONS: list[tuple[str, str]] = [
    (r"и\s?т\.\s?д\.", "и так далее"), (r"т\.\s?д\.", "так далее"),
    (r"и\s?т\.\s?п\.", "и тому подобное"), (r"т\.\s?п\.", "тому подобное"),
    (r"т\.\s?е\.", "то есть"), (r"т\.\s?к\.", "так как"), (r"т\.\s?н\.", "так называемый"),
    (r"т\.\s?о\.", "таким образом"), (r"до\s?н\.\s?э\.", "до нашей эры"), (r"н\.\s?э\.", "нашей эры"),
    (r"и\s?др\.", "и другие"), (r"напр\.", "например"), (r"см\.", "смотри"), (r"стр\.", "страница"),
    (r"рис\.", "рисунок"), (r"ул\.", "улица"), (r"г\.(?=\s?[А-ЯЁ])", "город"),
    (r"руб\.", "рублей"), (r"коп\.", "копеек"), (r"тыс\.", "тысяч"), (r"млн", "миллионов"),
    (r"млрд", "миллиардов"), (r"км", "километров"), (r"кг", "килограммов"),
]
_RU_ABBR_RE = re.compile(r"(?<![\w.])(?:" + "|".join(f"(?P<a{i}>{p})" for i, (p, _) in
                                                      enumerate(_RU_ABBREVIATIONS)) + r")(?!(?<=\w)\w)")
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


def _year_date_words(d: int, mo: int, y: str, case: str) -> str:
    return f"{_ru_ord(d, case, 'n')} {_MONTHS[mo - 1]} {_ru_ord(int(y), 'g')} года"


def _numeric_date(m: re.Match) -> str:
    d, mo, y = int(m["d"]), int(m["m"]), m["y"]
    if not (1 <= d <= 31 and 1 <= mo <= 12):
        return m.group(0)
    if len(y) == 2:
        y = ("20" if int(y) <= 30 else "19") + y
    case = _PREP_CASE.get(_prev_word(m.string, m.start()), "n")
    dot = "." if m.groupdict().get("yn") == "г." and _sentence_end(m.string, m.end()) else ""
    return _year_date_words(d, mo, y, case) + dot


def _month_date(m: re.Match) -> str:
    case = _PREP_CASE.get(_prev_word(m.string, m.start()), "n")
    day = _ru_ord(int(m["d"]), case, "n")
    if m["d2"]:
        day += " – " + _ru_ord(int(m["d2"]), case, "n")
    out = f"{day} {m['m']}"
    if m["y"]:
        out += f" {_ru_ord(int(m['y']), 'g')} года"
        if m["yn"] == "г." and _sentence_end(m.string, m.end()):
            out += "."
    return out


_YEAR_NOUN_CASE = {"год": ("n", False), "года": ("g", False), "году": ("p", False), "годом": ("i", False),
                   "годы": ("n", True), "годов": ("g", True), "годам": ("d", True), "годами": ("i", True),
                   "годах": ("p", True)}


def _noun_case(noun: str, abbrev: tuple[str, ...], table: dict[str, tuple[str, bool]], prev: str,
               plural_abbrev: bool) -> tuple[str, bool]:
    """Case and number of a year/century noun: from its written form, or from the preposition for "г."/"в."."""
    if noun in abbrev:
        if prev in ("в", "во"):
            return "p", plural_abbrev
        pc = _PREP_CASE.get(prev, "g")
        return pc, plural_abbrev
    case, plural = table[noun]
    if case == "p" and not plural and prev in ("к", "ко", "по"):
        case = "d"
    return case, plural


def _is_count(num: str, noun: str) -> bool:
    """"Ему 101 год", "102 года": a count, not a year (outside 1000..2100 and agreeing like a count)."""
    n = int(num)
    one = n % 10 == 1 and n % 100 != 11
    few = 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14
    return not 1000 <= n <= 2100 and (noun == "год" and one or noun == "года" and few)


def _year(m: re.Match) -> str:
    prev = _prev_word(m.string, m.start())
    noun = m["noun"]
    if not m["b"] and _is_count(m["a"], noun):
        return f"{_ru_card(m['a'], _PREP_CASE.get(prev, 'n'))} {noun}"
    case, plural = _noun_case(noun, ("г.", "гг."), _YEAR_NOUN_CASE, prev, noun == "гг." or bool(m["b"]))
    words = _ru_ord(int(m["a"]), case, "m", False)
    if m["b"]:
        words += " – " + _ru_ord(int(m["b"]), case, "m", False)
    if noun in ("г.", "гг."):
        noun = _NOUNS["год"].form(case, plural) + ("." if _sentence_end(m.string, m.end()) else "")
    return f"{words} {noun}"


_CENTURY_NOUN_CASE = {"век": ("n", False), "века": ("g", False), "веку": ("d", False), "веком": ("i", False),
                      "веке": ("p", False), "веков": ("g", True), "векам": ("d", True),
                      "веками": ("i", True), "веках": ("p", True)}


def _century(m: re.Match) -> str:
    a = _roman(m["a"])
    b = _roman(m["b"]) if m["b"] else None
    if a is None or (m["b"] and b is None):
        return m.group(0)
    prev = _prev_word(m.string, m.start())
    noun = m["noun"]
    case, plural = _noun_case(noun, ("в.", "вв."), _CENTURY_NOUN_CASE, prev, noun == "вв." or b is not None)
    words = _ru_ord(a, case)
    if b is not None:
        words += " – " + _ru_ord(b, case)
    if noun in ("в.", "вв."):
        noun = _NOUNS["век"].form(case, plural) + ("." if _sentence_end(m.string, m.end()) else "")
    return f"{words} {noun}"


def _bare_year(m: re.Match) -> str:
    return _ru_ord(int(m["a"]), "p")


def _time(m: re.Match) -> str:
    case = _PREP_CASE.get(_prev_word(m.string, m.start()), "n")
    mins = m["m"]
    minute = "ноль ноль" if mins == "00" else _ru_card(mins, case, "f") if mins[0] != "0" else \
        "ноль " + _ru_card(mins[1], case, "f")
    return f"{_ru_card(str(int(m['h'])), case)} {minute}"


def _ordinal(m: re.Match) -> str:
    s = m.string
    prev, nxt = _prev_word(s, m.start()), _next_word(s, m.end())
    suf = m["suf"]
    case, gender, plural = _ORD_SUFFIX[suf]
    last = int(m["b"] or m["a"])
    if suf in ("й", "ой") and nxt.endswith(("е", "и", "ы", "ой", "ей")):
        # "на 5-й странице", "с 1-й попытки": a feminine oblique form written with the short suffix
        gender = "f"
        if prev in ("в", "во", "на", "о", "об", "при"):
            case = "p"
        elif prev in _PREP_CASE and _PREP_CASE[prev] != "a":
            case = _PREP_CASE[prev]
        else:
            case = "g" if nxt.endswith(("и", "ы")) else "d"
    elif suf in ("м", "ом", "ем") and prev in _INSTR_PREPS:
        case = "i"
    elif suf in ("е", "ое", "ее") and (nxt.startswith(("год", "гг")) or (last % 10 == 0 and last >= 20 and not nxt)):
        plural = True  # "90-е годы", "в 90-е"
    words = _ru_ord(int(m["a"]), case, gender, plural)
    if m["b"]:
        words += " – " + _ru_ord(int(m["b"]), case, gender, plural)
    return words


def _prefix_money(m: re.Match) -> str:
    return f"{m['num']}{m['mult'] or ''} {m['cur']}"


def _number(m: re.Match) -> str:
    s = m.string
    prev, nxt = _prev_word(s, m.start()), _next_word(s, m.end())
    case = _PREP_CASE.get(prev, "n")
    unit_row = _lookup(_RU_UNITS, m["unit"])
    mult_row = _lookup(_RU_MULTS, m["mult"])
    unit = _NOUNS[unit_row[1]] if unit_row else None
    mult = _NOUNS[mult_row[1]] if mult_row else None
    a, b = m["a"], m["b"]
    last = b or a
    gender = (mult or unit).gender if (mult or unit) else _guess_gender(last, nxt, case)

    sign = {"-": "минус ", "−": "минус ", "+": "плюс "}.get(m["sign"] or "", "")
    whole, _, frac = a.replace(",", ".").partition(".")
    if (unit_row and unit_row[1] in _SUBUNIT and not mult and not b and len(frac) == 2):
        # "5,50 руб." → "пять рублей пятьдесят копеек"
        sub = _NOUNS[_SUBUNIT[unit_row[1]]]
        words = f"{sign}{_ru_card(whole, case, unit.gender)} {_agree(unit, whole, case)}"
        if int(frac):
            words += f" {_ru_card(str(int(frac)), case, sub.gender)} {_agree(sub, str(int(frac)), case)}"
    else:
        words = sign + _ru_amount(a, case, gender)
        if b:
            words += " – " + _ru_amount(b, case, gender)
        if mult:
            words += " " + _agree(mult, last, case)
        if unit:
            words += " " + (unit.form("g", plural=True) if mult else _agree(unit, last, case)) + unit_row[2]
    tail = m["unit"] or m["mult"] or ""
    if tail.endswith(".") and _sentence_end(s, m.end()):
        words += "."
    return words


_RU_FINAL_ABBREVIATIONS = {"и так далее", "так далее", "и тому подобное", "тому подобное", "до нашей эры",
                           "нашей эры", "и другие", "рублей", "копеек", "тысяч"}


def _abbreviation(m: re.Match) -> str:
    words = _RU_ABBREVIATIONS[int(m.lastgroup[1:])][1]
    return words + ("." if words in _RU_FINAL_ABBREVIATIONS and _sentence_end(m.string, m.end()) else "")


def _spell_digits(text: str, words: Callable[[re.Match], str]) -> str:
    """Digit runs ("COVID-19", "A4") as words, spaced off adjacent letters."""
    def rep(m: re.Match) -> str:
        s, i, j = m.string, m.start(), m.end()
        left = " " if i > 0 and s[i - 1].isalpha() else ""
        right = " " if j < len(s) and s[j].isalpha() else ""
        return left + words(m) + right
    return re.sub(r"\d+", rep, text)


def _normalize_ru(text: str) -> str:
    """Russian text normalisation (rule based, case/gender from local context only).

    Handles: cardinals incl. negatives and decimals with "," or "." ("-5", "3,14"), thousands written
    with spaces ("1 500"), ranges ("5–10 км"), ordinals with suffixes ("1-й", "2-го", "21-е", "90-х"),
    dates ("12.04.1961", "2024-04-12", "1 января 2024 г."), years with "г."/"гг."/"году"/…,
    "в 1961," (bare year after "в"), centuries ("XIX век", "XIX–XX вв."), times ("12:30"), money
    ("100 руб.", "$5", "5 €", "1 500 ₽", "5,50 руб.", "$5 млн"), percent, units (км, кг, м, г, л, ч,
    мин, °C, км/ч, …), multipliers (тыс., млн, млрд, трлн) and common abbreviations (т.е., и т.д., и т.п.,
    т.к., и др., г. before a name, …).

    Limitations: the case comes from the preposition right before the number (от/до/с → genitive,
    к → dative, о/при → prepositional, в/на/за → accusative) or from a written noun form ("году",
    "веке"); anything else is nominative ("Это случилось 12 апреля" reads "двенадцатое апреля"). The
    gender of a bare count is guessed from the next word's ending ("2 книги" → "две"), so soft-sign
    nouns ("1 ночь") read masculine. Decimals with oblique cases follow the rule "noun in genitive
    singular". "г" without a dot after a number is grams, with a dot a year. Roman numerals are read
    only before век/в./вв.
    """
    text = re.sub(r"№\s?", "номер ", text)
    text = re.sub(r"§\s?", "параграф ", text)
    text = text.replace("&", " и ")
    text = re.sub(r"(?<![\d.,])(\d{1,3})((?: \d{3})+)(?![\d])", lambda m: m[1] + m[2].replace(" ", ""), text)
    text = _RU_NUMDATE.sub(_numeric_date, text)
    text = _RU_ISODATE.sub(_numeric_date, text)
    text = _RU_DATE.sub(_month_date, text)
    text = _RU_YEAR_FROM.sub(lambda m: _ru_ord(int(m["a"] or m["b"]), "g"), text)
    text = _RU_YEAR.sub(_year, text)
    text = _RU_BARE_YEAR.sub(_bare_year, text)
    text = _RU_CENTURY.sub(_century, text)
    text = _RU_TIME.sub(_time, text)
    text = _RU_ORDINAL.sub(_ordinal, text)
    text = _RU_PREFIX_MONEY.sub(_prefix_money, text)
    text = _RU_NUMBER.sub(_number, text)
    text = _RU_ABBR_RE.sub(_abbreviation, text)
    return _spell_digits(text, lambda m: _ru_card(m.group()))


# --------------------------------------------------------------------------------------------------
# English

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


# --------------------------------------------------------------------------------------------------
# Chinese (upstream's zh path; numbers in place of wetext)

_ZH_DIGITS = "零一二三四五六七八九"


def _zh_group(g: int) -> str:
    out, zero = "", False
    for power, unit in ((3, "千"), (2, "百"), (1, "十"), (0, "")):
        d = g // 10 ** power % 10
        if d == 0:
            zero = bool(out)
            continue
        out += ("零" if zero else "") + _ZH_DIGITS[d] + unit
        zero = False
    return out


def _zh_int(digits: str) -> str:
    """Chinese reading of an integer ("10005" → 一万零五); leading zeros or > 16 digits: digit by digit."""
    if len(digits) > 1 and digits[0] == "0" or len(digits) > 16:
        return "".join(_ZH_DIGITS[int(d)] for d in digits)
    n = int(digits)
    if n == 0:
        return "零"
    groups = []
    while n:
        groups.append(n % 10000)
        n //= 10000
    out, gap = "", False
    for i in range(len(groups) - 1, -1, -1):
        g = groups[i]
        if g == 0:
            gap = bool(out)
            continue
        if out and (gap or g < 1000):
            out += "零"
        out += _zh_group(g) + ("", "万", "亿", "万亿")[i]
        gap = False
    return out[1:] if out.startswith("一十") else out


def _zh_amount(num: str) -> str:
    whole, _, frac = num.partition(".")
    return _zh_int(whole) + ("点" + "".join(_ZH_DIGITS[int(d)] for d in frac) if frac else "")


def _replace_blank(text: str) -> str:
    """Upstream's replace_blank: keep a space only between two non-space ASCII characters."""
    out = []
    for i, c in enumerate(text):
        if c == " ":
            left = text[i - 1] if i > 0 else ""
            right = text[i + 1] if i + 1 < len(text) else ""
            if not (left.isascii() and left not in (" ", "") and right.isascii() and right not in (" ", "")):
                continue
        out.append(c)
    return "".join(out)


def _normalize_zh(text: str) -> str:
    """Upstream zh rules (replace_blank, ²/³, ``.``→``。``, `` - ``→``，``, brackets removed) after numbers:
    percent (百分之), years before 年 digit by digit, times, decimals (点), negatives (负), integers."""
    text = re.sub(r"(\d+(?:\.\d+)?)\s?%", lambda m: "百分之" + _zh_amount(m[1]), text)
    text = re.sub(r"(\d{4})(?=\s?年)", lambda m: "".join(_ZH_DIGITS[int(d)] for d in m[1]), text)
    text = re.sub(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])",
                  lambda m: _zh_int(str(int(m[1]))) + "点" + (_zh_int(m[2].lstrip("0") or "0") + "分"
                                                              if m[2] != "00" else ""), text)
    text = re.sub(r"(?<![\dA-Za-z.])-(?=\d)", "负", text)
    text = re.sub(r"\d+(?:\.\d+)?", lambda m: _zh_amount(m.group()), text)
    text = _replace_blank(text)
    text = text.replace("²", "平方").replace("³", "立方")
    text = text.replace(".", "。").replace(" - ", "，")
    for c in "（）【】`":
        text = text.replace(c, "")
    return text.replace("——", " ")


# --------------------------------------------------------------------------------------------------
# Japanese

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


# --------------------------------------------------------------------------------------------------
# Public API: normalize, split_text, prompt text, TextFrontend

_NORMALIZERS: dict[str, Callable[[str], str]] = {"ru": _normalize_ru, "en": _normalize_en, "zh": _normalize_zh,
                                                 "ja": _normalize_ja}


def normalize(text: str, language: str = "auto", *, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Spoken form of ``text`` in ``language`` (one of :data:`LANGUAGES`).

    Text with ``<|…|>`` markup is returned exactly as given (upstream's bypass). Tags are kept as they are.
    Raises :class:`InputError` for empty or over-long text and unknown languages.
    """
    check_language(language)
    _check_text(text, max_chars)
    if has_markup(text):
        return text
    lang = _resolve_language(text, language)
    text = _map_plain(_prepare(text, lang), _NORMALIZERS[lang])
    text = re.sub(r" {2,}", " ", text).strip()
    text = re.sub(r" +([,.!?;:…])", r"\1", text)
    if lang in ("zh", "ja"):
        text = re.sub(r"[，,、]+$", "。", text)
    return text


_TERMINATORS = {"zh": "。？！；：、.?!;", "other": ".?!;:"}
_CLOSERS = set("\"”»’')）」』")
_FIT_SEPARATORS = (re.compile(r"(?<=[,，、;；:：])|(?= [–—-] )"), re.compile(r"(?= )"))


def _only_punctuation(s: str) -> bool:
    return all(unicodedata.category(c)[0] in "PSZ" for c in s)


def _sentences(text: str, terminators: str) -> list[str]:
    """Cut after each terminator outside ``<strong>``/``<laughter>`` spans; closing quotes and closing
    tags that follow stay with the sentence they close."""
    pieces, cur, depth = [], [], 0
    atoms = _atoms(text)
    i = 0
    while i < len(atoms):
        a = atoms[i]
        cur.append(a)
        depth += (a in _SPAN_OPEN) - (a in _SPAN_CLOSE)
        if a in terminators and depth <= 0:
            while i + 1 < len(atoms) and (atoms[i + 1] in _CLOSERS or atoms[i + 1] in _SPAN_CLOSE):
                i += 1
                cur.append(atoms[i])
            pieces.append("".join(cur))
            cur, depth = [], 0
        i += 1
    if cur:
        pieces.append("".join(cur))
    return [p for p in pieces if p]


def _fit(piece: str, count: Callable[[str], int], target: int, cap: int, level: int = 0) -> list[str]:
    """Cut a piece with more than ``cap`` tokens at commas, then spaces, then between characters, packing
    the parts into chunks of at most ``target`` tokens."""
    if count(piece.strip()) <= cap:
        return [piece]
    if level < len(_FIT_SEPARATORS):
        parts = [p for p in _FIT_SEPARATORS[level].split(piece) if p]
    else:
        parts = _atoms(piece)
    if len(parts) == 1 and level < len(_FIT_SEPARATORS):
        return _fit(piece, count, target, cap, level + 1)
    out, cur = [], ""
    for part in parts:
        subs = _fit(part, count, target, cap, level + 1) if level < len(_FIT_SEPARATORS) else [part]
        for sub in subs:
            if cur and count((cur + sub).strip()) > target:
                out.append(cur)
                cur = ""
            cur += sub
    if cur:
        out.append(cur)
    return out


def split_text(text: str, language: str, tokenizer: Encoder, *, max_tokens: int = 80, min_tokens: int = 60,
               merge_len: int = 20, hard_max_tokens: int = HARD_MAX_TOKENS) -> list[str]:
    """Upstream's ``split_paragraph`` on normalised text, with a hard per-segment token cap.

    Sentences are merged greedily: a new segment starts when adding the next sentence would pass
    ``max_tokens`` and the current one already has more than ``min_tokens``; a final remainder shorter
    than ``merge_len`` joins the previous segment (zh measures in characters, as upstream). On top of
    that no segment gets more than ``hard_max_tokens`` tokens: longer sentences are cut at commas,
    then spaces. Segments are stripped; punctuation-only ones are dropped. Text with ``<|…|>`` markup is
    one segment (upstream) and raises :class:`InputError` if it is over the cap.
    """
    check_language(language)
    if not 1 <= min_tokens <= max_tokens <= hard_max_tokens or hard_max_tokens < 8:
        raise ValueError("need 1 <= min_tokens <= max_tokens <= hard_max_tokens and hard_max_tokens >= 8")

    def count(s: str) -> int:
        return len(tokenizer.encode(s))

    if not text.strip():
        return []
    if has_markup(text):
        n = count(text)
        if n > hard_max_tokens:
            raise InputError(f"text with <|…|> markup is passed to the model as it is and must stay under "
                             f"{hard_max_tokens} tokens; it has {n}. Shorten it or remove the markup")
        return [text]
    lang = _resolve_language(text, language)
    zh = lang == "zh"
    length = len if zh else count
    terminators = _TERMINATORS["zh" if lang in ("zh", "ja") else "other"]
    text = text.strip()
    tail = text
    while tail and (tail[-1] in _CLOSERS or tail.endswith(tuple(_SPAN_CLOSE))):
        tail = tail[:-1] if tail[-1] in _CLOSERS else tail[:tail.rindex("<")]
    if not tail or tail[-1] not in terminators:
        text += "。" if lang in ("zh", "ja") else "."

    pieces: list[str] = []
    for sentence in _sentences(text, terminators):
        pieces += _fit(sentence, count, max_tokens, hard_max_tokens)

    segments, cur = [], ""
    for piece in pieces:
        if cur and ((length(cur + piece) > max_tokens and length(cur) > min_tokens)
                    or count((cur + piece).strip()) > hard_max_tokens):
            segments.append(cur)
            cur = ""
        cur += piece
    if cur:
        if segments and length(cur) < merge_len and count((segments[-1] + cur).strip()) <= hard_max_tokens:
            segments[-1] += cur
        else:
            segments.append(cur)
    return [s for s in (seg.strip() for seg in segments) if s and not _only_punctuation(s)]


def prepare_prompt_text(transcript: str) -> str:
    """The prompt text the LLM expects: the hidden system prefix + transcript, unless the transcript
    already carries ``<|endofprompt|>`` (then it is used as given, e.g. an instruct prefix)."""
    if not isinstance(transcript, str):
        raise InputError(f"the prompt transcript must be a string, got {type(transcript).__name__}")
    if len(transcript) > MAX_TEXT_CHARS:
        raise InputError(f"the prompt transcript is too long: {len(transcript)} characters, the limit is "
                         f"{MAX_TEXT_CHARS}; a voice prompt is at most 30 seconds of speech")
    if ENDOFPROMPT in transcript:
        return transcript
    return SYSTEM_PREFIX + transcript.strip()


class TextFrontend:
    """Text → LLM text ids: :meth:`segments` for the text to say, :meth:`prompt_ids` for the voice prompt."""

    def __init__(self, tokenizer: Encoder, *, max_tokens: int = 80, min_tokens: int = 60, merge_len: int = 20,
                 hard_max_tokens: int = HARD_MAX_TOKENS, max_chars: int = MAX_TEXT_CHARS) -> None:
        self.tokenizer = tokenizer
        self.max_tokens, self.min_tokens, self.merge_len = max_tokens, min_tokens, merge_len
        self.hard_max_tokens, self.max_chars = hard_max_tokens, max_chars

    def split(self, text: str, language: str = "auto") -> list[str]:
        """Normalised segments as text (what :meth:`segments` encodes)."""
        check_language(language)
        norm = normalize(text, language, max_chars=self.max_chars)
        check_tags(text)  # the text to say only: a saved voice's transcript is never refused afterwards
        segs = split_text(norm, language, self.tokenizer, max_tokens=self.max_tokens, min_tokens=self.min_tokens,
                          merge_len=self.merge_len, hard_max_tokens=self.hard_max_tokens)
        if not segs:
            raise InputError("text has nothing to say: it is only punctuation or symbols")
        return segs

    def segments(self, text: str, language: str = "auto") -> list[list[int]]:
        """Normalised, split and encoded text: one id list per LLM run."""
        return [self.tokenizer.encode(s) for s in self.split(text, language)]

    def prompt_ids(self, transcript: str, language: str = "auto") -> list[int]:
        """Ids of the prompt text: the transcript normalised like the text to say (unless it has ``<|…|>``
        markup), behind the system prefix ``You are a helpful assistant.<|endofprompt|>``."""
        check_language(language)
        body = transcript
        if isinstance(body, str) and body.strip() and not has_markup(body):
            body = normalize(body, language)
        return self.tokenizer.encode(prepare_prompt_text(body))
