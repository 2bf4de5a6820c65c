"""The CosyVoice3 speech LM on llama.cpp (low-level ctypes API of llama-cpp-python), no torch.

The GGUF (see ``pipeline.engines.cosyvoice3.convert.llm_gguf``) is a Qwen2 whose token vocabulary is the speech vocab:
speech ids (including sos / task_id) go in as token ids, text goes in as rows of
``text_embedding.npy`` through ``llama_batch.embd``. One batch cannot mix the two, so the zero-shot
prefill is three decode calls whose positions continue: ``[sos]`` ids, text embeddings,
``[task_id, *prompt speech]`` ids. That equals upstream's single ``inputs_embeds`` prefill.

:class:`SpeechLM` owns exactly one model, one context (one sequence, id 0) and two reusable batches,
all freed by :meth:`SpeechLM.close`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.shared.errors import BackendError, BundleError, InputError
from pipeline.shared.llama import LlamaModel


class SpeechLM(LlamaModel):
    """One llama.cpp context over a speech-vocab Qwen2 GGUF (a bundle's ``llm`` section)."""

    @classmethod
    def from_bundle(cls, bundle: Any, quant: str | None = None, n_threads: int | None = None,
                    exact: bool = False, *, n_ctx: int = 4096, kv_type: str = "f16") -> SpeechLM:
        llm = bundle.manifest["llm"]
        quant = quant or llm["default_quant"]
        files = llm["gguf"]
        if quant not in files:
            raise BundleError(f"bundle {bundle.root} has no {quant} LLM; it has {', '.join(files)}")
        return cls(bundle.path(files[quant]), n_ctx=n_ctx, n_threads=n_threads, exact=exact, kv_type=kv_type)


class TextEmbedding:
    """``embed_tokens`` of the Qwen2 body, memory-mapped from an .npy (text vocab x hidden, float32)."""

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            self.table = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise BundleError(f"text embedding {path} is unreadable ({e})") from e
        if self.table.ndim != 2 or self.table.dtype != np.float32:
            raise BundleError(f"text embedding {path} must be a 2-D float32 array, "
                              f"got {self.table.dtype} {self.table.shape}")
        self.vocab, self.hidden = (int(x) for x in self.table.shape)

    @classmethod
    def from_bundle(cls, bundle: Any) -> TextEmbedding:
        return cls(bundle.path(bundle.manifest["llm"]["text_embedding"]))

    def lookup(self, ids: Sequence[int]) -> np.ndarray:
        """Rows for ``ids`` as a new float32 (n, hidden) array."""
        a = np.asarray(ids, dtype=np.int64).reshape(-1)
        bad = a[(a < 0) | (a >= self.vocab)]
        if bad.size:
            raise InputError(f"text token id {int(bad[0])} is outside the text vocabulary "
                             f"0..{self.vocab - 1} (tokenizer and model bundle do not match?)")
        return np.array(self.table[a], dtype=np.float32)


@dataclass(frozen=True)
class Prefill:
    """Zero-shot LLM prefill (spec §3.2) as llama.cpp inputs, in order:
    ``head_ids`` = [sos], ``text_embeds`` = embed_tokens(prompt text + tts text),
    ``tail_ids`` = [task_id, *prompt speech tokens]."""

    head_ids: tuple[int, ...]
    text_embeds: np.ndarray
    tail_ids: tuple[int, ...]

    @property
    def n_positions(self) -> int:
        return len(self.head_ids) + self.text_embeds.shape[0] + len(self.tail_ids)

    def run(self, lm: SpeechLM) -> np.ndarray:
        """Feed the prefill at ``lm``'s current position; return the logits for the first speech token."""
        if lm.n_past + self.n_positions > lm.n_ctx:
            raise BackendError(f"LLM context too small: the prompt needs {self.n_positions} positions, "
                               f"{lm.n_ctx - lm.n_past} are free; shorten the prompt audio or text")
        lm.feed(self.head_ids)
        if self.text_embeds.shape[0]:
            lm.prefill(self.text_embeds)
        return lm.feed(self.tail_ids)

    def as_embeddings(self, speech_embedding: np.ndarray) -> np.ndarray:
        """The same rows as one (n_positions, hidden) array, given the speech embedding table (for checks)."""
        se = np.asarray(speech_embedding, dtype=np.float32)
        return np.concatenate([se[list(self.head_ids)], self.text_embeds, se[list(self.tail_ids)]], axis=0)


def build_prefill(text_emb: TextEmbedding, text_ids: Sequence[int], prompt_speech_tokens: Sequence[int],
                  constants: dict) -> Prefill:
    """Upstream ``Qwen2LM.inference`` input: [sos, embed(text_ids), task_id, *prompt speech tokens].

    ``text_ids`` is prompt text ids followed by tts text ids. When ``constants["endofprompt_id"]`` is set,
    it must occur in ``text_ids`` (upstream asserts this).
    """
    ids = [int(t) for t in text_ids]
    eop = constants.get("endofprompt_id")
    if eop is not None and eop not in ids:
        raise InputError("the text has no <|endofprompt|> token: CosyVoice3 needs "
                         "'You are a helpful assistant.<|endofprompt|>' at the start of the prompt text")
    size = int(constants["speech_token_size"])
    prompt = [int(t) for t in prompt_speech_tokens]
    bad = [t for t in prompt if not 0 <= t < size]
    if bad:
        raise InputError(f"prompt speech token {bad[0]} is outside 0..{size - 1}")
    return Prefill((int(constants["sos"]),), text_emb.lookup(ids),
                   (int(constants["task_id"]), *prompt))


def prefill_zero_shot(lm: SpeechLM, text_emb: TextEmbedding, text_ids: Sequence[int],
                      prompt_speech_tokens: Sequence[int], constants: dict) -> np.ndarray:
    """Run the zero-shot prefill at ``lm``'s current position; return the first-step logits (V,)."""
    return build_prefill(text_emb, text_ids, prompt_speech_tokens, constants).run(lm)


def zero_shot_rows(lm: SpeechLM, text_emb: TextEmbedding, text_ids: Sequence[int],
                   prompt_speech_tokens: Sequence[int], constants: dict) -> np.ndarray:
    """The prefill as (positions, hidden) embeddings, speech rows read from the GGUF (does not decode)."""
    p = build_prefill(text_emb, text_ids, prompt_speech_tokens, constants)
    return np.concatenate([lm.token_embeddings(p.head_ids), p.text_embeds, lm.token_embeddings(p.tail_ids)])
