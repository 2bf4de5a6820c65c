"""The page's live player and its stream route, without a model: a studio with no bundle and a login, chunks put
into its live store by hand, Debian's chromium (see tests/test_webui.py)."""

import base64
import threading

import httpx
import numpy as np
import pytest
from test_webui import CHROMIUM_ARGS, JOINED_B64, T, _chromium, _free_port, check_gapless

from webui.live import encode_chunk

AUTH = ("anna", "secret")
RATE = 24000


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from webui.app import launch
    from webui.client import Studio

    root = tmp_path_factory.mktemp("live")
    st = Studio(root / "no-bundle", root / "speakers", root / "results")
    demo, url = launch(st, port=_free_port(), auth=[AUTH], block=False, quiet=True)
    st.url = url
    yield st
    demo.close()
    st.close()


@pytest.fixture(scope="module")
def page(studio, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=_chromium(), headless=True,
            args=CHROMIUM_ARGS, locale="en-US")
        ctx.set_default_timeout(T)
        pg = ctx.new_page()
        assert pg.request.post(studio.url + "login", form={"username": AUTH[0], "password": AUTH[1]}).ok
        pg.goto(studio.url)
        pg.wait_for_selector("#cv-live-status", state="attached")
        yield pg
        ctx.close()


def _chunks(seconds: list[float]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-0.5, 0.5, int(s * RATE)).astype(np.float32) for s in seconds]


def _login(client: httpx.Client, url: str) -> None:
    assert client.post(url + "login", data={"username": AUTH[0], "password": AUTH[1]}).status_code == 200


def test_stream_route_needs_the_login_and_the_job_key_and_streams_as_chunks_come(studio):
    a, b = _chunks([0.5, 0.25])
    path = studio.live.open(101)
    studio.live.add(101, encode_chunk(a, RATE, 1.0, 0, 2, True))
    with httpx.Client(timeout=30) as c:
        r = c.get(studio.url + path)
        assert r.status_code == 401 and "log in" in r.text  # no login: no audio, whatever the key
        _login(c, studio.url)
        assert c.get(studio.url + path.replace("key=", "key=x")).status_code == 404
        with c.stream("GET", studio.url + path) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.cosyvoice-rk")
            body = b""
            it = r.iter_raw()
            while len(body) < 20 + 4 * len(a):  # the first chunk arrives while the job still runs
                body += next(it)
            threading.Timer(0.2, lambda: (studio.live.add(101, encode_chunk(b, RATE, 1.5, 1, 2, True)),
                                          studio.live.finish(101, "cancelled"))).start()
            body += b"".join(it)
    assert body == (encode_chunk(a, RATE, 1.0, 0, 2, True) + encode_chunk(b, RATE, 1.5, 1, 2, True)
                    + bytes.fromhex("00000000" "01000000" "00000000" "0000" "0000" "02000000"))


def test_player_streams_a_job_behind_the_login_gaplessly(studio, page):
    chunks = _chunks([0.4, 0.3, 0.5])
    path = studio.live.open(202)
    page.evaluate("([url, rate]) => window.cvLive.start({job: 202, url, rate})", [path, RATE])
    for i, a in enumerate(chunks):  # a fast machine: every chunk well before the previous one has played
        studio.live.add(202, encode_chunk(a, RATE, 0.1 * (i + 1), i, 3, True))
        page.wait_for_function(f"window.cvLive.log.length === {i + 1}")
    studio.live.finish(202, "done")
    page.wait_for_function("window.cvLive.ended")
    live = page.evaluate("({log: cvLive.log, runs: cvLive.runs, stalls: cvLive.stalls, endedAt: cvLive.endedAt, "
                         "rate: cvLive.ctx.sampleRate, status: cvLive.endStatus})")
    check_gapless(live, n_chunks=3)
    played = np.frombuffer(base64.b64decode(page.evaluate(JOINED_B64)), "<f4")
    assert np.array_equal(played, np.concatenate(chunks))  # float32 as made, bit for bit
    page.wait_for_function("window.cvLive.state === 'done'")
    assert page.inner_text("#cv-live-status") == "Played 1.2 s."


