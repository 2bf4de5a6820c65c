"""Segmenting: upstream's ``split_paragraph`` plus a hard per-segment token cap."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from pipeline.shared.errors import InputError
from pipeline.shared.text.common import HARD_MAX_TOKENS, Encoder, _resolve_language, check_language, has_markup
from pipeline.shared.text.tags import _SPAN_CLOSE, _SPAN_OPEN, _atoms

_TERMINATORS = {"zh": "。？！；：、.?!;", "other": ".?!;:"}
_CLOSERS = set("\"”»’')）」』")
_FIT_SEPARATORS = (re.compile(r"(?<=[,，、;；:：])|(?= [–—-] )"), re.compile(r"(?= )"))


def _only_punctuation(s: str) -> bool:
    return all(unicodedata.category(c)[0] in "PSZ" for c in s)


def _sentences(text: str, terminators: str) -> list[str]:
    """Cut after each terminator outside ``<strong>``/``<laughter>`` spans; closing quotes and closing
    tags that follow stay with the sentence they close."""
    pieces, cur, depth = [], [], 0
    atoms = _atoms(text)
    i = 0
    while i < len(atoms):
        a = atoms[i]
        cur.append(a)
        depth += (a in _SPAN_OPEN) - (a in _SPAN_CLOSE)
        if a in terminators and depth <= 0:
            while i + 1 < len(atoms) and (atoms[i + 1] in _CLOSERS or atoms[i + 1] in _SPAN_CLOSE):
                i += 1
                cur.append(atoms[i])
            pieces.append("".join(cur))
            cur, depth = [], 0
        i += 1
    if cur:
        pieces.append("".join(cur))
    return [p for p in pieces if p]


def _fit(piece: str, count: Callable[[str], int], target: int, cap: int, level: int = 0) -> list[str]:
    """Cut a piece with more than ``cap`` tokens at commas, then spaces, then between characters, packing
    the parts into chunks of at most ``target`` tokens."""
    if count(piece.strip()) <= cap:
        return [piece]
    if level < len(_FIT_SEPARATORS):
        parts = [p for p in _FIT_SEPARATORS[level].split(piece) if p]
    else:
        parts = _atoms(piece)
    if len(parts) == 1 and level < len(_FIT_SEPARATORS):
        return _fit(piece, count, target, cap, level + 1)
    out, cur = [], ""
    for part in parts:
        subs = _fit(part, count, target, cap, level + 1) if level < len(_FIT_SEPARATORS) else [part]
        for sub in subs:
            if cur and count((cur + sub).strip()) > target:
                out.append(cur)
                cur = ""
            cur += sub
    if cur:
        out.append(cur)
    return out


def split_text(text: str, language: str, tokenizer: Encoder, *, max_tokens: int = 80, min_tokens: int = 60,
               merge_len: int = 20, hard_max_tokens: int = HARD_MAX_TOKENS) -> list[str]:
    """Upstream's ``split_paragraph`` on normalised text, with a hard per-segment token cap.

    Sentences are merged greedily: a new segment starts when adding the next sentence would pass
    ``max_tokens`` and the current one already has more than ``min_tokens``; a final remainder shorter
    than ``merge_len`` joins the previous segment (zh measures in characters, as upstream). On top of
    that no segment gets more than ``hard_max_tokens`` tokens: longer sentences are cut at commas,
    then spaces. Segments are stripped; punctuation-only ones are dropped. Text with ``<|…|>`` markup is
    one segment (upstream) and raises :class:`InputError` if it is over the cap.
    """
    check_language(language)
    if not 1 <= min_tokens <= max_tokens <= hard_max_tokens or hard_max_tokens < 8:
        raise ValueError("need 1 <= min_tokens <= max_tokens <= hard_max_tokens and hard_max_tokens >= 8")

    def count(s: str) -> int:
        return len(tokenizer.encode(s))

    if not text.strip():
        return []
    if has_markup(text):
        n = count(text)
        if n > hard_max_tokens:
            raise InputError(f"text with <|…|> markup is passed to the model as it is and must stay under "
                             f"{hard_max_tokens} tokens; it has {n}. Shorten it or remove the markup")
        return [text]
    lang = _resolve_language(text, language)
    zh = lang == "zh"
    length = len if zh else count
    terminators = _TERMINATORS["zh" if lang in ("zh", "ja") else "other"]
    text = text.strip()
    tail = text
    while tail and (tail[-1] in _CLOSERS or tail.endswith(tuple(_SPAN_CLOSE))):
        tail = tail[:-1] if tail[-1] in _CLOSERS else tail[:tail.rindex("<")]
    if not tail or tail[-1] not in terminators:
        text += "。" if lang in ("zh", "ja") else "."

    pieces: list[str] = []
    for sentence in _sentences(text, terminators):
        pieces += _fit(sentence, count, max_tokens, hard_max_tokens)

    segments, cur = [], ""
    for piece in pieces:
        if cur and ((length(cur + piece) > max_tokens and length(cur) > min_tokens)
                    or count((cur + piece).strip()) > hard_max_tokens):
            segments.append(cur)
            cur = ""
        cur += piece
    if cur:
        if segments and length(cur) < merge_len and count((segments[-1] + cur).strip()) <= hard_max_tokens:
            segments[-1] += cur
        else:
            segments.append(cur)
    return [s for s in (seg.strip() for seg in segments) if s and not _only_punctuation(s)]
