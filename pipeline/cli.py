"""``cosyvoice-rk`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pipeline.shared.errors import CosyVoiceRKError, InputError

if TYPE_CHECKING:
    import numpy as np


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_download(a: argparse.Namespace) -> int:
    if a.engine == "qwen3-tts" and not a.asr:  # the speech recognition models serve every engine
        from pipeline.engines.qwen3_tts.cli import cmd_download as q3_download

        return q3_download(a, _log)
    if a.asr:
        from pipeline.shared.asr_download import download_asr

        if a.rl or a.revision:
            raise InputError("--rl and --revision are for the CosyVoice3 release, not for --asr; run them apart")

        download_asr(a.dir, log=_log)
        return 0
    from pipeline.engines.cosyvoice3.download import PINNED_REVISION, download

    if a.dir is None:
        raise InputError("give the folder to download into, e.g. `cosyvoice-rk download models/cosyvoice3` "
                         "(or --asr for the speech recognition models)")
    download(a.dir, revision=a.revision or PINNED_REVISION, rl=a.rl, log=_log)
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    from pipeline.engines.cosyvoice3.convert import convert_checkpoint
    from pipeline.engines.qwen3_tts.convert.bundle_writer import is_qwen3_tts_checkpoint
    from pipeline.shared.errors import InputError

    if is_qwen3_tts_checkpoint(a.src):
        from pipeline.engines.qwen3_tts.cli import cmd_convert as q3_convert

        return q3_convert(a, _log)

    for opt, val in (("--flow-buckets", a.flow_buckets), ("--flow-stream-buckets", a.flow_stream_buckets),
                     ("--flow-stream-cfg", a.flow_stream_cfg), ("--flow-stream-shapes", a.flow_stream_shapes)):
        if val is not None and not a.rknn:
            raise InputError(f"{opt} needs --rknn TARGET")
    stream_cfg = ("split", "batch") if a.flow_stream_cfg == "both" else (a.flow_stream_cfg or "split",)
    convert_checkpoint(a.src, a.out, quants=a.quant or "f32,q4_k_m", hift_noise_seconds=a.hift_noise_seconds,
                       overwrite=a.overwrite, rknn_target=a.rknn,
                       flow_buckets=a.flow_buckets or "200,300,500,1000", flow_int8=not a.no_flow_int8,
                       flow_stream_buckets=a.flow_stream_buckets or "500,1000",
                       flow_stream_cfg=stream_cfg, flow_stream_shapes=a.flow_stream_shapes or "static",
                       llm=a.llm, log=_log)
    return 0


def cmd_verify(a: argparse.Namespace) -> int:
    from pipeline.engines.cosyvoice3.verify import format_table, load_goldens, run_verify
    from pipeline.engines.qwen3_tts.convert.bundle_writer import is_qwen3_tts_checkpoint
    from pipeline.shared.bundle import Bundle

    if (a.checkpoint and is_qwen3_tts_checkpoint(a.checkpoint)) or (
            a.bundle and Bundle.load(a.bundle, check="none").engine == "qwen3-tts"):
        from pipeline.engines.qwen3_tts.cli import cmd_verify as q3_verify

        return q3_verify(a, _log)

    goldens = load_goldens(a.goldens)
    with tempfile.TemporaryDirectory(prefix="cosyvoice-rk-verify-") as tmp:
        if a.bundle:
            bundle = Bundle.load(a.bundle)
        else:
            from pipeline.engines.cosyvoice3.convert import convert_checkpoint

            _log(f"converting {a.checkpoint} (F32 GGUF) into a temporary bundle")
            bundle = convert_checkpoint(a.checkpoint, Path(tmp) / "bundle", quants=["f32"],
                                        hift_noise_seconds=a.hift_noise_seconds, flow_int8=False, llm=a.llm,
                                        log=_log)
        results = run_verify(bundle, goldens, log=_log)
        sg_path = a.streaming_goldens or (a.goldens.with_name("streaming_goldens.npz") if a.streaming else None)
        if a.streaming or a.streaming_goldens:
            from pipeline.engines.cosyvoice3.verify_stream import load_streaming_goldens, run_verify_streaming

            if not a.streaming_goldens and not sg_path.is_file():
                raise InputError(f"--streaming: no streaming goldens at {sg_path} (name them with "
                                 "--streaming-goldens F)")
            results += run_verify_streaming(bundle, load_streaming_goldens(sg_path), log=_log)
        modes_path = a.goldens.with_name("modes_goldens.npz")
        if modes_path.is_file():  # beside --goldens: checked too
            from pipeline.engines.cosyvoice3.verify_modes import load_modes_goldens, run_verify_modes

            results += run_verify_modes(bundle, load_modes_goldens(modes_path), goldens, log=_log)
    ok = all(r.passed for r in results)
    if a.json:
        print(json.dumps({"passed": ok, "stages": [r.as_dict() for r in results]}, indent=1))
    else:
        print(format_table(results))
        print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def cmd_check(a: argparse.Namespace) -> int:
    from pipeline.shared.bundle import Bundle

    bundle = Bundle.load(a.bundle, check="size")
    _log(f"hashing every file of {a.bundle} (the real bundle: ~5 GB, 25-50 s on an RK3588's eMMC)")
    if bundle.engine == "cosyvoice3":
        from pipeline.engines.cosyvoice3.bundle_info import describe_source

        for line in describe_source(bundle.manifest):
            _log(line)
    else:
        _log(f"engine {bundle.engine}: {bundle.manifest.get('source', {}).get('model', '?')}")
    bad = bundle.scan(log=_log)
    if bad:
        _log(f"DAMAGED: {', '.join(bad)}; copy the bundle again from where it was converted, or convert again")
        return 1
    _log(f"every file of {a.bundle} matches its manifest")
    return 0


def _default_bundle() -> Path:
    return Path(os.environ.get("COSYVOICE_RK_BUNDLE", "models/bundle"))


def _default_speakers() -> Path:
    return Path(os.environ.get("COSYVOICE_RK_SPEAKERS", "speakers"))


def _open_tts(a: argparse.Namespace):
    from pipeline.engines import open_tts

    return open_tts(a.bundle, speakers_dir=a.speakers_dir, quant=a.quant, n_threads=a.threads,
                    flow_backend=a.flow_backend, npu_cores=a.npu_cores, cpus=a.cpus, flow_fast=a.flow_fast,
                    flow_steps=a.flow_steps, log=_log)


def write_wav(path: Path, audio, sr: int) -> None:
    import io

    import soundfile as sf

    from pipeline.shared.fsutil import atomic_write_bytes

    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    atomic_write_bytes(path, buf.getvalue())


def _check_prompt(wav: Path, transcript: str | None, language: str) -> None:
    """The prompt checks that need no model: file, format, length, silence, transcript (when there is one),
    language."""
    from pipeline.engines.base import check_transcript
    from pipeline.shared.audio import prepare_prompt
    from pipeline.shared.text import check_language

    check_language(language)
    if transcript is not None:
        check_transcript(transcript)
    prepare_prompt(wav)


def _transcribe(a: argparse.Namespace) -> str:
    """--prompt-wav's words by the speech recognition model (docs/asr.md), said on stderr."""
    from pipeline.engines.base import check_transcript
    from pipeline.shared.asr import AsrMissing, transcribe_file

    try:
        r = transcribe_file(a.prompt_wav, a.language, a.asr_dir)
    except AsrMissing as e:  # the page's words ("type the transcript") in the command line's
        raise AsrMissing(str(e).replace("or type the transcript", "or give --prompt-text TEXT")) from None
    _log(f"transcript ({r.model}, {'detected ' if r.detected else ''}language {r.language}): {r.text}")
    check_transcript(r.text)
    a.detected_language = r.language if r.detected else None
    return r.text


