"""Orchestrates the stage converters and writes the bundle atomically (temp folder, then rename)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.engines.cosyvoice3.convert import upstream
from pipeline.engines.cosyvoice3.convert.config import load_source_config
from pipeline.engines.cosyvoice3.convert.llm_gguf import QUANTS
from pipeline.engines.cosyvoice3.convert.source import choose_llm, required_files, source_section
from pipeline.shared.bundle import FORMAT, FORMAT_VERSION, MANIFEST, Bundle, file_entry
from pipeline.shared.errors import BundleError, SourceError
from pipeline.shared.fsutil import atomic_write_json

DEFAULT_QUANTS = ("f32", "q4_k_m")
_COPIED = ("campplus.onnx", "speech_tokenizer_v3.onnx")


def parse_quants(spec: str | Sequence[str]) -> list[str]:
    items = [q.strip().lower() for q in (spec.split(",") if isinstance(spec, str) else spec) if q.strip()]
    bad = [q for q in items if q not in QUANTS]
    if bad or not items:
        raise SourceError(f"unknown quantization {', '.join(bad) or '(none)'}; choose from {', '.join(QUANTS)}")
    return list(dict.fromkeys(items))


def check_source(src: Path, llm_file: str | None = "llm.pt") -> dict:
    """Validate an upstream checkpoint folder and return its parsed config (``llm_file`` None: the LLM
    checkpoint is not asked for)."""
    src = Path(src)
    if not src.is_dir():
        raise SourceError(f"checkpoint folder {src} does not exist")
    cfg = load_source_config(src)
    missing = [n for n in required_files(llm_file) if n is not None and not (src / n).is_file()]
    if missing:
        raise SourceError(
            f"{src} is not a complete CosyVoice3 checkpoint: missing {', '.join(missing)} "
            "(`cosyvoice-rk download DIR` fetches them)"
        )
    return cfg


def convert_checkpoint(
    src: Path | str,
    out: Path | str,
    *,
    quants: Sequence[str] = DEFAULT_QUANTS,
    hift_noise_seconds: float = 60.0,
    overwrite: bool = False,
    random_weights: bool = False,
    rknn_target: str | None = None,
    flow_buckets: str | Sequence[int] = "200,300,500,1000",
    flow_int8: bool = True,
    flow_stream_buckets: str | Sequence[int] = "500,1000",
    flow_stream_cfg: Sequence[str] = ("split",),
    flow_stream_shapes: str = "static",
    extra_manifest: dict[str, Any] | None = None,
    llm: str | None = None,
    log: Callable[[str], None] = print,
) -> Bundle:
    """Convert ``src`` into a bundle at ``out``; returns the loaded (hash-checked) bundle.

    ``llm``: ``rl`` (upstream's RL-tuned ``llm.rl.pt``) or ``base`` (``llm.pt``); None = rl when present.
    ``flow_int8``: also write the INT8 flow estimator of the opt-in fast mode (``flow_fast``)."""
    from pipeline.engines.cosyvoice3.convert.flow_export import convert_flow
    from pipeline.engines.cosyvoice3.convert.flow_fast import convert_flow_fast
    from pipeline.engines.cosyvoice3.convert.flow_stream_export import convert_flow_chunks
    from pipeline.engines.cosyvoice3.convert.hift_export import convert_hift
    from pipeline.engines.cosyvoice3.convert.llm_gguf import convert_llm

    src, out = Path(src), Path(out)
    quants = parse_quants(quants)
    check_source(src, llm_file=None)  # a missing folder or a CosyVoice1/2 one is named before any LLM question
    llm_choice, llm_file = choose_llm(src, llm)
    cfg = check_source(src, llm_file)
    source = source_section(src, llm_choice, llm_file, log)  # refuses a file changed since download
    if rknn_target:
        from pipeline.engines.cosyvoice3.convert.rknn_export import preflight

        preflight(rknn_target, flow_buckets)  # fails before the long LLM conversion if the toolkit env is missing
        from pipeline.engines.cosyvoice3.convert.rknn_stream_export import check_options

        check_options(flow_stream_buckets, flow_stream_cfg, flow_stream_shapes)
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise BundleError(f"{out} exists and is not a bundle; choose an empty or new folder")
        if not overwrite:
            raise BundleError(f"{out} already holds a bundle; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        log(f"LLM {llm_file} ({llm_choice}) → GGUF ({', '.join(quants)})")
        llm = convert_llm(src, work, cfg, quants, llm_file)
        log("flow → frontend arrays, noise table, estimator ONNX")
        flow = convert_flow(src, work, cfg)
        if rknn_target:
            from pipeline.engines.cosyvoice3.convert.rknn_export import convert_rknn

            log(f"flow estimator → RKNN ({rknn_target}, buckets {flow_buckets})")
            r = convert_rknn(src, work, cfg, flow, target=rknn_target, buckets=flow_buckets, log=log)
            flow["estimator"]["rknn"] = r["rknn"]
            flow["files"] = [*flow["files"], *r["files"]]
        flow = convert_flow_fast(work, flow, int8=flow_int8, log=log)
        flow = convert_flow_chunks(src, work, flow, log=log)
        if rknn_target:
            from pipeline.engines.cosyvoice3.convert.rknn_stream_export import convert_rknn_stream

            log(f"streaming flow chunk step → RKNN ({rknn_target}, past buckets {flow_stream_buckets}, "
                f"CFG {'/'.join(flow_stream_cfg)}, {flow_stream_shapes} shapes)")
            r = convert_rknn_stream(src, work, flow, target=rknn_target, past_buckets=flow_stream_buckets,
                                    cfg=flow_stream_cfg, shapes=flow_stream_shapes, log=log)
            flow["estimator"]["rknn_chunk"] = r["rknn_chunk"]
            flow["files"] = [*flow["files"], *r["files"]]
        log("HiFT → f0 weights, decoder ONNX, noise tables")
        hift = convert_hift(src, work, cfg, noise_seconds=hift_noise_seconds)
        frontend: dict[str, Any] = {"tokenizer": llm.get("tokenizer"),
                                    "tokenizer_version": llm.get("tokenizer_version")}
        copied = []
        for name in _COPIED:
            if (src / name).is_file():
                log(f"copy {name}")
                _link_or_copy(src / name, work / name)
                copied.append(name)
        frontend["campplus"] = "campplus.onnx" if "campplus.onnx" in copied else None
        frontend["speech_tokenizer"] = "speech_tokenizer_v3.onnx" if "speech_tokenizer_v3.onnx" in copied else None

        y = cfg["yaml"]
        constants = dict(llm.pop("constants"))
        constants.update(
            sample_rate=int(y.get("sample_rate", hift["sample_rate"])),
            token_mel_ratio=int(flow["token_mel_ratio"]),
            samples_per_frame=int(hift["samples_per_frame"]),
            mel_bins=int(flow["mel_bins"]),
            spk_embed_dim=int(flow["spk_embed_dim"]),
            system_prefix=upstream.SYSTEM_PREFIX,
        )
        names = sorted({*llm.pop("files"), *flow.pop("files"), *hift.pop("files"), *copied})
        files = {n: file_entry(work / n) for n in names}
        fingerprint = hashlib.sha256("".join(files[n]["sha256"] for n in names).encode()).hexdigest()[:16]
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "engine": "cosyvoice3",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "random_weights": bool(random_weights),
            "fingerprint": fingerprint,
            "source": source,
            "constants": constants,
            "llm": llm,
            "flow": flow,
            "hift": hift,
            "frontend": frontend,
            "files": files,
            **(extra_manifest or {}),
        }
        atomic_write_json(work / MANIFEST, manifest)
        os.chmod(work, 0o755)  # mkdtemp makes it 0700; a bundle is shared read-only data
        _replace_dir(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log(f"bundle written to {out} (fingerprint {fingerprint})")
    return Bundle.load(out)


def _link_or_copy(a: Path, b: Path) -> None:
    try:
        os.link(a, b)
    except OSError:
        shutil.copy2(a, b)


def _replace_dir(new: Path, dst: Path) -> None:
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(new, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
