"""Speaker presets on disk: ``speakers/<slug>/{preset.json, prompt.<ext>, features.npz, llm_prefix.bin}``.

A preset is created in a temp folder and renamed into place, every later update is an atomic file
replace, and a preset that cannot be read is reported (``PresetError``) and left untouched.
Whether a preset's features still fit the loaded bundle is the caller's decision (``Preset.fits``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .engine import PromptFeatures
from .errors import PresetError
from .fsutil import atomic_save_npz, atomic_write_bytes, atomic_write_json

FEATURE_VERSION = 1
EXPORT_SUFFIX = ".cvvoice"
MAX_NAME = 64
MAX_EXPORT_BYTES = 64 * 1024 * 1024
_META = "preset.json"
_FEATS = "features.npz"
_PREFIX = "llm_prefix.bin"
_AUDIO_EXTS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def slugify(name: str) -> str:
    """Folder name for a voice name: lower-case letters/digits (any script) and dashes, never a path."""
    name = unicodedata.normalize("NFC", str(name)).strip()
    if not name:
        raise PresetError("voice name is empty: give the voice a name")
    if len(name) > MAX_NAME:
        raise PresetError(f"voice name is {len(name)} characters; use at most {MAX_NAME}")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise PresetError("voice name contains control characters")
    slug = re.sub(r"-+", "-", "".join(ch.lower() if ch.isalnum() else "-" for ch in name)).strip("-")
    return slug or "voice-" + hashlib.sha1(name.encode()).hexdigest()[:8]


@dataclass
class Preset:
    slug: str
    path: Path
    meta: dict[str, Any]
    features: PromptFeatures | None = None
    prefix_state: bytes | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def transcript(self) -> str:
        return self.meta["transcript"]

    @property
    def audio_path(self) -> Path:
        return self.path / self.meta["audio"]

    def fits(self, bundle_fingerprint: str) -> bool:
        return (self.meta.get("bundle_fingerprint") == bundle_fingerprint
                and self.meta.get("feature_version") == FEATURE_VERSION and self.features is not None)

    def prefix_fits(self, key: str) -> bool:
        return self.prefix_state is not None and self.meta.get("llm_prefix_key") == key


class SpeakerStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def _dir(self, slug: str) -> Path:
        d = (self.root / slug).resolve()
        if d.parent != self.root.resolve():
            raise PresetError(f"voice {slug!r} is not inside {self.root}")
        return d

    def list(self) -> list[dict[str, Any]]:
        """Every preset folder: its metadata, or ``{"slug", "error"}`` when it cannot be read."""
        out = []
        if not self.root.is_dir():
            return out
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                meta = self._read_meta(d)
                out.append({"slug": d.name, **meta})
            except PresetError as e:
                out.append({"slug": d.name, "name": d.name, "error": str(e)})
        return out

    def find(self, name_or_slug: str) -> str:
        """Slug of a voice given its name or slug."""
        slug = slugify(name_or_slug)
        if (self.root / slug / _META).is_file() or (self.root / name_or_slug / _META).is_file():
            return slug if (self.root / slug / _META).is_file() else name_or_slug
        names = [v["name"] for v in self.list() if "error" not in v]
        hint = f"; saved voices: {', '.join(names)}" if names else "; no voices are saved yet"
        raise PresetError(f"no voice named {name_or_slug!r}{hint}")

    def exists(self, name: str) -> bool:
        return (self.root / slugify(name) / _META).is_file()

    @staticmethod
    def _read_meta(d: Path) -> dict[str, Any]:
        try:
            meta = json.loads((d / _META).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PresetError(f"voice folder {d.name} has no {_META}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PresetError(f"voice {d.name} is corrupt ({_META}: {e}); it was left as it is") from e
        if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("name", "transcript", "audio")):
            raise PresetError(f"voice {d.name} is corrupt ({_META} lacks name/transcript/audio); left as it is")
        if Path(meta["audio"]).name != meta["audio"] or not (d / meta["audio"]).is_file():
            raise PresetError(f"voice {d.name} is corrupt (its prompt audio is missing); left as it is")
        return meta

    def load(self, name_or_slug: str) -> Preset:
        slug = self.find(name_or_slug)
        d = self._dir(slug)
        meta = self._read_meta(d)
        feats = None
        if (d / _FEATS).is_file():
            try:
                with np.load(d / _FEATS, allow_pickle=False) as z:
                    feats = PromptFeatures(z["speech_tokens"], z["mel"], z["embedding"])
            except Exception:  # unreadable features are recomputed from the prompt audio, not trusted
                feats = None
        prefix = (d / _PREFIX).read_bytes() if (d / _PREFIX).is_file() else None
        return Preset(slug, d, meta, feats, prefix)

    def create(self, name: str, audio: bytes, audio_ext: str, transcript: str, *, language: str,
               features: PromptFeatures, bundle_fingerprint: str, info: dict[str, Any] | None = None,
               overwrite: bool = False) -> Preset:
        slug = slugify(name)
        ext = audio_ext.lower() if audio_ext.lower() in _AUDIO_EXTS else ".wav"
        if not transcript.strip():
            raise PresetError("the transcript is empty: type exactly what the prompt recording says")
        dst = self._dir(slug)
        if dst.exists() and not overwrite:
            raise PresetError(f"a voice named {name!r} already exists; choose another name or replace it")
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{slug}.tmp-", dir=self.root))
        try:
            meta = {
                "name": unicodedata.normalize("NFC", name).strip(), "transcript": transcript.strip(),
                "language": language, "audio": "prompt" + ext,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "bundle_fingerprint": bundle_fingerprint, "feature_version": FEATURE_VERSION,
                "info": info or {},
            }
            atomic_write_bytes(work / meta["audio"], audio)
            _save_features(work, features)
            atomic_write_json(work / _META, meta)
            if dst.exists():
                old = dst.with_name(f".{slug}.old-{os.getpid()}")
                os.replace(dst, old)
                os.replace(work, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(work, dst)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self.load(slug)

    def update_features(self, p: Preset, features: PromptFeatures, bundle_fingerprint: str) -> None:
        _save_features(p.path, features)
        p.meta.update(bundle_fingerprint=bundle_fingerprint, feature_version=FEATURE_VERSION)
        p.meta.pop("llm_prefix_key", None)
        atomic_write_json(p.path / _META, p.meta)
        (p.path / _PREFIX).unlink(missing_ok=True)
        p.features, p.prefix_state = features, None

    def update_prefix(self, p: Preset, state: bytes, key: str) -> None:
        atomic_write_bytes(p.path / _PREFIX, state)
        p.meta["llm_prefix_key"] = key
        atomic_write_json(p.path / _META, p.meta)
        p.prefix_state = state

    def rename(self, old: str, new: str) -> str:
        slug = self.find(old)
        new_slug = slugify(new)
        src = self._dir(slug)
        meta = self._read_meta(src)
        if new_slug != slug and self._dir(new_slug).exists():
            raise PresetError(f"a voice named {new!r} already exists")
        meta["name"] = unicodedata.normalize("NFC", new).strip()
        atomic_write_json(src / _META, meta)
        if new_slug != slug:
            os.replace(src, self._dir(new_slug))
        return new_slug

    def delete(self, name_or_slug: str) -> None:
        d = self._dir(self.find(name_or_slug))
        trash = d.with_name(f".{d.name}.deleted-{os.getpid()}")
        os.replace(d, trash)  # one atomic step; the rest is cleanup
        shutil.rmtree(trash, ignore_errors=True)

    def export(self, name_or_slug: str, dest: Path | str) -> Path:
        """One file (zip) with the voice's metadata, prompt audio and features."""
        slug = self.find(name_or_slug)
        d = self._dir(slug)
        meta = self._read_meta(d)
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / f"{slug}{EXPORT_SUFFIX}"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            public = {k: v for k, v in meta.items() if k != "llm_prefix_key"}
            z.writestr(_META, json.dumps(public, ensure_ascii=False, indent=1))
            z.write(d / meta["audio"], meta["audio"])
            if (d / _FEATS).is_file():
                z.write(d / _FEATS, _FEATS)
        atomic_write_bytes(dest, buf.getvalue())
        return dest

    def read_export(self, src: Path | str | bytes) -> tuple[dict[str, Any], bytes, PromptFeatures | None]:
        """Parse an exported voice file (nothing is written)."""
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
        if len(data) > MAX_EXPORT_BYTES:
            raise PresetError(f"voice file is {len(data) / 2**20:.1f} MB; exported voices are at most "
                              f"{MAX_EXPORT_BYTES // 2**20} MB")
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                names = set(z.namelist())
                meta = json.loads(z.read(_META).decode("utf-8"))
                audio_name = meta.get("audio", "")
                if audio_name not in names or Path(audio_name).name != audio_name or \
                        Path(audio_name).suffix.lower() not in _AUDIO_EXTS:
                    raise PresetError("voice file has no prompt audio")
                audio = z.read(audio_name)
                feats = None
                if _FEATS in names:
                    with np.load(io.BytesIO(z.read(_FEATS)), allow_pickle=False) as f:
                        feats = PromptFeatures(f["speech_tokens"], f["mel"], f["embedding"])
        except PresetError:
            raise
        except Exception as e:
            raise PresetError(f"not a cosyvoice-rk voice file ({type(e).__name__}: {e}); "
                              f"export one with `cosyvoice-rk speakers export`") from e
        if not isinstance(meta.get("name"), str) or not isinstance(meta.get("transcript"), str):
            raise PresetError("voice file's preset.json lacks name or transcript")
        return meta, audio, feats


def _save_features(d: Path, f: PromptFeatures) -> None:
    atomic_save_npz(d / _FEATS, speech_tokens=f.speech_tokens, mel=f.mel, embedding=f.embedding)
