"""CosyVoice3's fine-grained control tags: the text between them is normalised, the tags never are."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..tokenizer import COSYVOICE3_SPECIAL_TOKENS

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
