"""``cosyvoice-rk bench``: stage timings of the whole chain at fixed, known shapes.

Inputs are synthetic and sized by the options (prompt speech tokens, prompt text tokens, target text
tokens, generated tokens): random ids, a random prompt mel and speaker embedding. A random-weight bundle
(``make-random-bundle --size full``) costs exactly what the real model costs, so the numbers hold for it.

After an untimed warm-up of both prefill paths, per repeat: the cached speaker prefix is built and timed
(``Engine.prompt_prefix_state``), the prefill runs with and without it, the LLM decodes exactly ``--tokens``
tokens (stop ids masked, upstream's RAS sampler otherwise: no early stop), the flow turns them into mel (time
per Euler step recorded), HiFT into audio. The flow estimator is chosen as ``Engine.load`` chooses it
(``--flow-backend``, RKNN on a board with an NPU), and on an RK3588 the process pins itself to the A76 cores
first (``--cpus``). The mel error of the fast mode is against the full run's estimator.
Every repeat uses the same seed, so every repeat does identical work. Peak RSS is the process's high-water
mark (``VmHWM``) after the full-fidelity repeats. With ``--flow-fast`` the fast flow (INT8 estimator and/or
``--flow-steps``) then replaces the full one (the full estimator is released first), runs on the same tokens,
and its mel is compared with the full-fidelity mel of the last repeat.
"""

from __future__ import annotations

import datetime as _dt
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.benchkit import loadavg, machine_info, peak_rss_mb, stats
from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import InputError

# Every timed quantity: (key, unit, what). Each appears in the JSON as {"min", "median", "max", "unit"}.
METRICS: tuple[tuple[str, str, str], ...] = (
    ("prefix_state_s", "s", "cached speaker prefix: build [sos, prompt text] state (once per voice)"),
    ("prefill_s", "s", "LLM prefill, no cache"),
    ("prefill_cached_s", "s", "LLM prefill from the cached speaker prefix"),
    ("prefill_pos_per_s", "pos/s", "prefill throughput, no cache"),
    ("decode_s", "s", "LLM decode of --tokens tokens (forced length)"),
    ("decode_tok_per_s", "tok/s", "LLM decode speed incl. sampling"),
    ("decode_llm_ms_per_tok", "ms", "llama.cpp time per token"),
    ("decode_sampling_ms_per_tok", "ms", "numpy sampling time per token"),
    ("flow_s", "s", "flow: frontend + all Euler steps"),
    ("flow_step_s", "s", "one Euler step (CFG batch of 2), median over steps"),
    ("hift_s", "s", "HiFT vocoder"),
    ("hift_rtf", "x", "HiFT time / audio duration"),
    ("total_s", "s", "prefill + decode + flow + HiFT"),
    ("total_cached_s", "s", "same with the cached speaker prefix"),
    ("rtf", "x", "total / audio duration"),
    ("rtf_cached", "x", "total_cached / audio duration"),
)
FAST_METRICS: tuple[tuple[str, str, str], ...] = (
    ("flow_s", "s", "fast flow: frontend + all Euler steps"),
    ("flow_step_s", "s", "one fast Euler step, median over steps"),
    ("total_s", "s", "prefill + decode + fast flow + HiFT"),
    ("rtf", "x", "total / audio duration"),
)
# Top-level keys of the JSON report, and the keys of its sections.
JSON_FIELDS = ("date", "machine", "config", "backends", "shapes", "load_s", "metrics", "shares", "peak_rss_mb",
               "peak_rss_source", "prefix_state_bytes", "fast", "mel_check")
MACHINE_FIELDS = ("cpu", "logical_cpus", "affinity", "loadavg_start", "loadavg_end", "python", "numpy",
                  "onnxruntime", "llama_cpp", "platform")
