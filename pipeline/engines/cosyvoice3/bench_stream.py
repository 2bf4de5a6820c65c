"""``bench --stream``: streaming against non-streaming synthesis of the same request, interleaved in one run.

Per repeat, in this order: non-streaming (cached LLM prefix, forced-length decode, full-attention flow, HiFT),
streaming with the voice's flow prompt cache warm, streaming without it (cold). The LLM really runs in both
(forced length: stop ids masked, as the main bench does), so time to first audio includes the prefill and the
first chunk's tokens. Reported: ``ttfa_s``, ``stream_total_s``, ``stream_total_cold_s`` (min/median/max), the
non-streaming total of the same repeats, per-chunk emission times, the prompt cache's build time and size,
the overlap gained (sum of stage busy times minus wall time) and the stream's mel error against an fp32 cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

Log = Callable[[str], None]


def _token_source(engine: Any, text: np.ndarray, ptext: np.ndarray, prompt: Any, state: bytes, n: int,
                  sampler: Any, seed: int) -> Callable[[Callable[[int, int], None], Callable[[], bool]], None]:
    from pipeline.engines.cosyvoice3.bench import forced_decode

    def run(on_token: Callable[[int, int], None], should_stop: Callable[[], bool]) -> None:
        logits = engine._prefill(text, ptext, prompt, state)
        size = int(engine.constants["speech_token_size"])
        out: list[int] = []

        class Hook:  # forced_decode's sampler, reporting each token as it is picked
            def __call__(self, logp, prev, rng):
                if should_stop():
                    from pipeline.shared.errors import Cancelled

                    raise Cancelled("stopped")
                tok = int(sampler(logp, prev, rng))
                on_token(len(out), tok)
                out.append(tok)
                return tok

        forced_decode(engine.lm, logits, n, stop_from=size, sampler=Hook(), rng=np.random.default_rng(seed))

    return run


def run_stream_bench(engine: Any, opts: Any, text: np.ndarray, ptext: np.ndarray, prompt: Any, log: Log,
                     ) -> dict[str, Any]:
    from pipeline.engines.cosyvoice3.sampling import make_ras_sampler
    from pipeline.shared.benchkit import stats

    c = engine.constants
    sampler = make_ras_sampler(c["sampling"])
    state = engine.prompt_prefix_state(ptext)
    cf = engine.chunked_flow()
    schedule = stream_schedule(opts, cf)
    t0 = time.perf_counter()
    cache = engine.prompt_cache(prompt, "bench")
    build_s = time.perf_counter() - t0
    src = _token_source(engine, text, ptext, prompt, state, opts.tokens, sampler, opts.seed)
    rows: dict[str, list[float]] = {k: [] for k in ("nonstream_total_s", "ttfa_s", "stream_total_s",
                                                    "stream_total_cold_s", "ttfa_cold_s", "overlap_s")}
    chunk_times: list[float] = []
    mel_err = None
    for r in range(opts.repeat):
        # non-streaming, the same request
        t0 = time.perf_counter()
        toks: list[int] = []
        src(lambda _i, tok, out=toks: out.append(tok), lambda: False)
        mel = engine.flow(np.asarray(toks, np.int64), prompt.speech_tokens, prompt.mel, prompt.embedding)
        engine.hift(mel)
        rows["nonstream_total_s"].append(time.perf_counter() - t0)
        for warm in (True, False):
            t0 = time.perf_counter()
            marks: list[float] = []
            res = None
            for item in engine.synthesize_stream(text, ptext, prompt, voice_key="bench", use_prompt_cache=warm,
                                                 tokens=src, schedule=schedule):
                if isinstance(item, np.ndarray):
                    marks.append(time.perf_counter() - t0)
                else:
                    res = item
            wall = time.perf_counter() - t0
            key = "" if warm else "_cold"
            rows[f"stream_total{key}_s"].append(wall)
            rows[f"ttfa{key}_s"].append(marks[0])
            if warm:
                rows["overlap_s"].append(max(0.0, sum(res.timings.values()) - wall))
                chunk_times = [b - a for a, b in zip([0.0, *marks], marks, strict=False)]
                audio_s = res.duration
        log(f"  stream repeat {r + 1}/{opts.repeat}: non-streaming {rows['nonstream_total_s'][-1]:.2f}s, "
            f"streaming ttfa {rows['ttfa_s'][-1]:.2f}s total {rows['stream_total_s'][-1]:.2f}s, "
            f"cold total {rows['stream_total_cold_s'][-1]:.2f}s")
    if engine.flow_cache_type != "fp32" and "fp32" in engine.bundle.manifest["flow"]["estimator"].get("onnx_chunk", {}):
        mel_err = _cache_error(engine, prompt, toks, log)
    rss = stream_rss(engine, opts, log)
    metrics = {k: stats(v) for k, v in rows.items()}
    med = {k: m["median"] for k, m in metrics.items()}
    return {
        "schedule": schedule,
        "flow_cache": engine.flow_cache_type,
        "metrics": metrics,
        "ttfa_vs_nonstream": med["ttfa_s"] / med["nonstream_total_s"],
        "stream_vs_nonstream": med["stream_total_s"] / med["nonstream_total_s"],
        "stream_cold_vs_nonstream": med["stream_total_cold_s"] / med["nonstream_total_s"],
        "chunk_times_s": chunk_times,
        "audio_s": audio_s,
        "prompt_cache": {"frames": cache.frames, "mb": cache.nbytes / 2**20, "build_s": build_s,
                         "prompt_frames": cf.ratio * len(prompt.speech_tokens)},
        "cache_mel_error": mel_err,
        "stream_peak_rss_mb": rss,
        "llm_yields": res.stats.get("llm_yields") if res is not None else None,
    }


def stream_schedule(opts: Any, cf: Any) -> str:
    """``--stream-schedule``, or what the page and ``say`` use (:meth:`.tts.CosyVoiceRK._segment_chunks`)."""
    return opts.stream_schedule or ("upstream" if cf.max_chunks > 1 else "chunk")


def stream_rss(engine: Any, opts: Any, log: Log) -> float | None:
    """Peak RSS (MB) of a process that only streams: ``Engine.load`` as the worker loads the engine, the
    voice's prompt cache, one streaming request of the bench's shape. This process holds the non-streaming
    graphs and the fp32 comparison too, so its own peak is not the worker's."""
    import multiprocessing as mp

    avail = _mem_available_mb()
    if avail is not None and avail < STREAM_RSS_MIN_FREE_MB:
        log(f"  streaming-only peak RSS: not measured (a second engine process needs ~{STREAM_RSS_MIN_FREE_MB} MB "
            f"free, {avail:.0f} MB are)")
        return None
    args = {"bundle": str(engine.bundle.root), "quant": opts.quant, "threads": opts.threads,
            "flow_cache": engine.flow_cache_type, "flow_backend": opts.flow_backend, "opts": _plain(opts)}
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_rss_child, args=(args, child), daemon=True)
    proc.start()
    child.close()
    try:
        out = parent.recv() if parent.poll(3600) else {"error": "timed out"}
    except EOFError:
        out = {"error": f"the process died (exit {proc.exitcode})"}
    proc.join(30)
    if "error" in out:
        log(f"  streaming-only peak RSS: not measured ({out['error']})")
        return None
    log(f"  streaming-only peak RSS {out['peak_mb']:.0f} MB (a process that loads the engine as the worker does, "
        f"builds the voice's prompt cache of {out['cache_mb']:.0f} MB and streams once)")
    return float(out["peak_mb"])


