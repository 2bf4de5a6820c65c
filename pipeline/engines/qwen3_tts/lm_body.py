"""A Qwen3 decoder body on llama.cpp, fed only with embeddings, returning final-normed hidden states
(spec §6.1, §7, §13.1, §13.2).

The GGUF's vocabulary is unused: rows go in through ``llama_batch.embd``, and the context runs with embeddings
on and pooling none, so llama.cpp hands back the hidden after ``output_norm`` for the rows flagged as outputs.
The codec heads are applied by the caller in numpy. :class:`LMBody` owns one model, one context (sequence 0)
and one reusable batch, all freed by :meth:`close`.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from pipeline.shared.errors import BackendError, InputError
from pipeline.shared.llama import LlamaModel, llama_log_suffix, on_compute_thread


class LMBody(LlamaModel):
    """One llama.cpp context over a ``qwen3`` GGUF, embeddings in and hidden states out; a single sequence at
    positions 0..n_past-1 (model, context and batches owned and freed as :class:`LlamaModel` does).

    ``exact``: F32 KV cache and no flash attention (parity with the float32 reference; the F16 cache and the CPU
    flash-attention path each cost ~1e-3 in the logits).
    """

    def __init__(self, gguf_path: str | os.PathLike, *, n_ctx: int = 4096, n_batch: int = 512,
                 n_threads: int | None = None, exact: bool = False, kv_type: str = "f16") -> None:
        super().__init__(gguf_path, n_ctx=n_ctx, n_batch=n_batch, n_threads=n_threads, exact=exact,
                         kv_type=kv_type, embeddings=True)

    # --- decoding -------------------------------------------------------------------------------

    def forward(self, rows: np.ndarray, all_hidden: bool = False) -> np.ndarray:
        """Append (n, n_embd) input rows at the next positions; return the final-normed hidden of the last row
        (n_embd,), or of every row (n, n_embd) when ``all_hidden``."""
        if not self._ctx:
            raise BackendError("the llama.cpp context is closed")
        e = np.ascontiguousarray(rows, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.n_embd or e.shape[0] == 0:
            raise InputError(f"expected a non-empty (n, {self.n_embd}) array, got shape {e.shape}")
        n = e.shape[0]
        if self.n_past + n > self.n_ctx:
            raise BackendError(f"context full: {self.n_past} positions used + {n} new > {self.n_ctx}; "
                               "use a shorter text / prompt audio or a larger n_ctx")
        lib, batch = self._lib, self._emb_batch
        outs = []
        for start in range(0, n, self.n_batch):
            chunk = e[start:start + self.n_batch]
            m = chunk.shape[0]
            last = start + m == n
            ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
            for i in range(m):
                batch.pos[i] = self.n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_hidden or (last and i == m - 1)
            batch.n_tokens = m
            rc = on_compute_thread(lib.llama_decode, self._ctx, batch)
            if rc != 0:
                pos_max = lib.llama_memory_seq_pos_max(lib.llama_get_memory(self._ctx), 0)
                self.n_past = int(pos_max) + 1
                raise BackendError(f"llama_decode failed with {rc} at position {self.n_past}{llama_log_suffix()}")
            self.n_past += m
            if all_hidden:
                outs.append(self._hidden(m))
        if all_hidden:
            return np.concatenate(outs, axis=0)
        return self._hidden(1)[0]

    def _hidden(self, m: int) -> np.ndarray:
        """Hidden rows of the last ``m`` outputs of the latest decode."""
        rows = []
        for i in range(-m, 0):
            ptr = self._lib.llama_get_embeddings_ith(self._ctx, i)
            if not ptr:
                raise BackendError("llama.cpp returned no hidden state (embeddings output missing)")
            rows.append(np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).copy())
        return np.stack(rows)
