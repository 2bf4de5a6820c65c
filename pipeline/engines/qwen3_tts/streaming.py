"""Streaming synthesis of one Qwen3-TTS text segment: frames decoded into audio while they are generated.

Two stages (upstream has none, spec §11; the architecture is causal end to end):

    generation thread   talker + code predictor (llama.cpp, releases the GIL): each finished frame (16 codes)
                        is appended to the request's frame list
    caller              at each emission point, the new frames → :class:`~.decoder_stream.StatefulStreamDecoder`
                        (ONNX Runtime, releases the GIL) → float32 audio, yielded at once

Emission points (generated frames, :func:`emission_points`): 4, then hops of 8 and 16 frames (4, 12, 28, 44,
60, …), and the rest when generation ends. The decoder is called exactly at those points, whatever the thread's
timing, so that the call shapes (which set the float rounding) and hence the audio are the same every run.

Why these numbers (measured on a quarter-width random decoder, same 8 layers and node count as the real one,
2-core x86): a call costs ~6 ms + ~11 ms per frame on one thread (17 ms for 1 frame, 12.6 ms/frame at 4,
11 ms/frame at 8–32); on two threads 44 ms for 1 frame, 26 ms/frame at 4, 19 ms/frame from 8 on. At full width
the per-frame cost is ~16x larger and the fixed cost about the same, so even 1-frame calls would cost little
extra on one thread; but multi-threaded calls need a few frames to use the threads, and 1–2 frames (80–160 ms
of audio) would run out before the next chunk whenever generation is slower than real time (the CPU estimate
is ≈1.2 s per second of audio, spec §12). 4 frames (320 ms) is the first chunk; the cost per frame stops
falling at 8–16 frames, so hops grow to 16 (1.28 s) and no further: larger hops only delay audio.

At each emission point the generation thread waits until that audio is decoded (``lm_yields="every"``): the
two stages share the process's cores, and llama.cpp's threads meet at a barrier after every op, so a decoder
running beside them slows the talker and code-predictor calls (a script over ``create_chunks``, 2 cores, q4_k_m,
100 frames, separate runs: 14.5 s overlapped, 13.6–14.2 s waiting for the first chunk only, 11.6–12.4 s taking
turns, which is what the one-pass path costs). ``"first"`` and ``"never"`` are kept (for a machine where the
decoder has cores of its own).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.engines.base import Segment
from pipeline.shared.errors import Cancelled, InputError

from .decoder_stream import StatefulStreamDecoder
from .voice import Job, SegmentResult

if TYPE_CHECKING:
    from .tts import Qwen3TTS

FIRST_FRAMES = 4
MAX_HOP_FRAMES = 16
YIELDS = ("every", "first", "never")

# generate(on_frame, should_stop) -> (n, 16) codes: the talker + code predictor loop of one segment
Generate = Callable[[Callable[[np.ndarray], None], Callable[[], bool]], np.ndarray]


def emission_points(first: int = FIRST_FRAMES, max_hop: int = MAX_HOP_FRAMES) -> Iterator[int]:
    """Generated-frame counts after which audio is emitted: ``first``, then hops doubling up to ``max_hop``."""
    if first < 1 or max_hop < 1:
        raise ValueError("emission hops must be at least one frame")
    point, hop = 0, first
    while True:
        point += hop
        yield point
        hop = min(max_hop, hop * 2)


@dataclass
class StreamEnd:
    """What the stream yields after its audio: the generated codes, timings and statistics."""

    codes: np.ndarray
    timings: dict[str, float]
    stats: dict[str, Any]


@dataclass
class _Request:
    """One segment's shared state (the generation thread and the caller), behind one condition variable."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    frames: list[np.ndarray] = field(default_factory=list)
    codes: np.ndarray | None = None
    done: bool = False
    error: BaseException | None = None
    stop: bool = False
    lm_wait: float = 0.0
    gen_time: float = 0.0
    decoded: int = 0  # frames decoded so far (the caller)