def _voice_language(a: argparse.Namespace) -> str:
    """--language, or with auto the language the ASR detected when the text frontend has it."""
    from pipeline.shared.text import LANGUAGES

    found = getattr(a, "detected_language", None)
    if a.language != "auto" or not found:
        return a.language
    if found not in LANGUAGES:
        _log(f"the recording's language {found!r} has no text frontend here; the voice is saved as auto")
        return a.language
    return found


def pcm16(audio: np.ndarray) -> bytes:
    """float32 audio → headerless s16le, converted by libsndfile exactly as :func:`write_wav` converts it."""
    import io

    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(audio, np.float32), 24000, format="RAW", subtype="PCM_16", endian="LITTLE")
    return buf.getvalue()


def _raw_stdout() -> BinaryIO:
    """The real stdout for PCM; fd 1 then points at stderr, so no log line (ours or a native library's)
    can land between the samples."""
    fd = os.dup(1)
    os.dup2(2, 1)
    return os.fdopen(fd, "wb", buffering=0)


def cmd_say(a: argparse.Namespace) -> int:
    import numpy as np

    from pipeline.engines.cosyvoice3.engine import check_temperature
    from pipeline.engines.cosyvoice3.modes import check_request
    from pipeline.engines.cosyvoice3.tags import check_tags
    from pipeline.shared.errors import InputError
    from pipeline.shared.text import normalize

    # what can be checked without the models is checked before they load
    to_stdout = str(a.output) == "-"
    if to_stdout and os.isatty(1):
        raise InputError("-o - writes raw PCM to stdout, which is a terminal here: pipe it into a player "
                         "(| aplay -f S16_LE -r 24000 -c 1) or give a .wav file")
    if not to_stdout and not a.output.suffix.lower() == ".wav":
        raise InputError(f"output {a.output} must end in .wav, or be - for raw PCM on stdout")
    mode, instruct, speed = check_request(a.mode, a.instruct, a.speed)
    if not a.speaker and not a.prompt_wav:
        raise InputError("give --speaker NAME, or --prompt-wav FILE (with --prompt-text TEXT, or without it to have "
                         "it transcribed; cross_lingual and instruct need no --prompt-text)")
    normalize(a.text, a.language)
    check_tags(a.text)
    check_temperature(a.temperature)
    if not a.speaker:
        _check_prompt(a.prompt_wav, a.prompt_text, a.language)
        if mode == "zero_shot" and a.prompt_text is None:
            a.prompt_text = _transcribe(a)
    sink = _raw_stdout() if to_stdout else None
    with _open_tts(a) as tts:
        if a.speaker:
            voice = tts.load_voice(a.speaker)
        else:
            voice = tts.voice_from_audio(a.prompt_wav, a.prompt_text, language=a.language)  # None: no transcript
        for w in voice.warnings:
            _log(f"warning: {w}")
        sr = tts.sample_rate
        if sink is not None:
            _log(f"streaming raw PCM to stdout: s16le, mono, {sr} Hz (play it with "
                 f"| aplay -f S16_LE -r {sr} -c 1, or | ffplay -f s16le -ar {sr} -ac 1 -)")
        parts, total_rt, written = [], 0.0, 0

        def progress(stage: str, info: dict) -> None:
            if stage == "note":
                _log(f"note: {info['message']}")
            elif stage in ("prefill", "flow", "vocoder"):
                _log(f"[{info['segment']}/{info['segments']}] {stage}")

        t_start = time.perf_counter()
        ttfa = None
        for chunk in tts.create_chunks(a.text, voice, language=a.language, temperature=a.temperature,
                                       seed=a.seed, stream=not a.no_stream, on_progress=progress, mode=mode,
                                       instruct=instruct, speed=speed):
            if ttfa is None and len(chunk.audio):
                ttfa = time.perf_counter() - t_start
            if sink is not None:
                try:
                    sink.write(pcm16(chunk.audio))
                except BrokenPipeError:
                    _log(f"stdout was closed after {written / sr:.2f} s of audio; stopped")
                    return 1
                written += len(chunk.audio)
            else:
                parts.append(chunk.audio)
            seg = chunk.segment_result
            if seg is None:
                continue
            r = seg.result
            busy = r.stats.get("wall_s") or sum(r.timings.values())  # streaming: the stages overlap
            total_rt += busy
            seg_s = len(seg.audio) / sr
            _log(f"[{seg.index + 1}/{seg.total}] {len(r.tokens)} tokens, {seg_s:.2f} s audio, "
                 f"RTF {busy / max(seg_s, 1e-9):.2f} ({', '.join(f'{k} {v:.2f}s' for k, v in r.timings.items())}): "
                 f"{seg.text}")
        first = f", first audio after {ttfa:.2f} s" if ttfa is not None else ""
        if sink is not None:
            _log(f"wrote {written / sr:.2f} s of s16le PCM at {sr} Hz to stdout, "
                 f"RTF {total_rt / max(written / sr, 1e-9):.2f}{first}")
            return 0
        audio = np.concatenate(parts)
        write_wav(a.output, audio, sr)
        dur = len(audio) / sr
        _log(f"wrote {a.output}: {dur:.2f} s at {sr} Hz, RTF {total_rt / max(dur, 1e-9):.2f}{first}")
    return 0


