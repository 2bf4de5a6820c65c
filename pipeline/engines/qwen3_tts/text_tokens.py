"""Text -> token ids for the talker (spec §2): the chat templates and the position-based slicing they imply.

``target_ids(text)`` tokenizes ``<|im_start|>assistant\\n{text}<|im_end|>\\n<|im_start|>assistant\\n``,
``ref_ids(ref_text)`` tokenizes ``<|im_start|>assistant\\n{ref_text}<|im_end|>\\n``. The talker slices them by
position (prefix 3, suffixes 5 and 2), so a text whose edge tokens would merge with the template (a leading or
trailing newline) is trimmed first and the slices are checked (§2.2 quirk).
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer

from pipeline.shared.errors import BundleError, InputError

ROLE_PREFIX = "<|im_start|>assistant\n"
TARGET_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
REF_SUFFIX = "<|im_end|>\n"


class TextTokens:
    """The bundle's ``text_tokenizer.json`` plus the templates."""

    def __init__(self, tokenizer_json: str | os.PathLike) -> None:
        path = Path(tokenizer_json)
        if not path.is_file():
            raise BundleError(f"{path} is missing (the text tokenizer)")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception for bad JSON
            raise BundleError(f"{path} is not a readable tokenizer.json ({e})") from e
        self._prefix = self.encode(ROLE_PREFIX)
        self._target_suffix = self.encode(TARGET_SUFFIX)
        self._ref_suffix = self.encode(REF_SUFFIX)
        if len(self._prefix) != 3 or len(self._target_suffix) != 5 or len(self._ref_suffix) != 2:
            raise BundleError(f"{path}: the chat template does not tokenize to 3 / 5 / 2 tokens; "
                              "not a Qwen3-TTS tokenizer")

    def encode(self, text: str) -> list[int]:
        """Token ids with special tokens matched literally, no BOS/EOS."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def _wrapped(self, text: str, suffix: str, n_suffix: list[int], what: str) -> list[int]:
        body = text.strip("\r\n")
        if not body.strip():
            raise InputError(f"the {what} is empty")
        ids = self.encode(ROLE_PREFIX + body + suffix)
        if ids[:3] != self._prefix or ids[-len(n_suffix):] != n_suffix or len(ids) <= 3 + len(n_suffix):
            raise InputError(f"the {what} merges with the chat template when tokenized; "
                             "remove special tokens or newlines at its start and end")
        return ids

    def target_ids(self, text: str) -> list[int]:
        """ids of the text to speak (the talker uses ids[:3] and ids[3:-5])."""
        return self._wrapped(text, TARGET_SUFFIX, self._target_suffix, "text")

    def ref_ids(self, ref_text: str) -> list[int]:
        """ids of the prompt transcript (the talker uses ids[3:-2])."""
        return self._wrapped(ref_text, REF_SUFFIX, self._ref_suffix, "prompt transcript")
