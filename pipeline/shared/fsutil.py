"""Atomic file writes (temp file in the same folder, fsync, rename) and hashing."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def atomic_save_npy(path: Path | str, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def atomic_save_npz(path: Path | str, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_target_dir(out: Path | str, *, overwrite: bool = False, kind: str = "bundle",
                     marker: str = "manifest.json") -> None:
    """Refuse to write a ``kind`` into ``out`` unless it is missing, empty, or (with ``overwrite``) a ``kind``:
    called before long work, so that nothing is built only to be refused."""
    from pipeline.shared.errors import BundleError

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise BundleError(f"{out} exists and is not a {kind}; choose an empty or new folder")
        if not overwrite:
            raise BundleError(f"{out} already holds a {kind}; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_dir(out: Path | str, *, overwrite: bool = False, kind: str = "bundle",
               marker: str = "manifest.json") -> Iterator[Path]:
    """Yield an empty temp folder beside ``out``; on success it replaces ``out`` in one rename (a folder is
    written whole or not at all). ``out`` may be missing or empty; one holding a ``kind`` (it has ``marker``) is
    replaced only with ``overwrite``; any other non-empty folder is refused."""
    out = Path(out)
    check_target_dir(out, overwrite=overwrite, kind=kind, marker=marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield work
        os.chmod(work, 0o755)  # mkdtemp makes it 0700; a bundle is shared read-only data
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(work, out)
        if old is not None:
            import shutil

            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        raise
