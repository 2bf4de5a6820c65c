"""The OpenAI-compatible speech API (/v1) on the studio's server, on the tiny random bundle: the official `openai`
client, curl and raw HTTP against the running app on loopback; auth; every refusal in OpenAI's error shape."""

import base64
import io
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import PROMPTS, ZH_PROMPT_TEXT
from test_webui import _free_port, find_seed

PROMPT = PROMPTS / "zero_shot_prompt.wav"
DOCS = Path(__file__).resolve().parents[1] / "README.md"
KEY = "test-key-123"
SHORT = "Привет! Это мой голос."
MEDIUM = "Раз, два, три. Четыре, пять! " * 20  # 4 segments: the job is still running after its first chunk


@pytest.fixture(scope="module")
def server(random_bundle, tmp_path_factory):
    from webui.app import launch
    from webui.client import Studio

    root = tmp_path_factory.mktemp("openai")
    st = Studio(random_bundle.root, root / "speakers", root / "results", n_threads=1, history_size=5, max_queue=1)
    assert st.worker.wait_ready(120) == "ready", st.worker.last_error
    assert st.run_voice_job(st.add_voice("Анна", PROMPT, ZH_PROMPT_TEXT, "zh"))["name"] == "Анна"
    demo, url = launch(st, port=_free_port(), block=False, quiet=True, auth=[("anna", "secret")], api_key=KEY)
    st.url = url.rstrip("/")
    st.seeds = {"short": find_seed(st, "Анна", SHORT, 1), "medium": find_seed(st, "Анна", MEDIUM, 2)}
    yield st
    demo.close()
    st.close()


def client(server, key=KEY):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def speech(server, body: dict, headers=None, timeout=120) -> httpx.Response:
    return httpx.post(server.url + "/v1/audio/speech", json=body,
                      headers={"Authorization": f"Bearer {KEY}"} if headers is None else headers, timeout=timeout)


def assert_error(r: httpx.Response, status: int, code: str, text: str, param=None) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["param"] == param, err
    assert text in err["message"], err


