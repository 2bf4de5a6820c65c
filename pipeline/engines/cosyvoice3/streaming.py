"""Streaming synthesis of one text segment: LLM, flow and vocoder overlapped, audio yielded as it is made.

Three stages, each in its own thread, joined by queues (llama.cpp and ONNX Runtime release the GIL):

    LLM thread    speech tokens (silent runs filtered as upstream's llm_job does) → token buffer
    flow thread   solves each 50-frame chunk as soon as its tokens and 3 look-ahead tokens exist
                  (:class:`~.flow_stream.ChunkedFlow`), hands mel to the vocoder at the emission points
    caller        vocoder (:class:`~pipeline.engines.cosyvoice3.vocoder_stream.HiFTStream`) → yields float32 audio

Emission points follow upstream's schedule (spec §6.2): the first hop is padded so that prompt + consumed
tokens is a multiple of 25, then hops of 25, 50, 100, 100, … tokens (``schedule="upstream"``; per request, not
per instance as upstream), or every 25 tokens (``schedule="chunk"``: the same audio, cut finer). Upstream's
final call runs the full-attention flow over prompt + all tokens; here the last chunk is solved chunk-causally
like every other (``final="causal"``, O(n)), or as upstream does (``final="full"``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.shared.errors import Cancelled, InputError

SCHEDULES = ("upstream", "chunk")
FINALS = ("causal", "full")
YIELDS = ("every", "first", "never")


def emission_points(n_prompt: int, *, hop: int = 25, max_hop: int = 100, grow: bool = True) -> Iterator[int]:
    """Generated-token offsets after each intermediate streaming call (upstream ``CosyVoice2Model.tts``)."""
    pad = -(-n_prompt // hop) * hop - n_prompt
    offset, this = 0, hop + pad
    while True:
        offset += this
        yield offset
        if grow:
            hop = min(max_hop, hop * 2)
        this = hop


class SilentFilter:
    """Upstream's silent-token filter, one token at a time (it only looks back)."""

    def __init__(self, silent_tokens: Any, max_run: int) -> None:
        self.silent = {int(t) for t in silent_tokens}
        self.max_run = int(max_run)
        self.run = 0

    def keep(self, tok: int) -> bool:
        if tok in self.silent:
            self.run += 1
            return self.run <= self.max_run
        self.run = 0
        return True