# A job fed to the player by hand: chunks of `seconds` of audio, made at `made_s` seconds into the job
FEED = """([chunks, segments, flags]) => {
  const L = window.cvLive;
  L.start({job: 'synthetic-' + Math.random(), url: 'cv-live/0?key=none', rate: 24000});
  L.abort.abort();  // no server behind it: the chunks come from here
  const seen = [];
  for (const [secs, made, seg] of chunks) {
    L.chunk(new Float32Array(Math.round(secs * 24000)).fill(0.1), 24000, made, seg, segments, flags);
    seen.push([L.state, document.querySelector('#cv-live-status').innerText]);
  }
  return seen;
}"""


def test_player_buffers_until_it_can_play_to_the_end_at_the_measured_speed(page):
    # made at half real time, 4 equal parts: after part k it has k s, (4 - k) s are still to come, at 0.5 s/s;
    # it can play to the end once the buffer covers the shortfall (4 - k) × (1 - 0.5) / 0.5 s and the 2 s until
    # the next part (× 1.2 + 0.2 s): after part 3
    seen = page.evaluate(FEED, [[[1, 2, 0], [1, 4, 1], [1, 6, 2], [1, 8, 3]], 4, 1])
    assert [s for s, _ in seen] == ["buffering", "buffering", "playing", "playing"]
    assert seen[0][1].startswith("Buffering… 1.0 s made") and seen[2][1].startswith("▶ Playing")
    # sub-segment chunks at half real time: no part is complete, so no estimate of the length: it waits
    seen = page.evaluate(FEED, [[[1, 2, 0], [1, 4, 0]], 4, 0])
    assert [s for s, _ in seen] == ["buffering", "buffering"]
    # twice real time: the first chunk plays at once (the next one is due in 0.5 s, 1 s is buffered)
    seen = page.evaluate(FEED, [[[1, 0.5, 0]], 4, 0])
    assert seen[0][0] == "playing"
    page.click("#cv-live-stop")
    assert page.evaluate("cvLive.state") == "stopped" and page.evaluate("cvLive.sources.length") == 0
    # 1.5 × real time with short chunks: the next 0.2 s is due in 0.13 s; with the margin that needs 0.36 s
    # buffered, so it waits for the second chunk
    seen = page.evaluate(FEED, [[[0.2, 0.13, 0], [0.2, 0.27, 0], [0.2, 0.4, 0]], 4, 0])
    assert [s for s, _ in seen] == ["buffering", "playing", "playing"]
    page.click("#cv-live-stop")


def test_a_late_chunk_is_a_stall_the_gapless_check_sees(page):
    page.evaluate(FEED, [[[0.3, 0.01, 0]], 4, 0])
    page.wait_for_function("window.cvLive.state === 'buffering'")  # its 0.3 s ran out: waiting for more
    page.evaluate("cvLive.chunk(new Float32Array(7200), 24000, 0.02, 0, 4, 0)")  # still fast: plays at once
    live = page.evaluate("({log: cvLive.log, runs: cvLive.runs, stalls: cvLive.stalls, endedAt: 1e9, "
                         "rate: cvLive.ctx.sampleRate, status: 0})")
    assert live["stalls"] == 1 and len(live["runs"]) == 2
    assert live["log"][1]["when"] > live["log"][0]["when"] + 0.3 + 0.05  # the gap is in the record
    with pytest.raises(AssertionError):
        check_gapless(live, n_chunks=2)
    page.click("#cv-live-stop")


def test_player_speaks_the_page_language(page):
    page.click("#cv-lang label:has-text('Русский')")
    page.get_by_role("tab", name="Озвучить").wait_for()
    try:
        seen = page.evaluate(FEED, [[[1, 2, 0]], 4, 1])
        assert seen[0][1].startswith("Буферизация… готово 1.0 с")
        assert page.inner_text("#cv-live-stop") == "Стоп"
        page.click("#cv-live-stop")
        assert page.inner_text("#cv-live-status").startswith("Остановлено после")
    finally:
        page.click("#cv-lang label:has-text('English')")
