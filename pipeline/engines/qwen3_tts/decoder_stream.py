"""Incremental decode of Qwen3-TTS frames as they are generated (spec §11; upstream has no streaming).

The decoder is causal: the samples of frame t depend only on frames <= t of the call they were decoded in.

``StatefulStreamDecoder`` (the one to use) runs the stateful step graph ``q3_decoder_stream.onnx``: each frame
is decoded once, with upstream's 300/25 windows, and the stream equals the one-shot decode within float32
reordering (max |diff| 1.7e-4 .. 3.2e-4 on the tiny fixture, pieces of 1..300 frames).

``StreamingDecoder`` re-decodes with the one-shot graph (no state), on one of two schedules:

- ``left_context=None`` ("upstream"): every call covers upstream's current ``chunked_decode`` window
  (from its first context frame up to the newest frame). Each frame is therefore computed from exactly the
  same inputs as in ``CodeDecoder.decode`` of the whole sequence, so the stream equals the one-shot decode up
  to float32 reordering (different T gives different GEMM blocking; measured in tests/test_q3_decoder.py).
  Cost grows within each 300-frame chunk: a call decodes up to 325 frames.
- ``left_context=L`` (bounded, L >= 25): every call decodes the new frames plus the L frames before them.
  The cost per call is bounded, but frames are computed with less history than in the one-shot decode. Each
  transformer layer looks 71 frames back, so the receptive field is num_layers·71 frames plus ~12 of convs
  (~580 at full size, more than a 300-frame chunk); below that the output differs. Measured on the tiny
  fixture (2 layers, random weights): max |diff| 0.17 at L = 25, 0.04 at L = 72, 2e-4 at L = 158.

ICL: the prompt codes are the stream's first frames and are never emitted, so the stream starts at sample
T12·spf. Upstream's one-shot cut ``int(T12/(T12+n)·len)`` is one sample earlier for ~5 % of (T12, n) pairs,
which a stream cannot know before n is final.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.shared.errors import Cancelled, InputError
from pipeline.shared.onnx import ort_session

from .decoder import DEFAULT_DIMS, CodeDecoder, check_codes, icl_cut

PRIMED_VOICES = 4  # stream decoders primed with a voice's prompt codes, kept (LRU)
PRIME_PIECE = 16  # prompt frames per decoder call while priming: a cancel is seen between calls, and no call
# is larger than the longest emission hop of streaming, which bounds the decoder's activations


class StreamingDecoder:
    """Feed frames with ``push``; each call returns the waveform of the frames not emitted yet."""

    def __init__(self, decoder: CodeDecoder, prompt_codes: Any | None = None,
                 left_context: int | None = None) -> None:
        if left_context is not None and left_context < decoder.left_context_frames:
            raise InputError(f"left_context must be >= {decoder.left_context_frames} frames")
        self.decoder = decoder
        self.left_context = left_context
        n_q = decoder.num_quantizers
        prompt = np.zeros((0, n_q), np.int64) if prompt_codes is None else np.asarray(prompt_codes)
        self._codes = [np.maximum(decoder.check_codes(prompt), 0)] if len(prompt) else []
        self._n = len(prompt)
        self._done = self._n  # frames whose samples were emitted (the prompt never is)
        self.n_prompt = self._n

    @property
    def frames(self) -> int:
        return self._n

    def _window_start(self, first_new: int) -> int:
        """First frame fed to the call that emits frames from ``first_new`` on."""
        if self.left_context is not None:
            return max(0, first_new - self.left_context)
        chunk, ctx = self.decoder.chunk_frames, self.decoder.left_context_frames
        start = (first_new // chunk) * chunk
        return start - (ctx if start - ctx > 0 else start)

    def push(self, frames: Any) -> np.ndarray:
        """Append frames (k, n_q) and return the samples of every frame not emitted yet (k·spf float32)."""
        f = np.asarray(frames)
        if f.size == 0:
            return np.zeros(0, np.float32)
        f = self.decoder.check_codes(f)
        if np.any(f[:, 0] < 0):
            raise InputError("streamed frames cannot hold padding (-1) codes")
        self._codes.append(f)
        self._n += len(f)
        codes = np.concatenate(self._codes)
        self._codes = [codes]
        spf = self.decoder.samples_per_frame
        out = []
        chunk = self.decoder.chunk_frames
        while self._done < self._n:
            # in upstream mode a call never crosses one of upstream's chunk boundaries
            end = self._n if self.left_context is not None else min(self._n, (self._done // chunk + 1) * chunk)
            lo = self._window_start(self._done)
            out.append(self.decoder.run(codes[lo:end])[(self._done - lo) * spf:])
            self._done = end
        return np.concatenate(out).astype(np.float32, copy=False)


class StatefulStreamDecoder:
    """Streaming with the stateful step graph (``q3_decoder_stream.onnx``): each frame is decoded once.

    It follows upstream's windows: within a 300-frame chunk the state carries the whole history of the
    window; at a chunk boundary the state is reset and the 25 context frames are fed again (their output is
    dropped), as ``chunked_decode`` does. The stream therefore equals ``CodeDecoder.decode`` of the whole
    sequence up to float32 reordering, at ~1.1x the one-shot cost (the context frames once per chunk).
    Prompt frames (ICL) are fed first and never emitted."""

    def __init__(self, path: Any, dims: dict[str, Any] | None = None, n_threads: int | None = None,
                 prompt_codes: Any | None = None, *, spin: bool = True) -> None:
        """``spin=False``: ONNX Runtime's idle threads sleep instead of spinning between calls, for a decoder
        that runs beside the talker (llama.cpp) and must not take its cores while it waits for frames."""
        d = {**DEFAULT_DIMS, **(dims or {})}
        self.num_quantizers = int(d["num_quantizers"])
        self.codebook_size = int(d["codebook_size"])
        self.samples_per_frame = int(d["samples_per_frame"])
        self.chunk_frames = int(d["chunk_frames"])
        self.left_context_frames = int(d["left_context_frames"])
        self._sess = ort_session(path, n_threads, spin=spin, arena=spin)  # beside the talker: lean
        self._state_inputs = self._sess.get_inputs()[2:]
        if [i.name for i in self._sess.get_inputs()[:2]] != ["codes", "pos0"]:
            raise InputError(f"{path} is not a streaming decoder graph (inputs codes, pos0, states)")
        self._tail = np.zeros((0, self.num_quantizers), np.int64)  # the last left_context_frames fed
        self.last_sample = np.zeros(0, np.float32)  # the last sample decoded (ICL: the prompt's, once primed)
        self.frames = 0  # frames fed so far, prompt included
        self._reset()
        self.n_prompt = 0
        if prompt_codes is not None and len(prompt_codes):
            self._feed(self._check(prompt_codes))
            self.n_prompt = self.frames

    def fork(self) -> StatefulStreamDecoder:
        """An independent copy sharing the ONNX session (it carries the whole state): prime one decoder with a
        voice's prompt, then fork it for each utterance instead of feeding the prompt again."""
        other = copy.copy(self)
        other._states = list(self._states)
        return other

    def primed(self, prompt_codes: Any, *, piece: int | None = None,
               should_stop: Callable[[], bool] | None = None) -> StatefulStreamDecoder:
        """A fork with ``prompt_codes`` fed after this decoder's frames and never emitted (``n_prompt`` counts
        every frame fed so far): the per-voice state that :meth:`fork` then copies per utterance. ``piece``:
        feed that many frames per call, asking ``should_stop`` between calls (:class:`Cancelled`); the
        state depends on the pieces at float32 rounding level only."""
        other = self.fork()
        p = np.asarray(prompt_codes)
        if p.size:
            p = other._check(p)
            step = piece or len(p)
            for i in range(0, len(p), step):
                if should_stop is not None and should_stop():
                    raise Cancelled(f"stopped priming the decoder after {i} prompt frames")
                other._feed(p[i: i + step])
        other.n_prompt = other.frames
        return other

    def _check(self, codes: Any) -> np.ndarray:
        return check_codes(codes, self.num_quantizers, self.codebook_size)

    def _reset(self) -> None:
        self._states = [np.zeros(i.shape, np.float32) for i in self._state_inputs]
        self._pos = 0

    def _step(self, codes: np.ndarray) -> np.ndarray:
        feed = {"codes": np.ascontiguousarray(codes.T[None]), "pos0": np.array([self._pos], np.int64)}
        feed.update({i.name: s for i, s in zip(self._state_inputs, self._states, strict=True)})
        wav, *self._states = self._sess.run(None, feed)
        self._pos += len(codes)
        return wav

    def _feed(self, frames: np.ndarray) -> np.ndarray:
        """Run ``frames`` (already checked) through the graph, split at upstream's chunk boundaries."""
        out = []
        frames = np.maximum(frames, 0)
        i = 0
        while i < len(frames):
            g = self.frames  # global index of the next frame
            if g and g % self.chunk_frames == 0:  # upstream starts a new decode call here
                ctx = self.left_context_frames if g - self.left_context_frames > 0 else g
                self._reset()
                if ctx:
                    self._step(self._tail[len(self._tail) - ctx:])
            n = min(len(frames) - i, self.chunk_frames - g % self.chunk_frames)
            out.append(self._step(frames[i: i + n]))
            self._tail = np.concatenate([self._tail, frames[i: i + n]])[-self.left_context_frames:]
            self.frames += n
            i += n
        if out and len(out[-1]):
            self.last_sample = np.array(out[-1][-1:], np.float32)
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def push(self, frames: Any) -> np.ndarray:
        """Append frames (k, n_q) and return their waveform (k·spf float32)."""
        f = np.asarray(frames)
        if f.size == 0:
            return np.zeros(0, np.float32)
        f = self._check(f)
        if np.any(f[:, 0] < 0):
            raise InputError("streamed frames cannot hold padding (-1) codes")
        return self._feed(f).astype(np.float32, copy=False)