STREAM_RSS_MIN_FREE_MB = 4096  # the measured process peaks at 3.4 GB with a 10 s voice


def _mem_available_mb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _plain(opts: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(opts).items() if isinstance(v, (int, float, str, bool, type(None)))}


def _rss_child(args: dict[str, Any], conn: Any) -> None:
    from types import SimpleNamespace

    try:
        from pipeline.engines.cosyvoice3.bench import synthetic_inputs
        from pipeline.engines.cosyvoice3.engine import Engine
        from pipeline.engines.cosyvoice3.sampling import make_ras_sampler
        from pipeline.shared.benchkit import peak_rss_mb

        o = SimpleNamespace(**args["opts"])
        engine = Engine.load(args["bundle"], quant=args["quant"], n_threads=args["threads"],
                             flow_backend=args["flow_backend"], flow_cache=args["flow_cache"], log=lambda m: None)
        text, ptext, prompt = synthetic_inputs(engine.constants, o, engine.text_embedding.vocab,
                                               engine.flow.mel_bins, engine.flow.frontend.spk_embed_dim)
        state = engine.prompt_prefix_state(ptext)
        src = _token_source(engine, text, ptext, prompt, state, o.tokens,
                            make_ras_sampler(engine.constants["sampling"]), o.seed)
        cache = engine.prompt_cache(prompt, "bench")
        for _ in engine.synthesize_stream(text, ptext, prompt, voice_key="bench", tokens=src,
                                          schedule=stream_schedule(o, engine.chunked_flow())):
            pass
        conn.send({"peak_mb": peak_rss_mb()[0], "cache_mb": cache.nbytes / 2**20})
    except BaseException as e:  # noqa: BLE001 - reported by the parent
        conn.send({"error": f"{type(e).__name__}: {e}"})


