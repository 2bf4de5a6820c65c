"""Russian text normalisation: numbers, dates, years, money, units and abbreviations as words."""

from __future__ import annotations

import re

from pipeline.shared.text.common import _sentence_end, _spell_digits
from pipeline.shared.text.ru_morph import count_agreement, ordinal_reading
from pipeline.shared.text.ru_words import (
    _INSTR_PREPS,
    _MONTHS,
    _NOUNS,
    _NUM,
    _PREP_CASE,
    _RU_MULTS,
    _RU_UNITS,
    _SUBUNIT,
    _agree,
    _alternation,
    _guess_gender,
    _lookup,
    _next_word,
    _next_words,
    _prev_word,
    _roman,
    _ru_amount,
    _ru_card,
    _ru_ord,
)
from pipeline.shared.text.tags import PLACEHOLDER_CLASS

_RU_NUMDATE = re.compile(r"(?<![\d.,])(?P<d>\d{1,2})\.(?P<m>\d{1,2})\.(?P<y>\d{4}|\d{2})(?![\d])"
                         r"(?:\s?(?P<yn>г\.|года)(?!\w))?")
_RU_ISODATE = re.compile(r"(?<![\d.,-])(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})(?![\d])")
_RU_DATE = re.compile(r"(?<![\d.,])(?P<d>\d{1,2})(?:\s?[-–—]\s?(?P<d2>\d{1,2}))?\s(?P<m>" + "|".join(_MONTHS)
                      + r")(?:\s(?P<y>\d{3,4})(?:\s?(?P<yn>г\.|года)(?!\w))?)?")
_RU_DAY_FROM = re.compile(r"(?<!\w)(?P<p>(?:[сС]о?|[оО]т) )(?P<d>\d{1,2})"
                          r"(?= (?:по|до) \d{1,2}(?:\s?[-–—]\s?\d{1,2})? (?:" + "|".join(_MONTHS) + r")(?!\w))")
_RU_YEAR = re.compile(r"(?<![\d.,])(?P<a>\d{3,4})(?:\s?[-–—]\s?(?P<b>\d{2,4}))?\s?"
                      r"(?P<noun>гг\.|г\.|годы|годов|годам|годами|годах|год|года|году|годом)(?!\w)")
_RU_YEAR_FROM = re.compile(r"(?<=\b[сС] )(?P<a>\d{4})(?= (?:по|до) \d{4} ?(?:год|гг?\.))"
                           r"|(?<=\b[оО]т )(?P<b>\d{4})(?= (?:по|до) \d{4} ?(?:год|гг?\.))")
_RU_BARE_YEAR = re.compile(r"(?<=\b[вВ] )(?P<a>1\d{3}|20\d{2})(?=\s*(?:[,.;:!?)]|$|" + PLACEHOLDER_CLASS + "))")
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
    (r"рис\.", "рисунок"), (r"ул\.", "улица"), (r"г\.(?=\s?[А-ЯЁ])", "город"), (r"им\.", "имени"),
    (r"в\s?т\.\s?ч\.", "в том числе"), (r"и\s?пр\.", "и прочее"), (r"пр-т|просп\.", "проспект"),
    (r"пер\.", "переулок"), (r"обл\.", "область"), (r"р-н", "район"), (r"пос\.", "посёлок"), (r"тел\.", "телефон"),
    (r"г-н", "господин"), (r"г-жа", "госпожа"), (r"проф\.", "профессор"), (r"акад\.", "академик"),
    (r"руб\.", "рублей"), (r"коп\.", "копеек"), (r"тыс\.", "тысяч"), (r"млн", "миллионов"),
    (r"млрд", "миллиардов"), (r"км", "километров"), (r"кг", "килограммов"),
]
_RU_ABBR_RE = re.compile(r"(?<![\w.])(?:" + "|".join(f"(?P<a{i}>{p})" for i, (p, _) in
                                                      enumerate(_RU_ABBREVIATIONS)) + r")(?!(?<=\w)\w)")


def _year_date_words(d: int, mo: int, y: str, case: str) -> str:
    return f"{_ru_ord(d, case, 'n')} {_MONTHS[mo - 1]} {_ru_ord(int(y), 'g')} года"


# Words after which a date names the day ("Сегодня первое мая"); elsewhere a date without a preposition is a
# time adverbial and takes the genitive ("Встретимся первого мая", "Он родился тридцать первого декабря").
_NOMINATIVE_DATE_WORDS = {"сегодня", "завтра", "вчера", "послезавтра", "позавчера", "был", "была", "было", "будет",
                          "наступил", "наступило", "наступит", "наступает", "настал", "настало", "настанет", "это",
                          "есть", "является", "дата", "число"}
_DATE_PREP_CASE = {**_PREP_CASE, "по": "a"}  # "с первого по пятое мая"


def _date_case(m: re.Match) -> str:
    """Case of a date: from a preposition before it; nominative when it names the day (after "сегодня", "это",
    …, a label's colon or dash, before a dash: "1 мая — праздник", or alone in its sentence); else genitive."""
    s = m.string
    prev = _prev_word(s, m.start())
    if prev in _DATE_PREP_CASE:
        return _DATE_PREP_CASE[prev]
    if prev in _NOMINATIVE_DATE_WORDS:
        return "n"
    before, after = s[:m.start()], s[m.end():]
    if re.search(r"[:—–]\s*$", before) or re.match(r"\s*(?:[—–]|-\s)", after):
        return "n"
    head = re.split(r"[.!?…]\s", before)[-1]
    if not re.search(r"[^\W\d_]", head) and re.match(r"\s*(?:[.!?…]|$)", after):
        return "n"
    return "g"


