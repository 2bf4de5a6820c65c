"""``cosyvoice-rk bench --engine qwen3-tts``: stage timings of Qwen3-TTS voice cloning at fixed, known shapes.

Inputs (:mod:`.bench_inputs`) are seeded: a noise prompt of ``--prompt-frames`` frames, a prompt transcript of
``--prompt-text-tokens`` tokens and a text of ``--text-tokens`` tokens. Generation is forced to exactly ``--frames``
frames: EOS is masked for every step (``min_new_tokens`` past the end) and ``max_new_tokens`` = frames + 1 (the last
code-0 id is dropped, as upstream drops it). Sampling is upstream's (talker and code predictor). A random-weight
bundle (``make-random-bundle --engine qwen3-tts --size full``) costs what the real model costs.

Per repeat, after an untimed warm-up: prompt features (prompt encoder + speaker embedding), the talker prompt rows,
talker prefill, the generation loop (the engine's own ``generate_codes`` with timers on the talker and the code
predictor), the decoder over [prompt; generated] frames and the ICL cut (upstream's output assembly).

JSON fields (``JSON_FIELDS``): ``date``, ``machine`` (cpu, loadavg at start and end ...), ``config`` (bundle, quant,
threads, shapes asked, seed ...), ``backends``, ``shapes`` (prefill_positions, frames, audio_s, decoded_audio_s),
``load_s``, ``metrics`` (each of ``METRICS`` as {min, median, max, unit}), ``shares`` (% of total_s, medians),
``code_predictor_profile`` (:func:`.bench_profile.profile_code_predictor`: ms per frame of llama_decode, Python
overhead, projection, numpy heads, sampling, embedding; llama_decode calls per frame; one 16-row call),
``peak_rss_mb`` / ``peak_rss_source`` (this process), ``worker_rss`` (a fresh process that opens the engine as the
worker does, default quant, and runs one request of the same shapes: its ``VmHWM``), and ``reference`` (upstream's
PyTorch on the same checkpoint and shapes, interleaved per repeat, or null; :mod:`.bench_ref`).
"""

from __future__ import annotations

import datetime as _dt
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.benchkit import loadavg, machine_info, peak_rss_mb, report_json, stats
from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import InputError

from .bench_inputs import BenchInputs, make_inputs
from .bench_profile import TimedCodePredictor, TimedTalker, profile_code_predictor
from .generate import GenerationConfig, generate_codes

__all__ = ["METRICS", "JSON_FIELDS", "Q3BenchOptions", "run_bench", "format_report", "report_json"]

METRICS: tuple[tuple[str, str, str], ...] = (
    ("prompt_features_s", "s", "prompt encoder (codes) + speaker embedding, once per voice"),
    ("prompt_rows_s", "s", "talker prompt rows (tokenizer + numpy tables)"),
    ("prefill_s", "s", "talker prefill"),
    ("talker_step_ms", "ms", "talker step (llama.cpp + codec head), median over the frames"),
    ("talker_tok_per_s", "tok/s", "talker steps per second (excluding the code predictor)"),
    ("cp_ms_per_frame", "ms", "code predictor, 15 codes of one frame, median over the frames"),
    ("cp_ms_per_step", "ms", "code predictor per code (cp_ms_per_frame / 15)"),
    ("loop_other_ms_per_frame", "ms", "the rest of the loop per frame (talker scores, sampling, frame rows)"),
    ("talker_steps_s", "s", "all talker steps"),
    ("cp_s", "s", "code predictor, all frames"),
    ("generate_s", "s", "prefill + all talker steps + code predictor + loop"),
    ("voice_prime_s", "s", "the stream decoder primed with the prompt codes (--prompt-decode once: once per voice)"),
    ("decoder_s", "s", "decoder (generated frames, or prompt + generated with --prompt-decode each) and the ICL cut"),
    ("decoder_s_per_audio_s", "x", "decoder time per second of audio decoded in the request"),
    ("total_s", "s", "prompt rows + generate + decoder (a saved voice's request)"),
    ("total_with_prompt_s", "s", "the same plus the prompt features and the priming"),
    ("rtf", "x", "total / generated audio"),
    ("rtf_with_prompt", "x", "total_with_prompt / generated audio"),
)
JSON_FIELDS = ("date", "machine", "config", "backends", "shapes", "load_s", "metrics", "shares",
               "code_predictor_profile", "peak_rss_mb", "peak_rss_source", "worker_rss", "reference")
