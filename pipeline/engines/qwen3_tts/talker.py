"""The talker (spec §6): a Qwen3 body on llama.cpp plus ``codec_head`` in numpy.

Every position is an embedding row (§13.1); each call returns the final-normed hidden of the last position (the
code predictor's ``past_hidden``) and its raw codec logits (3072).
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.shared.errors import BundleError

from .lm_body import LMBody
from .lm_tables import LMTables


class Talker:
    """One utterance at a time: :meth:`prefill` starts it (fresh KV), :meth:`step` appends one frame row."""

    def __init__(self, gguf_path: str | os.PathLike, tables: LMTables, *, n_ctx: int = 4096,
                 n_threads: int | None = None, exact: bool = False, kv_type: str = "f16") -> None:
        self.body = LMBody(gguf_path, n_ctx=n_ctx, n_threads=n_threads, exact=exact, kv_type=kv_type)
        if self.body.n_embd != tables.hidden:
            self.body.close()
            raise BundleError(f"talker GGUF width {self.body.n_embd} != side tables' {tables.hidden}")
        self.tables = tables

    @property
    def n_ctx(self) -> int:
        return self.body.n_ctx

    @property
    def n_past(self) -> int:
        return self.body.n_past

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return self.tables.codec_head @ hidden

    def prefill(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Clear the KV cache, feed (L, H) rows at positions 0..L-1; return (hidden (H,), logits (V,))."""
        self.body.reset()
        h = self.body.forward(rows)
        return h, self.logits(h)

    def step(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feed one (H,) row at the next position; return (hidden, logits)."""
        h = self.body.forward(np.asarray(row, dtype=np.float32).reshape(1, -1))
        return h, self.logits(h)

    def forward_all(self, rows: np.ndarray) -> np.ndarray:
        """Feed (n, H) rows at the next positions; hidden of every row (n, H) (teacher forcing, checks)."""
        return self.body.forward(rows, all_hidden=True)

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> Talker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