def _numeric_date(m: re.Match) -> str:
    d, mo, y = int(m["d"]), int(m["m"]), m["y"]
    if not (1 <= d <= 31 and 1 <= mo <= 12):
        return m.group(0)
    if len(y) == 2:
        y = ("20" if int(y) <= 30 else "19") + y
    dot = "." if m.groupdict().get("yn") == "г." and _sentence_end(m.string, m.end()) else ""
    return _year_date_words(d, mo, y, _date_case(m)) + dot


def _month_date(m: re.Match) -> str:
    case = _date_case(m)
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
    if mult or unit:
        gender = (mult or unit).gender
    else:
        gender = None
        if last.isdigit() and nxt and not b and not m["sign"] and len(last) <= 4:
            ordinal = ordinal_reading(int(last), _next_words(s, m.end()))
            if ordinal:
                return _ru_ord(int(last), *ordinal)
        if last.isdigit() and nxt:
            morph_case, gender = count_agreement(int(last), _next_words(s, m.end()), _PREP_CASE.get(prev))
            case = morph_case or case
        gender = gender or _guess_gender(last, nxt, case)

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


_RU_FINAL_ABBREVIATIONS = {"и прочее", "и так далее", "так далее", "и тому подобное", "тому подобное", "до нашей эры",
                           "нашей эры", "и другие", "рублей", "копеек", "тысяч"}


# Address parts before a number ("д. 5, кв. 12, корп. 2, стр. 1"): read before the numbers are, so the digit
# that tells "д." (дом) from other uses of the letter is still there. "т. д. 5" stays "так далее".
_ADDRESS_WORDS = {"д": "дом", "кв": "квартира", "корп": "корпус", "стр": "строение", "эт": "этаж", "оф": "офис"}
_RU_ADDRESS = re.compile(r"(?<![\w.])(?<!т\. )(?<!т\.)(д|кв|корп|эт|оф)\.\s?(?=\d)"
                         r"|(?<=\d, )(стр)\.\s?(?=\d)")


# Place names before a name take the case the preposition gives ("на улице Ленина", "в городе Москве").
_PLACE_FORMS = {  # n g d a i p
    "улица": ("улица", "улицы", "улице", "улицу", "улицей", "улице"),
    "город": ("город", "города", "городу", "город", "городом", "городе"),
    "область": ("область", "области", "области", "область", "областью", "области"),
    "переулок": ("переулок", "переулка", "переулку", "переулок", "переулком", "переулке"),
    "проспект": ("проспект", "проспекта", "проспекту", "проспект", "проспектом", "проспекте"),
    "посёлок": ("посёлок", "посёлка", "посёлку", "посёлок", "посёлком", "посёлке"),
    "район": ("район", "района", "району", "район", "районом", "районе"),
}
_PLACE_PREP_CASE = {**_PREP_CASE, "в": "p", "во": "p", "на": "p", "по": "d", "за": "i"}


def _abbreviation(m: re.Match) -> str:
    words = _RU_ABBREVIATIONS[int(m.lastgroup[1:])][1]
    if words in _PLACE_FORMS:
        prev = _prev_word(m.string, m.start())
        if prev not in _PLACE_PREP_CASE and re.search(r"(?:ой|ей|ом|ем|ую|ая|ый|ий)$", prev):
            # an adjective in between ("в Московской обл."): the preposition before it
            before = re.search(r"[А-Яа-яЁё]+\s+$", m.string[:m.start()])
            prev = _prev_word(m.string, before.start()) if before else ""
        case = _PLACE_PREP_CASE.get(prev, "n")
        words = _PLACE_FORMS[words]["ngdaip".index(case)]
    # the period stays where it also ends the sentence: before a capital only for abbreviations that cannot
    # precede a name ("и т.д. Потом"), and at the very end of the text for all that end in a period
    ends = words in _RU_FINAL_ABBREVIATIONS and _sentence_end(m.string, m.end())
    ends = ends or (m.group().endswith(".") and re.match(r"(?:\s*[\ue000-\uf8ff])*\s*$", m.string[m.end():]))
    return words + ("." if ends else "")


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
    text = _RU_ADDRESS.sub(lambda m: _ADDRESS_WORDS[m[1] or m[2]] + " ", text)
    text = _RU_NUMDATE.sub(_numeric_date, text)
    text = _RU_ISODATE.sub(_numeric_date, text)
    text = _RU_DAY_FROM.sub(lambda m: m["p"] + _ru_ord(int(m["d"]), "g", "n"), text)
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
    text = _spell_digits(text, lambda m: _ru_card(m.group()))
    # "о" before a numeral that starts with a vowel becomes "об" ("об одной книге"; "о восьми" stays)
    text = re.sub(r"(?<!\w)([оО]) (?=одн|одиннадцат)", r"\1б ", text)
    # and "с"/"к"/"в" before "втор…" become "со"/"ко"/"во" ("со второго", "ко второму", "во втором")
    return re.sub(r"(?<!\w)([сСкКвВ]) (?=втор(?:ого|ому|ом|ой|ую|ые|ых|ым|ыми)(?!\w))", r"\1о ", text)
