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

Modules: :mod:`.common` (languages, checks, language detection), :mod:`.tags` (control tags), :mod:`.ru` and
:mod:`.ru_words` (Russian), :mod:`.en`, :mod:`.zh`, :mod:`.ja`, :mod:`.split` (segmenting) and
:mod:`.frontend` (the normalisation driver and :class:`TextFrontend`).
"""

from pipeline.shared.text.common import (
    HARD_MAX_TOKENS,
    LANGUAGES,
    MAX_TEXT_CHARS,
    SYSTEM_PREFIX,
    Encoder,
    check_language,
    detect_language,
    has_markup,
)
from pipeline.shared.text.frontend import TextFrontend, normalize, prepare_prompt_text
from pipeline.shared.text.split import split_text
from pipeline.shared.text.tags import KNOWN_TAGS, SPAN_TAGS, check_tags, protect_tags

__all__ = ["HARD_MAX_TOKENS", "KNOWN_TAGS", "LANGUAGES", "MAX_TEXT_CHARS", "SPAN_TAGS", "SYSTEM_PREFIX", "Encoder",
           "TextFrontend", "check_language", "check_tags", "detect_language", "has_markup", "normalize",
           "prepare_prompt_text", "protect_tags", "split_text"]
