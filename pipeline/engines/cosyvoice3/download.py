"""Fetch the files of the upstream CosyVoice3 release that the converter needs (and nothing else), checked.

The default is the pinned revision (:data:`.release.PINNED_REVISION`): every file's size is checked against
the project's table, its sha256 too where a public manifest gives one. Another ``revision`` or repository is
checked against the hub's own metadata (size; sha256 of LFS files) and the log says so. The sha256 of what was
downloaded goes into ``download-manifest.json`` beside the files: a later run fetches a file that changed since
again, and ``convert`` refuses one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.engines.cosyvoice3.release import (
    BASE_LLM,
    DOWNLOAD_MANIFEST,
    PINNED_REVISION,
    REPO_ID,
    RL_LLM,
    Expected,
    file_record,
    gb,
    hash_problem,
    read_download_manifest,
    recorded_hash,
    release_table,
    size_problem,
    write_download_manifest,
)
from pipeline.shared.errors import SourceError

__all__ = ["NEEDED_FILES", "PINNED_REVISION", "REPO_ID", "RL_LLM", "download", "hub_fetch", "hub_files",
           "select_files"]

# CosyVoice-BlankEN/model.safetensors (988 MB) is not needed: llm.pt overwrites every weight in it.
NEEDED_FILES = [
    "cosyvoice3.yaml",
    BASE_LLM,
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

Progress = Callable[[str, int, int], None]  # (file name, bytes done, bytes total of that file)


def select_files(repo_files: list[str], *, rl: bool = False, repo_id: str = REPO_ID) -> list[str]:
    """The subset of a repository listing to fetch; names every needed file the repository lacks."""
    wanted = NEEDED_FILES + ([RL_LLM] if rl else [])
    missing = [f for f in wanted if f not in repo_files]
    if missing:
        hint = ("; --rl asks for the RL-tuned LLM: leave it out to fetch llm.pt only"
                if missing == [RL_LLM] else "")
        raise SourceError(
            f"{repo_id} does not list {', '.join(missing)}; the release layout changed (an old revision lacked "
            f"flow.decoder.estimator.fp32.onnx: the default revision {PINNED_REVISION[:8]} has every file), "
            f"or download these files by hand into the folder{hint}"
        )
    return wanted


def hub_files(repo_id: str, revision: str | None) -> dict[str, Expected]:
    """Every file of the repository at ``revision`` with the hub's size and (LFS files) sha256."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    return {s.rfilename: Expected(s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []}


def hub_fetch(repo_id: str, name: str, revision: str | None, dest: Path, *, force: bool = False,
              progress: Progress | None = None) -> Path:
    """Download one file into ``dest`` (huggingface_hub resumes a partial file and skips a complete one)."""
    from huggingface_hub import hf_hub_download

    kw: dict[str, Any] = {}
    if progress is not None:
        kw["tqdm_class"] = _tqdm_reporting(name, progress)
    return Path(hf_hub_download(repo_id, name, revision=revision, local_dir=dest, force_download=force, **kw))


