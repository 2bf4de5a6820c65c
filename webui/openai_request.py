"""The OpenAI speech request, checked field by field, and the worker ``speak`` payload it becomes.

Fields as OpenAI's ``POST /v1/audio/speech``: ``model``, ``input`` (≤ 5000 characters, as on the page), ``voice``
(a saved voice's name, or ``{"id": name}``), ``response_format`` (default ``mp3``, as OpenAI), ``speed`` (0.5–2.0
here; OpenAI allows 0.25–4.0), ``instructions`` (instruct mode), ``stream_format`` (``audio`` or ``sse``).
Extras beyond OpenAI's (``extra_body`` in its Python client): ``language`` (ru, en, zh, ja, auto; default auto),
``seed``, ``temperature``, ``top_k``, ``top_p`` (as on the page's Advanced section).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.shared.text import LANGUAGES, MAX_TEXT_CHARS

from .client import MAX_SEED, TEMPERATURE_RANGE, TOP_K_RANGE, TOP_P_RANGE, FieldError, _number
from .openai_audio import FORMATS

SPEED_RANGE = (0.5, 2.0)
MAX_INSTRUCTIONS_CHARS = 1000
STREAM_FORMATS = ("audio", "sse")
_KNOWN = {"model", "input", "voice", "response_format", "speed", "instructions", "stream_format", "language", "seed",
          "temperature", "top_k", "top_p"}


class ApiError(Exception):
    """A refusal in OpenAI's error shape, with its HTTP status."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class SpeechRequest:
    model: str
    input: str
    voice: str
    response_format: str = "mp3"
    speed: float = 1.0
    instructions: str = ""
    stream_format: str | None = None
    language: str = "auto"
    seed: int | None = None
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def payload(self, voice_name: str) -> dict[str, Any]:
        """The worker's ``speak`` payload. ``speed`` and ``mode``/``instruct`` are the keys the worker's modes
        support reads (instructions → ``mode="instruct"``, ``instruct=<text>``)."""
        p: dict[str, Any] = {"text": self.input, "language": self.language, "temperature": float(self.temperature),
                             "seed": self.seed, "top_k": self.top_k, "top_p": self.top_p, "stream": True,
                             "voice": voice_name, "speed": float(self.speed)}
        if self.instructions:
            p["mode"] = "instruct"
            p["instruct"] = self.instructions
        return p


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _string(d: dict[str, Any], key: str, *, required: bool) -> str | None:
    v = d.get(key)
    if v is None:
        if required:
            raise _bad(f"you must provide the {key!r} parameter", key, "missing_required_parameter")
        return None
    if not isinstance(v, str):
        raise _bad(f"{key!r} must be a string, got {type(v).__name__}", key, "invalid_type")
    return v


def _option(d: dict[str, Any], key: str, what: str, lo: float, hi: float, default: Any, **kw: Any) -> Any:
    try:
        return _number(d.get(key), what, lo, hi, default=default, **kw)
    except FieldError as e:
        raise _bad(str(e), key) from None


def parse_speech(body: bytes, max_chars: int = MAX_TEXT_CHARS) -> SpeechRequest:
    """The request body → a checked :class:`SpeechRequest`; the first problem raises :class:`ApiError` (400).
    ``max_chars``: the longest ``input``, the page's limit."""
    try:
        d = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(f"the request body is not valid JSON ({e}); send Content-Type: application/json with an object "
                   "such as {\"model\": \"tts-1\", \"input\": \"Hello\", \"voice\": \"Anna\"}", None,
                   "invalid_json") from None
    if not isinstance(d, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_json")
    unknown = sorted(set(d) - _KNOWN)
    if unknown:
        raise _bad(f"unknown parameter(s): {', '.join(unknown)}", unknown[0], "unknown_parameter")
    model = _string(d, "model", required=True)
    text = _string(d, "input", required=True)
    if not text.strip():
        raise _bad("'input' is empty: give the text to speak", "input", "empty_input")
    if len(text) > max_chars:
        raise _bad(f"'input' has {len(text)} characters, the limit is {max_chars}: split it into parts",
                   "input", "string_above_max_length")
    voice = d.get("voice")
    if isinstance(voice, dict):
        voice = voice.get("id")
    if voice is None:
        raise _bad("you must provide the 'voice' parameter: the name of a saved voice", "voice",
                   "missing_required_parameter")
    if not isinstance(voice, str) or not voice.strip():
        raise _bad("'voice' must be the name of a saved voice (a string, or {\"id\": name})", "voice",
                   "invalid_type")
    fmt = _string(d, "response_format", required=False) or "mp3"
    if fmt not in FORMATS:
        raise _bad(f"response_format {fmt!r} is not one of {', '.join(FORMATS)}", "response_format",
                   "unsupported_value")
    stream_format = _string(d, "stream_format", required=False)
    if stream_format is not None and stream_format not in STREAM_FORMATS:
        raise _bad(f"stream_format {stream_format!r} is not one of audio, sse", "stream_format", "unsupported_value")
    instructions = (_string(d, "instructions", required=False) or "").strip()
    if len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise _bad(f"'instructions' has {len(instructions)} characters, the limit is {MAX_INSTRUCTIONS_CHARS}",
                   "instructions", "string_above_max_length")
    language = _string(d, "language", required=False) or "auto"
    if language not in LANGUAGES:
        raise _bad(f"unknown language {language!r}; one of {', '.join(LANGUAGES)}", "language", "unsupported_value")
    seed = _option(d, "seed", "seed", -1, MAX_SEED, -1, whole=True, below_is_random=True)
    return SpeechRequest(
        model=model, input=text, voice=voice.strip(), response_format=fmt,
        speed=_option(d, "speed", "speed", *SPEED_RANGE, 1.0), instructions=instructions,
        stream_format=stream_format, language=language, seed=None if seed < 0 else int(seed),
        temperature=_option(d, "temperature", "temperature", *TEMPERATURE_RANGE, 1.0),
        top_k=_option(d, "top_k", "top-k", *TOP_K_RANGE, None, whole=True),
        top_p=_option(d, "top_p", "top-p", *TOP_P_RANGE, None))
