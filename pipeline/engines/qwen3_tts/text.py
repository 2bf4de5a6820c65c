"""The text a Qwen3-TTS segment is made from: the shared frontend's normalisation and splitting, counted in this
engine's tokens. Upstream has neither (spec §0 step 4); CosyVoice3's control tags are refused, not read aloud."""

from __future__ import annotations

from pipeline.shared.errors import InputError
from pipeline.shared.text import Encoder, TextFrontend
from pipeline.shared.text.tags import find_tags


class SegmentText:
    """``split(text, language)``: the normalised segments, each one utterance (what the page's preview shows)."""

    def __init__(self, tokens: Encoder) -> None:
        self.tokenizer = tokens
        self._frontend = TextFrontend(tokens)

    def split(self, text: str, language: str = "auto") -> list[str]:
        tags = sorted(set(find_tags(text or "")))
        if tags:
            raise InputError(f"Qwen3-TTS reads no control tags ({', '.join(tags)} are CosyVoice3's); "
                             "remove them or write the words instead")
        return self._frontend.split(text, language)
