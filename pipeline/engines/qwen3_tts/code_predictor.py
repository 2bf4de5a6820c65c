"""The code predictor ("sub-talker", codes 1..15 of a frame; spec §7, §13.2).

Per frame: fresh KV, positions from 0; prefill 2 rows [talker hidden that produced code 0, C(code 0)] (through
small_to_mtp_projection when widths differ), code 1 from ``lm_head[0]``; then 14 single rows
``cp_codec_embedding[j-1][code j]`` giving code j+1 from ``lm_head[j]``. The 15th code is never fed back.
"""

from __future__ import annotations

import os

import numpy as np

from pipeline.shared.errors import BundleError, InputError

from .lm_body import LMBody
from .lm_tables import LMTables
from .sampling import SamplingConfig, pick


class CodePredictor:
    """Owns the code predictor's llama.cpp body; :meth:`predict` runs one frame."""

    def __init__(self, gguf_path: str | os.PathLike, tables: LMTables, *, n_threads: int | None = None,
                 exact: bool = False, kv_type: str = "f16") -> None:
        self.body = LMBody(gguf_path, n_ctx=2 * tables.n_groups, n_batch=2 * tables.n_groups,
                           n_threads=n_threads, exact=exact, kv_type=kv_type)
        want = tables.hidden if tables.mtp_weight is None else tables.mtp_weight.shape[0]
        if self.body.n_embd != want or tables.cp_head.shape[2] != want:
            self.body.close()
            raise BundleError(f"code predictor GGUF width {self.body.n_embd} does not fit the side tables ({want})")
        self.tables = tables

    def predict(self, past_hidden: np.ndarray, code0: int, cfg: SamplingConfig,
                rng: np.random.Generator | None = None, logits_out: np.ndarray | None = None) -> np.ndarray:
        """Codes 1..n_groups-1 (int64) of the frame whose code 0 is ``code0``. ``logits_out`` (15, 2048), if
        given, receives each step's raw logits."""
        t = self.tables
        if not 0 <= int(code0) < t.cp_vocab:
            raise InputError(f"code 0 must be in 0..{t.cp_vocab - 1}, got {code0}")
        n = t.n_groups - 1
        codes = np.empty(n, dtype=np.int64)
        self.body.reset()
        rows = np.stack([np.asarray(past_hidden, dtype=np.float32).reshape(-1), t.codec([int(code0)])[0]])
        h = self.body.forward(t.cp_project(rows))
        for j in range(n):
            logits = t.cp_head[j] @ h
            if logits_out is not None:
                logits_out[j] = logits
            codes[j] = pick(logits, cfg, rng)
            if j + 1 < n:
                h = self.body.forward(t.cp_project(t.cp_embedding[j][codes[j]][None]))
        return codes

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> CodePredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
