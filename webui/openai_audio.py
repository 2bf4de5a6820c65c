"""Audio encodings of the OpenAI-compatible speech API (``webui/openai_api.py``), with libsndfile (soundfile).

What each ``response_format`` is and whether it can be sent while the audio is being made:

- ``pcm``: headerless signed 16-bit little-endian mono at the bundle's rate (24000 Hz, OpenAI's own pcm rate);
  streamed.
- ``wav``: 16-bit PCM WAV. Sent whole (its header states the length) unless ``stream_format`` asks for streaming;
  a streamed WAV's header says "length unknown" (RIFF and data sizes 0xFFFFFFFF), as streaming servers do.
- ``opus``: Ogg Opus; streamed (libsndfile writes its pages in order and never goes back).
- ``mp3``, ``flac``: sent whole when the job ends: libsndfile writes their headers (MP3's info frame, FLAC's
  STREAMINFO) last, by seeking back, so their bytes cannot go out before the end.
- ``aac``: not written by libsndfile; refused.

The samples are the engine's float32 audio converted to 16 bits by libsndfile, exactly as the page's WAV files
are (:func:`pipeline.cli.pcm16`), so every format holds the same samples (lossy ones up to their coding).
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np

from pipeline.cli import pcm16

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
STREAMABLE = frozenset({"pcm", "wav", "opus"})
MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
               "wav": "audio/wav", "pcm": "audio/pcm"}
_SNDFILE = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}
_UNKNOWN = 0xFFFFFFFF


def unsupported_reason(fmt: str) -> str | None:
    """Why ``fmt`` cannot be produced here (None when it can): the installed libsndfile decides."""
    import soundfile as sf

    if fmt in ("pcm", "wav"):
        return None
    if fmt not in _SNDFILE:
        return (f"response_format {fmt!r} is not supported: libsndfile (which writes the audio here) has no "
                f"{fmt.upper()} encoder; use one of {', '.join(supported_formats())}")
    major, subtype = _SNDFILE[fmt]
    if major not in sf.available_formats() or subtype not in sf.available_subtypes(major):
        return (f"response_format {fmt!r} is not supported by the installed libsndfile "
                f"{sf.__libsndfile_version__} (it lacks {major}/{subtype}); use one of "
                f"{', '.join(supported_formats())}, or install a libsndfile built with it")
    return None


def supported_formats() -> list[str]:
    return [f for f in FORMATS if f in ("pcm", "wav") or (f in _SNDFILE and _available(f))]


def _available(fmt: str) -> bool:
    import soundfile as sf

    major, subtype = _SNDFILE[fmt]
    return major in sf.available_formats() and subtype in sf.available_subtypes(major)


def wav_header(sample_rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte PCM_16 mono WAV header; ``data_bytes`` None: the length is unknown (a streamed WAV)."""
    data = _UNKNOWN if data_bytes is None else data_bytes
    riff = _UNKNOWN if data_bytes is None else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) + b"data" + struct.pack("<I", data))


class _Sink(io.RawIOBase):
    """A growing in-memory file for libsndfile; ``take()`` returns the bytes written since the last call.
    A write into bytes already taken (a header rewritten at the end) is an error: it could not be sent."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pos = 0
        self.taken = 0

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        end = len(self.buf) if n is None or n < 0 else self.pos + n
        out = bytes(self.buf[self.pos:end])
        self.pos += len(out)
        return out

    def write(self, b: Any) -> int:
        b = bytes(b)
        if self.pos < self.taken:
            raise OSError(f"the encoder rewrote byte {self.pos}, which was already sent")
        self.buf[self.pos:self.pos + len(b)] = b
        self.pos += len(b)
        return len(b)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else len(self.buf) + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def take(self) -> bytes:
        out = bytes(self.buf[self.taken:])
        self.taken = len(self.buf)
        return out


class Encoder:
    """Turns the job's float32 chunks into the response's bytes: ``add(chunk)`` returns what can be sent now
    (nothing for formats sent whole), ``finish()`` the rest."""

    def __init__(self, fmt: str, sample_rate: int, *, stream: bool) -> None:
        if stream and fmt not in STREAMABLE:
            raise ValueError(f"{fmt} cannot be streamed")
        self.fmt, self.sample_rate, self.stream = fmt, int(sample_rate), stream
        self._parts: list[np.ndarray] = []
        self._started = False
        self._sink: _Sink | None = None
        self._sf: Any = None
        if stream and fmt == "opus":
            import soundfile as sf

            self._sink = _Sink()
            self._sf = sf.SoundFile(self._sink, "w", self.sample_rate, 1, format="OGG", subtype="OPUS")

    def add(self, audio: np.ndarray) -> bytes:
        audio = np.asarray(audio, np.float32)
        if not self.stream:
            self._parts.append(audio)
            return b""
        if self._sf is not None:
            self._sf.write(audio)
            return self._sink.take()
        head = b""
        if not self._started and self.fmt == "wav":
            head = wav_header(self.sample_rate, None)
        self._started = True
        return head + pcm16(audio)

    def finish(self) -> bytes:
        if self.stream:
            if self._sf is not None:
                self._sf.close()
                return self._sink.take()
            return b"" if self._started or self.fmt != "wav" else wav_header(self.sample_rate, None)
        audio = np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)
        pcm = pcm16(audio)
        if self.fmt == "pcm":
            return pcm
        if self.fmt == "wav":
            return wav_header(self.sample_rate, len(pcm)) + pcm
        import soundfile as sf

        major, subtype = _SNDFILE[self.fmt]
        buf = io.BytesIO()
        # the 16-bit samples the other formats hold, so every format is the same audio
        sf.write(buf, np.frombuffer(pcm, "<i2"), self.sample_rate, format=major, subtype=subtype)
        return buf.getvalue()

    def close(self) -> None:
        """Release the encoder of an abandoned response."""
        if self._sf is not None and not self._sf.closed:
            try:
                self._sf.close()
            except (OSError, RuntimeError):
                pass
