"""Speaker presets on disk: ``speakers/<slug>/{preset.json, prompt.<ext>, features.npz, llm_prefix.bin}``.

One place decides a voice's folder (:meth:`SpeakerStore.claim`): ``slugify(name)``, and a name whose folder
holds a voice with another name is refused, naming that voice. A voice is built completely in a temp folder
(audio, validated features, cached LLM prefix, metadata) and renamed into place only then; every later update
is an atomic file replace. A preset that cannot be read is listed as damaged (``error``) and left untouched;
features that are not finite or not the right shapes are not trusted (recomputed from the audio), and the
cached LLM prefix is checked against its sha256. A folder renamed or copied by hand is listed under its folder
name. Whether a preset's features still fit the loaded bundle is the caller's decision (``Preset.fits``).
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
import threading
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.shared.errors import PresetError
from pipeline.shared.fsutil import atomic_save_npz, atomic_write_bytes, atomic_write_json

FEATURE_VERSION = 1
EXPORT_SUFFIX = ".cvvoice"
MAX_NAME = 64
MAX_EXPORT_BYTES = 64 * 1024 * 1024
# what each member of a .cvvoice file may hold once inflated (read through size-limited streams)
_MEMBER_LIMITS = {"preset.json": 256 * 1024, "features.npz": 16 * 1024 * 1024}
MAX_AUDIO_BYTES = 50 * 1024 * 1024
_LOCK = threading.Lock()  # renames into place within one process (voices are created in the worker process only)
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


def same_name(a: str, b: str) -> bool:
    """Two voice names are the same voice only when they are equal after Unicode normalisation and trimming."""
    return unicodedata.normalize("NFC", str(a)).strip() == unicodedata.normalize("NFC", str(b)).strip()


class FeatureCodec(Protocol):
    """How an engine's voice features go to and from ``features.npz`` and when they cannot be trusted."""

    def to_arrays(self, features: Any) -> dict[str, np.ndarray]: ...
    def from_arrays(self, arrays: dict[str, np.ndarray]) -> Any: ...
    def problem(self, features: Any) -> str | None: ...


class ArraysCodec:
    """Features as a plain dict of arrays: what a store that does not load an engine (listing, renaming, export)
    sees. It trusts finite, non-empty arrays; an engine's codec checks shapes and ranges too."""

    def to_arrays(self, features: Any) -> dict[str, np.ndarray]:
        return dict(features.arrays()) if hasattr(features, "arrays") else dict(features)

    def from_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(arrays)

    def problem(self, features: Any) -> str | None:
        arrays = self.to_arrays(features) if features is not None else {}
        if not arrays:
            return "no features"
        for k, v in arrays.items():
            if v.size == 0:
                return f"{k} is empty"
            if v.dtype.kind == "f" and not np.isfinite(v).all():
                return "features are not finite (NaN or infinity)"
        return None


@dataclass
class Preset:
    slug: str
    path: Path
    meta: dict[str, Any]
    features: Any = None  # the engine's features (its FeatureCodec's from_arrays), None when missing or damaged
    prefix_state: bytes | None = field(default=None, repr=False)
    damaged: list[str] = field(default_factory=list)  # saved files found damaged (rebuilt on use, and said so)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def transcript(self) -> str:
        return self.meta["transcript"]

    @property
    def audio_path(self) -> Path:
        return self.path / self.meta["audio"]

    @property
    def engine(self) -> str:
        """The engine whose features this voice holds (voices saved before engines were named: CosyVoice3)."""
        from pipeline.engines import engine_name

        return engine_name(self.meta)

    def fits(self, bundle_fingerprint: str) -> bool:
        return (self.meta.get("bundle_fingerprint") == bundle_fingerprint
                and self.meta.get("feature_version") == FEATURE_VERSION and self.features is not None)

    def prefix_fits(self, key: str) -> bool:
        return self.prefix_state is not None and self.meta.get("llm_prefix_key") == key


