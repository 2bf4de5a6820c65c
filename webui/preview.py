"""The read-only preview under the text box: what will be read, one part per line, as ``cosyvoice-rk normalize``.

Runs in the web process without any model: :func:`pipeline.shared.text.preview.preview` needs only the bundle's
``tokenizer.json`` (or this repository's Qwen2 tokenizer files when there is no bundle) to cut the parts.
"""

from __future__ import annotations

from typing import Any

from pipeline.shared.errors import CosyVoiceRKError
from pipeline.shared.text.preview import preview

from .client import Studio
from .i18n import localize, t
from .views import _err, _esc


def preview_md(studio: Studio, text: str | None, language: str, lang: str) -> str:
    """HTML of the preview: the parts of ``text`` as they will be read, or why it cannot be read."""
    if not text or not text.strip():
        return ""
    if len(text) > studio.max_text_chars:
        return ""  # the character counter and Generate already say so
    try:
        parts = preview(text, language, studio.bundle_path)
    except CosyVoiceRKError as e:
        return _err(localize(str(e), lang))
    items = "".join(f"<li>{_esc(p)}</li>" for p in parts)
    return f'<div class="cv-preview"><p>{_esc(t("preview_title", lang, n=len(parts)))}</p><ol>{items}</ol></div>'


def wire_preview(studio: Studio, box: Any, lang: Any, text: Any, language: Any) -> None:
    """Update ``box`` (an HTML component under the text box) when the text, its language or the page language
    changes."""

    def update(text_: str | None, language_: str, lang_: str) -> str:
        return preview_md(studio, text_, language_, lang_)

    for trigger in (text.change, language.change, lang.change):
        trigger(update, [text, language, lang], [box], api_visibility="private", show_progress="hidden",
                trigger_mode="always_last")
