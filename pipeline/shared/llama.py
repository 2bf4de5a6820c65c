"""llama.cpp through llama-cpp-python's low-level ctypes API, no torch: the bindings (initialised once, with
llama.cpp's log captured), thread defaults, and :class:`LlamaModel`, which owns exactly one model, one context (one
sequence, id 0) and two reusable batches (token ids; input embeddings through ``llama_batch.embd``), all freed by
:meth:`LlamaModel.close`. Every engine's language models are built on it."""

from __future__ import annotations

import collections
import ctypes
import os
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.errors import BackendError, InputError

_lib: Any = None
_log_cb: Any = None  # the ctypes callback must outlive every llama.cpp call, or logging segfaults
_recent_errors: collections.deque[str] = collections.deque(maxlen=8)
_GGML_LOG_WARN, _GGML_LOG_CONT = 3, 5
_last_level = 0


def _on_log(level: int, text: bytes | None, _user: Any) -> None:
    global _last_level
    if level != _GGML_LOG_CONT:
        _last_level = level
    msg = (text or b"").decode("utf-8", "replace")
    if os.environ.get("COSYVOICE_RK_LLAMA_LOG"):
        sys.stderr.write(msg)
    if _last_level >= _GGML_LOG_WARN and msg.strip():
        if level == _GGML_LOG_CONT and _recent_errors:
            _recent_errors[-1] += msg.rstrip("\n")
        else:
            _recent_errors.append(msg.strip())


_compute: ThreadPoolExecutor | None = None
_compute_lock = threading.Lock()


def _forget_compute_thread() -> None:
    global _compute
    _compute = None  # a forked child has the executor object but not its thread


os.register_at_fork(after_in_child=_forget_compute_thread)


