"""Seeded synthetic inputs of fixed size for ``bench --engine qwen3-tts``, shared by the engine and the upstream
reference (both get the very same strings and samples).

Texts are made of common English words that are each one token with a leading space, so a text of ``n`` words is
``n`` tokens between the chat template's prefix and suffix (checked with the bundle's tokenizer, which is the
checkpoint's). The prompt recording is seeded noise of exactly ``prompt_frames`` × 1920 samples at 24 kHz, so the
prompt encoder gives ``prompt_frames`` frames of codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.shared.errors import InputError

from .text_tokens import TextTokens

WORDS = ("the time people way year day man thing woman life child world school state family student group "
         "country problem hand part place case week company system program question work government number night "
         "point home water room mother area money story fact month lot right study book eye job word business "
         "issue side kind head house service friend father power hour game line end member law car city name "
         "team minute idea kid body back parent face others level office door health person art war history "
         "party result change morning reason research girl guy moment air teacher force education").split()
SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 1920


@dataclass(frozen=True)
class BenchInputs:
    text: str  # the text to speak: ``text_tokens`` tokens
    ref_text: str  # the prompt transcript: ``prompt_text_tokens`` tokens
    wav: np.ndarray  # (prompt_frames · 1920,) float32 at 24 kHz
    text_tokens: int
    prompt_text_tokens: int
    prompt_frames: int


def _one_token_words(tokens: TextTokens) -> list[str]:
    return [w for w in WORDS if len(tokens.encode(" " + w)) == 1 and len(tokens.encode(w)) == 1]


def words_text(tokens: TextTokens, n: int, rng: np.random.Generator, *, target: bool) -> str:
    """A text of ``n`` one-token words whose templated ids hold exactly ``n`` text tokens."""
    vocab = _one_token_words(tokens)
    if len(vocab) < 10:
        raise InputError("the bundle's tokenizer does not split English words as Qwen2's does")
    for _ in range(50):
        text = " ".join(rng.choice(vocab, n))
        ids = tokens.target_ids(text) if target else tokens.ref_ids(text)
        if len(ids) - (8 if target else 5) == n:
            return text
    raise InputError(f"could not make a text of exactly {n} tokens")


def make_inputs(tokens: TextTokens, *, text_tokens: int, prompt_text_tokens: int, prompt_frames: int,
                seed: int) -> BenchInputs:
    """Deterministic in ``seed``; noise at about -20 dBFS (std 0.1)."""
    rng = np.random.default_rng(seed + 1000)
    text = words_text(tokens, text_tokens, rng, target=True)
    ref_text = words_text(tokens, prompt_text_tokens, rng, target=False)
    wav = (0.1 * rng.standard_normal(prompt_frames * SAMPLES_PER_FRAME)).astype(np.float32)
    return BenchInputs(text, ref_text, wav, text_tokens, prompt_text_tokens, prompt_frames)
