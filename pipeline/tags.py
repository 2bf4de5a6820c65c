"""CosyVoice3's fine-grained control tags in the text to say (spec §10.4) and the one check they get.

The known tags (``COSYVOICE3_SPECIAL_TOKENS``: events like ``[breath]``, spans ``<strong>…</strong>`` and
``<laughter>…</laughter>``, pronunciation tags ``[AA1]``/``[ǐ]``) pass the normaliser untouched (``pipeline.text``
copies them around every language's rules). :func:`check_tags` refuses, with the reason, what would otherwise be
read aloud or reach the model half-formed: a tag-like string that is not a known tag (``[whisper]``, ``<b>``,
``[Breath]``), and a span left open, closed twice or crossed. Bracketed numbers (``[1]``) are plain text.
"""

from __future__ import annotations

import re

from .errors import InputError
from .tokenizer import COSYVOICE3_SPECIAL_TOKENS

KNOWN_TAGS = frozenset(t for t in COSYVOICE3_SPECIAL_TOKENS if not t.startswith("<|"))
EVENT_TAGS = tuple(t for t in COSYVOICE3_SPECIAL_TOKENS[3:19] if t.startswith("["))  # [breath] … [mn]
SPANS = {"<strong>": "</strong>", "<laughter>": "</laughter>"}
# tag-like: [word] or <word>, </word>, <word/> with at least one letter and no spaces (so [1] or a < b > c stay text)
_TAG_LIKE = re.compile(r"\[[\w-]*[^\W\d_][\w-]*\]|</?[\w-]*[^\W\d_][\w-]*/?>")


def _known_list() -> str:
    return (", ".join(EVENT_TAGS) + ", <strong>…</strong>, <laughter>…</laughter> and pronunciation tags such as "
            "[AA1] or [ǐ]")


def check_tags(text: str) -> None:
    """Raise :class:`InputError` naming the first unknown tag-like string or unbalanced span in ``text``."""
    closers = {v: k for k, v in SPANS.items()}
    stack: list[str] = []
    for m in _TAG_LIKE.finditer(text):
        tag = m.group()
        if tag not in KNOWN_TAGS:
            hint = (f"tags are lowercase: write {tag.lower()}" if tag.lower() in KNOWN_TAGS else
                    f"the tags CosyVoice3 knows are {_known_list()}")
            raise InputError(f"unknown tag {tag}: {hint}; to have it read as text, write it without brackets")
        if tag in SPANS:
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
        raise InputError(f"{stack[-1]} is opened but not closed: add {SPANS[stack[-1]]} where it ends, or remove "
                         f"{stack[-1]}")
