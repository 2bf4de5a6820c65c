"""CosyVoice3's control tags: the one implementation is :mod:`pipeline.shared.text.tags` (kept here under the names the
worker, page and CLI import)."""

from __future__ import annotations

from pipeline.shared.text.tags import EVENT_TAGS, KNOWN_TAGS, SPAN_TAGS, check_tags

SPANS = SPAN_TAGS

__all__ = ["EVENT_TAGS", "KNOWN_TAGS", "SPANS", "SPAN_TAGS", "check_tags"]