CONFIG_FIELDS = ("bundle", "random_weights", "fingerprint", "quant", "llm_threads", "flow_threads", "hift_threads",
                 "kv_type", "flash_attn", "n_ctx", "n_batch", "prompt_tokens", "prompt_text_tokens", "text_tokens",
                 "tokens", "repeat", "seed", "flow_steps", "flow_estimator", "flow_backend", "flow_backend_reason",
                 "npu_cores", "cpus", "cpus_reason")
SHAPE_FIELDS = ("prefill_positions", "prefill_cached_positions", "mel_frames", "generated_mel_frames",
                "audio_s")
FAST_FIELDS = ("estimator", "flow_steps", "flow_threads", "metrics", "speedup_flow", "mel_error")
MEL_CHECK_FIELDS = ("estimator", "reference", "reference_flow_s", "mel_error")
MEL_ERROR_FIELDS = ("max_abs", "mean_abs", "rel_l2", "ref_std")

Log = Callable[[str], None]


@dataclass
class BenchOptions:
    bundle: Path | str
    quant: str | None = None
    threads: int | None = None
    llm_threads: int | None = None
    flow_threads: int | None = None
    hift_threads: int | None = None
    kv_type: str = "f16"
    flow_backend: str = "auto"
    npu_cores: str = "auto"
    cpus: str | None = None
    prompt_tokens: int = 50
    prompt_text_tokens: int = 20
    text_tokens: int = 20
    tokens: int = 150
    repeat: int = 3
    seed: int = 0
    flow_fast: bool = False
    fast_estimator: str = "int8"
    flow_steps: int | None = None
    mel_check: bool = False
    stream: bool = False
    stream_schedule: str | None = None  # None: as the page and say choose (pipeline.engines.cosyvoice3.tts)
    flow_cache: str = "fp16"

    def validate(self) -> None:
        for name in ("prompt_tokens", "prompt_text_tokens", "text_tokens", "tokens", "repeat"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("threads", "llm_threads", "flow_threads", "hift_threads", "flow_steps"):
            v = getattr(self, name)
            if v is not None and int(v) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.fast_estimator not in ("int8", "fp32"):
            raise InputError(f"fast estimator must be int8 or fp32, not {self.fast_estimator!r}")


@dataclass
class _Run:
    """One repeat's raw numbers."""

    values: dict[str, float] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)
    mel: np.ndarray | None = None


