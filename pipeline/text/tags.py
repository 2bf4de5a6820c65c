"""CosyVoice3's fine-grained control tags: checked, kept out of normalisation, and restored unchanged.

The tags are the special tokens of upstream's ``CosyVoice3Tokenizer`` (spec §10.4) other than the ``<|…|>``
prompt-structure tokens: events (``[breath]``, ``[laughter]``, …), the spans ``<strong>…</strong>`` and
``<laughter>…</laughter>``, and the CMU-phone (``[AA1]``) and pinyin (``[ǐ]``) pronunciation tokens. Each is
matched literally (case matters) and encodes to one id.

Policy for a string that looks like a tag but is not one (``[smile]``, ``[Breath]``, ``[смех]``, ``<b>``): it is
**refused** with an :class:`InputError` that names it and says what to do, never read aloud or silently dropped.
"Looks like a tag" means ``[`` one word ``]`` starting with a letter (any script; no spaces) or
``<name>``/``</name>`` with a Latin name. Brackets around numbers or several words (``[1]``, ``[см. выше]``)
are ordinary text and are read. A span left open, closed without being opened, crossed with the other span or
opened inside itself is refused too.

:func:`protect_tags` swaps every tag for a private-use character that no normaliser rule touches and returns a
function that puts the tags back; :func:`normalize` uses it, so the text between tags is normalised as one
text (numbers see the words around a tag) while the tags come out byte for byte as typed.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import InputError
from ..tokenizer import COSYVOICE3_SPECIAL_TOKENS

KNOWN_TAGS: tuple[str, ...] = tuple(t for t in COSYVOICE3_SPECIAL_TOKENS if not t.startswith("<|"))
SPAN_TAGS: dict[str, str] = {"<strong>": "</strong>", "<laughter>": "</laughter>"}
EVENT_TAGS: tuple[str, ...] = tuple(t for t in KNOWN_TAGS[:KNOWN_TAGS.index("[AA]")]  # before the phone tokens
                                    if t not in SPAN_TAGS and t not in SPAN_TAGS.values())

_TAGS = sorted(KNOWN_TAGS, key=len, reverse=True)
_TAG_RE = re.compile("|".join(re.escape(t) for t in _TAGS))
_SPAN_OPEN = set(SPAN_TAGS)
_SPAN_CLOSE = set(SPAN_TAGS.values())
_KNOWN = set(KNOWN_TAGS)
TAG_LIKE = re.compile(r"\[[^\W\d_][\w-]*\]|</?[A-Za-z][A-Za-z0-9_-]*>")

# Placeholders: private-use characters (not letters, digits, spaces or punctuation to any rule here).
_PUA_FIRST, _PUA_LAST = 0xE000, 0xF8FF
PLACEHOLDER_CLASS = "[\ue000-\uf8ff]"
_PUA_RE = re.compile(PLACEHOLDER_CLASS)

_KNOWN_SUMMARY = (", ".join(EVENT_TAGS) + ", <strong>…</strong>, <laughter>…</laughter>, the CMU phones "
                  "[AA]…[ZH] and the pinyin tokens [a]…[ǜ]")


def _unknown_tag_message(tag: str) -> str:
    near = [t for t in KNOWN_TAGS if t.lower() == tag.lower()]
    hint = f"did you mean {near[0]}? Tags are case-sensitive. " if near else ""
    return (f"unknown tag {tag}: CosyVoice3 has no such tag, and the model would get it as text to read, "
            f"brackets and all. {hint}"
            f"Known tags: {_KNOWN_SUMMARY}. To have the word read, write it without the brackets")


def check_tags(text: str) -> None:
    """Raise :class:`InputError` for a tag-like string that is not a CosyVoice3 tag, or a span tag that is left
    open, closes nothing, crosses the other span or is opened inside itself."""
    for m in TAG_LIKE.finditer(text):
        if m.group() not in _KNOWN:
            raise InputError(_unknown_tag_message(m.group()))
    stack: list[str] = []
    for m in _TAG_RE.finditer(text):
        tag = m.group()
        if tag in _SPAN_OPEN:
            if tag in stack:
                raise InputError(f"{tag} is opened again inside {tag}…{SPAN_TAGS[tag]}: close the first one before "
                                 "opening another")
            stack.append(tag)
        elif tag in _SPAN_CLOSE:
            opener = next(o for o, c in SPAN_TAGS.items() if c == tag)
            if not stack or stack[-1] != opener:
                if opener in stack:
                    raise InputError(f"{tag} closes {opener} while {stack[-1]} inside it is still open: close "
                                     f"{SPAN_TAGS[stack[-1]]} first")
                raise InputError(f"{tag} closes nothing: put {opener} before the words it should cover, "
                                 f"or remove {tag}")
            stack.pop()
    if stack:
        raise InputError(f"{stack[-1]} is left open: add {SPAN_TAGS[stack[-1]]} after the words it should cover")


def protect_tags(text: str) -> tuple[str, Callable[[str], str]]:
    """Check the tags (:func:`check_tags`) and replace each with a placeholder character.

    Returns the text with placeholders and ``restore``, which turns a processed version of that text back into
    one with the tags. ``restore`` raises ``RuntimeError`` if the processing lost, duplicated or reordered a
    placeholder (a bug in a normaliser, never a user error). Text that already holds private-use characters
    is refused (they would be mistaken for placeholders).
    """
    check_tags(text)
    pua = _PUA_RE.search(text)
    if pua:
        c = pua.group()
        raise InputError(f"the text contains the private-use character U+{ord(c):04X}, which cannot be read; "
                         "remove it")
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
