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
from pathlib import Path

import numpy as np

from pipeline.shared.errors import BackendError, InputError
from pipeline.shared.llama import default_threads, llama_lib

_KV_TYPES = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0", "f32": "GGML_TYPE_F32"}


class LMBody:
    """One llama.cpp context over a ``qwen3`` GGUF; a single sequence at positions 0..n_past-1.

    ``exact``: F32 KV cache and no flash attention (parity with the float32 reference; the F16 cache and the CPU
    flash-attention path each cost ~1e-3 in the logits).
    """

    def __init__(self, gguf_path: str | os.PathLike, *, n_ctx: int = 4096, n_batch: int = 512,
                 n_threads: int | None = None, exact: bool = False, kv_type: str = "f16") -> None:
        self._model = self._ctx = self._batch = None
        lib = llama_lib()
        self._lib = lib
        path = Path(gguf_path)
        if not path.is_file():
            raise BackendError(f"{path} does not exist")
        if n_ctx < 1 or n_batch < 1:
            raise ValueError("n_ctx and n_batch must be positive")
        if kv_type not in _KV_TYPES:
            raise ValueError(f"kv_type must be one of {', '.join(_KV_TYPES)}, not {kv_type!r}")
        threads = int(n_threads or default_threads())
        self._model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
        if not self._model:
            raise BackendError(f"llama.cpp could not load {path} (set COSYVOICE_RK_LLAMA_LOG=1 for its log)")
        self.n_embd = int(lib.llama_model_n_embd(self._model))
        self.n_layer = int(lib.llama_model_n_layer(self._model))
        cp = lib.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = threads
        cp.embeddings = True
        cp.pooling_type = lib.LLAMA_POOLING_TYPE_NONE
        cp.no_perf = True
        if exact:
            kv_type = "f32"
            cp.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.type_k = cp.type_v = getattr(lib, _KV_TYPES[kv_type])
        self._ctx = lib.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self.close()
            raise BackendError(f"llama.cpp could not create a context of {n_ctx} positions for {path}")
        self.n_ctx = int(lib.llama_n_ctx(self._ctx))
        self.n_batch = int(min(n_batch, lib.llama_n_batch(self._ctx)))
        self._batch = lib.llama_batch_init(self.n_batch, self.n_embd, 1)
        self.path = path
        self.exact = exact
        self.n_threads = threads
        self.n_past = 0

    # --- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        lib = self._lib
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LMBody:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_lib", None) is not None:
            try:
                self.close()
            except Exception:  # interpreter shutdown may have torn the bindings down already
                pass

    # --- decoding -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every position (clears the KV cache)."""
        if not self._ctx:
            raise BackendError("the llama.cpp context is closed")
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        self.n_past = 0

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
        lib, batch = self._lib, self._batch
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
            rc = lib.llama_decode(self._ctx, batch)
            if rc != 0:
                pos_max = lib.llama_memory_seq_pos_max(lib.llama_get_memory(self._ctx), 0)
                self.n_past = int(pos_max) + 1
                raise BackendError(f"llama_decode failed with {rc} at position {self.n_past}")
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
