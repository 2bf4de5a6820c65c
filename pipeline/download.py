"""Fetch the files of the upstream CosyVoice3 release that the converter needs (and nothing else)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .errors import SourceError

REPO_ID = "FunAudioLLM/Fun-CosyVoice3-0.5B-2512"

# CosyVoice-BlankEN/model.safetensors (988 MB) is not needed: llm.pt overwrites every weight in it.
NEEDED_FILES = [
    "cosyvoice3.yaml",
    "llm.pt",
    "flow.pt",
    "hift.pt",
    "campplus.onnx",
    "speech_tokenizer_v3.onnx",
    "flow.decoder.estimator.fp32.onnx",
    "CosyVoice-BlankEN/config.json",
    "CosyVoice-BlankEN/generation_config.json",
    "CosyVoice-BlankEN/tokenizer_config.json",
    "CosyVoice-BlankEN/vocab.json",
    "CosyVoice-BlankEN/merges.txt",
]
RL_LLM = "llm.rl.pt"


def select_files(repo_files: list[str], *, rl: bool = False) -> list[str]:
    """The subset of a repository listing to fetch; names every needed file the repository lacks."""
    wanted = NEEDED_FILES + ([RL_LLM] if rl else [])
    missing = [f for f in wanted if f not in repo_files]
    if missing:
        raise SourceError(
            f"{REPO_ID} does not list {', '.join(missing)}; the release layout changed, "
            "download these files by hand into the folder"
        )
    return wanted


def download(dest: Path | str, *, repo_id: str = REPO_ID, revision: str | None = None, rl: bool = False,
             log: Callable[[str], None] = print) -> Path:
    """Download into ``dest`` (resumable: files already complete are not fetched again)."""
    from huggingface_hub import HfApi, hf_hub_download

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        listing = HfApi().list_repo_files(repo_id, revision=revision)
        files = select_files(listing, rl=rl)
        for i, name in enumerate(files, 1):
            log(f"[{i}/{len(files)}] {name}")
            hf_hub_download(repo_id, name, revision=revision, local_dir=dest)
    except SourceError:
        raise
    except Exception as e:  # huggingface_hub raises many types (HTTP, offline, timeout): all mean the same here
        raise SourceError(
            f"cannot download {repo_id} ({type(e).__name__}: {_first_line(e)}). Check the internet connection "
            f"(or HF_ENDPOINT / HF_HUB_OFFLINE); files already in {dest} are kept and the next run resumes"
        ) from e
    log(f"downloaded {len(files)} files to {dest}; next: cosyvoice-rk convert {dest} BUNDLE_DIR")
    return dest


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else ""