class PrimedDecoders:
    """Per-request stream decoders, forked from one unprimed decoder (it holds the ONNX session) or, for ICL,
    from one primed with the voice's prompt codes: those are kept, the last ``size`` voices by their codes' hash,
    so a voice's prompt is decoded once instead of once per segment."""

    def __init__(self, base: StatefulStreamDecoder, size: int = PRIMED_VOICES) -> None:
        self.base = base
        self.size = size
        self._lru: OrderedDict[str, StatefulStreamDecoder] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._lru)

    def clear(self) -> None:
        with self._lock:
            self._lru.clear()

    def decoder(self, prompt_codes: np.ndarray | None,
                should_stop: Callable[[], bool] | None = None) -> tuple[StatefulStreamDecoder, bool]:
        """A request's own decoder (ICL: primed with ``prompt_codes``; x-vector: None) and whether the voice was
        primed now (:class:`Cancelled` by ``should_stop`` while priming keeps nothing)."""
        if prompt_codes is None:
            return self.base.fork(), False
        c = np.ascontiguousarray(prompt_codes, dtype=np.int64)
        key = hashlib.sha256(repr(c.shape).encode() + c.tobytes()).hexdigest()
        with self._lock:
            primed = self._lru.pop(key, None)
            fresh = primed is None
            if primed is None:
                primed = self.base.primed(c, piece=PRIME_PIECE, should_stop=should_stop)
            self._lru[key] = primed
            while len(self._lru) > self.size:
                self._lru.popitem(last=False)
            return primed.fork(), fresh