def _cli_words(msg: str) -> str:
    """The voice store words its refusals for the page ("tick replace"); here the switch is --overwrite."""
    return (msg.replace("or save as", "or add --overwrite and save as").replace(" or replace it", " or add --overwrite")
            .replace("tick “replace”", "add --overwrite"))


def cmd_normalize(a: argparse.Namespace) -> int:
    from pipeline.shared.text.preview import preview_tokenizer

    frontend, source = preview_tokenizer(a.bundle)
    _log(f"segments counted with {source}")
    for segment in frontend.split(a.text, a.language):
        print(segment)
    return 0


def cmd_speakers(a: argparse.Namespace) -> int:
    from pipeline.shared.errors import PresetError
    from pipeline.shared.presets import SpeakerStore

    store = SpeakerStore(a.speakers_dir)
    if a.action == "list":
        voices = store.list()
        if a.json:
            print(json.dumps(voices, ensure_ascii=False, indent=1))
            return 0
        if not voices:
            print(f"no voices in {store.root}; add one with "
                  "`cosyvoice-rk speakers add NAME --prompt-wav F --prompt-text T`")
        for v in voices:
            if "error" in v:
                print(f"{v['slug']}: DAMAGED ({v['error']}); repair it with `speakers add {v['slug']} --overwrite "
                      "...` from its recording, or delete it")
            else:
                print(f"{v['name']}  [{v['slug']}]  {v.get('language', '')}  {v['transcript'][:60]}")
        return 0
    if a.action == "rename":
        print(store.rename(a.name, a.new_name))
        return 0
    if a.action == "delete":
        store.delete(a.name)
        _log(f"deleted {a.name}")
        return 0
    if a.action == "export":
        print(store.export(a.name, a.file or Path(".")))
        return 0
    if a.action == "add":
        try:
            store.claim(a.name, overwrite=a.overwrite)
        except PresetError as e:
            raise PresetError(_cli_words(str(e))) from None
        _check_prompt(a.prompt_wav, a.prompt_text, a.language)
        if a.prompt_text is None:
            a.prompt_text = _transcribe(a)
    if a.action == "import":  # a bad file is refused before the models load
        meta, _, _ = store.read_export(a.file)
        try:
            store.claim(a.name or meta["name"], overwrite=a.overwrite)
        except PresetError as e:
            raise PresetError(_cli_words(str(e))) from None
    with _open_tts(a) as tts:
        if a.action == "add":
            language = _voice_language(a)
            p, info = tts.add_voice(a.name, a.prompt_wav, a.prompt_text, language=language, overwrite=a.overwrite)
            if info.get("warning"):
                _log(f"warning: {info['warning']}")
            print(f"saved {p.name} [{p.slug}]: {info.get('prompt_tokens')} prompt tokens, "
                  f"{info.get('duration', 0):.2f} s")
        elif a.action == "import":
            p = tts.import_voice(a.file, name=a.name, overwrite=a.overwrite)
            print(f"imported {p.name} [{p.slug}]")
    return 0


