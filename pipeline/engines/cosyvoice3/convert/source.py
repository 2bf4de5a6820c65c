"""The checkpoint files a conversion reads: which LLM checkpoint (``llm.pt`` or upstream's RL-tuned ``llm.rl.pt``),
their sha256 for the manifest, and the check against what ``download`` recorded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.engines.cosyvoice3.convert import upstream
from pipeline.engines.cosyvoice3.release import (
    BASE_LLM,
    DOWNLOAD_MANIFEST,
    RL_LLM,
    check_downloaded,
    read_download_manifest,
)
from pipeline.shared.errors import SourceError
from pipeline.shared.fsutil import sha256_file

LLM_CHOICES = {"rl": RL_LLM, "base": BASE_LLM}


def choose_llm(src: Path, choice: str | None) -> tuple[str, str]:
    """``(choice, file name)``: ``rl`` / ``base`` as asked; None = ``rl`` when ``llm.rl.pt`` is there, else
    ``base``. Upstream's CosyVoice3 class always loads ``llm.pt``; ``llm.rl.pt`` is its RL-tuned drop-in
    (same keys and shapes; lower error rate in upstream's table)."""
    if choice is None:
        choice = "rl" if (Path(src) / RL_LLM).is_file() else "base"
    if choice not in LLM_CHOICES:
        raise SourceError(f"--llm {choice}: choose rl (llm.rl.pt) or base (llm.pt)")
    name = LLM_CHOICES[choice]
    if not (Path(src) / name).is_file():
        fix = ("`cosyvoice-rk download DIR --rl` fetches it, or convert with --llm base" if choice == "rl"
               else "`cosyvoice-rk download DIR` fetches it")
        raise SourceError(f"{src}: {name} is missing (--llm {choice}); {fix}")
    return choice, name


def required_files(llm_file: str | None) -> list[str | None]:
    return [llm_file if n == BASE_LLM else n for n in upstream.FILE_NAMES_REQUIRED]


def source_section(src: Path, choice: str, llm_file: str, log: Callable[[str], None]) -> dict[str, Any]:
    """The manifest's ``source``: every file read with its sha256, the LLM checkpoint and, when the folder came
    from ``download``, its repository and revision. Refuses a file changed since ``download`` recorded it."""
    src = Path(src)
    names = [n for n in required_files(llm_file) if n is not None]
    names += [n for n in upstream.FILE_NAMES_OPTIONAL if (src / n).is_file()]  # read or copied when present
    hashes = {n: sha256_file(src / n) for n in names}
    check_downloaded(src, names, hashes)
    dl = read_download_manifest(src)
    if dl is None:
        log(f"{src} has no {DOWNLOAD_MANIFEST} (not made by `cosyvoice-rk download`): its files are not checked "
            "against the release")
    p = src / llm_file
    return {
        "path": str(src.resolve()),
        "files": hashes,
        "llm": {"choice": choice, "file": llm_file, "size": p.stat().st_size, "sha256": hashes[llm_file]},
        "download": None if dl is None else {k: dl.get(k) for k in ("repo_id", "revision", "checked_against")},
    }
