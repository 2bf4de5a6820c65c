"""An OpenAI-compatible speech API on the studio's server: ``POST /v1/audio/speech``, ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /v1/audio/voices``.

Requests go through the page's worker queue (:class:`webui.client.Studio`'s worker); ``voice`` is a saved voice.
Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the HTTP status that fits:
400 bad input, 401 missing or wrong credentials, 404 unknown voice or model, 413 request body too large, 429 the
worker's queue is full, 503 no bundle or the worker is unavailable, 500 anything else.

Auth: with ``--api-key`` a ``Bearer`` token equal to it; with ``--auth`` users, HTTP Basic with one of them (or
``Bearer USER:PASSWORD``, for clients that only send API keys), or the page's login session. With neither, the
API is open to whoever can reach the bound address (127.0.0.1 by default).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import sys
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pipeline.shared.errors import PresetError
from pipeline.shared.text.tags import find_tags
from pipeline.worker import Job, WorkerError

from .live import _logged_in
from .openai_audio import FORMATS, MEDIA_TYPES, STREAMABLE, Encoder, unsupported_reason
from .openai_request import ApiError, SpeechRequest, parse_speech

ENGINE_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # + the engine's own name (cosyvoice3, qwen3-tts)
MAX_BODY_BYTES = 256 * 1024  # a 5000-character input escaped as \uXXXX is ~60 KB
_POLL_S = 0.02
_CREATED = int(time.time())


def error_response(e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="cosyvoice-rk"'} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


class OpenAIApi:
    """The routes' logic over one :class:`webui.client.Studio` (``app``: the FastAPI app the page runs on)."""

    def __init__(self, app: Any, studio: Any, *, api_key: str | None, users: list[tuple[str, str]],
                 slow_auth: Any = None) -> None:
        self.app, self.studio = app, studio
        self.api_key = api_key or None
        self.users = list(users)
        self.slow_auth = slow_auth

    @property
    def open(self) -> bool:
        return self.api_key is None and not self.users

    # auth -----------------------------------------------------------------------------------------
    async def _user_ok(self, user: str, password: str) -> bool:
        if self.slow_auth is not None:
            return await self.slow_auth.check(user, password)  # failures slowed, as on the login form
        return any(hmac.compare_digest(user.encode(), u.encode()) & hmac.compare_digest(password.encode(), p.encode())
                   for u, p in self.users)

    async def authorize(self, request: Request) -> None:
        if self.open:
            return
        header = request.headers.get("authorization", "")
        scheme, _, cred = header.partition(" ")
        scheme, cred = scheme.lower(), cred.strip()
        if scheme == "bearer" and cred:
            if self.api_key is not None and hmac.compare_digest(cred.encode(), self.api_key.encode()):
                return
            user, sep, password = cred.partition(":")
            if self.users and sep and await self._user_ok(user, password):
                return
            raise ApiError(401, "Incorrect API key provided: the Bearer token is neither the server's --api-key "
                                "nor USER:PASSWORD of an --auth user", code="invalid_api_key")
        if scheme == "basic" and cred:
            try:
                user, sep, password = base64.b64decode(cred, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise ApiError(401, "the Basic credentials are not base64 of USER:PASSWORD", code="invalid_api_key")
            if self.users and await self._user_ok(user, password):
                return
            raise ApiError(401, "wrong user name or password (HTTP Basic)", code="invalid_api_key")
        if self.users and _logged_in(self.app, request):  # the page's login session (its cookie)
            return
        how = ["Authorization: Bearer <the server's --api-key>"] if self.api_key else []
        if self.users:
            how += ["HTTP Basic with an --auth user", "the page's login"]
        raise ApiError(401, f"You didn't provide an API key: send {' or '.join(how)}", code="missing_api_key")

    # listings -------------------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        ids = [*ENGINE_ALIASES, self.studio.engine.name]
        name = self.studio.bundle_path.resolve().name
        if name and name not in ids:
            ids.append(name)
        return ids

    def model(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "cosyvoice-rk"}

    def voices(self) -> dict[str, Any]:
        vs = [v for v in self.studio.voices() if "error" not in v]
        data = [{"id": v["name"], "name": v["name"], "object": "voice", "language": v["language"],
                 "created": v["created"], "duration": v["duration"]} for v in vs]
        return {"object": "list", "data": data, "voices": [{"id": d["id"], "name": d["name"]} for d in data]}

    # speech ---------------------------------------------------------------------------------------
    def check_request(self, req: SpeechRequest) -> None:
        """Everything that can be refused before a job is queued (nothing is submitted when this raises)."""
        if req.model not in self.model_ids():
            raise ApiError(404, f"The model {req.model!r} does not exist here; models: {', '.join(self.model_ids())} "
                                f"(all are the one {self.studio.engine.title} engine)", param="model",
                         code="model_not_found")
        reason = unsupported_reason(req.response_format)
        if reason:
            raise ApiError(400, reason, param="response_format", code="unsupported_value")
        if req.stream_format is not None and req.response_format not in STREAMABLE:
            raise ApiError(400, f"stream_format {req.stream_format!r} needs a format that can be sent while it is "
                                f"made ({', '.join(sorted(STREAMABLE))}); {req.response_format} is written whole "
                                "when the audio is done (its header comes last). Leave stream_format out to get it "
                                "whole", param="stream_format", code="unsupported_value")
        if self.studio.bundle_error:
            raise ApiError(503, f"no model bundle: {self.studio.bundle_error}", type_="server_error",
                           code="no_bundle")
        eng = self.studio.engine
        if req.instructions and "instruct2" not in eng.modes:
            raise ApiError(400, f"{eng.title} has no instruct mode: leave instructions out", param="instructions",
                           code="unsupported_value")
        if float(req.speed) != 1.0 and not eng.speed:
            raise ApiError(400, f"{eng.title} has no speed control: leave speed out or at 1.0", param="speed",
                           code="unsupported_value")
        tags = sorted(set(find_tags(req.input)))
        if tags and not eng.tags:
            raise ApiError(400, f"{eng.title} reads no control tags ({', '.join(tags)} are CosyVoice3's); remove them",
                           param="input", code="unsupported_value")
        try:
            self.studio.store.find(req.voice)
        except PresetError as e:
            raise ApiError(404, str(e), param="voice", code="voice_not_found") from None
        try:
            self.studio.voice(req.voice)
        except PresetError as e:  # its folder cannot be read: the page's Voices tab offers Repair
            raise ApiError(400, f"the voice {req.voice!r} is damaged: {e}", param="voice",
                           code="voice_damaged") from None

    def submit(self, req: SpeechRequest) -> Job:
        worker = self.studio.worker
        if worker is None:
            raise ApiError(503, "the worker is not running", type_="server_error", code="worker_unavailable")
        payload = req.payload(self.studio.voice(req.voice)["name"])
        try:
            job = worker.submit("speak", payload)
        except WorkerError as e:
            if str(e).startswith("the queue is full"):
                raise ApiError(429, f"the worker's queue is full ({worker.max_queue} jobs waiting, --queue-size); "
                                    "try again when one has finished", type_="rate_limit_error",
                               code="queue_full") from None
            raise ApiError(503, f"the worker is unavailable: {e}", type_="server_error",
                           code="worker_unavailable") from None
        job.meta = {"voice": payload["voice"], "text": req.input, "source": "openai-api"}
        return job

    async def speech(self, request: Request) -> Response:
        req = parse_speech(await read_body(request), max_chars=self.studio.max_text_chars)
        self.check_request(req)
        job = self.submit(req)
        stream = req.stream_format is not None or (req.response_format in STREAMABLE and req.response_format != "wav")
        rate = self.studio.sample_rate
        enc = Encoder(req.response_format, rate, stream=stream)
        try:
            first, done = await _first_audio(job, request, enc)
        except BaseException:
            job.cancel()
            enc.close()
            raise
        if not stream:  # the job has ended: the whole file (encoded off the event loop: minutes of audio for mp3)
            body = first + await asyncio.to_thread(enc.finish)
            return Response(body, media_type=MEDIA_TYPES[req.response_format])
        gen = (_sse if req.stream_format == "sse" else _raw)(job, enc, first, done)
        media = "text/event-stream" if req.stream_format == "sse" else MEDIA_TYPES[req.response_format]
        return StreamingResponse(gen, media_type=media, headers={"Cache-Control": "no-store",
                                                                 "X-Accel-Buffering": "no"})


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) past :data:`MAX_BODY_BYTES` before more is read."""
    length = request.headers.get("content-length")
    too_big = ApiError(413, f"the request body is larger than {MAX_BODY_BYTES // 1024} KB; the input is limited to "
                            "5000 characters", code="request_too_large")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise too_big
    return bytes(body)


class ClientGone(Exception):
    """The client disconnected before its response began (its job is cancelled)."""


class _Watch:
    """Notices, at most every half second, that a request's client has disconnected."""

    def __init__(self, request: Request) -> None:
        self.request, self.last = request, time.monotonic()

    async def check(self) -> None:
        now = time.monotonic()
        if now - self.last >= 0.5:
            self.last = now
            if await self.request.is_disconnected():
                raise ClientGone