def cmd_make_random_bundle(a: argparse.Namespace) -> int:
    if a.engine == "qwen3-tts":
        from pipeline.engines.qwen3_tts.cli import cmd_make_random_bundle as q3_random

        return q3_random(a, _log)
    from pipeline.engines.cosyvoice3.convert.random_bundle import make_random_bundle

    make_random_bundle(a.out, size=a.size, seed=a.seed, quants=a.quant, overwrite=a.overwrite,
                       flow_int8=not a.no_flow_int8, log=_log)
    return 0


_Q3_BENCH_REFUSED = (("llm_threads", None), ("flow_threads", None), ("hift_threads", None), ("tokens", None),
                     ("prompt_tokens", None), ("flow_fast", False), ("fast_estimator", "int8"), ("flow_steps", None),
                     ("mel_check", False), ("stream", False), ("stream_schedule", None), ("flow_cache", "fp16"),
                     ("flow_backend", "auto"), ("npu_cores", "auto"))
_Q3_BENCH_ONLY = (("frames", None), ("prompt_frames", None), ("reference", False), ("ref_python", None),
                  ("ref_checkpoint", None), ("no_worker_rss", False))


def _given(a: argparse.Namespace, names: tuple[tuple[str, object], ...]) -> str:
    return ", ".join("--" + k.replace("_", "-") for k, default in names if getattr(a, k, default) != default)


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _bundle_engine(path: Path | None) -> str | None:
    from pipeline.shared.bundle import Bundle

    try:
        return Bundle.load(path, check="none").engine if path else None
    except CosyVoiceRKError:
        return None  # the engine's own bench reports a missing or broken bundle


