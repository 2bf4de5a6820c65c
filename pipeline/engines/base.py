"""The one interface every engine offers the facade users, the worker, the CLI, the page and the API.

An engine class (CosyVoice3's :class:`pipeline.engines.cosyvoice3.tts.CosyVoiceRK`, Qwen3-TTS's) is opened with
:func:`pipeline.engines.open_tts` and implements :class:`TTSEngine`: voices in (a prompt recording and its words,
saved as a preset that records its engine), speech out as gapless chunks with progress and cancel. The pieces
every engine shares (the chunk and segment records, the transcript check) live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.shared.audio import AudioSource
from pipeline.shared.errors import InputError

Progress = Callable[[str, dict], None]

MAX_TRANSCRIPT_CHARS = 1000  # a 10 s prompt says ~200 characters; more is not this recording's transcript


def check_transcript(transcript: str | None) -> None:
    """Raise :class:`InputError` when a prompt's transcript is empty or far longer than a prompt can say."""
    if not isinstance(transcript, str) or not transcript.strip():
        raise InputError("the prompt transcript is empty: type exactly what the prompt recording says")
    if len(transcript) > MAX_TRANSCRIPT_CHARS:
        raise InputError(f"the transcript has {len(transcript)} characters, the limit is {MAX_TRANSCRIPT_CHARS}: "
                         "use a 3–10 s prompt and type exactly its words")


@dataclass(frozen=True)
class Capabilities:
    """What an engine offers, for the page, the CLI and the API to show and check."""

    engine: str  # pipeline.engines.ENGINES key
    title: str
    modes: tuple[str, ...]  # voice-cloning modes create_chunks accepts
    languages: tuple[str, ...]  # text languages (``auto`` included when the engine detects)
    speed: bool  # create_chunks(speed=...) other than 1.0
    tags: bool  # CosyVoice3's control tags in the text
    streaming: bool  # create_chunks(stream=True) yields audio while it is made (on this bundle and backend)


@dataclass
class Segment:
    index: int
    total: int
    text: str
    audio: np.ndarray
    sample_rate: int
    result: Any  # the engine's record of the segment: its audio, timings and statistics (``.audio``, ``.timings``)


@dataclass
class AudioChunk:
    """A piece of a request's audio, yielded as soon as it is made (see :meth:`TTSEngine.create_chunks`)."""

    audio: np.ndarray  # float32 mono; the chunks of one request joined are its audio, sample-exact
    sample_rate: int
    index: int  # 0-based over the whole request
    segment: int  # 0-based text segment this chunk belongs to
    segments: int
    segment_result: Segment | None = None  # set on the last chunk of a segment


@runtime_checkable
class TTSEngine(Protocol):
    """Voices in, speech out. Every method raises :class:`pipeline.shared.errors.CosyVoiceRKError` subclasses
    with a message meant for the user."""

    bundle: Any  # pipeline.shared.bundle.Bundle
    store: Any  # pipeline.shared.presets.SpeakerStore
    placement: dict[str, Any]  # CPU, backends and streaming choices with their reasons
    streams: bool  # whether create_chunks(stream=True) streams here

    @property
    def capabilities(self) -> Capabilities: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def backends(self) -> dict[str, str]: ...
    @property
    def quant(self) -> str: ...

    def add_voice(self, name: str, audio: AudioSource, transcript: str, *, language: str = "auto",
                  overwrite: bool = False, **limits: Any) -> tuple[Any, dict[str, Any]]: ...
    def import_voice(self, src: Path | str | bytes, *, name: str | None = None, overwrite: bool = False) -> Any: ...
    def load_voice(self, name: str) -> Any: ...
    def voice_from_audio(self, audio: AudioSource, transcript: str | None, *, language: str = "auto",
                         name: str = "(one-off prompt)", **limits: Any) -> Any: ...
    def prepare_stream(self, name: str, *, should_stop: Callable[[], bool] | None = None) -> float: ...
    def create_chunks(self, text: str, voice: Any, **kw: Any) -> Iterator[AudioChunk]: ...
    def create_stream(self, text: str, voice: Any, *, stream: bool = False, **kw: Any) -> Iterator[Segment]: ...
    def create(self, text: str, voice: Any, **kw: Any) -> tuple[np.ndarray, int]: ...
    def close(self) -> None: ...


def audio_bytes(audio: AudioSource) -> tuple[bytes, str]:
    """The prompt as it will be saved with a voice: its bytes and file extension."""
    if isinstance(audio, (bytes, bytearray)):
        return bytes(audio), ".wav"
    p = Path(audio)
    try:
        return p.read_bytes(), p.suffix or ".wav"
    except FileNotFoundError:
        raise InputError(f"prompt file {p} does not exist") from None


def jsonable(info: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None)))}