def on_compute_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` run on the process's one llama.cpp compute thread; every ``llama_decode`` goes through here.

    Why: llama.cpp's CPU backend (an OpenMP build) gets one OpenMP thread team per OS thread that calls it. Once a
    second team exists (a streaming stage's thread beside the worker's), libgomp counts more threads than CPUs and
    stops spinning at its barriers, and every decode of the process, on either thread, becomes about twice as
    slow for good (a script timing Qwen3-TTS generation, 25 frames, 2 cores, one process: 2.1-2.5 s from one
    thread, 4.2-4.8 s once a second thread had decoded; docs/qwen3-tts.md). One compute thread keeps one team
    whichever thread asks."""
    global _compute
    if _compute is None:
        with _compute_lock:
            if _compute is None:
                _compute = ThreadPoolExecutor(1, thread_name_prefix="llama-compute")
    return _compute.submit(fn, *args).result()


def llama_lib() -> Any:
    """The ``llama_cpp`` bindings, initialised once, with llama.cpp's logging captured (not printed).

    Set ``COSYVOICE_RK_LLAMA_LOG=1`` to see llama.cpp's own log on stderr.
    """
    global _lib, _log_cb
    if _lib is None:
        try:
            import llama_cpp
        except ImportError as e:
            raise BackendError(f"llama-cpp-python is not installed or failed to load ({e}); "
                               "install it with `pip install llama-cpp-python`") from e
        _log_cb = llama_cpp.llama_log_callback(_on_log)
        llama_cpp.llama_log_set(_log_cb, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _lib = llama_cpp
    return _lib


def clear_llama_log() -> None:
    """Called before a llama.cpp call whose failure we may report, so old warnings are not blamed."""
    _recent_errors.clear()


def llama_log_suffix() -> str:
    """`` (llama.cpp: <last warning or error>)`` for error messages, or "" if it said nothing."""
    return f" (llama.cpp: {_recent_errors[-1]})" if _recent_errors else ""


def default_threads() -> int:
    """CPU threads for llama.cpp and ONNX Runtime when none are given: the CPUs this process may run on
    (``taskset`` / cgroup affinity), at most 4. On an RK3588 run under ``taskset -c 4-7`` that is the four
    A76 cores; unpinned it is still 4, not 8, because a thread on an A55 core holds back every barrier."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


# llama.cpp KV-cache element types by name (attribute names in the bindings)
KV_TYPES = {"f16": "GGML_TYPE_F16", "q8_0": "GGML_TYPE_Q8_0", "f32": "GGML_TYPE_F32"}

_STATE_MAGIC = b"CVRKLM01"
_STATE_HEAD = struct.Struct("<8sqqqq")  # magic, n_past, n_vocab, n_embd, n_layer


class LlamaModel:
    """One llama.cpp context over a GGUF; a single sequence at positions 0..n_past-1."""

    def __init__(self, gguf_path: str | os.PathLike, *, n_ctx: int = 4096, n_threads: int | None = None,
                 n_batch: int = 512, exact: bool = False, kv_type: str = "f16", embeddings: bool = False) -> None:
        """``exact``: F32 KV cache and no flash attention (parity with a float32 reference; the F16 cache and the
        CPU flash-attention path each cost ~1e-3 in the logits). ``embeddings``: the context hands back the
        final-normed hidden state of each output row (pooling none) instead of logits."""
        self._model = self._ctx = None
        self._tok_batch = self._emb_batch = None
        self._token_embd: np.ndarray | None = None
        lib = llama_lib()
        self._lib = lib
        path = Path(gguf_path)
        if not path.is_file():
            raise BackendError(f"LLM file {path} does not exist")
        if n_ctx < 1 or n_batch < 1:
            raise ValueError("n_ctx and n_batch must be positive")
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {', '.join(KV_TYPES)}, not {kv_type!r}")
        threads = int(n_threads or default_threads())

        clear_llama_log()
        mp = lib.llama_model_default_params()
        self._model = lib.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            raise BackendError(f"llama.cpp could not load {path}{llama_log_suffix()}")
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model)))
        self.n_embd = int(lib.llama_model_n_embd(self._model))
        self.n_layer = int(lib.llama_model_n_layer(self._model))

        cp = lib.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        if embeddings:
            cp.embeddings = True
            cp.pooling_type = lib.LLAMA_POOLING_TYPE_NONE
        if exact:
            # F16 KV cache and CPU flash attention each cost 1e-4..1e-2 in the log-probs (tiny fixture:
            # 3e-3 and 1.3e-2); F32 KV + plain attention matches torch to ~1e-5.
            kv_type = "f32"
            cp.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.type_k = cp.type_v = getattr(lib, KV_TYPES[kv_type])
        self._ctx = lib.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self.close()
            raise BackendError(f"llama.cpp could not create a context of {n_ctx} positions for {path}"
                               f"{llama_log_suffix()}")
        self.n_ctx = int(lib.llama_n_ctx(self._ctx))
        self.n_batch = int(min(n_batch, lib.llama_n_batch(self._ctx)))
        self.exact = exact
        self.path = path
        self.n_threads = threads
        self.kv_type = kv_type
        self.flash_attn = "off" if exact else "auto"
        self._tok_batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._emb_batch = lib.llama_batch_init(self.n_batch, self.n_embd, 1)
        self.n_past = 0

    # --- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        lib = self._lib
        for name in ("_tok_batch", "_emb_batch"):
            b = getattr(self, name)
            if b is not None:
                lib.llama_batch_free(b)
                setattr(self, name, None)
        if self._ctx:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lib.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_lib", None) is not None:
            try:
                self.close()
            except Exception:  # interpreter shutdown may have torn the bindings down already
                pass

    def _require_open(self) -> None:
        if not self._ctx:
            raise BackendError("the LLM context is closed")

    # --- decoding -------------------------------------------------------------------------------

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """Append (L, n_embd) float32 rows as input embeddings; return the logits (V,) of the last row."""
        e = np.ascontiguousarray(embeds, dtype=np.float32)
        if e.ndim != 2 or e.shape[1] != self.n_embd or e.shape[0] == 0:
            raise InputError(f"prefill needs a non-empty (L, {self.n_embd}) array, got shape {e.shape}")
        return self._decode(e, all_logits=False)

    def feed(self, ids: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Append speech token ids; return logits of the last row (V,) or of every row (n, V)."""
        a = np.asarray(ids, dtype=np.int64).reshape(-1)
        if a.size == 0:
            raise InputError("feed needs at least one token id")
        if a.min() < 0 or a.max() >= self.n_vocab:
            bad = int(a[(a < 0) | (a >= self.n_vocab)][0])
            raise InputError(f"speech token id {bad} is outside the LLM vocabulary 0..{self.n_vocab - 1}")
        return self._decode(a.astype(np.int32), all_logits=all_logits)

    def step(self, token: int) -> np.ndarray:
        """Append one token id; return the next-token logits (V,)."""
        return self.feed([int(token)])

    def _decode(self, rows: np.ndarray, all_logits: bool) -> np.ndarray:
        self._require_open()
        lib = self._lib
        n = rows.shape[0]
        clear_llama_log()
        if self.n_past + n > self.n_ctx:
            raise BackendError(
                f"LLM context full: {self.n_past} positions used + {n} new > {self.n_ctx}; "
                "use shorter text / prompt audio or a larger n_ctx")
        is_emb = rows.dtype == np.float32
        batch = self._emb_batch if is_emb else self._tok_batch
        outs = []
        for start in range(0, n, self.n_batch):
            chunk = rows[start:start + self.n_batch]
            m = chunk.shape[0]
            last_chunk = start + m == n
            if is_emb:
                ctypes.memmove(batch.embd, chunk.ctypes.data, chunk.nbytes)
            else:
                ctypes.memmove(batch.token, chunk.ctypes.data, chunk.nbytes)
            for i in range(m):
                batch.pos[i] = self.n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or (last_chunk and i == m - 1)
            batch.n_tokens = m
            rc = on_compute_thread(lib.llama_decode, self._ctx, batch)
            if rc != 0:
                self._resync()
                what = {1: "no KV-cache slot (context full)", 2: "aborted",
                        -1: "invalid batch"}.get(rc, "error")
                raise BackendError(f"llama_decode failed with {rc} ({what}) at position {self.n_past}"
                                   f"{llama_log_suffix()}")
            self.n_past += m
            if all_logits:
                ptr = lib.llama_get_logits(self._ctx)
                outs.append(np.ctypeslib.as_array(ptr, shape=(m, self.n_vocab)).copy())
        if all_logits:
            return np.concatenate(outs, axis=0)
        ptr = lib.llama_get_logits_ith(self._ctx, -1)
        if not ptr:
            raise BackendError(f"llama.cpp returned no logits{llama_log_suffix()}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def _resync(self) -> None:
        """After a failed decode llama.cpp may keep some processed ubatches: follow its memory."""
        pos_max = self._lib.llama_memory_seq_pos_max(self._lib.llama_get_memory(self._ctx), 0)
        self.n_past = int(pos_max) + 1

    def reset(self) -> None:
        """Forget every position (the KV cache is cleared)."""
        self._require_open()
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        self.n_past = 0

    def token_embeddings(self, ids: Sequence[int]) -> np.ndarray:
        """Rows of the GGUF's ``token_embd`` (= speech_embedding), dequantized to float32 (for checks)."""
        if self._token_embd is None:
            import gguf

            reader = gguf.GGUFReader(str(self.path))
            t = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
            if t is None:
                raise BackendError(f"{self.path} has no token_embd.weight")
            data = t.data if t.tensor_type == gguf.GGMLQuantizationType.F32 else \
                gguf.quants.dequantize(t.data, t.tensor_type)
            self._token_embd = np.asarray(data, dtype=np.float32).reshape(self.n_vocab, self.n_embd)
        a = np.asarray(ids, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= self.n_vocab):
            raise InputError(f"speech token ids must be in 0..{self.n_vocab - 1}")
        return np.array(self._token_embd[a], dtype=np.float32)

    # --- state ----------------------------------------------------------------------------------

    def save_state(self) -> bytes:
        """KV cache of the sequence plus ``n_past``, restorable by :meth:`load_state` of an equal model."""
        self._require_open()
        lib = self._lib
        size = int(lib.llama_state_seq_get_size(self._ctx, 0))
        buf = (ctypes.c_uint8 * size)()
        clear_llama_log()
        got = int(lib.llama_state_seq_get_data(self._ctx, buf, size, 0))
        if got == 0 and self.n_past:
            raise BackendError(f"llama.cpp could not save the LLM state{llama_log_suffix()}")
        head = _STATE_HEAD.pack(_STATE_MAGIC, self.n_past, self.n_vocab, self.n_embd, self.n_layer)
        return head + ctypes.string_at(buf, got)

    def load_state(self, b: bytes) -> None:
        """Replace the current sequence by a state from :meth:`save_state` (restores ``n_past``)."""
        self._require_open()
        if len(b) < _STATE_HEAD.size:
            raise InputError("LLM state blob is truncated")
        magic, n_past, n_vocab, n_embd, n_layer = _STATE_HEAD.unpack_from(b)
        if magic != _STATE_MAGIC:
            raise InputError("not an LLM state blob (bad magic)")
        if (n_vocab, n_embd, n_layer) != (self.n_vocab, self.n_embd, self.n_layer):
            raise InputError(f"LLM state is for a model with vocab/embd/layers {n_vocab}/{n_embd}/{n_layer}, "
                             f"this one has {self.n_vocab}/{self.n_embd}/{self.n_layer}")
        if n_past > self.n_ctx:
            raise BackendError(f"LLM state has {n_past} positions, the context holds {self.n_ctx}")
        self.reset()
        clear_llama_log()
        body = b[_STATE_HEAD.size:]
        if body:
            buf = (ctypes.c_uint8 * len(body)).from_buffer_copy(body)
            if int(self._lib.llama_state_seq_set_data(self._ctx, buf, len(body), 0)) == 0:
                self.reset()
                raise BackendError(f"llama.cpp rejected the LLM state (different model or KV type?)"
                                   f"{llama_log_suffix()}")
        self.n_past = int(n_past)


# llama.cpp file types made by llama_model_quantize (f32 is written directly by the converters)
QUANT_FTYPES = {"f16": "LLAMA_FTYPE_MOSTLY_F16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
                "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
                # faster to decode (llama.cpp repacks Q4_0 for AVX2/AVX-512 and ARM dotprod), less accurate
                "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}


def quantize_gguf(src: Path, dst: Path, quant: str, n_threads: int | None = None) -> None:
    """Quantize an F32 GGUF with llama.cpp's own ``llama_model_quantize`` (``quant``: a :data:`QUANT_FTYPES` key),
    so the result is what llama.cpp itself would make."""
    if quant not in QUANT_FTYPES:
        raise ValueError(f"unknown quant {quant!r}; choose from {', '.join(QUANT_FTYPES)}")
    lib = llama_lib()
    qp = lib.llama_model_quantize_default_params()
    qp.ftype = getattr(lib, QUANT_FTYPES[quant])
    qp.nthread = n_threads or os.cpu_count() or 1
    clear_llama_log()
    rc = lib.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(qp))
    if rc != 0:
        raise BackendError(f"llama.cpp could not quantize {Path(src).name} to {quant} "
                           f"(llama_model_quantize returned {rc}){llama_log_suffix()}")