@dataclass
class _Shared:
    """State the three threads share, behind one condition variable."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    tokens: list[int] = field(default_factory=list)  # kept tokens
    raw: list[int] = field(default_factory=list)  # every sampled token
    llm_done: bool = False
    mel: list[tuple[np.ndarray, bool]] = field(default_factory=list)
    flow_done: bool = False
    busy: int = 0  # flow and vocoder calls running (the LLM waits for them with llm_yields="every")
    voice_pending: bool = False  # the voice's prompt part is still to be solved (the LLM starts after it)
    error: BaseException | None = None
    stop: bool = False
    timings: dict[str, float] = field(default_factory=lambda: {"llm": 0.0, "flow": 0.0, "vocoder": 0.0})

    def fail(self, e: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = e
            self.stop = True
            self.cond.notify_all()


def stream_segment(engine: Any, text_ids: Any, prompt_text_ids: Any, prompt: Any, *,
                   rng: np.random.Generator | None = None, temperature: float = 1.0, sampler: Any = None,
                   prefix_state: bytes | None = None, flow_cache: Any = None, schedule: str = "upstream",
                   final: str = "causal", hift_noise: np.ndarray | None = None, tokens: Any = None,
                   on_mel: Callable[[np.ndarray, bool], None] | None = None, mode: str = "zero_shot",
                   on_progress: Callable[[str, dict], None] | None = None, llm_yields: str | None = None,
                   should_stop: Callable[[], bool] | None = None) -> Iterator[Any]:
    """Yield float32 audio arrays as they become final, then one :class:`SynthesisResult` (tokens, timings,
    ``stats``: ttfa_s, wall_s, chunks, emissions, prompt-cache use). ``tokens``: a fixed speech-token list
    instead of the LLM (as upstream's streaming goldens were recorded; for ``verify``), or a callable
    ``tokens(on_token, should_stop)`` that produces them (``bench``: the LLM at a forced length);
    ``on_mel(mel, final)`` sees each piece of mel handed to the vocoder. ``llm_yields`` (:data:`YIELDS`):
    ``"every"``: the LLM waits, between two tokens, while a flow or vocoder call runs, so that each stage has
    the cores to itself (default when the flow runs on the CPU: the stages share the cores, and llama.cpp's
    threads, which meet at a barrier after every op, and ONNX Runtime's slow each other down when they overlap);
    ``"first"``: only once, when the LLM has the tokens the first audio needs, until that audio is out;
    ``"never"`` (default when the flow runs on the NPU): the stages overlap."""
    from pipeline.engines.cosyvoice3.engine import SynthesisResult
    from pipeline.engines.cosyvoice3.vocoder_stream import HiFTStream

    if schedule not in SCHEDULES:
        raise InputError(f"streaming schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    if final not in FINALS:
        raise InputError(f"final chunk must be one of {', '.join(FINALS)}, not {final!r}")
    cf = engine.chunked_flow()
    c = engine.constants
    t_start = time.perf_counter()
    sh = _Shared()
    req = cf.start(prompt, flow_cache)
    n_prompt = len(prompt.speech_tokens)
    ratio = cf.ratio
    if llm_yields is None:
        llm_yields = "every" if str(getattr(cf.est, "backend", "")).startswith("onnxruntime") else "never"
    if llm_yields not in YIELDS:
        raise InputError(f"llm_yields must be one of {', '.join(YIELDS)}, not {llm_yields!r}")
    first_out = threading.Event()
    llm_wait = [0.0]
    # without the voice's cache the flow's first call is the prompt part, which needs no token: with "every" the
    # LLM's prefill waits for it instead of running beside it
    sh.voice_pending = llm_yields == "every" and req.frames_done < cf.voice_frames(n_prompt)
    first_need = next(emission_points(n_prompt, hop=cf.chunk_tokens)) + cf.flow.frontend.pre_lookahead_len
    stopped = lambda: sh.stop or (should_stop is not None and should_stop())  # noqa: E731

    def llm() -> None:
        flt = SilentFilter(c["silent_tokens"], c["max_silent_run"])

        def on_token(i: int, tok: int) -> None:
            with sh.cond:
                sh.raw.append(tok)
                if flt.keep(tok):
                    sh.tokens.append(tok)
                    sh.cond.notify_all()
                first = llm_yields == "first" and len(sh.tokens) >= first_need and not first_out.is_set()
                if llm_yields == "every" and sh.busy:
                    t_wait = time.perf_counter()
                    while sh.busy and not stopped():
                        sh.cond.wait(0.05)
                    llm_wait[0] += time.perf_counter() - t_wait
            if on_progress:
                on_progress("tokens", {"n": i + 1})
            if first:
                t_wait = time.perf_counter()
                while not first_out.wait(0.05) and not stopped():
                    pass
                llm_wait[0] += time.perf_counter() - t_wait

        t0 = time.perf_counter()
        try:
            if sh.voice_pending:
                with sh.cond:
                    while sh.voice_pending and not stopped():
                        sh.cond.wait(0.05)
                llm_wait[0] += time.perf_counter() - t0
            if callable(tokens):
                tokens(on_token, stopped)
                return
            if tokens is not None:
                for i, tok in enumerate(tokens):
                    if stopped():
                        raise Cancelled(f"stopped after {i} speech tokens")
                    on_token(i, int(tok))
                return
            engine.generate_tokens(text_ids, prompt_text_ids, prompt, rng=rng, temperature=temperature,
                                   sampler=sampler, max_tokens=engine.max_new_tokens(n_prompt),
                                   prefix_state=prefix_state, on_progress=on_progress and _only_prefill(on_progress),
                                   should_stop=stopped, on_token=on_token, mode=mode)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            sh.fail(e)
        finally:
            sh.timings["llm"] = time.perf_counter() - t0
            with sh.cond:
                sh.llm_done = True
                sh.cond.notify_all()

    def flow() -> None:
        points = emission_points(n_prompt, hop=cf.chunk_tokens, grow=schedule == "upstream")
        next_emit = ratio * (n_prompt + next(points))
        emitted = ratio * n_prompt  # frames (from the prompt start) handed to the vocoder
        vf = cf.voice_frames(n_prompt)
        pending: list[np.ndarray] = []
        used = 0  # kept tokens moved into the flow request

        def goal() -> int:
            """The frame the next flow call solves up to. One chunk at a time when the estimator takes one;
            else the whole stretch up to the next emission point, so that the calls (whose shape changes the
            float rounding) are the same whatever the LLM's timing: a seed gives the same audio every run."""
            if req.frames_done < vf:
                return vf
            return req.frames_done + cf.chunk if cf.max_chunks == 1 else next_emit

        try:
            while True:
                with sh.cond:
                    while not (sh.stop or sh.llm_done or _ready(cf, req, len(sh.tokens) - used) >= goal()):
                        sh.cond.wait()
                    if sh.stop:
                        return
                    new, done = sh.tokens[used:], sh.llm_done
                used += len(new)
                req.tokens.extend(new)
                t0 = time.perf_counter()
                if cf.ready_frames(req, finalize=False) >= goal():
                    with _turn(sh):
                        pending.append(cf.advance(req, [], goal(), finalize=False, should_stop=stopped))
                    sh.timings["flow"] += time.perf_counter() - t0
                    if sh.voice_pending and req.frames_done >= vf:
                        _voice_done(sh)
                    while req.frames_done >= next_emit:
                        _hand(sh, pending, req.frames_done - next_emit, final=False)
                        emitted, next_emit = next_emit, ratio * (n_prompt + next(points))
                    continue
                if not done:
                    continue
                gen = len(req.tokens) - n_prompt
                if gen == 0:
                    raise InputError("the LLM produced no speech tokens for this text; try another temperature "
                                     "or seed")
                if final == "full":  # upstream: full attention over prompt + all tokens, from the last emission
                    pending.clear()
                    mel = cf.full(prompt, np.asarray(req.tokens[n_prompt:], np.int64), should_stop=stopped)
                    pending.append(mel[:, emitted - ratio * n_prompt :])
                else:  # the LLM is done: nothing to take turns with
                    pending.append(cf.advance(req, [], ratio * len(req.tokens), finalize=True, should_stop=stopped))
                sh.timings["flow"] += time.perf_counter() - t0
                _hand(sh, pending, 0, final=True)
                return
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            sh.fail(e)
        finally:
            _voice_done(sh)
            with sh.cond:
                sh.flow_done = True
                sh.cond.notify_all()

    threads = [threading.Thread(target=llm, name="cv-llm", daemon=True),
               threading.Thread(target=flow, name="cv-flow", daemon=True)]
    for t in threads:
        t.start()
    voc = HiFTStream(engine.hift, noise=hift_noise)
    ttfa = None
    emissions = 0
    parts: list[np.ndarray] = []
    try:
        while True:
            with sh.cond:
                while not sh.mel and not sh.flow_done and sh.error is None:
                    sh.cond.wait()
                if sh.error is not None:
                    raise sh.error
                if not sh.mel and sh.flow_done:
                    break
                mel, last = sh.mel.pop(0)
            if should_stop is not None and should_stop():  # queued mel is not vocoded after a cancel
                raise Cancelled("stopped")
            if on_mel:
                on_mel(mel, last)
            if on_progress:
                on_progress("vocoder", {"frames": int(mel.shape[1])})
            t0 = time.perf_counter()
            with _turn(sh):
                audio = voc.push(mel, finalize=last)
            sh.timings["vocoder"] += time.perf_counter() - t0
            first_out.set()  # even if this mel was too short to give audio yet: the flow needs more tokens
            if audio.size:
                if ttfa is None:
                    ttfa = time.perf_counter() - t_start
                emissions += 1
                parts.append(audio)
                yield audio
        if should_stop is not None and should_stop():
            raise Cancelled("stopped")
        if not voc.done:
            raise InputError("the stream ended before its final chunk")
    finally:
        first_out.set()
        with sh.cond:  # a consumer that stops iterating, an error or a cancel: stop both threads
            sh.stop = True
            sh.cond.notify_all()
        for t in threads:
            t.join()
    stats = {"ttfa_s": ttfa or 0.0, "wall_s": time.perf_counter() - t_start, "chunks": req.stats["chunks"],
             "flow_calls": req.stats["calls"], "llm_yields": llm_yields,
             "llm_wait_s": llm_wait[0],
             "emissions": emissions, "prompt_cache_frames": flow_cache.frames if flow_cache is not None else 0,
             "schedule": schedule, "final": final,
             "threads": {"llm": getattr(engine.lm, "n_threads", None), "flow": getattr(cf.est, "n_threads", None),
                         "vocoder": getattr(engine.hift, "n_threads", None)}}
    yield SynthesisResult(np.concatenate(parts) if parts else np.zeros(0, np.float32), int(c["sample_rate"]),
                          list(sh.raw), dict(sh.timings), engine.backends, stats=stats)


def _voice_done(sh: _Shared) -> None:
    with sh.cond:
        sh.voice_pending = False
        sh.cond.notify_all()


@contextmanager
def _turn(sh: _Shared) -> Iterator[None]:
    """A flow or vocoder call: the LLM (``llm_yields="every"``) pauses at its next token until it ends."""
    with sh.cond:
        sh.busy += 1
    try:
        yield
    finally:
        with sh.cond:
            sh.busy -= 1
            sh.cond.notify_all()


def _only_prefill(on_progress: Callable[[str, dict], None]) -> Callable[[str, dict], None]:
    return lambda stage, info: on_progress(stage, info) if stage == "prefill" else None


def _ready(cf: Any, req: Any, extra: int) -> int:
    """Frames the flow could solve with ``extra`` more tokens than its request holds."""
    la = cf.flow.frontend.pre_lookahead_len
    return max(req.frames_done, (cf.ratio * (len(req.tokens) + extra - la)) // cf.chunk * cf.chunk)


def _hand(sh: _Shared, pending: list[np.ndarray], beyond: int, *, final: bool) -> None:
    """Give the vocoder the pending generated mel except its last ``beyond`` frames (solved past the emission
    point; they wait for the next one)."""
    mel = np.concatenate(pending, axis=1) if pending else np.zeros((0, 0), np.float32)
    pending.clear()
    if beyond:
        pending.append(mel[:, mel.shape[1] - beyond :])
        mel = mel[:, : mel.shape[1] - beyond]
    with sh.cond:
        sh.mel.append((mel, final))
        sh.cond.notify_all()
