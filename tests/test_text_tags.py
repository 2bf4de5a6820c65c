"""Control tags pass normalisation untouched; tag-like strings that are not CosyVoice3 tags are refused."""

from __future__ import annotations

import re

import pytest

from pipeline.engines.cosyvoice3.tokenizer import COSYVOICE3_SPECIAL_TOKENS
from pipeline.shared.errors import InputError
from pipeline.shared.text import KNOWN_TAGS, SPAN_TAGS, check_tags, normalize, protect_tags


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
    ("Привет [smile] мир", "unknown tag [smile]: the tags CosyVoice3 knows are [breath], [noise], [laughter]"),
    ("Привет [Breath]", "unknown tag [Breath]: tags are lowercase: write [breath]; to have it read as text, write "
                        "it without brackets"),
    ("Привет [смех]", "unknown tag [смех]"),
    ("a <b>bold</b> word", "unknown tag <b>"),
    ("line<br/>break", "unknown tag <br/>"),
    ("<strong>громко", "<strong> is opened but not closed: add </strong> where it ends, or remove <strong>"),
    ("громко</strong>", "</strong> closes nothing: add <strong> where the marked words begin, or remove </strong>"),
    ("<strong>а <laughter>б</strong> в</laughter>", "</strong> comes while <laughter> inside its span is still open"),
    ("текст \ue000 с символом", "private-use character U+E000"),
])
def test_bad_tags_are_refused_with_the_reason(text, message):
    with pytest.raises(InputError, match=re.escape(message)):
        normalize(text, "ru")


def test_spans_may_nest():
    text = "<strong>а <laughter>б</laughter> <strong>в</strong></strong>"
    assert normalize(text, "ru") == text


def test_a_transcript_is_never_refused_for_its_brackets():
    """A voice prompt's transcript is normalised with strict_tags=False: known tags kept, the rest read."""
    assert normalize("Он сказал [смех] 2 раза <strong>да", "ru", strict_tags=False) == \
        "Он сказал [смех] два раза <strong>да"
    assert normalize("текст \ue000 тут", "ru", strict_tags=False) == "текст тут"


def test_brackets_that_are_not_tag_like_are_read_as_text():
    check_tags("см. [1] и [2024] и [см. выше] и a < b > c и <3")
    assert normalize("Источник [1], см. [там же]", "ru") == "Источник [один], смотри [там же]"


def test_markup_text_is_passed_as_given_without_tag_checks():
    text = "You are a helpful assistant.<|endofprompt|>[smile] <strong>"
    assert normalize(text, "ru") == text


def test_prompt_ids_keep_a_saved_transcript_with_brackets():
    from pipeline.shared.text.preview import preview_tokenizer

    frontend, _ = preview_tokenizer(None)
    ids = frontend.prompt_ids("Ха [смех] и [breath] 2 раза")
    assert frontend.tokenizer.decode(ids).endswith("<|endofprompt|>Ха [смех] и [breath] два раза")
    with pytest.raises(InputError, match=re.escape("unknown tag [смех]")):
        frontend.split("Ха [смех]", "ru")  # the text to say is checked