def synthetic_inputs(constants: dict, opts: BenchOptions, text_vocab: int, mel_bins: int,
                     spk_dim: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """(text ids, prompt text ids, PromptFeatures) of the requested sizes; deterministic in ``opts.seed``."""
    from pipeline.engines.cosyvoice3.engine import PromptFeatures

    rng = np.random.default_rng(opts.seed + 1000)
    eop = constants.get("endofprompt_id")
    # ordinary text ids: below the special tokens (151643.. in Qwen2) and inside the embedding table
    hi = min(int(text_vocab), 151643)
    prompt_text = rng.integers(0, hi, opts.prompt_text_tokens)
    if eop is not None:
        # "You are a helpful assistant.<|endofprompt|>" is 7 text tokens then <|endofprompt|>, then the transcript
        prompt_text[min(7, opts.prompt_text_tokens - 1)] = int(eop)
    text = rng.integers(0, hi, opts.text_tokens)
    size = int(constants["speech_token_size"])
    prompt_tokens = rng.integers(0, size, opts.prompt_tokens)
    mel = rng.normal(-6.0, 2.0, (2 * opts.prompt_tokens, mel_bins)).astype(np.float32)
    emb = rng.standard_normal(spk_dim).astype(np.float32)
    return text.astype(np.int64), prompt_text.astype(np.int64), PromptFeatures(prompt_tokens, mel, emb)


def forced_decode(lm: Any, logits: np.ndarray, n_tokens: int, *, stop_from: int, sampler: Any,
                  rng: np.random.Generator) -> tuple[list[int], float, float]:
    """Decode exactly ``n_tokens`` speech tokens: ids >= ``stop_from`` (eos, sos, task, fill ...) are masked
    before upstream's sampler runs, so the length is forced. Returns (tokens, llama.cpp s, sampling s)."""
    from pipeline.engines.cosyvoice3.sampling import log_softmax32

    out: list[int] = []
    t_llm = t_sample = 0.0
    for i in range(n_tokens):
        if i:
            t0 = time.perf_counter()
            logits = lm.step(out[-1])
            t_llm += time.perf_counter() - t0
        t0 = time.perf_counter()
        logp = log_softmax32(logits)
        logp[stop_from:] = -np.inf
        out.append(int(sampler(logp, out, rng)))
        t_sample += time.perf_counter() - t0
    return out, t_llm, t_sample


def timed_flow(flow: Any, tokens: np.ndarray, prompt: Any) -> tuple[np.ndarray, float, list[float]]:
    """Mel (M, generated frames) as ``Flow.__call__`` makes it, with the total time and each step's time."""
    t0 = time.perf_counter()
    mu, spks, cond, mask = flow.prepare(tokens, prompt.speech_tokens, prompt.mel, prompt.embedding)
    z = flow.noise_for(mu.shape[1])
    marks = [time.perf_counter()]
    x = flow.solve(mu, mask, spks, cond, z, on_step=lambda i, n: marks.append(time.perf_counter()))
    mel = np.ascontiguousarray(x[:, flow.token_mel_ratio * prompt.speech_tokens.size:])
    total = time.perf_counter() - t0
    return mel, total, [b - a for a, b in zip(marks, marks[1:], strict=False)]


def mel_error(mel: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    a, b = np.asarray(mel, np.float64), np.asarray(ref, np.float64)
    d = a - b
    return {"max_abs": float(np.max(np.abs(d))), "mean_abs": float(np.mean(np.abs(d))),
            "rel_l2": float(np.linalg.norm(d) / max(np.linalg.norm(b), 1e-12)), "ref_std": float(np.std(b))}


def run_bench(opts: BenchOptions, log: Log = lambda m: None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-able report (see ``JSON_FIELDS``)."""
    from pipeline.engines.cosyvoice3.engine import Engine
    from pipeline.engines.cosyvoice3.flow import Flow
    from pipeline.engines.cosyvoice3.flow_rknn import make_estimator
    from pipeline.engines.cosyvoice3.llm import SpeechLM, TextEmbedding
    from pipeline.engines.cosyvoice3.vocoder import HiFT
    from pipeline.shared.cpu import place_process
    from pipeline.shared.llama import default_threads

    opts.validate()
    bundle = opts.bundle if isinstance(opts.bundle, Bundle) else Bundle.load(opts.bundle)
    # pin first (RK3588: the A76 cores), so that every thread pool starts on the right cores
    cores, cpus_reason = place_process(opts.cpus, log=log)
    machine = machine_info()
    base = opts.threads or default_threads()  # after pinning: the pinned CPUs, at most 4
    llm_threads = opts.llm_threads or base
    flow_threads = opts.flow_threads or base
    hift_threads = opts.hift_threads or base

    t0 = time.perf_counter()
    est, backend_reason = make_estimator(bundle, opts.flow_backend, n_threads=flow_threads, core_mask=opts.npu_cores,
                                         log=log)
    lm = SpeechLM.from_bundle(bundle, quant=opts.quant, n_threads=llm_threads, kv_type=opts.kv_type)
    temb = TextEmbedding.from_bundle(bundle)
    flow = Flow.from_bundle(bundle, estimator=est, n_threads=flow_threads)
    hift = HiFT.from_bundle(bundle, n_threads=hift_threads)
    engine = Engine(bundle, lm, temb, flow, hift)
    engine.flow_backend, engine.npu_cores, engine.log = opts.flow_backend, opts.npu_cores, log  # --stream's flow
    load_s = time.perf_counter() - t0
    placement = {"flow_backend": opts.flow_backend, "flow_backend_reason": backend_reason,
                 "npu_cores": opts.npu_cores, "cpus": cores, "cpus_reason": cpus_reason}
    try:
        return _run(engine, bundle, opts, machine, load_s, (llm_threads, flow_threads, hift_threads), placement,
                    log)
    finally:
        engine.close()


def _run(engine: Any, bundle: Bundle, opts: BenchOptions, machine: dict, load_s: float,
         threads: tuple[int, int, int], placement: dict[str, Any], log: Log) -> dict[str, Any]:
    from pipeline.engines.cosyvoice3.sampling import make_ras_sampler

    c = bundle.constants
    lm, flow, hift = engine.lm, engine.flow, engine.hift
    text, ptext, prompt = synthetic_inputs(c, opts, engine.text_embedding.vocab, flow.mel_bins,
                                           flow.frontend.spk_embed_dim)
    n_prefill = 2 + len(ptext) + len(text) + opts.prompt_tokens
    if n_prefill + opts.tokens > lm.n_ctx:
        raise InputError(f"prefill ({n_prefill}) + tokens ({opts.tokens}) exceed the LLM context ({lm.n_ctx})")
    mel_frames = flow.token_mel_ratio * (opts.prompt_tokens + opts.tokens)
    if mel_frames > flow.noise_frames:
        raise InputError(f"{mel_frames} mel frames exceed the flow noise table ({flow.noise_frames})")
    gen_frames = flow.token_mel_ratio * opts.tokens
    if gen_frames * hift.samples_per_frame > hift.noise_samples:
        raise InputError(f"{opts.tokens} tokens exceed the HiFT noise table ({hift.noise_samples} samples)")
    size = int(c["speech_token_size"])
    sampler = make_ras_sampler(c["sampling"])
    log(f"bench: {opts.repeat} repeat(s) of {n_prefill} prefill positions, {opts.tokens} tokens, "
        f"{mel_frames} mel frames; threads llm/flow/hift {threads[0]}/{threads[1]}/{threads[2]}")

    # untimed warm-up of both prefill paths (first-use allocations in llama.cpp, pages of the mmapped weights)
    engine._prefill(text, ptext, prompt, engine.prompt_prefix_state(ptext))
    engine._prefill(text, ptext, prompt, None)
    runs: list[_Run] = []
    state_bytes = 0
    for r in range(opts.repeat):
        run = _Run()
        v = run.values
        t0 = time.perf_counter()
        state = engine.prompt_prefix_state(ptext)
        v["prefix_state_s"] = time.perf_counter() - t0
        state_bytes = len(state)
        t0 = time.perf_counter()
        engine._prefill(text, ptext, prompt, state)
        v["prefill_cached_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        logits = engine._prefill(text, ptext, prompt, None)
        v["prefill_s"] = time.perf_counter() - t0
        v["prefill_pos_per_s"] = n_prefill / v["prefill_s"]

        t0 = time.perf_counter()
        run.tokens, t_llm, t_samp = forced_decode(lm, logits, opts.tokens, stop_from=size, sampler=sampler,
                                                  rng=np.random.default_rng(opts.seed))
        v["decode_s"] = time.perf_counter() - t0
        v["decode_tok_per_s"] = opts.tokens / v["decode_s"]
        v["decode_llm_ms_per_tok"] = 1e3 * t_llm / max(opts.tokens - 1, 1)
        v["decode_sampling_ms_per_tok"] = 1e3 * t_samp / opts.tokens

        run.mel, v["flow_s"], steps = timed_flow(flow, np.asarray(run.tokens, np.int64), prompt)
        v["flow_step_s"] = float(statistics.median(steps))
        t0 = time.perf_counter()
        audio = hift(run.mel)
        v["hift_s"] = time.perf_counter() - t0
        audio_s = len(audio) / hift.sample_rate
        v["hift_rtf"] = v["hift_s"] / audio_s
        tail = v["decode_s"] + v["flow_s"] + v["hift_s"]
        v["total_s"] = v["prefill_s"] + tail
        v["total_cached_s"] = v["prefill_cached_s"] + tail
        v["rtf"] = v["total_s"] / audio_s
        v["rtf_cached"] = v["total_cached_s"] / audio_s
        runs.append(run)
        log(f"  repeat {r + 1}/{opts.repeat}: prefill {v['prefill_s']:.2f}s (cached {v['prefill_cached_s']:.2f}s), "
            f"decode {v['decode_tok_per_s']:.1f} tok/s, flow {v['flow_s']:.2f}s ({v['flow_step_s']:.2f}s/step), "
            f"HiFT {v['hift_s']:.2f}s, total {v['total_s']:.2f}s, RTF {v['rtf']:.2f}")

    metrics = {k: {**stats([run.values[k] for run in runs]), "unit": unit} for k, unit, _ in METRICS}
    peak, source = peak_rss_mb()
    med = {k: m["median"] for k, m in metrics.items()}
    stage_sum = med["prefill_s"] + med["decode_s"] + med["flow_s"] + med["hift_s"]
    shares = {k: round(100.0 * med[f"{k}_s"] / stage_sum, 1) for k in ("prefill", "decode", "flow", "hift")}
    est = flow.estimator
    report: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "config": {
            "bundle": str(bundle.root), "random_weights": bundle.is_random, "fingerprint": bundle.fingerprint,
            "quant": opts.quant or bundle.manifest["llm"]["default_quant"], "llm_threads": lm.n_threads,
            "flow_threads": getattr(est, "n_threads", threads[1]), "hift_threads": getattr(hift, "n_threads",
                                                                                            threads[2]),
            "kv_type": lm.kv_type, "flash_attn": lm.flash_attn, "n_ctx": lm.n_ctx, "n_batch": lm.n_batch,
            "prompt_tokens": opts.prompt_tokens, "prompt_text_tokens": opts.prompt_text_tokens,
            "text_tokens": opts.text_tokens, "tokens": opts.tokens, "repeat": opts.repeat, "seed": opts.seed,
            "flow_steps": flow.n_timesteps, "flow_estimator": _estimator_kind(est), **placement,
        },
        "backends": engine.backends,
        "shapes": {"prefill_positions": n_prefill, "prefill_cached_positions": n_prefill - 1 - len(ptext),
                   "mel_frames": mel_frames, "generated_mel_frames": gen_frames, "audio_s": audio_s},
        "load_s": load_s,
        "metrics": metrics,
        "shares": shares,
        "peak_rss_mb": round(peak, 1),
        "peak_rss_source": source,
        "prefix_state_bytes": state_bytes,
        "fast": None,
        "mel_check": None,
    }
    if opts.mel_check:
        report["mel_check"] = _run_mel_check(engine, bundle, threads[1], prompt, runs[-1], log)
    if opts.flow_fast:
        ref = runs[-1]
        report["fast"] = _run_fast(engine, bundle, opts, threads[1], prompt, ref, runs, audio_s, log)
    if opts.stream:
        from pipeline.engines.cosyvoice3.bench_stream import run_stream_bench

        engine.flow_cache_type = opts.flow_cache
        report["stream"] = run_stream_bench(engine, opts, text, ptext, prompt, log)
        for k in ("ttfa_s", "stream_total_s", "stream_total_cold_s"):
            report["metrics"][k] = {**report["stream"]["metrics"][k], "unit": "s"}
        peak, _ = peak_rss_mb()
        report["peak_rss_mb"] = round(peak, 1)
    report["machine"]["loadavg_end"] = loadavg()
    return report


def _estimator_kind(est: Any) -> str:
    """fp32 / int8 for ONNX Runtime graphs, the graph dtype (fp16) for the NPU."""
    return str(getattr(est, "variant", None) or getattr(est, "dtype", None)
               or ("fp16" if "rknn" in str(getattr(est, "backend", "")) else "fp32"))


def _estimator_label(est: Any) -> str:
    path = getattr(est, "path", None)
    return f"{est.name} {Path(path).name}" if path is not None else str(est.name)


def _run_mel_check(engine: Any, bundle: Bundle, flow_threads: int, prompt: Any, ref: _Run,
                   log: Log) -> dict[str, Any]:
    """The benchmarked flow's mel against the bundle's reference graph (the plain FP32 ``flow_estimator.onnx``
    on ONNX Runtime) on the same tokens and noise: what fusion, or the NPU's fp16, changes."""
    from pipeline.engines.cosyvoice3.flow import Flow, OrtEstimator

    path = bundle.root / bundle.manifest["flow"]["estimator"]["onnx"]
    log(f"mel check: the same tokens through {path.name} (FP32, ONNX Runtime CPU)")
    reference = Flow.from_bundle(bundle, estimator=OrtEstimator(path, n_threads=flow_threads),
                                 n_threads=flow_threads)
    mel, t, _ = timed_flow(reference, np.asarray(ref.tokens, np.int64), prompt)
    del reference  # its session is not needed beside the benchmarked one
    gc.collect()
    assert ref.mel is not None
    return {"estimator": _estimator_label(engine.flow.estimator),
            "reference": f"{path.name} (fp32, onnxruntime-cpu)", "reference_flow_s": t,
            "mel_error": mel_error(ref.mel, mel)}


def _run_fast(engine: Any, bundle: Bundle, opts: BenchOptions, flow_threads: int, prompt: Any, ref: _Run,
              runs: list[_Run], audio_s: float, log: Log) -> dict[str, Any]:
    from pipeline.engines.cosyvoice3.flow import Flow

    full = engine.flow
    steps = opts.flow_steps or full.n_timesteps
    log(f"fast flow: {opts.fast_estimator} estimator, {steps} steps")
    # release the full estimator first: the fast mode replaces it, it does not sit next to it
    engine.flow = None
    full_estimator_name = full.estimator.name
    del full
    gc.collect()
    fast = Flow.from_bundle(bundle, n_threads=flow_threads, fast=opts.fast_estimator == "int8",
                            n_timesteps=steps, log=log)
    engine.flow = fast
    tokens = np.asarray(ref.tokens, np.int64)
    times, step_times, mel = [], [], None
    for _ in range(opts.repeat):
        mel, t, st = timed_flow(fast, tokens, prompt)
        times.append(t)
        step_times.append(float(statistics.median(st)))
    assert mel is not None and ref.mel is not None
    rest = [run.values["prefill_s"] + run.values["decode_s"] + run.values["hift_s"] for run in runs]
    totals = [a + b for a, b in zip(rest, times, strict=True)]
    metrics = {
        "flow_s": stats(times), "flow_step_s": stats(step_times), "total_s": stats(totals),
        "rtf": stats([t / audio_s for t in totals]),
    }
    for (k, unit, _) in FAST_METRICS:
        metrics[k]["unit"] = unit
    full_flow = statistics.median(run.values["flow_s"] for run in runs)
    return {
        "estimator": getattr(fast.estimator, "variant", opts.fast_estimator),
        "estimator_name": fast.estimator.name,
        "replaces": full_estimator_name,
        "flow_steps": steps,
        "flow_threads": flow_threads,
        "metrics": metrics,
        "speedup_flow": full_flow / metrics["flow_s"]["median"],
        "mel_error": mel_error(mel, ref.mel),
    }


# --- text output --------------------------------------------------------------------------------------------

def format_report(rep: dict[str, Any]) -> str:
    """A table for people."""
    cfg, sh, m = rep["config"], rep["shapes"], rep["metrics"]
    mach = rep["machine"]
    lines = [
        f"cosyvoice-rk bench  {rep['date']}",
        f"machine: {mach['cpu']}, {mach['logical_cpus']} CPUs (affinity {_cpus(mach['affinity'])}), "
        f"load {mach['loadavg_start']} -> {mach['loadavg_end']}",
        f"bundle:  {cfg['bundle']} ({'random weights' if cfg['random_weights'] else 'real weights'}, "
        f"{cfg['fingerprint']})",
        f"backends: llm {rep['backends']['llm']} {cfg['quant']} (KV {cfg['kv_type']}, flash-attn "
        f"{cfg['flash_attn']}), flow {rep['backends']['flow']} {cfg['flow_estimator']} x{cfg['flow_steps']} steps, "
        f"vocoder {rep['backends']['vocoder']}",
        f"threads: llm {cfg['llm_threads']}, flow {cfg['flow_threads']}, hift {cfg['hift_threads']}; "
        f"{cfg['cpus_reason']}",
        f"backend choice: {cfg['flow_backend_reason']}",
        f"shapes:  prefill {sh['prefill_positions']} positions ({sh['prefill_cached_positions']} after the cached "
        f"prefix), {cfg['tokens']} tokens -> {sh['mel_frames']} mel frames ({sh['generated_mel_frames']} generated)"
        f" -> {sh['audio_s']:.2f} s audio; {cfg['repeat']} repeat(s), load {rep['load_s']:.1f} s",
        "",
        f"{'metric':<28} {'min':>9} {'median':>9} {'max':>9}  unit",
    ]
    for k, unit, _ in METRICS:
        s = m[k]
        lines.append(f"{k:<28} {s['min']:>9.3f} {s['median']:>9.3f} {s['max']:>9.3f}  {unit}")
    sh_ = rep["shares"]
    lines.append("")
    lines.append("share of total: " + ", ".join(f"{k} {v:.1f}%" for k, v in sh_.items()))
    saving = m["prefill_s"]["median"] - m["prefill_cached_s"]["median"]
    pct = 100 * saving / max(m["prefill_s"]["median"], 1e-9)
    lines.append(f"cached speaker prefix: saves {saving:.3f} s of prefill ({pct:.0f}%), "
                 f"state {rep['prefix_state_bytes'] / 1e6:.1f} MB")
    lines.append(f"peak RSS: {rep['peak_rss_mb']:.0f} MiB ({rep['peak_rss_source']})")
    f = rep.get("fast")
    if f:
        lines.append("")
        lines.append(f"fast flow: {f['estimator']} estimator, {f['flow_steps']} steps, {f['flow_threads']} threads")
        for k, unit, _ in FAST_METRICS:
            s = f["metrics"][k]
            lines.append(f"{'fast_' + k:<28} {s['min']:>9.3f} {s['median']:>9.3f} {s['max']:>9.3f}  {unit}")
        e = f["mel_error"]
        lines.append(f"fast flow speed-up x{f['speedup_flow']:.2f}; mel error vs full fidelity: max abs "
                     f"{e['max_abs']:.4f}, mean abs {e['mean_abs']:.4f}, rel L2 {e['rel_l2']:.4f} "
                     f"(mel std {e['ref_std']:.3f})")
    c = rep.get("mel_check")
    if c:
        e = c["mel_error"]
        lines.append("")
        lines.append(f"mel check: {c['estimator']} against {c['reference']} ({c['reference_flow_s']:.2f} s): "
                     f"max abs {e['max_abs']:.2e}, mean abs {e['mean_abs']:.2e}, rel L2 {e['rel_l2']:.2e} "
                     f"(mel std {e['ref_std']:.3f})")
    if rep.get("stream"):
        from pipeline.engines.cosyvoice3.bench_stream import format_stream

        lines.append("")
        lines.extend(format_stream(rep["stream"]))
    return "\n".join(lines)


def _cpus(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus) if len(cpus) <= 8 else f"{len(cpus)} CPUs"