CONFIG_FIELDS = ("bundle", "random_weights", "fingerprint", "quant", "threads", "kv_type", "prompt_decode",
                 "prompt_frames", "prompt_text_tokens", "text_tokens", "frames", "repeat", "seed", "cpus",
                 "cpus_reason")
SHAPE_FIELDS = ("prefill_positions", "frames", "audio_s", "decoded_audio_s")


@dataclass
class Q3BenchOptions:
    bundle: Path | str
    quant: str | None = None
    threads: int | None = None
    kv_type: str = "f16"
    prompt_decode: str = "once"  # as the engine: the prompt decoded once per voice when the bundle streams
    cpus: str | None = None
    prompt_frames: int = 44  # 3.52 s: the spec's §12.1 anchor used a 3.48 s prompt (44 frames)
    prompt_text_tokens: int = 20
    text_tokens: int = 20
    frames: int = 25  # 2.0 s: the anchor's run D
    repeat: int = 3
    seed: int = 0
    profile_frames: int = 10
    worker_rss: bool = True
    reference: bool = False
    ref_python: Path | str | None = None
    ref_checkpoint: Path | str | None = None

    def validate(self) -> None:
        for name in ("prompt_frames", "prompt_text_tokens", "text_tokens", "frames", "repeat"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.threads is not None and int(self.threads) < 1:
            raise InputError("--threads must be at least 1")
        if self.prompt_decode not in ("once", "each"):
            raise InputError("--prompt-decode must be once or each")


class _Engine:
    """The engine's parts, opened as :class:`.tts.Qwen3TTS` opens them (without its voice store)."""

    def __init__(self, bundle: Bundle, quant: str | None, threads: int, kv_type: str,
                 prompt_decode: str = "once") -> None:
        from .decoder import CodeDecoder
        from .decoder_stream import PrimedDecoders, StatefulStreamDecoder
        from .lm_session import Qwen3LM
        from .prompt import PromptEncoder

        m, root = bundle.manifest, bundle.root
        self.lm = Qwen3LM(root, m["lm"], quant=quant, n_threads=threads, kv_type=kv_type)
        p = m["prompt"]
        self.prompt = PromptEncoder({k: root / p[k] for k in ("prompt_encoder", "speaker_encoder")}, p["dims"],
                                    n_threads=threads)
        d = m["decoder"]
        stream = d.get("decoder_stream_onnx") if prompt_decode == "once" else None
        self.primed = (PrimedDecoders(StatefulStreamDecoder(root / stream, d["dims"], n_threads=threads, spin=False))
                       if stream else None)
        self.prompt_decode = "once" if self.primed is not None else "each"
        self.decoder = (None if self.primed is not None
                        else CodeDecoder(root / d["decoder_onnx"], d["dims"], n_threads=threads))
        dims = self.primed.base if self.primed is not None else self.decoder
        self.samples_per_frame, self.sample_rate = dims.samples_per_frame, int(d["dims"]["sample_rate"])

    def close(self) -> None:
        self.lm.close()


def forced_overrides(frames: int) -> dict[str, Any]:
    """generate overrides that give exactly ``frames`` frames: EOS masked at every step, one id past the end."""
    return {"max_new_tokens": frames + 1, "min_new_tokens": frames + 2}


def one_request(eng: Any, inp: BenchInputs, frames: int, seed: int) -> dict[str, Any]:
    """One timed request; returns the raw values, the codes and the code predictor's inputs."""
    from .decoder import voice_clone_wav
    from .decoder_stream import voice_clone_wav_primed

    v: dict[str, float] = {}
    t0 = time.perf_counter()
    codes_p = eng.prompt.codes(inp.wav)
    spk = eng.prompt.speaker_embedding(inp.wav)
    t_prime0 = time.perf_counter()
    if eng.primed is not None:  # a new voice: priming is per voice, as the prompt features are
        eng.primed.clear()
        eng.primed.decoder(codes_p)
    t1 = time.perf_counter()
    prompt = eng.lm.prompt(inp.text, spk, ref_text=inp.ref_text, ref_codes=codes_p)
    t2 = time.perf_counter()
    lm = eng.lm
    talker, cp = TimedTalker(lm.talker), TimedCodePredictor(lm.cp)
    cfg = GenerationConfig.from_sampling(lm.sampling, **forced_overrides(frames))
    cp_inputs: list[tuple[np.ndarray, int]] = []
    real_predict = cp.predict

    def predict(hidden: np.ndarray, code0: int, *a: Any, **kw: Any) -> np.ndarray:
        cp_inputs.append((np.array(hidden), int(code0)))
        return real_predict(hidden, code0, *a, **kw)

    cp.predict = predict  # type: ignore[method-assign]
    codes = generate_codes(talker, cp, prompt, int(lm.ids["codec_eos_token_id"]), cfg,  # type: ignore[arg-type]
                           rng=np.random.default_rng(seed))
    t3 = time.perf_counter()
    if eng.primed is not None:
        wav, fresh = voice_clone_wav_primed(eng.primed, codes, codes_p)
        if fresh:
            raise RuntimeError("the voice's decoder was primed inside the timed request, not before it")
    else:
        wav = voice_clone_wav(eng.decoder, codes, codes_p)
    t4 = time.perf_counter()
    if len(codes) != frames:
        raise RuntimeError(f"generation gave {len(codes)} frames, not the forced {frames}")
    n_cp = lm.tables.n_groups - 1
    v["prompt_features_s"] = t_prime0 - t0
    v["voice_prime_s"] = t1 - t_prime0
    v["prompt_rows_s"] = t2 - t1
    v["prefill_s"] = talker.prefill_s
    v["talker_step_ms"] = 1e3 * statistics.median(talker.steps) if talker.steps else 0.0
    v["talker_tok_per_s"] = len(talker.steps) / sum(talker.steps) if talker.steps else 0.0
    v["cp_ms_per_frame"] = 1e3 * statistics.median(cp.frames)
    v["cp_ms_per_step"] = v["cp_ms_per_frame"] / n_cp
    v["talker_steps_s"] = sum(talker.steps)
    v["cp_s"] = sum(cp.frames)
    v["generate_s"] = t3 - t2
    v["loop_other_ms_per_frame"] = 1e3 * max(0.0, v["generate_s"] - talker.prefill_s - sum(talker.steps)
                                             - sum(cp.frames)) / frames
    v["decoder_s"] = t4 - t3
    audio_s = len(wav) / eng.sample_rate
    decoded = frames if eng.primed is not None else len(codes_p) + frames
    decoded_s = decoded * eng.samples_per_frame / eng.sample_rate
    v["decoder_s_per_audio_s"] = v["decoder_s"] / decoded_s
    v["total_s"] = t4 - t1
    v["total_with_prompt_s"] = t4 - t0
    v["rtf"] = v["total_s"] / audio_s
    v["rtf_with_prompt"] = v["total_with_prompt_s"] / audio_s
    return {"values": v, "cp_inputs": cp_inputs, "prefill_positions": int(len(prompt.prefill)),
            "audio_s": audio_s, "decoded_audio_s": decoded_s}


def run_bench(opts: Q3BenchOptions, log: Any = lambda m: None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-able report (``JSON_FIELDS``)."""
    from pipeline.shared.cpu import place_process, quiet_blas
    from pipeline.shared.llama import default_threads

    from .bench_ref import Reference, worker_rss

    opts.validate()
    bundle = opts.bundle if isinstance(opts.bundle, Bundle) else Bundle.load(opts.bundle)
    if bundle.engine != "qwen3-tts":
        raise InputError(f"{bundle.root} is a {bundle.engine} bundle; --engine qwen3-tts needs a Qwen3-TTS one")
    ref = Reference.start(opts, bundle, log) if opts.reference else None  # fails early when the env is missing
    try:
        cores, cpus_reason = place_process(opts.cpus, log=log)
        quiet_blas()  # as the engine does
        machine = machine_info()
        threads = opts.threads or default_threads()
        t0 = time.perf_counter()
        eng = _Engine(bundle, opts.quant, threads, opts.kv_type, opts.prompt_decode)
        load_s = time.perf_counter() - t0
        try:
            inp = make_inputs(eng.lm.tokens, text_tokens=opts.text_tokens, prompt_text_tokens=opts.prompt_text_tokens,
                              prompt_frames=opts.prompt_frames, seed=opts.seed)
            if ref is not None:
                ref.load(inp, threads)
            log(f"bench: {opts.repeat} repeat(s): {opts.prompt_frames} prompt frames, {opts.text_tokens} text "
                f"tokens, {opts.frames} frames, {threads} threads{' + upstream reference' if ref else ''}")
            one_request(eng, inp, min(opts.frames, 3), opts.seed)  # warm-up: first-use allocations, page-in
            runs, ref_runs = [], []
            for r in range(opts.repeat):
                run = one_request(eng, inp, opts.frames, opts.seed)
                runs.append(run)
                v = run["values"]
                log(f"  repeat {r + 1}/{opts.repeat}: prefill {v['prefill_s']:.2f}s, talker step "
                    f"{v['talker_step_ms']:.0f} ms, code predictor {v['cp_ms_per_frame']:.0f} ms/frame, decoder "
                    f"{v['decoder_s_per_audio_s']:.2f} s/s, total {v['total_s']:.2f}s, RTF {v['rtf']:.2f}")
                if ref is not None:
                    rv = ref.run(opts.frames, opts.seed)
                    ref_runs.append(rv)
                    log(f"  upstream {r + 1}/{opts.repeat}: talker step {rv['talker_step_ms']:.0f} ms, code "
                        f"predictor {rv['cp_ms_per_frame']:.0f} ms/frame, decoder {rv['decoder_s_per_audio_s']:.2f}"
                        f" s/s, RTF {rv['rtf']:.2f}")
            last = runs[-1]
            cfg = GenerationConfig.from_sampling(eng.lm.sampling).subtalker  # the code predictor's sampler
            profile = profile_code_predictor(eng.lm.cp, last["cp_inputs"][:max(1, opts.profile_frames)], cfg,
                                             np.random.default_rng(opts.seed))
            quant, prompt_decode = eng.lm.quant, eng.prompt_decode
            kv = opts.kv_type
        finally:
            eng.close()
        peak, source = peak_rss_mb()
        reference = ref.report(ref_runs, runs) if ref is not None else None
    finally:
        if ref is not None:
            ref.close()
    rss = worker_rss(bundle, inp, opts, threads, log) if opts.worker_rss else None
    metrics = {k: {**stats([run["values"][k] for run in runs]), "unit": unit} for k, unit, _ in METRICS}
    med = {k: m["median"] for k, m in metrics.items()}
    shares = {k: round(100.0 * med[f"{k}_s"] / med["total_s"], 1)
              for k in ("prompt_rows", "prefill", "talker_steps", "cp", "decoder")}
    machine["loadavg_end"] = loadavg()
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine,
        "config": {"bundle": str(bundle.root), "random_weights": bundle.is_random, "fingerprint": bundle.fingerprint,
                   "quant": quant, "threads": threads, "kv_type": kv, "prompt_decode": prompt_decode,
                   "prompt_frames": opts.prompt_frames,
                   "prompt_text_tokens": opts.prompt_text_tokens, "text_tokens": opts.text_tokens,
                   "frames": opts.frames, "repeat": opts.repeat, "seed": opts.seed, "cpus": cores,
                   "cpus_reason": cpus_reason},
        "backends": {"talker": "llama.cpp CPU", "code_predictor": "llama.cpp CPU", "prompt": "onnxruntime CPU",
                     "decoder": "onnxruntime CPU"},
        "shapes": {"prefill_positions": last["prefill_positions"], "frames": opts.frames,
                   "audio_s": last["audio_s"], "decoded_audio_s": last["decoded_audio_s"]},
        "load_s": load_s,
        "metrics": metrics,
        "shares": shares,
        "code_predictor_profile": profile,
        "peak_rss_mb": round(peak, 1),
        "peak_rss_source": source,
        "worker_rss": rss,
        "reference": reference,
    }


def format_report(rep: dict[str, Any]) -> str:
    """A table for people."""
    from .bench_ref import format_reference

    cfg, sh, m, mach = rep["config"], rep["shapes"], rep["metrics"], rep["machine"]
    lines = [
        f"cosyvoice-rk bench --engine qwen3-tts  {rep['date']}",
        f"machine: {mach['cpu']}, {mach['logical_cpus']} CPUs, load {mach['loadavg_start']} -> {mach['loadavg_end']}",
        f"bundle:  {cfg['bundle']} ({'random weights' if cfg['random_weights'] else 'real weights'}, "
        f"{cfg['fingerprint']}), talker/code predictor {cfg['quant']} (KV {cfg['kv_type']}), {cfg['threads']} "
        f"threads; {cfg['cpus_reason']}",
        f"shapes:  prompt {cfg['prompt_frames']} frames + {cfg['prompt_text_tokens']} transcript tokens, text "
        f"{cfg['text_tokens']} tokens -> prefill {sh['prefill_positions']} positions; {sh['frames']} frames = "
        f"{sh['audio_s']:.2f} s audio ({sh['decoded_audio_s']:.2f} s decoded); {cfg['repeat']} repeat(s), load "
        f"{rep['load_s']:.1f} s",
        "",
        f"{'metric':<26} {'min':>9} {'median':>9} {'max':>9}  unit",
    ]
    for k, unit, _ in METRICS:
        s = m[k]
        lines.append(f"{k:<26} {s['min']:>9.3f} {s['median']:>9.3f} {s['max']:>9.3f}  {unit}")
    lines.append("")
    lines.append("share of total: " + ", ".join(f"{k} {v:.1f}%" for k, v in rep["shares"].items()))
    p = rep["code_predictor_profile"]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in p["parts_ms_per_frame"].items())
    lines.append(f"code predictor profile ({p['frames']} frames, ms per frame): {parts}; "
                 f"{p['llama_decode_calls_per_frame']:.0f} llama_decode calls of {p['llama_decode_ms_per_call']:.2f}"
                 f" ms; one 16-row call {p['one_call_16_rows_ms']:.1f} ms")
    lines.append(f"peak RSS (this process): {rep['peak_rss_mb']:.0f} MiB ({rep['peak_rss_source']})")
    w = rep.get("worker_rss")
    if w:
        lines.append(f"peak RSS of a worker-equivalent process ({w['quant']}, one request): {w['peak_rss_mb']:.0f} "
                     f"MiB ({w['peak_rss_source']})")
    if rep.get("reference"):
        lines.append("")
        lines.extend(format_reference(rep["reference"]))
    return "\n".join(lines)