def stream_segment(generate: Generate, decoder: StatefulStreamDecoder, *,
                   should_stop: Callable[[], bool] | None = None, first: int = FIRST_FRAMES,
                   max_hop: int = MAX_HOP_FRAMES, lm_yields: str = "every",
                   on_progress: Callable[[str, dict], None] | None = None
                   ) -> Iterator[tuple[np.ndarray, bool] | StreamEnd]:
    """Yield ``(float32 audio, is_last)`` as each piece is decoded, then one :class:`StreamEnd`.

    ``decoder``: this request's own decoder (a fork; primed with the voice's prompt codes for ICL), pushed in
    the caller's thread. The last piece may be empty (generation ended right at an emission point). A cancel
    (``should_stop``) is seen by the generation thread after every frame and here before every decode; an
    error in the thread is raised here. Closing the generator stops the thread and waits for it (it finishes
    at most the frame it is on). ``lm_yields``: at which emission points generation waits for the decoder
    (:data:`YIELDS`, module docstring)."""
    if lm_yields not in YIELDS:
        raise InputError(f"lm_yields must be one of {', '.join(YIELDS)}, not {lm_yields!r}")
    req = _Request()
    pauses = emission_points(first, max_hop)  # the generation thread's copy of the caller's schedule
    pause_at = [next(pauses)]
    t_start = time.perf_counter()
    stopped = lambda: req.stop or (should_stop is not None and should_stop())  # noqa: E731

    def on_frame(frame: np.ndarray) -> None:
        with req.cond:
            req.frames.append(frame)
            req.cond.notify_all()
            n = len(req.frames)
            at_point = n == pause_at[0]
            if at_point:
                pause_at[0] = next(pauses)
            wait = at_point and (lm_yields == "every" or (lm_yields == "first" and n == first))
            if wait:
                t0 = time.perf_counter()
                while req.decoded < n and not stopped():
                    req.cond.wait(0.05)
                req.lm_wait += time.perf_counter() - t0

    def work() -> None:
        t0 = time.perf_counter()
        try:
            codes = generate(on_frame, stopped)
            with req.cond:
                req.codes = np.asarray(codes)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            with req.cond:
                req.error = e
        finally:
            with req.cond:
                req.gen_time = time.perf_counter() - t0
                req.done = True
                req.cond.notify_all()

    def cancelled() -> bool:
        return should_stop is not None and should_stop()

    thread = threading.Thread(target=work, name="q3-generate", daemon=True)
    thread.start()
    points = emission_points(first, max_hop)
    target = next(points)
    decoded, emissions, t_decode = 0, 0, 0.0
    ttfa: float | None = None
    try:
        while True:
            with req.cond:
                while not (req.error or req.done or len(req.frames) >= target):
                    req.cond.wait()
                if req.error is not None:
                    raise req.error
                n, done = len(req.frames), req.done
                end = target if n >= target else n
                new = req.frames[decoded:end]
            if cancelled():  # a stopped generation's frames are not decoded
                raise Cancelled(f"stopped after {n} frames")
            if end == target:
                target = next(points)
            last = done and end == n
            if on_progress:
                on_progress("vocoder", {"frames": len(new)})
            t0 = time.perf_counter()
            audio = decoder.push(np.stack(new)) if new else np.zeros(0, np.float32)
            t_decode += time.perf_counter() - t0
            decoded = end
            with req.cond:  # the generation thread may go on
                req.decoded = end
                req.cond.notify_all()
            if len(audio):
                emissions += 1
                if ttfa is None:
                    ttfa = time.perf_counter() - t_start
            yield audio, last
            if last:
                break
        codes = req.codes if req.codes is not None else np.zeros((0, decoder.num_quantizers), np.int64)
        if len(codes) != decoded or (decoded and not np.array_equal(codes, np.stack(req.frames))):
            raise RuntimeError(f"generation returned {len(codes)} frames but streamed {decoded}")
    finally:
        with req.cond:  # a consumer that stops iterating, an error or a cancel: stop the thread
            req.stop = True
            req.cond.notify_all()
        thread.join()
    wall = time.perf_counter() - t_start
    yield StreamEnd(codes, {"talker": req.gen_time, "decoder": t_decode},
                    {"ttfa_s": ttfa or 0.0, "wall_s": wall, "emissions": emissions, "frames": int(decoded),
                     "first_frames": first, "max_hop_frames": max_hop, "lm_yields": lm_yields,
                     "lm_wait_s": req.lm_wait})


def stream_job(tts: Qwen3TTS, job: Job) -> Iterator[tuple[np.ndarray, Segment | None]]:
    """One segment of a request to ``tts`` streamed: ``(audio, None)`` per piece, the last with its :class:`Segment`.

    Against ``Qwen3TTS._segment`` (same seed, same codes): the decoder runs the stateful step graph with
    upstream's windows, so the samples agree within float32 rounding (<= 1e-3, tests/test_q3_streaming.py).
    ICL: the stream starts at sample T12·1920 of [prompt; generated], while upstream cuts at
    ``int(T12 / (T12 + n) · len)``, which float rounding makes T12·1920 − 1 for some (T12, n); then the
    one-pass audio has one more sample at its start (the prompt's last) and streamed == one_pass[1:]. A
    stream cannot know n when it emits its first sample, so that sample is not made up."""
    icl = job.mode == "zero_shot"
    t0 = time.perf_counter()
    prompt, cap = tts._talker_prompt(job)
    t1 = time.perf_counter()
    decoder, primed_now = tts._primed.decoder(job.voice.features.codes if icl else None, job.should_stop)
    t_prep, t_prime = time.perf_counter() - t0, time.perf_counter() - t1

    def generate(on_frame: Callable[[np.ndarray], None], stopped: Callable[[], bool]) -> np.ndarray:
        return tts.lm.generate(prompt, rng=job.rng, progress=lambda k: job.report("tokens", {"n": int(k)}),
                               should_stop=stopped, on_frame=on_frame, **{"max_new_tokens": cap, **job.overrides})

    parts: list[np.ndarray] = []
    held: np.ndarray | None = None  # the last piece waits for the StreamEnd (it is yielded right after)
    with closing(stream_segment(generate, decoder, should_stop=job.should_stop, on_progress=job.report)) as made:
        for item in made:
            if isinstance(item, StreamEnd):
                audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
                timings = dict(item.timings)
                timings["talker"] += t_prep - t_prime
                timings["decoder"] += t_prime  # priming the voice (its first request only)
                stats = {**item.stats, "ttfa_s": item.stats["ttfa_s"] + t_prep,
                         "wall_s": item.stats["wall_s"] + t_prep, "primed_now": primed_now}
                res = SegmentResult(audio, tts.sample_rate, np.asarray(item.codes), timings, tts.backends, stats)
                seg = Segment(job.index, job.total, job.text, audio, tts.sample_rate, res)
                yield (held if held is not None else np.zeros(0, np.float32)), seg
                return
            piece, last = item
            piece = np.asarray(piece, np.float32)
            parts.append(piece)
            if last:
                held = piece
            elif len(piece):
                yield piece, None
    raise RuntimeError("the stream ended without its result")