def test_models_and_voices_with_the_openai_client(server):
    c = client(server)
    ids = [m.id for m in c.models.list()]
    assert ids[:4] == ["tts-1", "tts-1-hd", "gpt-4o-mini-tts", "cosyvoice3"] and "tiny" in ids
    assert c.models.retrieve("tts-1").owned_by == "cosyvoice-rk"
    r = httpx.get(server.url + "/v1/audio/voices", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and [v["id"] for v in r.json()["data"]] == ["Анна"]
    assert r.json()["voices"] == [{"id": "Анна", "name": "Анна"}]


def test_wav_and_compressed_formats_hold_the_same_audio(server):
    c = client(server)
    args = dict(model="tts-1", voice="Анна", input=SHORT, extra_body={"seed": server.seeds["short"], "language": "ru"})
    wav = c.audio.speech.create(response_format="wav", **args).read()
    pcm_ref, sr = sf.read(io.BytesIO(wav), dtype="int16")
    assert sr == 24000 and len(pcm_ref) > 2400 and wav[:4] == b"RIFF"
    flac = c.audio.speech.create(response_format="flac", **args).read()
    assert sf.read(io.BytesIO(flac), dtype="int16")[0].tobytes() == pcm_ref.tobytes()  # lossless: same samples
    for fmt, head in (("opus", b"OggS"), ("mp3", b"\xff")):
        data = c.audio.speech.create(response_format=fmt, **args).read()
        assert data[:len(head)] == head, data[:8]
        audio, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert rate == 24000 and abs(len(audio) - len(pcm_ref)) < 0.1 * 24000, (fmt, len(audio), len(pcm_ref))


def _first_chunk_while_running(server, chunks):
    """Collect the body; note whether the worker was still on the job when the first bytes came."""
    running = []
    for b in chunks:
        if not running:
            running.append(server.worker.status()["running"] is not None)
        yield b
    assert running == [True], "the first audio arrived only after the job had ended"


def test_streamed_pcm_arrives_while_it_is_made_and_is_the_wavs_samples(server):
    args = dict(model="cosyvoice3", voice="Анна", input=MEDIUM,
                extra_body={"seed": server.seeds["medium"], "language": "ru"})
    c = client(server)
    whole = sf.read(io.BytesIO(c.audio.speech.create(response_format="wav", **args).read()), dtype="int16")[0]
    with c.audio.speech.with_streaming_response.create(response_format="pcm", **args) as resp:
        pcm = b"".join(_first_chunk_while_running(server, resp.iter_bytes(4800)))
    assert pcm == whole.tobytes()
    # a streamed WAV (stream_format=audio): "length unknown" header, then the same samples
    streamed = {**args, "extra_body": {**args["extra_body"], "stream_format": "audio"}}  # any client version
    with c.audio.speech.with_streaming_response.create(response_format="wav", **streamed) as resp:
        body = b"".join(_first_chunk_while_running(server, resp.iter_bytes(4800)))
    assert body[:4] == b"RIFF" and body[40:44] == b"\xff\xff\xff\xff" and body[44:] == whole.tobytes()


def test_server_sent_events(server):
    body = {"model": "gpt-4o-mini-tts", "voice": "Анна", "input": MEDIUM, "response_format": "pcm",
            "stream_format": "sse", "seed": server.seeds["medium"], "language": "ru"}
    whole = speech(server, {**body, "stream_format": None, "response_format": "wav"})
    with httpx.stream("POST", server.url + "/v1/audio/speech", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in _first_chunk_while_running(server, r.iter_lines())
                  if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) >= 3
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["output_tokens"] > 0
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert pcm == sf.read(io.BytesIO(whole.content), dtype="int16")[0].tobytes()


def test_auth(server):
    from openai import AuthenticationError

    with pytest.raises(AuthenticationError, match="Incorrect API key"):
        client(server, "wrong").models.list()
    assert_error(httpx.get(server.url + "/v1/models"), 401, "missing_api_key", "didn't provide an API key")
    assert_error(httpx.get(server.url + "/v1/models", auth=("anna", "nope"), timeout=30), 401, "invalid_api_key",
                 "wrong user name or password")
    assert httpx.get(server.url + "/v1/models", auth=("anna", "secret")).status_code == 200  # an --auth user
    assert client(server, "anna:secret").models.list().data  # ... as a Bearer token, for API-key-only clients
    with httpx.Client(base_url=server.url) as s:  # the page's login session
        assert s.post("/login", data={"username": "anna", "password": "secret"}).status_code == 200
        assert s.get("/v1/audio/voices").status_code == 200
    r = speech(server, {"model": "tts-1", "voice": "Анна", "input": SHORT}, headers={})
    assert_error(r, 401, "missing_api_key", "didn't provide an API key")
    for who, status in (("anna:secret", "200"), ("anna:wrong", "401")):  # curl with an --auth user
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-u", who,
                            server.url + "/v1/audio/voices"], capture_output=True, text=True, timeout=60)
        assert r.stdout == status, (who, r.stdout, r.stderr)