def voice_clone_wav_primed(primed: PrimedDecoders, generated: Any, prompt_codes: Any | None = None,
                           should_stop: Callable[[], bool] | None = None) -> tuple[np.ndarray, bool]:
    """:func:`.decoder.voice_clone_wav` with a stream decoder primed with the voice's prompt codes (ICL) or a
    fresh one (x-vector): only the generated frames are decoded per request; the prompt is decoded once per voice
    (kept by ``primed``). Returns the waveform and whether the voice was primed now.

    The samples equal the one-pass decode within float32 reordering (the stream follows upstream's 300/25
    windows), and the length is upstream's: where its ICL cut falls one sample early, the prompt's last decoded
    sample leads, as it does in upstream's output."""
    dec, fresh = primed.decoder(None if prompt_codes is None else np.asarray(prompt_codes), should_stop)
    gen = np.asarray(generated)
    prompt_last = dec.last_sample
    wav = dec.push(gen) if gen.size else np.zeros(0, np.float32)
    if prompt_codes is not None and len(prompt_codes):
        n_p, spf = len(prompt_codes), dec.samples_per_frame
        extra = n_p * spf - icl_cut(n_p, len(gen), (n_p + len(gen)) * spf)
        if extra:  # 0 or 1: float rounding in upstream's int(T12 / (T12 + n) * len)
            wav = np.concatenate([prompt_last[len(prompt_last) - extra:], wav])
    return wav.astype(np.float32, copy=False), fresh
