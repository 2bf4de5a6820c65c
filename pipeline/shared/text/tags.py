"""CosyVoice3's fine-grained control tags: checked, kept out of normalisation, and restored unchanged.

The tags are the special tokens of upstream's ``CosyVoice3Tokenizer`` (spec §10.4) other than the ``<|…|>``
prompt-structure tokens: events (``[breath]``, ``[laughter]``, …), the spans ``<strong>…</strong>`` and
``<laughter>…</laughter>``, and the CMU-phone (``[AA1]``) and pinyin (``[ǐ]``) pronunciation tokens. Each is
matched literally (case matters) and encodes to one id.

Policy for a string that looks like a tag but is not one (``[whisper]``, ``[Breath]``, ``[смех]``, ``<b>``): in the
text to say it is **refused** with an :class:`InputError` that names it and says what to do, never read aloud or
silently dropped. "Looks like a tag" means ``[word]``, ``<word>``, ``</word>`` or ``<word/>`` with at least one letter
(any script) and no spaces; ``[1]``, ``[2024]``, ``[см. выше]`` and ``a < b > c`` are ordinary text and are read. A
span left open, closed without being opened or crossed with the other span is refused too. The page, the API and
the CLI all check with this module (CosyVoice3's ``tags`` re-exports it), so they say the same thing. A voice prompt's
transcript is not checked (a saved voice must never be refused afterwards): :func:`protect_tags` with
``check=False`` keeps the known tags and leaves anything else as text.

:func:`protect_tags` swaps every tag for a private-use character that no normaliser rule touches and returns a
function that puts the tags back; :func:`normalize` uses it, so the text between tags is normalised as one
text (numbers see the words around a tag) while the tags come out byte for byte as typed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pipeline.engines.cosyvoice3.tokenizer import COSYVOICE3_SPECIAL_TOKENS
from pipeline.shared.errors import InputError

KNOWN_TAGS: tuple[str, ...] = tuple(t for t in COSYVOICE3_SPECIAL_TOKENS if not t.startswith("<|"))
SPAN_TAGS: dict[str, str] = {"<strong>": "</strong>", "<laughter>": "</laughter>"}
EVENT_TAGS: tuple[str, ...] = tuple(t for t in KNOWN_TAGS[:KNOWN_TAGS.index("[AA]")]  # before the phone tokens
                                    if t not in SPAN_TAGS and t not in SPAN_TAGS.values())

_TAGS = sorted(KNOWN_TAGS, key=len, reverse=True)
_TAG_RE = re.compile("|".join(re.escape(t) for t in _TAGS))
_SPAN_OPEN = set(SPAN_TAGS)
_SPAN_CLOSE = set(SPAN_TAGS.values())
_KNOWN = set(KNOWN_TAGS)
# tag-like: [word], <word>, </word>, <word/> with at least one letter and no spaces ([1], a < b > c stay text)
TAG_LIKE = re.compile(r"\[[\w-]*[^\W\d_][\w-]*\]|</?[\w-]*[^\W\d_][\w-]*/?>")

# Placeholders: private-use characters (not letters, digits, spaces or punctuation to any rule here).
_PUA_FIRST, _PUA_LAST = 0xE000, 0xF8FF
PLACEHOLDER_CLASS = "[\ue000-\uf8ff]"
_PUA_RE = re.compile(PLACEHOLDER_CLASS)



def _known_list() -> str:
    return (", ".join(EVENT_TAGS) + ", <strong>…</strong>, <laughter>…</laughter> and pronunciation tags such as "
            "[AA1] or [ǐ]")


def check_tags(text: str) -> None:
    """Raise :class:`InputError` naming the first unknown tag-like string or unbalanced span in ``text``."""
    closers = {v: k for k, v in SPAN_TAGS.items()}
    stack: list[str] = []
    for m in TAG_LIKE.finditer(text):
        tag = m.group()
        if tag not in _KNOWN:
            hint = (f"tags are lowercase: write {tag.lower()}" if tag.lower() in _KNOWN else
                    f"the tags CosyVoice3 knows are {_known_list()}")
            raise InputError(f"unknown tag {tag}: {hint}; to have it read as text, write it without brackets")
        if tag in SPAN_TAGS:
            stack.append(tag)
        elif tag in closers:
            if not stack:
                raise InputError(f"{tag} closes nothing: add {closers[tag]} where the marked words begin, or "
                                 f"remove {tag}")
            if stack[-1] != closers[tag]:
                raise InputError(f"{tag} comes while {stack[-1]} inside its span is still open: close "
                                 f"{stack[-1]} first (spans go one inside the other, not across)")
            stack.pop()
    if stack:
        raise InputError(f"{stack[-1]} is opened but not closed: add {SPAN_TAGS[stack[-1]]} where it ends, or remove "
                         f"{stack[-1]}")


def find_tags(text: str) -> list[str]:
    """Every known-tag-shaped string in ``text`` (``[breath]``, ``<strong>``, ``[AA1]``…), in order."""
    return [m.group() for m in _TAG_RE.finditer(text)]


def check_tags_in_tokenizer(text: str, tokenizer: object) -> None:
    """Refuse a known tag that ``tokenizer`` has no token for: a bundle converted from a checkpoint whose yaml has
    no ``get_tokenizer.version: cosyvoice3`` has upstream's CosyVoice2Tokenizer, without the CMU-phone and
    pinyin tokens. Upstream would read ``[AA1]`` there as the five characters; like any other unknown tag, it is
    refused instead of read aloud. A tokenizer without ``token_to_id`` (a test stub) is not asked."""
    token_to_id = getattr(tokenizer, "token_to_id", None)
    if token_to_id is None:
        return
    for m in _TAG_RE.finditer(text):
        if token_to_id(m.group()) is None:
            raise InputError(f"{m.group()} is not a token of this model's text tokenizer (CosyVoice2Tokenizer: "
                             "its cosyvoice3.yaml has no get_tokenizer.version: cosyvoice3, so it has no "
                             "pronunciation tags); write the word itself instead")


def protect_tags(text: str, *, check: bool = True) -> tuple[str, Callable[[str], str]]:
    """Check the tags (:func:`check_tags`, unless ``check`` is false) and replace each known tag with a
    placeholder character.

    Returns the text with placeholders and ``restore``, which turns a processed version of that text back into
    one with the tags. ``restore`` raises ``RuntimeError`` if the processing lost, duplicated or reordered a
    placeholder (a bug in a normaliser, never a user error). Private-use characters already in the text would
    be mistaken for placeholders: with ``check`` they are refused, without it (a transcript) they are removed
    (no reading exists for them).
    """
    if check:
        check_tags(text)
        pua = _PUA_RE.search(text)
        if pua:
            raise InputError(f"the text contains the private-use character U+{ord(pua.group()):04X}, which cannot "
                             "be read; remove it")
    text = _PUA_RE.sub("", text)
    found: list[str] = []

    def sub(m: re.Match) -> str:
        found.append(m.group())
        return chr(_PUA_FIRST + len(found) - 1)

    protected = _TAG_RE.sub(sub, text)
    if len(found) > _PUA_LAST - _PUA_FIRST + 1:
        raise InputError(f"too many tags: {len(found)}, the limit is {_PUA_LAST - _PUA_FIRST + 1}")

    def restore(processed: str) -> str:
        order = [ord(c) - _PUA_FIRST for c in _PUA_RE.findall(processed)]
        if order != list(range(len(found))):
            raise RuntimeError(f"normalisation lost or reordered control tags: {order} for {len(found)} tags")
        return _PUA_RE.sub(lambda m: found[ord(m.group()) - _PUA_FIRST], processed)

    return protected, restore


def _atoms(text: str) -> list[str]:
    """Characters, except that each tag is one atom."""
    out, pos = [], 0
    for m in _TAG_RE.finditer(text):
        out += list(text[pos:m.start()])
        out.append(m.group())
        pos = m.end()
    out += list(text[pos:])
    return out
