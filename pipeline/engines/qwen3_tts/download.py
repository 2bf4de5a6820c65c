"""``cosyvoice-rk download --engine qwen3-tts``: the files of ``Qwen/Qwen3-TTS-12Hz-0.6B-Base`` the converter reads
(spec §1.1), and nothing else, through huggingface_hub (which resumes partial files and skips complete ones).

The project has no size table for this release (its files could not be fetched here): sizes and LFS sha256 are
those the hub lists, which huggingface_hub checks as it downloads. About 2.5 GB.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.shared.errors import SourceError

REPO_ID = "Qwen/Qwen3-TTS-12Hz-0.6B-Base"
NEEDED_FILES = [
    "config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
    "speech_tokenizer/config.json", "speech_tokenizer/preprocessor_config.json", "speech_tokenizer/model.safetensors",
]


def download(dest: Path | str, *, repo_id: str = REPO_ID, revision: str | None = None,
             log: Callable[[str], None] = print) -> Path:
    """Download into ``dest``; raises :class:`SourceError` with what to do when the hub cannot be reached or
    the repository lacks a file the converter needs (files already fetched are kept)."""
    from huggingface_hub import HfApi, hf_hub_download

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        listed = {s.rfilename: s.size for s in HfApi().model_info(repo_id, revision=revision,
                                                                  files_metadata=True).siblings or []}
    except Exception as e:  # huggingface_hub raises many types (HTTP, offline, timeout): all mean the same here
        raise _network_error(repo_id, dest, e) from e
    missing = [f for f in NEEDED_FILES if f not in listed]
    if missing:
        raise SourceError(f"{repo_id} does not list {', '.join(missing)}; the release layout changed: download "
                          "these files by hand into the folder, or report it")
    total = sum(listed[f] or 0 for f in NEEDED_FILES)
    log(f"{repo_id} @ {revision or 'main'}: {len(NEEDED_FILES)} files, {total / 1e9:.2f} GB (sizes and sha256 "
        "checked against the hub's own metadata)")
    for i, name in enumerate(NEEDED_FILES, 1):
        log(f"[{i}/{len(NEEDED_FILES)}] {name}")
        try:
            path = Path(hf_hub_download(repo_id, name, revision=revision, local_dir=dest))
        except Exception as e:
            raise _network_error(repo_id, dest, e) from e
        size = path.stat().st_size
        if listed[name] is not None and size != listed[name]:
            raise SourceError(f"{path} has {size:,} bytes, the hub lists {listed[name]:,}; delete it and run "
                              "the download again")
    log(f"done: {dest} (convert it with `cosyvoice-rk convert {dest} BUNDLE`)")
    return dest


def _network_error(repo_id: str, dest: Path, e: BaseException) -> SourceError:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return SourceError(f"cannot download {repo_id} ({type(e).__name__}: {first}). Check the internet connection "
                       f"(or HF_ENDPOINT / HF_HUB_OFFLINE); files already in {dest} are kept and the next run resumes")
