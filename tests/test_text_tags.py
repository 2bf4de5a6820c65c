"""Control tags pass normalisation untouched; tag-like strings that are not CosyVoice3 tags are refused."""

from __future__ import annotations

import re

import pytest

from pipeline.errors import InputError
from pipeline.text import KNOWN_TAGS, SPAN_TAGS, check_tags, normalize, protect_tags
from pipeline.tokenizer import COSYVOICE3_SPECIAL_TOKENS


def test_known_tags_are_the_tokenizer_special_tokens_without_prompt_markup():
    assert set(KNOWN_TAGS) == {t for t in COSYVOICE3_SPECIAL_TOKENS if not t.startswith("<|")}
    assert {"[breath]", "[laughter]", "<strong>", "</laughter>", "[AA1]", "[ZH]", "[ǐ]", "[j]"} <= set(KNOWN_TAGS)
    assert len(KNOWN_TAGS) == 278 - 2 and SPAN_TAGS == {"<strong>": "</strong>", "<laughter>": "</laughter>"}


@pytest.mark.parametrize(("text", "lang"), [
    ("[breath] Встретимся 1 мая [laughter], <strong>2 раза</strong> [quick_breath] и [vocalized-noise]!", "ru"),
    ("[AA1][B] [HH][AH0] in 2024 <laughter>ha</laughter> [sigh]", "en"),
    ("高管也通过电话、短信、微信等方式对报道[j][ǐ]予好评。[breath]", "zh"),
    ("カタカナ[breath]です[cough]。", "ja"),
])
def test_every_tag_comes_out_as_typed(text, lang):
    out = normalize(text, lang)
    assert re.findall(r"\[[^\]]+\]|</?\w+>", out) == re.findall(r"\[[^\]]+\]|</?\w+>", text)
    assert not re.search(r"\d", re.sub(r"\[[^\]]+\]", "", out))  # CMU phones carry stress digits


def test_numbers_next_to_tags_read_as_without_them():
    assert normalize("Встретимся 1 мая [breath] с 2 друзьями.", "ru") == \
        "Встретимся первого мая [breath] с двумя друзьями."
    assert normalize("Это стоит 500 руб. [breath] Пока!", "ru") == "Это стоит пятьсот рублей. [breath] Пока!"
    assert normalize("Это было в 1961 [breath] году", "ru").startswith("Это было в тысяча девятьсот шестьдесят")


def test_protect_tags_round_trip_and_loss_detection():
    text = "[breath] A <strong>b</strong> [AA1]"
    protected, restore = protect_tags(text)
    assert not any(t in protected for t in ("[breath]", "<strong>", "[AA1]")) and "A" in protected
    assert restore(protected) == text
    assert restore(protected.upper()) == "[breath] A <strong>B</strong> [AA1]"  # processing between tags is kept
    with pytest.raises(RuntimeError, match="lost or reordered"):
        restore(protected[1:])  # a normaliser that dropped a tag is a bug, never silent


@pytest.mark.parametrize(("text", "message"), [
    ("Привет [smile] мир", "unknown tag [smile]: CosyVoice3 has no such tag"),
    ("Привет [Breath]", "unknown tag [Breath]: .* did you mean [breath]? Tags are case-sensitive"),
    ("Привет [смех]", "unknown tag [смех]"),
    ("a <b>bold</b> word", "unknown tag <b>"),
    ("<strong>громко", "<strong> is left open: add </strong> after the words it should cover"),
    ("громко</strong>", "</strong> closes nothing: put <strong> before the words"),
    ("<strong>а <laughter>б</strong> в</laughter>", "</strong> closes <strong> while <laughter> inside it is still"),
    ("<strong>а <strong>б</strong></strong>", "<strong> is opened again inside <strong>…</strong>"),
    ("текст \ue000 с символом", "private-use character U+E000"),
])
def test_bad_tags_are_refused_with_the_reason(text, message):
    with pytest.raises(InputError, match=re.escape(message).replace(r"\.\*", ".*")):
        normalize(text, "ru")


def test_brackets_that_are_not_tag_like_are_read_as_text():
    check_tags("см. [1] и [см. выше] и a < b > c и <3")
    assert normalize("Источник [1], см. [там же]", "ru") == "Источник [один], смотри [там же]"


def test_markup_text_is_passed_as_given_without_tag_checks():
    text = "You are a helpful assistant.<|endofprompt|>[smile] <strong>"
    assert normalize(text, "ru") == text