async def _next_event(job: Job, watch: _Watch | None = None) -> dict[str, Any]:
    """The job's next event; with ``watch``, :class:`ClientGone` when the client disconnects meanwhile."""
    import queue

    while True:
        try:
            return job.events.get_nowait()
        except queue.Empty:
            if watch is not None:
                await watch.check()
            await asyncio.sleep(_POLL_S)


def _job_error(ev: dict[str, Any]) -> ApiError:
    if ev["type"] == "cancelled":
        return ApiError(503, "the job was cancelled before it finished (the studio is stopping or the worker was "
                             "restarted)", type_="server_error", code="cancelled")
    kind, msg = ev.get("kind", ""), ev.get("message", "")
    if kind in ("InputError", "PresetError", "FieldError"):
        return ApiError(400, msg, code="invalid_input")
    if kind in ("WorkerError", "WorkerCrashed", "BundleError", "BackendError"):
        return ApiError(503, msg, type_="server_error", code="worker_unavailable")
    return ApiError(500, msg or f"internal error ({kind})", type_="server_error", code="internal_error")


async def _first_audio(job: Job, request: Request, enc: Encoder) -> tuple[bytes, dict[str, Any] | None]:
    """Wait for the job's first bytes to send (streaming) or its end (whole files, or a job that made no audio):
    the bytes and the ``done`` event when it came. An error before any audio is raised as :class:`ApiError`, so
    it reaches the client with its status."""
    out = b""
    watch = _Watch(request)
    while True:
        ev = await _next_event(job, watch)
        await watch.check()
        t = ev["type"]
        if t == "chunk":
            out += enc.add(ev["audio"])
            if enc.stream and out:
                return out, None
        elif t == "done":
            return out, ev
        elif t in ("error", "cancelled"):
            raise _job_error(ev)


