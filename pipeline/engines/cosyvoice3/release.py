"""What the real Fun-CosyVoice3-0.5B release contains: the pinned revision and each file's size (and sha256 where a
public manifest gives it), and the ``download-manifest.json`` that ``download`` writes beside the files.

Sources (``docs/release.md``): the 20-file tree of HF revision 29e01c4e with byte sizes agrees in two independent
public manifests (ayutaz/vokra, a models catalogue; ModelScope's sizes are equal). The sha256 values are those that
public manifests publish, nothing computed here: ``llm.pt``/``flow.pt``/``hift.pt`` from hardenedlinux/velum
``tools/fetch_model.py`` (cross-checked there against HF and ModelScope), the three BlankEN tokenizer files from
velum ``data/tokenizer/README.md`` (``vocab.json``'s also equals this repository's ``assets/qwen2-tokenizer``), and
only a 12-hex-digit prefix for ``cosyvoice3.yaml``. Every other file is checked by size and its sha256 is recorded
at download time, so a later run and ``convert`` see a file that changed after it was downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.shared.errors import SourceError
from pipeline.shared.fsutil import atomic_write_json, sha256_file

REPO_ID = "FunAudioLLM/Fun-CosyVoice3-0.5B-2512"
PINNED_REVISION = "29e01c4e8d000f4bcd70751be16fa94bf3d85a18"
DOWNLOAD_MANIFEST = "download-manifest.json"
BASE_LLM, RL_LLM = "llm.pt", "llm.rl.pt"


@dataclass(frozen=True)
class Expected:
    size: int | None
    sha256: str | None = None
    sha256_prefix: str | None = None  # only a prefix is public (cosyvoice3.yaml)


# HF FunAudioLLM/Fun-CosyVoice3-0.5B-2512 @ 29e01c4e: all 20 files (9,747,516,745 B).
RELEASE_FILES: dict[str, Expected] = {
    "cosyvoice3.yaml": Expected(6_934, sha256_prefix="f5a6b2c6f051"),
    "llm.pt": Expected(2_024_669_519, "69f43bd545131c30e98947fb360ea8b4dc9916d8e83dded7757c7ea4f5a24970"),
    "llm.rl.pt": Expected(2_024_682_701),
    "flow.pt": Expected(1_329_116_148, "a6fab32a7825e5b0bc855ddd948f8db9370b0a786fbc249caa4595e95b608e4b"),
    "hift.pt": Expected(83_202_622, "b279d7641eb97ae55b3b540cfba4f953c26492a2df758328a89a4d007ab87a65"),
    "flow.decoder.estimator.fp32.onnx": Expected(1_326_216_933),
    "campplus.onnx": Expected(28_303_423),
    "speech_tokenizer_v3.onnx": Expected(969_451_503),
    "speech_tokenizer_v3.batch.onnx": Expected(969_451_579),
    "CosyVoice-BlankEN/config.json": Expected(659),
    "CosyVoice-BlankEN/generation_config.json": Expected(242),
    "CosyVoice-BlankEN/tokenizer_config.json": Expected(
        1_287, "482bd979881423375ca5414e4e0d94cd7c5349dbb17fffd46b4d36d71e62a1bc"),
    "CosyVoice-BlankEN/vocab.json": Expected(
        2_776_833, "ca10d7e9fb3ed18575dd1e277a2579c16d108e32f27439684afa0e10b1440910"),
    "CosyVoice-BlankEN/merges.txt": Expected(
        1_402_109, "ac8ff86a72bee70828fbc1119bc4398c6f3a9a6e490d7b0dbe917be025478bd0"),
    "CosyVoice-BlankEN/model.safetensors": Expected(988_097_824),
    "config.json": Expected(2),
    "configuration.json": Expected(47),
    "README.md": Expected(11_982),
    ".gitattributes": Expected(1_574),
    "asset/dingding.png": Expected(122_824),
}


def release_table(repo_id: str, revision: str | None) -> dict[str, Expected] | None:
    """The project's table for ``repo_id`` at ``revision``, or None when the project has none (other repo or
    revision: then the hub's own metadata is the reference)."""
    if repo_id == REPO_ID and revision in (PINNED_REVISION, PINNED_REVISION[:7]):
        return RELEASE_FILES
    return None


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def size_problem(name: str, got: int, want: Expected, where: str, path: Path) -> str | None:
    """A sentence naming ``name``, both sizes and the fix, or None when the size is right (or unknown)."""
    if want.size is None or got == want.size:
        return None
    return (f"{name}: {got:,} B on disk, {where} has {want.size:,} B; delete {path} and run download again "
            "(an interrupted copy, a stale mirror or another revision)")


def hash_problem(name: str, digest: str, want: Expected, where: str, path: Path) -> str | None:
    if want.sha256 and digest != want.sha256:
        return (f"{name}: sha256 {digest[:16]}…, {where} has {want.sha256[:16]}…; delete {path} and run download "
                "again")
    if want.sha256_prefix and not digest.startswith(want.sha256_prefix):
        return (f"{name}: sha256 {digest[:16]}…, {where} starts with {want.sha256_prefix}; delete {path} and run "
                "download again")
    return None


def read_download_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / DOWNLOAD_MANIFEST
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(m.get("files"), dict):
            raise ValueError("no 'files' mapping")
    except (OSError, ValueError, AttributeError) as e:
        raise SourceError(f"{path} is unreadable ({e}); delete it and run download again") from e
    return m


def write_download_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(Path(folder) / DOWNLOAD_MANIFEST, manifest)


def recorded_hash(folder: Path, name: str, manifest: dict[str, Any] | None) -> str | None:
    """The sha256 recorded for ``name`` when the file on disk still has the recorded size and mtime (so it
    need not be hashed again), else None."""
    rec = (manifest or {}).get("files", {}).get(name)
    p = Path(folder) / name
    if not rec or not p.is_file():
        return None
    st = p.stat()
    if st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime_ns"):
        return rec.get("sha256")
    return None


def file_record(path: Path, digest: str | None = None) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "sha256": digest or sha256_file(path), "mtime_ns": st.st_mtime_ns}


def check_downloaded(folder: Path, names: list[str], hashes: dict[str, str]) -> None:
    """For ``convert``: each of ``names`` that ``download`` recorded must still have the recorded sha256
    (``hashes``: the digests convert computed). Raises :class:`SourceError` naming every changed file."""
    m = read_download_manifest(folder)
    if m is None:
        return
    bad = []
    for name in names:
        rec = m["files"].get(name)
        if rec and name in hashes and hashes[name] != rec.get("sha256"):
            bad.append(f"{name} (sha256 {hashes[name][:16]}…, downloaded as {str(rec.get('sha256'))[:16]}…; "
                       f"{os.path.getsize(Path(folder) / name):,} B now, {rec.get('size'):,} B then)")
    if bad:
        raise SourceError(f"{folder}: changed or damaged since download: {'; '.join(bad)}. Delete "
                          f"{'them' if len(bad) > 1 else 'it'} and run `cosyvoice-rk download {folder}` again")