def download(dest: Path | str, *, repo_id: str = REPO_ID, revision: str | None = PINNED_REVISION, rl: bool = False,
             log: Callable[[str], None] = print, progress: Progress | None = None) -> Path:
    """Download into ``dest`` (resumable: files already complete and unchanged are not fetched again).

    ``revision``: default the pinned release commit (``None`` = the repository's main branch, checked against the
    hub's metadata). ``rl``: also fetch ``llm.rl.pt`` (2.02 GB more). ``progress(name, done, total)`` is called as
    bytes arrive. Raises :class:`SourceError` naming each file whose size or sha256 is wrong, with the fix.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    table = release_table(repo_id, revision)
    rev = revision or "main"
    try:
        remote = hub_files(repo_id, revision)
        files = select_files(list(remote), rl=rl, repo_id=repo_id)
    except SourceError:
        raise
    except Exception as e:  # huggingface_hub raises many types (HTTP, offline, timeout): all mean the same here
        raise _network_error(repo_id, dest, e) from e
    if table is not None:
        expected, where = {n: table[n] for n in files}, f"the release table ({repo_id} @ {rev[:8]})"
        # a mirror (HF_ENDPOINT) serving other files under the pinned revision is refused before any download
        differ = [f"{n}: the hub lists {remote[n].size:,} B, the release has {table[n].size:,} B" for n in files
                  if remote[n].size is not None and remote[n].size != table[n].size]
        if differ:
            raise SourceError(f"the hub's {repo_id} @ {rev[:8]} is not the release the project knows ("
                              + "; ".join(differ) + "); check HF_ENDPOINT (a stale mirror?) and nothing was fetched")
        log(f"{repo_id} @ {rev[:8]}: {len(files)} files, {gb(sum(table[n].size or 0 for n in files))}; sizes "
            "checked against the project's table, sha256 where it is public")
    else:
        expected, where = {n: remote[n] for n in files}, f"the hub ({repo_id} @ {rev})"
        total = sum(remote[n].size or 0 for n in files)
        log(f"{repo_id} @ {rev}: the project has no size table for this repository/revision; checking against "
            f"the hub's own metadata (sizes; sha256 of LFS files): {len(files)} files, {gb(total)}")

    old = read_download_manifest(dest)
    if old is not None and (old.get("repo_id"), old.get("revision")) != (repo_id, rev):
        log(f"{dest} was downloaded from {old.get('repo_id')} @ {old.get('revision')}; now {repo_id} @ {rev}: "
            "every file is checked again")
        old = None
    manifest: dict[str, Any] = {"repo_id": repo_id, "revision": rev,
                                "checked_against": "table" if table is not None else "hub",
                                # files of an earlier run not asked for now (llm.rl.pt without --rl) stay recorded
                                "files": {n: r for n, r in (old or {}).get("files", {}).items() if n not in files}}
    problems: list[str] = []
    for i, name in enumerate(files, 1):
        want = expected[name]
        path = dest / name
        rec_old = (old or {}).get("files", {}).get(name)
        force = False
        if rec_old and path.is_file():
            known = recorded_hash(dest, name, old)
            cur = {**rec_old} if known is not None else file_record(path)  # touched: hash it again
            if cur["sha256"] == rec_old.get("sha256") and not (
                    size_problem(name, cur["size"], want, where, path)
                    or hash_problem(name, cur["sha256"], want, where, path)):
                log(f"[{i}/{len(files)}] {name}: already downloaded and unchanged")
                manifest["files"][name] = cur
                continue
            log(f"[{i}/{len(files)}] {name} changed since it was downloaded (sha256 {cur['sha256'][:16]}…, "
                f"recorded {str(rec_old.get('sha256'))[:16]}…): fetching it again")
            force = True
        else:
            log(f"[{i}/{len(files)}] {name}" + (f" ({gb(want.size)})" if want.size and want.size > 10**8 else ""))
        try:
            hub_fetch(repo_id, name, revision, dest, force=force, progress=progress)
        except Exception as e:
            raise _network_error(repo_id, dest, e) from e
        rec = file_record(path)
        bad = size_problem(name, rec["size"], want, where, path) or hash_problem(name, rec["sha256"], want, where,
                                                                                  path)
        if bad:
            problems.append(bad)
            continue
        manifest["files"][name] = rec
        write_download_manifest(dest, manifest)  # after every file: an interrupted run keeps what is checked
        if progress is not None:
            progress(name, rec["size"], rec["size"])
    write_download_manifest(dest, manifest)
    if problems:
        raise SourceError(f"{len(problems)} of {len(files)} files in {dest} are not what {where} lists:\n  "
                          + "\n  ".join(problems))
    log(f"downloaded {len(files)} files to {dest} (sizes and sha256 in {DOWNLOAD_MANIFEST}); next: "
        f"cosyvoice-rk convert {dest} BUNDLE_DIR")
    return dest


def _network_error(repo_id: str, dest: Path, e: BaseException) -> SourceError:
    return SourceError(
        f"cannot download {repo_id} ({type(e).__name__}: {_first_line(e)}). Check the internet connection "
        f"(or HF_ENDPOINT / HF_HUB_OFFLINE); files already in {dest} are kept and the next run resumes"
    )


def _tqdm_reporting(name: str, progress: Progress):
    """A tqdm class that forwards huggingface_hub's byte counts to ``progress`` (and prints nothing)."""
    from tqdm.auto import tqdm

    class _Reporting(tqdm):
        def __init__(self, *a: Any, **kw: Any) -> None:
            kw.pop("name", None)  # some huggingface_hub versions pass their own bar name, which tqdm refuses
            kw["disable"] = False
            kw["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
            super().__init__(*a, **kw)

        def update(self, n: float | None = 1) -> bool | None:
            r = super().update(n)
            progress(name, int(self.n), int(self.total or 0))
            return r

        def close(self) -> None:
            f = self.fp
            super().close()
            try:
                f.close()
            except Exception:
                pass

    return _Reporting


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else ""