async def _events(job: Job, enc: Encoder, done: dict[str, Any] | None) -> AsyncIterator[tuple[str, Any]]:
    """What follows the first bytes: ("audio", bytes), then ("done", result) or ("error", OpenAI error body)."""
    while True:
        ev = done or await _next_event(job)
        t = ev["type"]
        if t == "chunk":
            data = enc.add(ev["audio"])
            if data:
                yield "audio", data
        elif t == "done":
            yield "audio", enc.finish()
            yield "done", ev["result"]
            return
        elif t in ("error", "cancelled"):
            yield "error", _job_error(ev).body()
            return


async def _raw(job: Job, enc: Encoder, first: bytes, done: dict[str, Any] | None) -> AsyncIterator[bytes]:
    try:
        yield first
        async for kind, data in _events(job, enc, done):
            if kind == "audio" and data:
                yield data
            elif kind == "error":  # the status line has gone: cut the response off, so it is not taken as whole
                print(f"cosyvoice-rk webui: OpenAI API job {job.id} failed mid-stream: {data}", file=sys.stderr)
                raise RuntimeError(f"the speech job failed after its first audio: {data['error']['message']}")
    finally:
        if not job.finished:  # the client went away: nobody wants the rest
            job.cancel()
        enc.close()


def _sse_event(obj: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _sse(job: Job, enc: Encoder, first: bytes, done: dict[str, Any] | None) -> AsyncIterator[bytes]:
    def delta(b: bytes) -> bytes:
        return _sse_event({"type": "speech.audio.delta", "audio": base64.b64encode(b).decode("ascii")})

    try:
        if first:
            yield delta(first)
        async for kind, data in _events(job, enc, done):
            if kind == "audio" and data:
                yield delta(data)
            elif kind == "done":
                tokens = int(data.get("tokens", 0))
                # the text's tokens are not counted by the engine: only the speech tokens it made
                yield _sse_event({"type": "speech.audio.done", "usage": {"output_tokens": tokens}})
            elif kind == "error":
                yield _sse_event({"type": "error", **data})
    finally:
        if not job.finished:
            job.cancel()
        enc.close()


def install(app: Any, studio: Any, *, api_key: str | None = None, users: list[tuple[str, str]] | None = None,
            slow_auth: Any = None) -> OpenAIApi:
    """Add the ``/v1`` routes to the FastAPI app the page is served by."""
    api = OpenAIApi(app, studio, api_key=api_key, users=users or [], slow_auth=slow_auth)

    def guarded(fn: Any) -> Any:
        async def route(request: Request) -> Response:
            try:
                await api.authorize(request)
                out = await fn(request)
                return out if isinstance(out, Response) else JSONResponse(out)
            except ApiError as e:
                return error_response(e)
            except ClientGone:
                return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
            except Exception as e:  # noqa: BLE001 - every failure answers in OpenAI's shape
                traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
                return error_response(ApiError(500, f"internal error ({type(e).__name__}: {e})",
                                               type_="server_error", code="internal_error"))
        return route

    async def models(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [api.model(i) for i in api.model_ids()]}

    async def model(request: Request) -> dict[str, Any]:
        model_id = request.path_params["model_id"]
        if model_id not in api.model_ids():
            raise ApiError(404, f"The model {model_id!r} does not exist here", param="model", code="model_not_found")
        return api.model(model_id)

    async def voices(request: Request) -> dict[str, Any]:
        return api.voices()

    app.add_api_route("/v1/audio/speech", guarded(api.speech), methods=["POST"], include_in_schema=False)
    app.add_api_route("/v1/models", guarded(models), methods=["GET"], include_in_schema=False)
    app.add_api_route("/v1/models/{model_id}", guarded(model), methods=["GET"], include_in_schema=False)
    app.add_api_route("/v1/audio/voices", guarded(voices), methods=["GET"], include_in_schema=False)
    return api


__all__ = ["FORMATS", "ApiError", "OpenAIApi", "install"]
