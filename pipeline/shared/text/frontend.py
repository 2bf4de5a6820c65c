"""The normalisation driver, the prompt text and :class:`TextFrontend` (text → LLM ids)."""

from __future__ import annotations

import re
from collections.abc import Callable

from pipeline.engines.cosyvoice3.tokenizer import ENDOFPROMPT
from pipeline.shared.errors import InputError
from pipeline.shared.text.common import (
    HARD_MAX_TOKENS,
    MAX_TEXT_CHARS,
    SYSTEM_PREFIX,
    Encoder,
    _check_text,
    _prepare,
    _resolve_language,
    check_language,
    has_markup,
)
from pipeline.shared.text.en import _normalize_en
from pipeline.shared.text.ja import _normalize_ja
from pipeline.shared.text.ru import _normalize_ru
from pipeline.shared.text.split import split_text
from pipeline.shared.text.tags import check_tags_in_tokenizer, protect_tags
from pipeline.shared.text.zh import _normalize_zh

_NORMALIZERS: dict[str, Callable[[str], str]] = {"ru": _normalize_ru, "en": _normalize_en, "zh": _normalize_zh,
                                                 "ja": _normalize_ja}


def normalize(text: str, language: str = "auto", *, max_chars: int = MAX_TEXT_CHARS, strict_tags: bool = True) -> str:
    """Spoken form of ``text`` in ``language`` (one of :data:`LANGUAGES`).

    Text with ``<|…|>`` markup is returned exactly as given (upstream's bypass, tags unchecked). Control tags
    are kept exactly as typed (:func:`.tags.protect_tags`). Raises :class:`InputError` for empty or over-long
    text, unknown languages and, unless ``strict_tags`` is false (a prompt transcript), unknown tag-like strings
    and unbalanced span tags.
    """
    check_language(language)
    _check_text(text, max_chars)
    if has_markup(text):
        return text
    protected, restore = protect_tags(text, check=strict_tags)
    lang = _resolve_language(text, language)
    text = restore(_NORMALIZERS[lang](_prepare(protected, lang)))
    text = re.sub(r" {2,}", " ", text).strip()
    text = re.sub(r" +([,.!?;:…])", r"\1", text)
    if lang in ("zh", "ja"):
        text = re.sub(r"[，,、]+$", "。", text)
    return text


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
        check_tags_in_tokenizer(norm, self.tokenizer)
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
            body = normalize(body, language, strict_tags=False)  # a saved voice is never refused later
        return self.tokenizer.encode(prepare_prompt_text(body))