def cmd_bench(a: argparse.Namespace) -> int:
    if a.engine == "qwen3-tts" or _bundle_engine(a.bundle) == "qwen3-tts":
        return _bench_qwen3(a)
    if _given(a, _Q3_BENCH_ONLY):
        raise InputError(f"{_given(a, _Q3_BENCH_ONLY)}: Qwen3-TTS bench options; add --engine qwen3-tts")
    from pipeline.engines.cosyvoice3.bench import BenchOptions, format_report, run_bench
    from pipeline.shared.benchkit import report_json

    opts = BenchOptions(
        bundle=a.bundle, quant=a.quant, threads=a.threads, llm_threads=a.llm_threads, flow_threads=a.flow_threads,
        hift_threads=a.hift_threads, kv_type=a.kv_type, prompt_tokens=_or(a.prompt_tokens, 50),
        prompt_text_tokens=a.prompt_text_tokens, text_tokens=a.text_tokens, tokens=_or(a.tokens, 150), repeat=a.repeat,
        seed=a.seed, flow_fast=a.flow_fast or a.flow_steps is not None, fast_estimator=a.fast_estimator,
        flow_steps=a.flow_steps, flow_backend=a.flow_backend, npu_cores=a.npu_cores, cpus=a.cpus,
        mel_check=a.mel_check, stream=a.stream, stream_schedule=a.stream_schedule, flow_cache=a.flow_cache,
    )
    report = run_bench(opts, log=_log)
    print(report_json(report) if a.json else format_report(report))
    return 0


