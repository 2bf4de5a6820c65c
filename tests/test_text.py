"""Text frontend: normalisation (ru/en/zh/ja), splitting with a hard token cap, prompt text, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.engines.cosyvoice3.tokenizer import ENDOFPROMPT_ID, TextTokenizer, build_tokenizer
from pipeline.shared.errors import InputError
from pipeline.shared.text import (
    HARD_MAX_TOKENS,
    LANGUAGES,
    SYSTEM_PREFIX,
    TextFrontend,
    detect_language,
    normalize,
    prepare_prompt_text,
    split_text,
)

QWEN2 = Path(__file__).parent.parent / "assets" / "qwen2-tokenizer"
DIGIT_OR_ENGLISH_NUMBER = re.compile(r"\d|\b(?:one|two|three|four|five|hundred|thousand|percent)\b", re.I)


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer(build_tokenizer(QWEN2 / "vocab.json", QWEN2 / "merges.txt"))


@pytest.fixture(scope="module")
def frontend(tok) -> TextFrontend:
    return TextFrontend(tok)


def test_languages():
    assert LANGUAGES == ("ru", "en", "zh", "ja", "auto")


@pytest.mark.parametrize(("text", "lang"), [
    ("Привет, как дела?", "ru"), ("Python 3.12 вышел", "ru"), ("Hello there", "en"), ("你好，世界", "zh"),
    ("こんにちは、世界", "ja"), ("カタカナ", "ja"), ("12345", "ru"), ("[breath] Привет", "ru"),
])
def test_detect_language(text, lang):
    assert detect_language(text) == lang


RU_CASES = [
    ("В 2024 году цена выросла на 15%",
     "В две тысячи двадцать четвёртом году цена выросла на пятнадцать процентов"),
    ("Было -5 градусов, стало 3,5 или 2.75.",
     "Было минус пять градусов, стало три целых пять десятых или две целых семьдесят пять сотых."),
    ("Он пришёл 1-й, а она 2-го числа; 21-е место.", "Он пришёл первый, а она второго числа; двадцать первое место."),
    ("XIX век", "девятнадцатый век"),
    ("в XIX веке", "в девятнадцатом веке"),
    ("Гагарин полетел в космос 12.04.1961.",
     "Гагарин полетел в космос двенадцатого апреля тысяча девятьсот шестьдесят первого года."),
    ("1 января 2024 г. наступил Новый год.",
     "первого января две тысячи двадцать четвёртого года наступил Новый год."),
    ("С 1 января цена 100 руб.", "С первого января цена сто рублей."),
    ("Это стоит $5 или 5 € или 1 500 ₽.", "Это стоит пять долларов или пять евро или тысяча пятьсот рублей."),
    ("Это стоит 5,50 руб.", "Это стоит пять рублей пятьдесят копеек."),
    ("Осталось 50 коп.", "Осталось пятьдесят копеек."),
    ("т.е. всё, и т.д. и т.п.", "то есть всё, и так далее и тому подобное."),
    ("Иванов, Петров и др.", "Иванов, Петров и другие."),
    ("Москва, г. Москва.", "Москва, город Москва."),
    ("В 1941–1945 гг. шла война.", "В тысяча девятьсот сорок первом – тысяча девятьсот сорок пятом годах шла война."),
    ("Около 3 тыс. км, 2 кг, 5 млн руб., 7 млрд долларов.",
     "Около трёх тысяч километров, два килограмма, пять миллионов рублей, семь миллиардов долларов."),
    ("от 5 до 10 человек", "от пяти до десяти человек"),
    ("к 5 часам", "к пяти часам"),
    ("на 3-й странице", "на третьей странице"),
    ("В 1990-х годах", "В тысяча девятьсот девяностых годах"),
    ("2 книги, 1 окно, 21 день", "две книги, одно окно, двадцать один день"),
    ("Встреча в 12:30.", "Встреча в двенадцать тридцать."),
    ("Ему 101 год.", "Ему сто один год."),
    ("Температура -5°C.", "Температура минус пять градусов Цельсия."),
    ("1 000 000", "один миллион"),
]


@pytest.mark.parametrize(("text", "expected"), RU_CASES)
def test_normalize_russian(text, expected):
    assert normalize(text, "ru") == expected


def test_russian_never_gets_digits_or_english_words():
    for text, _ in RU_CASES:
        cyrillic = re.search("[а-яё]", text, re.I)
        for lang in ("ru", "auto", "en") if cyrillic else ("ru", "auto"):  # "en" on Cyrillic → Russian path
            out = normalize(text, lang)
            assert not DIGIT_OR_ENGLISH_NUMBER.search(out), (lang, text, out)


@pytest.mark.parametrize(("text", "expected"), [
    ("It costs $5.99, or $1.", "It costs five dollars and ninety-nine cents, or one dollar."),
    ("Growth was 15% in 2024.", "Growth was fifteen percent in twenty twenty-four."),
    ("He finished 1st and 22nd.", "He finished first and twenty-second."),
    ("We sold 1,500 units at 9:05.", "We sold one thousand five hundred units at nine oh five."),
    ("Pi is 3.14, not -5.", "Pi is three point one four, not minus five."),
    ("Mr. Smith vs. Dr. Who, etc.", "Mister Smith versus Doctor Who, et cetera."),
])
def test_normalize_english(text, expected):
    assert normalize(text, "en") == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("今天是2024年5月1日，气温-5度。", "今天是二零二四年五月一日，气温负五度。"),
    ("增长了15%，价格3.14元", "增长了百分之十五，价格三点一四元"),
    ("共有10005人", "共有一万零五人"),
    ("你好 世界 hello world", "你好世界hello world"),  # upstream replace_blank
    ("（注意）【重要】结束.", "注意重要结束。"),  # brackets removed, "." → "。"
    ("我们走吧，", "我们走吧。"),  # trailing comma → 。
    ("面积是5m²", "面积是五m平方"),
])
def test_normalize_chinese(text, expected):
    assert normalize(text, "zh") == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("今日は２０２４年です!", "今日は二千二十四年です！"),
    ("ｺﾝﾆﾁﾊ、世界?", "コンニチハ、世界？"),
    ("価格は15%です。", "価格は十五パーセントです。"),
    ("カタカナ (テスト) です,", "カタカナテストです。"),
])
def test_normalize_japanese(text, expected):
    assert normalize(text, "ja") == expected


def test_tags_pass_through_untouched():
    text = "Привет [breath] мир, <strong>2 раза</strong> [laughter] и 5 [AA] <laughter>ха</laughter>."
    assert normalize(text, "ru") == (
        "Привет [breath] мир, <strong>два раза</strong> [laughter] и пять [AA] <laughter>ха</laughter>.")
    assert normalize("你好[breath]世界 [laughter] 再见", "zh") == "你好[breath]世界[laughter]再见"


def test_markup_bypasses_normalisation():
    text = "  You are a helpful assistant.<|endofprompt|>В 2024 году 15%  "
    assert normalize(text, "ru") == text
    assert normalize("<|endofprompt|>(1) 12.04.1961", "auto") == "<|endofprompt|>(1) 12.04.1961"


def test_line_breaks_end_sentences():
    assert normalize("Заголовок\nТекст идёт дальше,\nи ещё", "ru") == "Заголовок. Текст идёт дальше, и ещё"


@pytest.mark.parametrize(("text", "language", "message"), [
    ("", "ru", "text is empty: type something to say"),
    ("   \n\t", "auto", "text is empty: type something to say"),
    ("Привет", "de", "unknown language 'de'; choose one of ru, en, zh, ja, auto"),
    ("а" * 5001, "ru", "text is too long: 5001 characters, the limit is 5000"),
])
def test_bad_input_messages(frontend, text, language, message):
    with pytest.raises(InputError, match=re.escape(message)):
        normalize(text, language)
    with pytest.raises(InputError, match=re.escape(message)):
        frontend.segments(text, language)


def test_punctuation_only_text_is_rejected(frontend):
    with pytest.raises(InputError, match="only punctuation"):
        frontend.segments("... !!! ???", "ru")


LONG_RU = (
    "Москва — столица России, город федерального значения, административный центр Центрального федерального "
    "округа и центр Московской области, в состав которой не входит. Крупнейший по численности населения город "
    "России и её субъект — 13 149 803 человека, самый населённый из городов, полностью расположенных в Европе. "
) * 5 + "Очень длинное предложение без точек " + ", ".join(f"пункт {i} и ещё слово" for i in range(70)) + "."


def test_split_long_russian_paragraph_respects_cap(frontend, tok):
    segs = frontend.split(LONG_RU, "ru")
    assert len(segs) > 5
    counts = [len(tok.encode(s)) for s in segs]
    assert max(counts) <= HARD_MAX_TOKENS
    assert all(c >= 20 for c in counts)  # merge_len: no tiny tail segments
    norm = normalize(LONG_RU, "ru")
    assert "".join(segs).replace(" ", "") == norm.replace(" ", "")  # nothing lost or reordered
    assert all(not re.search(r"\d", s) for s in segs)


def test_split_follows_upstream_merging(tok):
    sent = "Это короткое предложение номер один."  # 11 tokens, 10 with a leading space
    segs = split_text(" ".join([sent] * 30), "ru", tok)
    # a segment closes once it has more than 60 tokens and the next sentence would pass 80:
    # 11+6*10 = 71, then 8*10 = 80 twice, and the 7 left (70 tokens) are over merge_len
    assert [s.count("предложение") for s in segs] == [7, 8, 8, 7]
    assert split_text("Привет. Как дела? Хорошо!", "ru", tok) == ["Привет. Как дела? Хорошо!"]


def test_split_adds_final_terminator_and_drops_punctuation_pieces(tok):
    assert split_text("Привет", "ru", tok) == ["Привет."]
    assert split_text("你好", "zh", tok) == ["你好。"]
    assert split_text("...", "ru", tok) == []


def test_split_without_spaces_or_punctuation_respects_cap(tok):
    for text, lang in (("слово" * 900, "ru"), ("你好" * 900, "zh")):
        segs = split_text(text, lang, tok)
        assert max(len(tok.encode(s)) for s in segs) <= HARD_MAX_TOKENS
        assert "".join(segs).rstrip(".。") == text


def test_split_zh_counts_characters(tok):
    text = "今天天气很好，我们去公园散步吧。" * 12  # 16 characters per sentence
    segs = split_text(text, "zh", tok)
    assert [len(s) for s in segs] == [80, 80, 32]  # 5 sentences of 16 characters reach 80, then cut


def test_split_never_cuts_inside_emphasis_or_tags(tok):
    text = ("Первое предложение здесь. " * 8 + "<strong>Да. Нет. Может быть.</strong> [breath] "
            + "Последнее предложение тут. " * 8)
    segs = split_text(text, "ru", tok)
    for s in segs:
        assert s.count("<strong>") == s.count("</strong>")
    assert any("<strong>Да. Нет. Может быть.</strong>" in s for s in segs)
    assert sum(s.count("[breath]") for s in segs) == 1


def test_split_markup_is_one_segment_or_an_error(tok):
    text = "You are a helpful assistant.<|endofprompt|>Говори. Быстро."
    assert split_text(text, "ru", tok) == [text]
    with pytest.raises(InputError, match="markup"):
        split_text("<|endofprompt|>" + "слово " * 200, "ru", tok)


def test_prepare_prompt_text():
    from pipeline.engines.cosyvoice3.convert import upstream

    assert SYSTEM_PREFIX == upstream.SYSTEM_PREFIX == "You are a helpful assistant.<|endofprompt|>"
    assert prepare_prompt_text(" Привет, мир. ") == "You are a helpful assistant.<|endofprompt|>Привет, мир."
    own = "You are a helpful assistant. Говори медленно.<|endofprompt|>Привет"
    assert prepare_prompt_text(own) == own


def test_frontend_segments_and_prompt_ids(frontend, tok):
    segs = frontend.segments("В 2024 году цена выросла на 15%. [breath] Это много!", "auto")
    assert len(segs) == 1
    assert 151647 in segs[0] and ENDOFPROMPT_ID not in segs[0]
    assert tok.decode(segs[0]) == ("В две тысячи двадцать четвёртом году цена выросла на пятнадцать процентов. "
                                   "[breath] Это много!")
    ids = frontend.prompt_ids("Мне 5 лет.")
    assert ids[:7] == [2610, 525, 264, 10950, 17847, 13, ENDOFPROMPT_ID]
    assert ids.count(ENDOFPROMPT_ID) == 1
    assert tok.decode(ids[7:]) == "Мне пять лет."
    assert frontend.prompt_ids("") == tok.encode(SYSTEM_PREFIX)