def test_bad_requests_get_openai_errors_and_lose_nothing(server):
    w = server.worker
    before = {k: w.status()[k] for k in ("done", "failed", "cancelled", "queued")}
    voices = server.voices()
    ok = {"model": "tts-1", "voice": "Анна", "input": SHORT, "response_format": "wav"}
    assert_error(speech(server, {**ok, "voice": "Bob"}), 404, "voice_not_found", "no voice named 'Bob'; "
                 "saved voices: Анна", "voice")
    assert_error(speech(server, {**ok, "input": "  "}), 400, "empty_input", "'input' is empty", "input")
    assert_error(speech(server, {**ok, "input": "а" * 5001}), 400, "string_above_max_length",
                 "5001 characters, the limit is 5000", "input")
    assert_error(speech(server, {**ok, "response_format": "aac"}), 400, "unsupported_value", "no AAC encoder",
                 "response_format")
    assert_error(speech(server, {**ok, "response_format": "ogg"}), 400, "unsupported_value", "not one of",
                 "response_format")
    assert_error(speech(server, {**ok, "response_format": "mp3", "stream_format": "audio"}), 400,
                 "unsupported_value", "written whole", "stream_format")
    assert_error(speech(server, {**ok, "speed": 3}), 400, "invalid_value", "speed must be a number within 0.5–2",
                 "speed")
    assert_error(speech(server, {**ok, "model": "whisper-1"}), 404, "model_not_found", "does not exist", "model")
    assert_error(speech(server, {k: v for k, v in ok.items() if k != "model"}), 400, "missing_required_parameter",
                 "'model'", "model")
    assert_error(speech(server, {**ok, "colour": "red"}), 400, "unknown_parameter", "colour", "colour")
    r = httpx.post(server.url + "/v1/audio/speech", content=b"{not json", headers={"Authorization": f"Bearer {KEY}"})
    assert_error(r, 400, "invalid_json", "not valid JSON")
    assert_error(speech(server, {**ok, "input": "а" * 300_000}), 413, "request_too_large", "larger than 256 KB")
    r = httpx.post(server.url + "/v1/audio/speech", content=iter([b"x" * 65536] * 5),  # chunked: no Content-Length
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert_error(r, 413, "request_too_large", "larger than 256 KB")
    assert_error(speech(server, ok, headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key",
                 "Incorrect API key")
    assert {k: w.status()[k] for k in ("done", "failed", "cancelled", "queued")} == before  # no job was queued
    assert server.voices() == voices
    r = speech(server, {**ok, "seed": server.seeds["short"], "language": "ru"})  # and the next good one works
    assert r.status_code == 200 and sf.info(io.BytesIO(r.content)).samplerate == 24000


def test_queue_full_is_429_and_the_queued_jobs_run_on(server):
    long = server.speak(MEDIUM * 3, voice="Анна", language="ru", seed=server.seeds["medium"])  # runs
    deadline = time.monotonic() + 60
    while long.state == "queued":  # the worker takes it off the queue
        assert time.monotonic() < deadline, "the worker never started the job"
        time.sleep(0.02)
    waiting = server.speak(SHORT, voice="Анна", language="ru", seed=server.seeds["short"])  # fills the queue (1)
    try:
        r = speech(server, {"model": "tts-1", "voice": "Анна", "input": SHORT, "response_format": "pcm"})
        assert_error(r, 429, "queue_full", "the worker's queue is full (1 jobs waiting, --queue-size)")
        assert r.json()["error"]["type"] == "rate_limit_error"
    finally:
        long.cancel()
    assert waiting.wait(120)["type"] == "done"  # the refused request took nothing from the queue


def test_speed_and_instructions_are_forwarded_to_the_worker(server, monkeypatch):
    """The worker's modes support reads ``speed`` and ``mode``/``instruct``; here: what the API submits."""
    seen = []
    real = server.worker.submit
    monkeypatch.setattr(server.worker, "submit", lambda kind, payload: seen.append((kind, payload)) or
                        real(kind, payload))
    r = speech(server, {"model": "tts-1-hd", "voice": "Анна", "input": SHORT, "response_format": "pcm",
                        "speed": 1.5, "instructions": "  Speak slowly, like a storyteller.  ",
                        "seed": server.seeds["short"], "language": "ru", "top_k": 10})
    assert r.status_code == 200, r.text
    kind, p = seen[-1]
    assert kind == "speak" and p["speed"] == 1.5 and p["mode"] == "instruct"
    assert p["instruct"] == "Speak slowly, like a storyteller." and p["voice"] == "Анна" and p["text"] == SHORT
    assert p["seed"] == server.seeds["short"] and p["top_k"] == 10 and p["language"] == "ru" and p["stream"] is True
    r = speech(server, {"model": "tts-1", "voice": {"id": "Анна"}, "input": SHORT, "response_format": "pcm",
                        "seed": server.seeds["short"]})  # OpenAI's custom-voice form
    assert r.status_code == 200 and "mode" not in seen[-1][1] and seen[-1][1]["speed"] == 1.0
    assert seen[-1][1]["voice"] == "Анна"


def _wait_cancelled(server, before: int) -> None:
    deadline = time.monotonic() + 60
    while server.worker.status()["cancelled"] == before:
        assert time.monotonic() < deadline, "the job ran on after its client had gone"
        time.sleep(0.1)


def test_a_client_that_goes_away_cancels_its_job(server):
    body = {"model": "tts-1", "voice": "Анна", "input": MEDIUM * 3, "response_format": "pcm",
            "seed": server.seeds["medium"], "language": "ru"}
    cancelled = server.worker.status()["cancelled"]
    with httpx.stream("POST", server.url + "/v1/audio/speech", timeout=120, headers={"Authorization": f"Bearer {KEY}"},
                      json=body) as r:
        next(r.iter_bytes())  # streaming: gone after the first audio
    _wait_cancelled(server, cancelled)
    # a whole WAV: gone before the response began. A job of the studio's own keeps the worker busy, so the API's
    # job is still waiting when its client goes (on a quiet machine the tiny bundle would finish it first).
    blocker = server.speak(MEDIUM * 6, voice="Анна", language="ru", seed=server.seeds["medium"])
    deadline = time.monotonic() + 120
    while blocker.state != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    cancelled = server.worker.status()["cancelled"]
    with pytest.raises(httpx.ReadTimeout):
        speech(server, {**body, "response_format": "wav"}, timeout=httpx.Timeout(120, read=0.5))
    _wait_cancelled(server, cancelled)
    server.cancel(blocker.id)
    assert [st.phase for st in server.follow(blocker, poll=0.2)][-1] in ("cancelled", "error", "done")


def test_a_job_that_dies_mid_stream_cuts_the_response_off(server):
    """A streamed response's status has gone out: a failure after the first audio must not look like the end."""
    crashes = server.worker.status()["crashes"]
    with httpx.stream("POST", server.url + "/v1/audio/speech", timeout=120, headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "tts-1", "voice": "Анна", "input": MEDIUM * 3, "response_format": "pcm",
                            "seed": server.seeds["medium"], "language": "ru"}) as r:
        chunks = r.iter_bytes()
        next(chunks)
        os.kill(server.worker.pid, signal.SIGKILL)
        with pytest.raises(httpx.RemoteProtocolError):
            for _ in chunks:
                pass
    assert server.worker.status()["crashes"] == crashes + 1
    assert server.worker.wait_ready(120) == "ready"


def test_no_bundle_is_503(tmp_path):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from webui.client import Studio
    from webui.openai_api import install

    st = Studio(tmp_path / "missing", tmp_path / "spk", tmp_path / "res")
    try:
        app = FastAPI()
        install(app, st)  # no key, no users: open to whoever reaches the address
        c = TestClient(app)
        assert c.get("/v1/models").status_code == 200
        r = c.post("/v1/audio/speech", json={"model": "tts-1", "voice": "Анна", "input": "Hi"})
        assert_error(r, 503, "no_bundle", "no model bundle")
        assert r.json()["error"]["type"] == "server_error"
        keyed = FastAPI()
        install(keyed, st, api_key="k1")  # a key and no --auth users: a user name and password are no way in
        c = TestClient(keyed)
        assert_error(c.get("/v1/models", auth=("anna", "secret")), 401, "invalid_api_key", "wrong user name")
        assert_error(c.get("/v1/models", headers={"Authorization": "Bearer anna:secret"}), 401, "invalid_api_key",
                     "Incorrect API key")
        assert c.get("/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
    finally:
        st.close()


def test_api_key_option(monkeypatch):
    from pipeline.cli import build_parser

    assert build_parser().parse_args(["webui", "--api-key", "k"]).api_key == "k"
    assert build_parser().parse_args(["webui"]).api_key is None
    monkeypatch.setenv("COSYVOICE_RK_API_KEY", "from-env")
    assert build_parser().parse_args(["webui"]).api_key == "from-env"


def _readme_block(marker: str, lang: str) -> str:
    m = re.search(rf"<!-- {marker}[^>]*-->\s*```{lang}\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert m, f"{DOCS} lost its {marker} example"
    return m.group(1)


def test_readme_examples_openai_client_and_curl(server, tmp_path, monkeypatch):
    """The README's examples, run as written (address, key and voice replaced; a seed that speaks is added)."""
    monkeypatch.chdir(tmp_path)
    voice = "Анна"
    src = (_readme_block("openai-example", "python").replace("http://127.0.0.1:7860/v1", server.url + "/v1")
           .replace('"my-key"', repr(KEY)).replace('"Anna"', repr(voice))
           .replace('{"language": "ru"}', f'{{"language": "ru", "seed": {server.seeds["short"]}}}'))
    exec(compile(src, str(DOCS), "exec"), {})
    audio, sr = sf.read(tmp_path / "hello.wav")
    assert sr == 24000 and len(audio) > 0
    assert (tmp_path / "hello.pcm").stat().st_size > 0 and (tmp_path / "hello.opus").read_bytes()[:4] == b"OggS"
    for line in re.split(r"(?<!\\)\n", _readme_block("curl-example", "sh").strip()):  # a command per line, "\\" joins
        cmd = (line.replace("http://127.0.0.1:7860", server.url).replace("my-key", KEY).replace("Anna", voice)
               .replace('"language": "ru"', f'"language": "ru", "seed": {server.seeds["short"]}'))
        r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (cmd, r.stderr)
    assert sf.info(tmp_path / "curl.flac").samplerate == 24000
    assert "tts-1" in (tmp_path / "models.json").read_text()
    assert np.frombuffer((tmp_path / "curl.pcm").read_bytes(), "<i2").size > 0


@pytest.mark.parametrize("fmt", ["pcm", "sse", "wav"])
def test_a_job_that_makes_no_audio_or_fails_before_any(server, monkeypatch, fmt):
    """Without a real failure at hand: the worker's own events, replayed by a stand-in job."""
    from pipeline.worker import Job

    script: list = []

    def fake_submit(kind, payload):
        job = Job(server.worker, 10**6 + len(script), kind, payload)
        for ev in script.pop(0):
            job._emit(ev)
        return job

    monkeypatch.setattr(server.worker, "submit", fake_submit)
    body = {"model": "tts-1", "voice": "Анна", "input": SHORT, "response_format": "wav" if fmt == "wav" else "pcm",
            **({"stream_format": "sse"} if fmt == "sse" else {})}
    script.append([{"type": "started"}, {"type": "done", "result": {"tokens": 0}}])
    r = speech(server, body)
    assert r.status_code == 200, r.text
    if fmt == "sse":
        assert [json.loads(x[6:]) for x in r.text.split("\n\n") if x] == [
            {"type": "speech.audio.done", "usage": {"output_tokens": 0}}]
    elif fmt == "wav":
        assert len(r.content) == 44 and sf.info(io.BytesIO(r.content)).frames == 0
    else:
        assert r.content == b""
    for ev, status, code in (({"type": "error", "kind": "InputError", "message": "text has no speakable words"}, 400,
                              "invalid_input"),
                             ({"type": "error", "kind": "WorkerCrashed", "message": "the worker process died"}, 503,
                              "worker_unavailable"),
                             ({"type": "error", "kind": "ZeroDivisionError", "message": "internal error (x)"}, 500,
                              "internal_error")):
        script.append([{"type": "started"}, ev])
        assert_error(speech(server, body), status, code, ev["message"])
