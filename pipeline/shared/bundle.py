"""The on-device model bundle: a folder with ``manifest.json`` and the files it lists.

The runtime reads every model dimension and constant from the manifest, never from code literals.
A bundle is refused with a specific message when its manifest is missing or unreadable, its format
version is not this one, a listed file is missing, or a file's size or sha256 does not match.
Hash policy (``docs/reliability.md``): every file is hashed in full on the first load and again whenever its
size, mtime, ctime, inode or device changed since it was last verified (``.verified.json``). Any write to a
file changes its ctime, even when the mtime is put back, and a copied bundle has new inodes, so edits and copies
are always rehashed; a warm start only stats the files. Bit rot that no system call saw (a failing SD card or
eMMC) changes none of these: ``cosyvoice-rk check`` hashes every file regardless of the cache. A full hash of
the ~5 GB real bundle costs about 25-50 s on an RK3588 reading eMMC (~100-200 MB/s), once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.shared.errors import BundleError
from pipeline.shared.fsutil import atomic_write_json, sha256_file

FORMAT = "cosyvoice-rk-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_VERIFIED = ".verified.json"

HOW_TO_GET = (
    "make one with `cosyvoice-rk download ckpt/` then `cosyvoice-rk convert ckpt/ bundle/` "
    "(or a random test bundle with `cosyvoice-rk make-random-bundle`)"
)


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, root: Path | str, *, check: str = "hash") -> Bundle:
        """Open a bundle. ``check``: ``"hash"`` (sha256, cached), ``"size"`` or ``"none"``."""
        root = Path(root)
        if not root.is_dir():
            raise BundleError(f"model bundle {root} does not exist; {HOW_TO_GET}")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{root} is not a model bundle (no {MANIFEST}); {HOW_TO_GET}")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath} is corrupt (not readable JSON: {type(e).__name__}); copy the bundle again "
                              "or convert the checkpoint again") from e
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BundleError(f"{mpath} is not a cosyvoice-rk manifest; {HOW_TO_GET}")
        ver = manifest.get("format_version")
        if ver != FORMAT_VERSION:
            raise BundleError(
                f"bundle {root} has format version {ver}, this cosyvoice-rk reads version {FORMAT_VERSION}; "
                "convert the checkpoint again with this version"
            )
        from pipeline.engines import engine_info, engine_name

        for key in engine_info(engine_name(manifest), where=f"bundle {root}").sections:
            if not isinstance(manifest.get(key), dict):
                raise BundleError(f"{mpath}: section '{key}' is missing; convert the checkpoint again")
        b = cls(root, manifest)
        if check != "none":
            b.check_files(full=(check == "hash"))
        return b

    @property
    def constants(self) -> dict[str, Any]:
        return self.manifest["constants"]

    @property
    def engine(self) -> str:
        """The engine this bundle is for (``pipeline.engines.ENGINES``)."""
        from pipeline.engines import engine_name

        return engine_name(self.manifest)

    @property
    def is_random(self) -> bool:
        return bool(self.manifest.get("random_weights", False))

    @property
    def fingerprint(self) -> str:
        """Identifies the model content: changes when any model file changes."""
        return self.manifest.get("fingerprint", "")

    def path(self, name: str) -> Path:
        """Path of a file listed in the manifest."""
        if name not in self.manifest["files"]:
            raise BundleError(f"bundle {self.root} has no file {name!r}")
        return self.root / name

    def has(self, name: str | None) -> bool:
        return bool(name) and name in self.manifest["files"]

    def check_files(self, *, full: bool = True) -> None:
        files: dict[str, dict] = self.manifest["files"]
        cache_path = self.root / _VERIFIED
        try:
            cache = json.loads(cache_path.read_text()) if full and cache_path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            cache = {}
        changed = False
        for name, meta in files.items():
            p = self.root / name
            try:
                st = p.stat()
            except FileNotFoundError:
                raise BundleError(f"bundle {self.root} is incomplete: {name} is missing") from None
            if st.st_size != meta.get("bytes"):
                raise BundleError(
                    f"bundle {self.root}: {name} has {st.st_size} bytes, the manifest says {meta.get('bytes')} "
                    "(truncated or replaced); convert again"
                )
            if not full:
                continue
            stamp = _stamp(st, meta.get("sha256"))
            if cache.get(name) == stamp:
                continue
            if sha256_file(p) != meta.get("sha256"):
                raise BundleError(damaged_message(self.root, name))
            cache[name] = stamp
            changed = True
        if changed:
            try:
                atomic_write_json(cache_path, cache)
            except OSError:
                pass  # read-only bundle: hash again next time


    def scan(self, log: Callable[[str], None] | None = None) -> list[str]:
        """Hash every file regardless of the cache (``cosyvoice-rk check``); returns the damaged files' names."""
        bad = []
        for name, meta in self.manifest["files"].items():
            p = self.root / name
            if not p.is_file():
                bad.append(name)
                if log:
                    log(f"{name}: missing")
                continue
            ok = p.stat().st_size == meta.get("bytes") and sha256_file(p) == meta.get("sha256")
            if log:
                log(f"{name}: {'ok' if ok else 'DAMAGED'}")
            if not ok:
                bad.append(name)
        return bad


def damaged_message(root: Path, name: str) -> str:
    return (f"bundle {root}: {name} is damaged (its content does not match the manifest: a copy error or a "
            "failing SD card or eMMC); copy the bundle again from where it was converted, or convert again")


def _stamp(st: os.stat_result, sha: Any) -> list[Any]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, sha]


def file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": os.path.getsize(path), "sha256": sha256_file(path)}