def _cache_error(engine: Any, prompt: Any, toks: list[int], log: Log) -> dict[str, float]:
    """The configured cache type's mel against an fp32 cache, same tokens."""
    from pipeline.engines.cosyvoice3.bench import mel_error
    from pipeline.engines.cosyvoice3.flow_stream import ChunkedFlow

    def mel_of(cf: ChunkedFlow) -> np.ndarray:
        req = cf.start(prompt)
        return cf.advance(req, toks, cf.ratio * len(req.tokens) + cf.ratio * len(toks), finalize=True)

    ref = ChunkedFlow.from_bundle(engine.bundle, engine.flow, n_threads=engine.n_threads, cache="fp32")
    err = mel_error(mel_of(engine.chunked_flow()), mel_of(ref))
    log(f"  {engine.flow_cache_type} K/V cache vs fp32: mel max abs {err['max_abs']:.2e}")
    return err


def format_stream(rep: dict[str, Any]) -> list[str]:
    m = rep["metrics"]

    def f(k: str) -> str:
        return f"{m[k]['median']:.2f} s (min {m[k]['min']:.2f}, max {m[k]['max']:.2f})"

    pc = rep["prompt_cache"]
    lines = [
        f"streaming ({rep['schedule']} schedule, {rep['flow_cache']} K/V cache), {rep['audio_s']:.1f} s of audio:",
        f"  non-streaming total   {f('nonstream_total_s')}",
        f"  time to first audio   {f('ttfa_s')}  = {100 * rep['ttfa_vs_nonstream']:.0f} % of non-streaming",
        f"  streaming total       {f('stream_total_s')}  = {rep['stream_vs_nonstream']:.2f} × non-streaming",
        f"  without prompt cache  {f('stream_total_cold_s')}  = {rep['stream_cold_vs_nonstream']:.2f} × "
        f"(first audio {m['ttfa_cold_s']['median']:.2f} s)",
        f"  overlap gained        {m['overlap_s']['median']:.2f} s (stage busy time − wall time)",
        f"  prompt cache          {pc['frames']} of {pc['prompt_frames']} prompt frames, {pc['mb']:.0f} MB, "
        f"built in {pc['build_s']:.2f} s",
        "  per emission (s)      " + ", ".join(f"{t:.2f}" for t in rep["chunk_times_s"]),
    ]
    if rep.get("stream_peak_rss_mb"):
        lines.append(f"  streaming-only peak RSS  {rep['stream_peak_rss_mb'] / 1024:.2f} GB (its own process: the "
                     "engine as the worker loads it, the voice's prompt cache, one request)")
    if rep.get("cache_mel_error"):
        lines.append(f"  cache mel error vs fp32  max abs {rep['cache_mel_error']['max_abs']:.2e}")
    return lines
