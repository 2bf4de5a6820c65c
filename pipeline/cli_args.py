"""The ``cosyvoice-rk`` command line's arguments: every subcommand, its options and their help (the commands
themselves are in :mod:`pipeline.cli`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path


def _default_bundle() -> Path:
    return Path(os.environ.get("COSYVOICE_RK_BUNDLE", "models/bundle"))


def _default_speakers() -> Path:
    return Path(os.environ.get("COSYVOICE_RK_SPEAKERS", "speakers"))


MAX_SEED = 2**32 - 1


def _seed(v: str) -> int | None:
    """``--seed``: -1 (or any negative number) means random, as on the page; else 0 … 2**32-1."""
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not a whole number; give 0–{MAX_SEED}, or -1 for random") from None
    if n > MAX_SEED:
        raise argparse.ArgumentTypeError(f"{n} is too large; give 0–{MAX_SEED}, or -1 for random")
    return None if n < 0 else n


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=_default_bundle(), help="model bundle (env COSYVOICE_RK_BUNDLE)")
    p.add_argument("--speakers-dir", type=Path, default=_default_speakers(),
                   help="where voices are saved (env COSYVOICE_RK_SPEAKERS, default ./speakers)")
    p.add_argument("--quant", default=None, help="GGUF variant to run (default: the bundle's default)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for llama.cpp and ONNX Runtime (default: CPUs in this process's affinity, "
                        "at most 4)")
    _placement_args(p)
    p.add_argument("--asr-dir", type=Path, default=None, help="speech recognition models for transcribing prompts "
                   "(default: $COSYVOICE_RK_ASR or models/asr; get them with `download --asr`)")
    p.add_argument("--flow-fast", action="store_true",
                   help="opt-in fast flow: the INT8 estimator on ONNX Runtime (~2.5x faster flow on x86; the mel "
                        "differs from upstream's, docs/benchmarks.md)")
    p.add_argument("--flow-steps", type=int, default=None,
                   help="Euler steps of the flow (default: the bundle's, 10 as upstream; fewer is faster and changes "
                        "the mel)")


def _placement_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flow-backend", choices=["auto", "rknn", "onnx"], default="auto",
                   help="flow estimator: auto (the NPU when the bundle has RKNN graphs and the board has an NPU), "
                        "rknn or onnx (ONNX Runtime CPU)")
    p.add_argument("--npu-cores", default="auto", help="RKNN core mask: auto, 0, 1, 2, 0_1, 0_1_2, all")
    p.add_argument("--cpus", default=None,
                   help="CPUs to pin to: auto (RK3588: the A76 cores; elsewhere no pinning), all, or a list like 4-7 "
                        "(env COSYVOICE_RK_CPUS)")


def _engine_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["cosyvoice3", "qwen3-tts"], default="cosyvoice3",
                   help="which model: cosyvoice3 (Fun-CosyVoice3-0.5B, default) or qwen3-tts "
                        "(Qwen3-TTS-12Hz-0.6B-Base)")


def _int8_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-flow-int8", action="store_true",
                   help="skip the INT8 flow estimator of the opt-in fast mode (built on first use instead)")


def _llm_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--llm", choices=["rl", "base"], default=None,
                   help="LLM checkpoint to convert: rl (upstream's RL-tuned llm.rl.pt) or base (llm.pt); default rl "
                        "when llm.rl.pt is in the folder (download --rl), else base")


def build_parser(commands: Mapping[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The parser; ``commands`` maps each subcommand to its function (``pipeline.cli``'s ``cmd_*``)."""
    p = argparse.ArgumentParser(prog="cosyvoice-rk", description="Torch-free voice cloning (CosyVoice3, Qwen3-TTS): "
                                "convert, verify, speak, manage voices, benchmark, serve the studio.")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("download", help="fetch the files the converter needs: Fun-CosyVoice3-0.5B (default) or "
                       "Qwen3-TTS-12Hz-0.6B-Base (--engine qwen3-tts)")
    d.add_argument("dir", type=Path, nargs="?", help="destination (with --asr default: $COSYVOICE_RK_ASR or "
                   "models/asr)")
    _engine_arg(d)
    d.add_argument("--asr", action="store_true", help="fetch the speech recognition models instead (GigaAM v3 for "
                   "Russian, Whisper base for the rest; ~500 MB) that transcribe prompts (docs/asr.md)")
    d.add_argument("--revision", default=None,
                   help="branch, tag or commit of the model repository (default: the release commit 29e01c4e, whose "
                        "file sizes the project knows; another revision is checked against the hub's metadata)")
    d.add_argument("--rl", action="store_true",
                   help="also fetch llm.rl.pt, upstream's RL-tuned LLM (2.02 GB more: 7.79 GB instead of 5.77 GB); "
                        "convert then uses it by default")
    d.set_defaults(func=commands["download"])

    c = sub.add_parser("convert", help="upstream checkpoint folder (CosyVoice3 or Qwen3-TTS, told apart by its "
                       "files) → device bundle (x86 host, needs torch)")
    c.add_argument("src", type=Path)
    c.add_argument("out", type=Path)
    c.add_argument("--quant", default=None,
                   help="comma list of GGUF variants: f32,f16,q8_0,q4_k_m,q4_0 (default CosyVoice3 f32,q4_k_m, "
                        "Qwen3-TTS f32,q8_0,q4_k_m; q4_0 decodes faster and is less accurate, docs/benchmarks.md)")
    c.add_argument("--hift-noise-seconds", type=float, default=60.0,
                   help="seconds of HiFT source-noise table to keep (longest audio per segment)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing bundle at OUT")
    c.add_argument("--rknn", choices=["rk3588"], default=None,
                   help="also build fixed-length RKNN flow estimators (needs scripts/setup-rknn-env.sh)")
    c.add_argument("--flow-buckets", default=None, help="RKNN sequence lengths (default 200,300,500,1000)")
    c.add_argument("--flow-stream-buckets", default=None,
                   help="past K/V lengths (mel frames) of the RKNN streaming chunk graphs (default 500,1000)")
    c.add_argument("--flow-stream-cfg", choices=["split", "batch", "both"], default=None,
                   help="RKNN streaming graphs: the CFG rows as two batch-1 runs on two NPU cores (split, default), "
                        "one batch-2 graph (batch), or both kinds (to compare on the board)")
    c.add_argument("--flow-stream-shapes", choices=["static", "dynamic"], default=None,
                   help="RKNN streaming graphs: one per past bucket (static, default) or one per CFG kind with every "
                        "bucket as a shape set and one copy of the weights (dynamic; docs/rk3588.md)")
    _int8_arg(c)
    _llm_arg(c)
    c.set_defaults(func=commands["convert"])

    v = sub.add_parser("verify", help="run every stage on golden inputs and compare with golden outputs")
    src = v.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="upstream checkpoint folder (converted to a temp bundle)")
    src.add_argument("--bundle", type=Path, help="an existing bundle (must contain the F32 GGUF)")
    v.add_argument("--goldens", type=Path, required=True, help="goldens.npz made by upstream code")
    v.add_argument("--streaming", action="store_true",
                   help="also check the streaming path against streaming_goldens.npz beside --goldens")
    v.add_argument("--streaming-goldens", type=Path, help="streaming goldens file (implies --streaming)")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.add_argument("--hift-noise-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    _llm_arg(v)
    v.set_defaults(func=commands["verify"])

    s = sub.add_parser("say", help="speak text in a saved voice or a one-off prompt, to a WAV file")
    _runtime_args(s)
    who = s.add_mutually_exclusive_group()
    who.add_argument("--speaker", help="name of a saved voice")
    who.add_argument("--prompt-wav", type=Path, help="a 3–10 s recording of the voice")
    s.add_argument("--prompt-text", help="exactly what --prompt-wav says (zero_shot only; left out: transcribed by "
                   "the speech recognition model, `download --asr`)")
    s.add_argument("--text", required=True, help="what to say")
    s.add_argument("--language", default="auto", help="ru, en, zh, ja or auto (drives text normalisation)")
    s.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (1.0 = upstream)")
    s.add_argument("--seed", type=_seed, default=None,
                   help=f"fix the sampling for a repeatable result (0–{MAX_SEED}; -1 = random, as on the page)")
    s.add_argument("-o", "--output", type=Path, required=True,
                   help="output .wav (24 kHz), or - to stream raw PCM to stdout as it is made: s16le, mono, the "
                        "bundle's rate (24000 Hz), e.g. | aplay -f S16_LE -r 24000 -c 1 or | ffplay -f s16le "
                        "-ar 24000 -ac 1 -")
    s.add_argument("--no-stream", action="store_true",
                   help="non-streaming synthesis: each text part in one pass with full attention (upstream's "
                        "stream=False; slower to the first audio). Default: the streaming engine")
    s.add_argument("--mode", default="zero_shot", help="zero_shot (default: the voice's transcript guides the model), "
                   "cross_lingual (no transcript: a voice speaking another language than its prompt) or instruct "
                   "(with --instruct)")
    s.add_argument("--instruct", help='how to speak, with --mode instruct (e.g. "Speak very happily."; the studio adds '
                   "CosyVoice3's \"You are a helpful assistant. … <|endofprompt|>\" itself)")
    s.add_argument("--speed", type=float, default=1.0, help="0.5-2.0 (upstream's mel resampling; not streamed: each "
                   "part is made whole)")
    s.set_defaults(func=commands["say"])

    nz = sub.add_parser("normalize", help="print what will be read: the normalised text, one segment (LLM run) "
                                          "per line; no model needed")
    nz.add_argument("text", help="the text, as you would give it to say")
    nz.add_argument("--language", default="auto", help="ru, en, zh, ja or auto (as for say)")
    nz.add_argument("--bundle", type=Path, default=_default_bundle(),
                    help="bundle whose tokenizer counts the segment lengths (env COSYVOICE_RK_BUNDLE); without one, "
                         "this repository's assets/qwen2-tokenizer (Qwen2's merges: the cuts can differ slightly)")
    nz.set_defaults(func=commands["normalize"])

    sp = sub.add_parser("speakers", help="manage saved voices")
    ssub = sp.add_subparsers(dest="action", required=True)
    lst = ssub.add_parser("list")
    lst.add_argument("--json", action="store_true")
    add = ssub.add_parser("add", help="save a voice from a prompt recording and its transcript")
    add.add_argument("name")
    add.add_argument("--prompt-wav", type=Path, required=True)
    add.add_argument("--prompt-text", default=None, help="exactly what --prompt-wav says (left out: transcribed by "
                     "the speech recognition model, `download --asr`)")
    add.add_argument("--language", default="auto")
    add.add_argument("--overwrite", action="store_true")
    ren = ssub.add_parser("rename")
    ren.add_argument("name")
    ren.add_argument("new_name")
    dele = ssub.add_parser("delete")
    dele.add_argument("name")
    exp = ssub.add_parser("export", help="write the voice as one .cvvoice file")
    exp.add_argument("name")
    exp.add_argument("file", type=Path, nargs="?")
    imp = ssub.add_parser("import", help="import a .cvvoice file")
    imp.add_argument("file", type=Path)
    imp.add_argument("--name", default=None, help="save under another name")
    imp.add_argument("--overwrite", action="store_true")
    for q in (lst, add, ren, dele, exp, imp):
        _runtime_args(q)
    sp.set_defaults(func=commands["speakers"])

    ck = sub.add_parser("check", help="hash every file of a bundle against its manifest (finds a damaged copy or "
                                      "a failing SD card; exit 1 when a file is damaged)")
    ck.add_argument("--bundle", type=Path, default=_default_bundle(), help="model bundle (env COSYVOICE_RK_BUNDLE)")
    ck.set_defaults(func=commands["check"])

    r = sub.add_parser("make-random-bundle", help="a bundle with random weights (tests, benchmarks; not speech)")
    r.add_argument("out", type=Path)
    _engine_arg(r)
    r.add_argument("--size", choices=["tiny", "full"], default="tiny")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quant", default=None, help="GGUF variants (default: f32 for tiny; for full, f32,q4_k_m "
                   "(CosyVoice3) or f32,q8_0,q4_k_m (Qwen3-TTS))")
    r.add_argument("--overwrite", action="store_true")
    _int8_arg(r)
    r.set_defaults(func=commands["make-random-bundle"])

    b = sub.add_parser("bench", help="time every stage at fixed shapes (prefill, decode, flow, HiFT, RTF, RSS)")
    b.add_argument("--bundle", type=Path, default=_default_bundle(), help="model bundle (env COSYVOICE_RK_BUNDLE)")
    _engine_arg(b)
    b.add_argument("--quant", default=None, help="GGUF variant (default: the bundle's default)")
    b.add_argument("--threads", type=int, default=None,
                   help="CPU threads for every stage (default: CPUs in this process's affinity, at most 4)")
    b.add_argument("--llm-threads", type=int, default=None, help="llama.cpp threads (default --threads)")
    b.add_argument("--flow-threads", type=int, default=None, help="flow ONNX Runtime threads (default --threads)")
    b.add_argument("--hift-threads", type=int, default=None, help="HiFT ONNX Runtime threads (default --threads)")
    b.add_argument("--kv-type", choices=["f16", "q8_0", "f32"], default="f16", help="llama.cpp KV-cache type")
    _placement_args(b)
    b.add_argument("--prompt-tokens", type=int, default=None, help="prompt speech tokens (2 mel frames each; "
                   "default 50)")
    b.add_argument("--prompt-text-tokens", type=int, default=20,
                   help="prompt text tokens incl. the system prefix (cached with the speaker prefix)")
    b.add_argument("--text-tokens", type=int, default=20, help="target text tokens")
    b.add_argument("--tokens", type=int, default=None,
                   help="speech tokens to generate (forced: no early stop; default 150)")
    b.add_argument("--prompt-frames", type=int, default=None,
                   help="Qwen3-TTS: prompt frames of 80 ms (default 44, the spec's 3.5 s anchor prompt)")
    b.add_argument("--frames", type=int, default=None,
                   help="Qwen3-TTS: frames to generate, 80 ms each (forced: EOS masked; default 25)")
    b.add_argument("--reference", action="store_true",
                   help="Qwen3-TTS: also time upstream's PyTorch qwen-tts on the same checkpoint and shapes, "
                        "interleaved per repeat (needs scripts/setup-qwen-tts-ref-env.sh and --ref-checkpoint)")
    b.add_argument("--ref-checkpoint", type=Path, default=None,
                   help="Qwen3-TTS: the checkpoint folder the bundle was converted from (for --reference)")
    b.add_argument("--ref-python", type=Path, default=None,
                   help="Qwen3-TTS: python of the reference venv (default .venv-qwen-ref; env "
                        "COSYVOICE_RK_QWEN_REF_PYTHON)")
    b.add_argument("--no-worker-rss", action="store_true",
                   help="Qwen3-TTS: skip the worker-equivalent peak-RSS process")
    b.add_argument("--prompt-decode", choices=["once", "each"], default=None,
                   help="Qwen3-TTS: decode the voice's prompt codes once per voice, as the engine does (once, the "
                        "default, with a streaming bundle) or with every request, as upstream does (each)")
    b.add_argument("--repeat", type=int, default=3, help="runs; min / median / max are reported")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--flow-fast", action="store_true",
                   help="also run the fast flow (INT8 estimator) and report its speed-up and mel error")
    b.add_argument("--fast-estimator", choices=["int8", "fp32"], default="int8",
                   help="estimator of the fast flow (fp32: only fewer steps)")
    b.add_argument("--flow-steps", type=int, default=None,
                   help="Euler steps of the fast flow (default: the bundle's, 10); implies --flow-fast")
    b.add_argument("--mel-check", action="store_true",
                   help="also run the flow once with the bundle's plain FP32 graph on ONNX Runtime and report the "
                        "benchmarked flow's mel error against it (on the board: what the NPU's fp16 changes)")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.add_argument("--stream", action="store_true",
                   help="also time streaming against non-streaming synthesis of the same request, interleaved: "
                        "time to first audio, totals with and without the voice's flow prompt cache, per chunk")
    b.add_argument("--stream-schedule", choices=("chunk", "upstream"), default=None,
                   help="emission points: upstream's 25/50/100-token hops or every 25 tokens (default: what the "
                        "page and say use: upstream with the flow on the CPU, chunk on the NPU)")
    b.add_argument("--flow-cache", choices=("fp16", "fp32"), default="fp16",
                   help="type of the streaming flow's attention K/V cache (fp16 halves its memory)")
    b.set_defaults(func=commands["bench"])

    from pipeline.engines.cosyvoice3.quality_cli import add_quality_parser

    add_quality_parser(sub, default_bundle=_default_bundle(), default_speakers=_default_speakers(),
                       func=commands["quality"])

    w = sub.add_parser("webui", help="the studio: a web page for voices and speech (this machine or the LAN)")
    _runtime_args(w)
    w.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only); 0.0.0.0 serves the LAN")
    w.add_argument("--port", type=int, default=7860)
    w.add_argument("--auth", action="append", metavar="USER:PASSWORD",
                   default=[os.environ["COSYVOICE_RK_AUTH"]] if os.environ.get("COSYVOICE_RK_AUTH") else None,
                   help="require a login; repeat for more users (env COSYVOICE_RK_AUTH)")
    w.add_argument("--api-key", default=os.environ.get("COSYVOICE_RK_API_KEY") or None, metavar="KEY",
                   help="require this key (Authorization: Bearer KEY) on the OpenAI-compatible API under /v1 "
                        "(env COSYVOICE_RK_API_KEY); --auth users may use it too")
    w.add_argument("--results-dir", type=Path, default=Path(os.environ.get("COSYVOICE_RK_RESULTS", "results")),
                   help="where results and their history are kept (env COSYVOICE_RK_RESULTS, default ./results)")
    w.add_argument("--history", type=int, default=20, help="how many recent results to keep (default 20)")
    w.add_argument("--queue-size", type=int, default=8, help="jobs that may wait for the worker (default 8)")
    w.add_argument("--max-upload-mb", type=float, default=20, help="largest upload accepted (default 20 MB)")
    w.add_argument("--https", action="store_true",
                   help="serve HTTPS with a self-signed certificate (browsers on other machines allow the "
                        "microphone only on HTTPS pages)")
    w.add_argument("--ssl-certfile", type=Path, default=None, help="your own certificate (with --ssl-keyfile)")
    w.add_argument("--ssl-keyfile", type=Path, default=None)
    w.set_defaults(func=commands["webui"])
    return p