class SpeakerStore:
    def __init__(self, root: Path | str, *, engine: str | None = None, codec: FeatureCodec | None = None) -> None:
        """``engine`` and ``codec``: the engine that saves voices here and how its features are stored (without
        them the store lists, renames, deletes and exports voices, and reads features as plain arrays)."""
        self.root = Path(root)
        self.engine = engine
        self.codec: FeatureCodec = codec or ArraysCodec()

    def _read_features(self, data: bytes | Path) -> Any:
        """Features from an ``.npz`` (path or bytes), or None when they are unreadable or fail the checks."""
        try:
            with np.load(io.BytesIO(data) if isinstance(data, bytes) else data, allow_pickle=False) as z:
                f = self.codec.from_arrays({k: z[k] for k in z.files})
        except Exception:  # noqa: BLE001 - unreadable features are recomputed from the prompt audio, not trusted
            return None
        return None if self.codec.problem(f) else f

    def _save_features(self, d: Path, f: Any) -> None:
        atomic_save_npz(d / _FEATS, **self.codec.to_arrays(f))

    def _dir(self, slug: str) -> Path:
        d = (self.root / slug).resolve()
        if d.parent != self.root.resolve():
            raise PresetError(f"voice {slug!r} is not inside {self.root}")
        return d

    def list(self) -> list[dict[str, Any]]:
        """Every preset folder: its metadata (``name`` is what the voice is called here), or ``{"slug", "name",
        "error"}`` when it cannot be read (a damaged voice: repair it by saving it again, or delete it)."""
        out = []
        if not self.root.is_dir():
            return out
        for d in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                meta = self._read_meta(d)
                out.append({**meta, "slug": d.name, "name": self._listed_name(d.name, meta)})
            except PresetError as e:
                out.append({"slug": d.name, "name": d.name, "error": str(e)})
        return out

    @staticmethod
    def _listed_name(slug: str, meta: dict[str, Any]) -> str:
        # a folder renamed or copied by hand keeps the old name inside: it is called by its folder, which is
        # what the person changed, so every listed name leads back to exactly one folder
        return meta["name"] if slugify(meta["name"]) == slug else slug

    def find(self, name_or_slug: str) -> str:
        """Slug of a voice given its name (as listed) or its folder name."""
        voices = self.list()
        for v in voices:
            if same_name(v["name"], name_or_slug) or v["slug"] == str(name_or_slug).strip():
                if "error" in v:
                    raise PresetError(f"voice {v['name']!r} is damaged ({v['error']}); repair it by saving it "
                                      "again from its recording, or delete it")
                return v["slug"]
        names = [v["name"] for v in voices if "error" not in v]
        hint = f"; saved voices: {', '.join(names)}" if names else "; no voices are saved yet"
        raise PresetError(f"no voice named {name_or_slug!r}{hint}")

    def exists(self, name: str) -> bool:
        return self._dir(slugify(name)).exists()

    def claim(self, name: str, *, overwrite: bool = False, current: str | None = None) -> str:
        """The folder (slug) a voice called ``name`` goes to. Refused when the folder holds another voice (a name
        that differs only in case or punctuation), naming it; a voice of the same name only with ``overwrite``.
        ``current``: the slug of the voice being renamed (its own folder is no clash)."""
        slug = slugify(name)
        d = self._dir(slug)
        if slug == current or not d.exists():
            return slug
        try:
            other = self._listed_name(slug, self._read_meta(d))
        except PresetError:
            if overwrite:
                return slug  # replacing a damaged voice is how it is repaired
            raise PresetError(f"a damaged voice is stored under the name {name!r}; tick “replace” to save this one "
                              "in its place, or delete the damaged one first") from None
        if not same_name(other, name):
            raise PresetError(f"the name {name!r} is taken by the saved voice {other!r} (names that differ only in "
                              f"case or punctuation share one folder); choose another name, or save as {other!r} "
                              "to replace it")
        if not overwrite:
            raise PresetError(f"a voice named {other!r} already exists; choose another name or replace it")
        return slug

    @staticmethod
    def _read_meta(d: Path) -> dict[str, Any]:
        try:
            meta = json.loads((d / _META).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PresetError(f"voice folder {d.name} has no {_META}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PresetError(f"voice {d.name} is corrupt ({_META} cannot be read: {type(e).__name__}); it was "
                              "left as it is") from e
        if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("name", "transcript", "audio")):
            raise PresetError(f"voice {d.name} is corrupt ({_META} lacks name/transcript/audio); left as it is")
        if Path(meta["audio"]).name != meta["audio"] or not (d / meta["audio"]).is_file():
            raise PresetError(f"voice {d.name} is corrupt (its prompt audio is missing); left as it is")
        return meta

    def load(self, name_or_slug: str) -> Preset:
        slug = self.find(name_or_slug)
        d = self._dir(slug)
        meta = self._read_meta(d)
        damaged = []
        feats = self._read_features(d / _FEATS) if (d / _FEATS).is_file() else None
        if feats is None and (d / _FEATS).is_file():
            damaged.append(_FEATS)
        prefix = (d / _PREFIX).read_bytes() if (d / _PREFIX).is_file() else None
        if prefix is not None and hashlib.sha256(prefix).hexdigest() != meta.get("llm_prefix_sha256"):
            if meta.get("llm_prefix_sha256"):  # (no hash: saved before it was kept; rebuilt once, quietly)
                damaged.append(_PREFIX)
            prefix = None
        return Preset(slug, d, meta, feats, prefix, damaged)

    def create(self, name: str, audio: bytes, audio_ext: str, transcript: str, *, language: str,
               features: Any, bundle_fingerprint: str, info: dict[str, Any] | None = None,
               prefix: tuple[bytes, str] | None = None, overwrite: bool = False) -> Preset:
        """Write a complete voice (``prefix``: the cached LLM state and its key) in a temp folder, check it reads
        back, then rename it into place; on any failure nothing is left behind and a replaced voice is kept."""
        from pipeline.shared.text import check_language

        slug = self.claim(name, overwrite=overwrite)
        ext = audio_ext.lower() if audio_ext.lower() in _AUDIO_EXTS else ".wav"
        if not transcript.strip():
            raise PresetError("the transcript is empty: type exactly what the prompt recording says")
        check_language(language)
        problem = self.codec.problem(features)
        if problem:
            raise PresetError(f"the voice's features cannot be used ({problem}); save it again from its recording")
        dst = self._dir(slug)
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{slug}.tmp-", dir=self.root))
        try:
            meta = {
                "name": unicodedata.normalize("NFC", name).strip(), "transcript": transcript.strip(),
                "language": language, "audio": "prompt" + ext,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "bundle_fingerprint": bundle_fingerprint, "feature_version": FEATURE_VERSION,
                **({"engine": self.engine} if self.engine else {}),
                "info": info or {},
            }
            atomic_write_bytes(work / meta["audio"], audio)
            self._save_features(work, features)
            if prefix is not None:
                atomic_write_bytes(work / _PREFIX, prefix[0])
                meta.update(llm_prefix_key=prefix[1], llm_prefix_sha256=hashlib.sha256(prefix[0]).hexdigest())
            atomic_write_json(work / _META, meta)
            self._read_meta(work)
            if self._read_features(work / _FEATS) is None:
                raise PresetError("the voice's features did not read back; check the disk and save it again")
            with _LOCK:  # two clients saving one name at once: one wins, the other is told, nothing mixes
                self.claim(name, overwrite=overwrite)
                if dst.exists() and not overwrite:
                    raise PresetError(f"a voice named {meta['name']!r} was saved by someone else a moment ago; "
                                      "choose another name or replace it")
                if dst.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{slug}.old-", dir=self.root))
                    os.replace(dst, old / slug)
                    os.replace(work, dst)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(work, dst)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self.load(slug)

    def update_features(self, p: Preset, features: Any, bundle_fingerprint: str) -> None:
        self._save_features(p.path, features)
        p.meta.update(bundle_fingerprint=bundle_fingerprint, feature_version=FEATURE_VERSION)
        if self.engine:
            p.meta["engine"] = self.engine
        p.meta.pop("llm_prefix_key", None)
        p.meta.pop("llm_prefix_sha256", None)
        atomic_write_json(p.path / _META, p.meta)
        (p.path / _PREFIX).unlink(missing_ok=True)
        p.features, p.prefix_state = features, None

    def update_prefix(self, p: Preset, state: bytes, key: str) -> None:
        atomic_write_bytes(p.path / _PREFIX, state)
        p.meta.update(llm_prefix_key=key, llm_prefix_sha256=hashlib.sha256(state).hexdigest())
        atomic_write_json(p.path / _META, p.meta)
        p.prefix_state = state

    def rename(self, old: str, new: str) -> str:
        slug = self.find(old)
        with _LOCK:
            new_slug = self.claim(new, current=slug)
            src = self._dir(slug)
            meta = self._read_meta(src)
            old_meta = dict(meta)
            meta["name"] = unicodedata.normalize("NFC", new).strip()
            atomic_write_json(src / _META, meta)
            if new_slug != slug:
                try:
                    os.rename(src, self._dir(new_slug))  # fails when another process took the folder meanwhile
                except OSError:
                    atomic_write_json(src / _META, old_meta)
                    raise PresetError(f"a voice named {new!r} was saved by someone else a moment ago; choose "
                                      "another name") from None
        return new_slug

    def delete(self, name_or_slug: str) -> None:
        self.delete_folder(self.find(name_or_slug))

    def delete_folder(self, slug: str) -> None:
        """Remove a voice's folder (also a damaged one, which :meth:`find` refuses)."""
        d = self._dir(slug)
        if not d.is_dir():
            raise PresetError(f"no voice folder {slug!r}")
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
            public = {k: v for k, v in meta.items() if k not in ("llm_prefix_key", "llm_prefix_sha256")}
            z.writestr(_META, json.dumps(public, ensure_ascii=False, indent=1))
            z.write(d / meta["audio"], meta["audio"])
            if (d / _FEATS).is_file():
                z.write(d / _FEATS, _FEATS)
        atomic_write_bytes(dest, buf.getvalue())
        return dest

    def read_export(self, src: Path | str | bytes) -> tuple[dict[str, Any], bytes, Any]:
        """Parse an exported voice file (nothing is written). Every member is read through a stream that stops
        at its limit, so a small file that inflates to gigabytes is refused after reading at most the limit.
        Features that are not finite or not the right shapes come back as None (recomputed from the audio)."""
        if isinstance(src, bytes):
            size = len(src)
        else:
            path = Path(src)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise PresetError(f"voice file {path.name} does not exist") from None
        if size > MAX_EXPORT_BYTES:
            raise PresetError(f"the voice file is {size / 2**20:.1f} MB; exported voices are at most "
                              f"{MAX_EXPORT_BYTES // 2**20} MB")
        if size == 0:
            raise PresetError("the voice file is empty (0 bytes); export the voice again")
        try:
            with (io.BytesIO(src) if isinstance(src, bytes) else open(path, "rb")) as fh, zipfile.ZipFile(fh) as z:
                names = set(z.namelist())
                if _META not in names:
                    raise PresetError("this is a zip file but not a voice file (no preset.json inside); "
                                      "export one with “Export” or `cosyvoice-rk speakers export`")
                meta = json.loads(_read_member(z, _META, _MEMBER_LIMITS[_META]).decode("utf-8"))
                if not isinstance(meta, dict):
                    raise PresetError("the voice file's preset.json is not a voice description; export it again")
                audio_name = meta.get("audio", "")
                if not isinstance(audio_name, str) or audio_name not in names or \
                        Path(audio_name).name != audio_name or Path(audio_name).suffix.lower() not in _AUDIO_EXTS:
                    raise PresetError("the voice file has no prompt audio; export the voice again")
                audio = _read_member(z, audio_name, MAX_AUDIO_BYTES)
                feats = None
                if _FEATS in names:
                    feats = self._read_features(_read_member(z, _FEATS, _MEMBER_LIMITS[_FEATS]))
        except PresetError:
            raise
        except (zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError, OSError, EOFError) as e:
            raise PresetError(f"this is not a cosyvoice-rk voice file ({type(e).__name__}); export one with "
                              "“Export” or `cosyvoice-rk speakers export`") from e
        for key in ("name", "transcript"):
            if not isinstance(meta.get(key), str) or not meta[key].strip():
                raise PresetError(f"the voice file has no {key}; export the voice again")
        if not isinstance(meta.get("language", "auto"), str):
            raise PresetError("the voice file's language is not text; export the voice again")
        return meta, audio, feats


def _read_member(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A zip member, read in chunks and refused as soon as it passes ``limit`` bytes (whatever its header says)."""
    if z.getinfo(name).file_size > limit:
        raise PresetError(f"{name} in the voice file inflates to {z.getinfo(name).file_size / 2**20:.0f} MB, more "
                          f"than a voice can hold ({limit / 2**20:.1f} MB); this file is damaged or not a voice")
    out = bytearray()
    with z.open(name) as f:
        while chunk := f.read(1 << 16):
            out += chunk
            if len(out) > limit:
                raise PresetError(f"{name} in the voice file is larger than a voice can hold "
                                  f"({limit / 2**20:.1f} MB); this file is damaged or not a voice")
    return bytes(out)

