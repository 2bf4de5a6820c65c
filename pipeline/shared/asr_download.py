"""``cosyvoice-rk download --asr``: fetch the two speech recognition models (only the files onnx-asr loads) with
huggingface_hub into one folder, one sub-folder per model, then write ``asr.json`` (last: a folder without it is an
unfinished download, and running the command again resumes it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.shared.asr import FORMAT, FORMAT_VERSION, MANIFEST, default_asr_dir
from pipeline.shared.errors import SourceError
from pipeline.shared.fsutil import atomic_write_json

# (repository, files onnx-asr needs in it, the asr.json entry)
MODELS: list[tuple[str, list[str], dict]] = [
    ("istupakov/gigaam-v3-onnx", ["config.json", "v3_e2e_ctc.int8.onnx", "v3_e2e_ctc_vocab.txt"],
     {"name": "gigaam-v3-e2e-ctc", "kind": "gigaam-v3-e2e-ctc", "folder": "gigaam-v3-e2e-ctc",
      "quantization": "int8", "languages": ["ru"]}),
    ("onnx-community/whisper-base", ["config.json", "vocab.json", "added_tokens.json", "onnx/encoder_model.onnx",
                                     "onnx/decoder_model_merged.onnx"],
     {"name": "whisper-base", "kind": "whisper", "folder": "whisper-base", "quantization": None,
      "languages": ["*"]}),
]


def select_asr_files(repo_id: str, listing: list[str], needed: list[str]) -> list[str]:
    """The files to fetch from one repository: the needed ones plus their external-data files, if listed."""
    missing = [f for f in needed if f not in listing]
    if missing:
        raise SourceError(f"{repo_id} does not list {', '.join(missing)}; the repository changed: download these "
                          "files by hand into the model's folder, or report it")
    extra = [x for f in needed if f.endswith(".onnx") for x in (f + "_data", f + ".data") if x in listing]
    return needed + extra


def download_asr(dest: Path | str | None = None, *, log: Callable[[str], None] = print) -> Path:
    """Download both models into ``dest`` (default ``models/asr``; resumable: complete files are kept)."""
    from huggingface_hub import HfApi, hf_hub_download

    dest = Path(dest) if dest is not None else default_asr_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for repo_id, needed, entry in MODELS:
        folder = dest / entry["folder"]
        try:
            files = select_asr_files(repo_id, HfApi().list_repo_files(repo_id), needed)
            for i, name in enumerate(files, 1):
                log(f"{entry['name']} [{i}/{len(files)}] {name}")
                hf_hub_download(repo_id, name, local_dir=folder)
        except SourceError:
            raise
        except Exception as e:  # noqa: BLE001 - huggingface_hub raises many types; all mean the same here
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise SourceError(
                f"cannot download {repo_id} ({type(e).__name__}: {first}). Check the internet connection (or "
                f"HF_ENDPOINT / HF_HUB_OFFLINE); files already in {dest} are kept and the next run resumes"
            ) from e
    atomic_write_json(dest / MANIFEST, {"format": FORMAT, "version": FORMAT_VERSION,
                                        "models": [entry for _, _, entry in MODELS],
                                        "sources": {entry["name"]: repo for repo, _, entry in MODELS}})
    log(f"speech recognition models ready in {dest}: the studio and `speakers add` / `say` without --prompt-text "
        "now transcribe prompts")
    return dest
