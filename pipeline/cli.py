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
                  ("ref_checkpoint", None), ("no_worker_rss", False), ("prompt_decode", None))


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
        reference=a.reference, ref_python=a.ref_python, ref_checkpoint=a.ref_checkpoint,
        prompt_decode=a.prompt_decode or "once")
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


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser, each subcommand bound to its ``cmd_*`` function here."""
    from pipeline.cli_args import build_parser as parser_for

    return parser_for({name[4:].replace("_", "-"): fn for name, fn in globals().items() if name.startswith("cmd_")})


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
