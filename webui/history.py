"""The page's recent results: WAV files plus ``history.json`` (newest first), written atomically."""

from __future__ import annotations

import datetime as _dt
import io
import json
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.fsutil import atomic_write_bytes, atomic_write_json


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.asarray(audio, np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class History:
    """The last ``size`` results: WAV files plus ``history.json`` (newest first), written atomically."""

    def __init__(self, root: Path | str, size: int = 20) -> None:
        self.root = Path(root)
        self.size = max(1, int(size))
        self._lock = threading.Lock()
        self._entries = self._read()

    def _read(self) -> list[dict[str, Any]]:
        p = self.root / "history.json"
        if not p.is_file():
            return []
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            return [e for e in data if isinstance(e, dict) and isinstance(e.get("file"), str)]
        except (OSError, ValueError) as e:
            print(f"cosyvoice-rk webui: {p} is unreadable ({e}); starting an empty history", file=sys.stderr)
            return []

    def add(self, audio: np.ndarray, sample_rate: int, meta: dict[str, Any]) -> dict[str, Any]:
        now = _dt.datetime.now()
        with self._lock:
            n = max([int(e.get("id", 0)) for e in self._entries] + [0]) + 1
            name = f"{now:%Y%m%d-%H%M%S}-{n:04d}.wav"
            atomic_write_bytes(self.root / name, wav_bytes(audio, sample_rate))
            entry = {"id": n, "created": now.isoformat(timespec="seconds"), "file": name, **meta}
            self._entries.insert(0, entry)
            dropped = self._entries[self.size:]
            self._entries = self._entries[:self.size]
            atomic_write_json(self.root / "history.json", self._entries)
            for e in dropped:
                (self.root / e["file"]).unlink(missing_ok=True)
        return self._with_path(entry)

    def _with_path(self, e: dict[str, Any]) -> dict[str, Any]:
        return {**e, "path": str(self.root / e["file"])}

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._with_path(e) for e in self._entries if (self.root / e["file"]).is_file()]

    def get(self, entry_id: int) -> dict[str, Any] | None:
        return next((e for e in self.list() if e["id"] == entry_id), None)