def _bench_qwen3(a: argparse.Namespace) -> int:
    if _given(a, _Q3_BENCH_REFUSED):
        raise InputError(f"{_given(a, _Q3_BENCH_REFUSED)}: CosyVoice3 bench options; Qwen3-TTS has no such part "
                         "(its shapes are --prompt-frames, --prompt-text-tokens, --text-tokens, --frames)")
    from pipeline.engines.qwen3_tts.bench import Q3BenchOptions, format_report, report_json, run_bench

    opts = Q3BenchOptions(
        bundle=a.bundle, quant=a.quant, threads=a.threads, kv_type=a.kv_type, cpus=a.cpus,
        prompt_frames=_or(a.prompt_frames, 44), prompt_text_tokens=a.prompt_text_tokens, text_tokens=a.text_tokens,
        frames=_or(a.frames, 25), repeat=a.repeat, seed=a.seed, worker_rss=not a.no_worker_rss,
        reference=a.reference, ref_python=a.ref_python, ref_checkpoint=a.ref_checkpoint)
    report = run_bench(opts, log=_log)
    print(report_json(report) if a.json else format_report(report))
    return 0


def cmd_quality(a: argparse.Namespace) -> int:
    from pipeline.engines.cosyvoice3.quality_cli import run_quality_cli
    from pipeline.shared.bundle import Bundle

    if Path(a.bundle).is_dir() and Bundle.load(a.bundle, check="none").engine != "cosyvoice3":
        raise InputError("quality measures CosyVoice3 bundles only for now (LLM quantization x flow x steps); "
                         f"{a.bundle} is a {Bundle.load(a.bundle, check='none').engine} bundle")

    return run_quality_cli(a, log=_log)


def cmd_webui(a: argparse.Namespace) -> int:
    from webui.serve import serve

    return serve(a)


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cosyvoice-rk", description=__doc__)
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
    d.set_defaults(func=cmd_download)

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
    c.set_defaults(func=cmd_convert)

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
    v.set_defaults(func=cmd_verify)

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
    s.set_defaults(func=cmd_say)

    nz = sub.add_parser("normalize", help="print what will be read: the normalised text, one segment (LLM run) "
                                          "per line; no model needed")
    nz.add_argument("text", help="the text, as you would give it to say")
    nz.add_argument("--language", default="auto", help="ru, en, zh, ja or auto (as for say)")
    nz.add_argument("--bundle", type=Path, default=_default_bundle(),
                    help="bundle whose tokenizer counts the segment lengths (env COSYVOICE_RK_BUNDLE); without one, "
                         "this repository's assets/qwen2-tokenizer (Qwen2's merges: the cuts can differ slightly)")
    nz.set_defaults(func=cmd_normalize)

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
    sp.set_defaults(func=cmd_speakers)

    ck = sub.add_parser("check", help="hash every file of a bundle against its manifest (finds a damaged copy or "
                                      "a failing SD card; exit 1 when a file is damaged)")
    ck.add_argument("--bundle", type=Path, default=_default_bundle(), help="model bundle (env COSYVOICE_RK_BUNDLE)")
    ck.set_defaults(func=cmd_check)

    r = sub.add_parser("make-random-bundle", help="a bundle with random weights (tests, benchmarks; not speech)")
    r.add_argument("out", type=Path)
    _engine_arg(r)
    r.add_argument("--size", choices=["tiny", "full"], default="tiny")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quant", default=None, help="GGUF variants (default: f32 for tiny; for full, f32,q4_k_m "
                   "(CosyVoice3) or f32,q8_0,q4_k_m (Qwen3-TTS))")
    r.add_argument("--overwrite", action="store_true")
    _int8_arg(r)
    r.set_defaults(func=cmd_make_random_bundle)

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
    b.set_defaults(func=cmd_bench)

    from pipeline.engines.cosyvoice3.quality_cli import add_quality_parser

    add_quality_parser(sub, default_bundle=_default_bundle(), default_speakers=_default_speakers(),
                       func=cmd_quality)

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
    w.set_defaults(func=cmd_webui)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CosyVoiceRKError as e:
        _log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
