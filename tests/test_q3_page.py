"""The studio on a Qwen3-TTS bundle: a voice is cloned and speaks through gradio_client, and the page offers only
what the engine has (its two modes; no speed slider, no tag menu) and names the engine."""

import pytest
import soundfile as sf
from conftest import PROMPTS, ZH_PROMPT_TEXT
from test_webui import CHROMIUM_ARGS, T, _chromium, _free_port, choose, field

from pipeline.engines import ENGINES
from webui.speak_modes import page_modes

PROMPT = PROMPTS / "zero_shot_prompt.wav"


def test_page_modes_follow_the_engine():
    assert [v for _, v in page_modes(ENGINES["cosyvoice3"].modes)] == ["zero_shot", "cross_lingual", "instruct"]
    assert [v for _, v in page_modes(ENGINES["qwen3-tts"].modes)] == ["zero_shot", "cross_lingual"]


def test_the_registry_says_what_each_engine_offers(random_bundle, tmp_path):
    from pipeline.engines import open_tts

    with open_tts(random_bundle, speakers_dir=tmp_path / "spk", n_threads=1) as tts:
        caps, info = tts.capabilities, ENGINES["cosyvoice3"]
        assert (caps.modes, caps.speed) == (info.modes, info.speed)


@pytest.fixture(scope="module")
def q3_studio(tmp_path_factory):
    from pipeline.engines.qwen3_tts.convert.random_bundle import make_random_bundle
    from webui.app import launch
    from webui.client import Studio

    root = tmp_path_factory.mktemp("q3studio")
    bundle = make_random_bundle(root / "bundle", size="tiny", seed=0, quants=["f32", "q8_0"], log=lambda m: None)
    st = Studio(bundle.root, root / "speakers", root / "results", n_threads=1, history_size=5)
    assert st.worker.wait_ready(120) == "ready", st.worker.last_error
    demo, url = launch(st, port=_free_port(), block=False, quiet=True)
    st.url = url
    yield st
    demo.close()
    st.close()


def test_a_voice_is_cloned_and_speaks_through_gradio_client(q3_studio, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(q3_studio.url, verbose=False)
    client.predict(name="Ли", audio=handle_file(str(PROMPT)), transcript=ZH_PROMPT_TEXT, language="zh",
                   overwrite=True, api_name="/add_voice")
    assert [v["engine"] for v in client.predict(api_name="/voices") if v["name"] == "Ли"] == ["qwen3-tts"]
    wav, info = client.predict(text="Привет! Это мой голос.", voice="Ли", language="ru", seed=1,
                               api_name="/synthesize")
    assert sf.info(wav).samplerate == 24000 and info["duration"] > 0 and info["backends"]["talker"]
    with pytest.raises(Exception, match="Qwen3-TTS has no instruct mode"):
        client.predict(text="Привет!", voice="Ли", language="ru", mode="instruct", instruct="Softly, please.",
                       api_name="/synthesize")
    with pytest.raises(Exception, match=r"Qwen3-TTS reads no control tags \(\[breath\]"):
        client.predict(text="Привет [breath] мир.", voice="Ли", language="ru", api_name="/synthesize")
    with pytest.raises(Exception, match="Qwen3-TTS has no speed control"):
        client.predict(text="Привет!", voice="Ли", language="ru", speed=1.5, api_name="/synthesize")
    st = client.predict(api_name="/status")
    assert st["bundle"]["engine"] == "qwen3-tts" and st["worker"]["bundle"]["quant"] == "q8_0"


def test_the_page_offers_what_qwen3_tts_has(q3_studio, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-q3")), executable_path=_chromium(), headless=True,
            args=CHROMIUM_ARGS, locale="en-US", viewport={"width": 1400, "height": 1000})
        ctx.set_default_timeout(T)
        pg = ctx.new_page()
        pg.goto(q3_studio.url)
        pg.wait_for_selector("#cv-generate")
        pg.wait_for_function("document.querySelector('#cv-badge').innerText.includes('ready')")
        pg.wait_for_function("!document.querySelector('#cv-speech-mode').innerText.includes('Instruction')")
        labels = pg.locator("#cv-speech-mode label").all_inner_texts()
        assert len(labels) == 2
        assert not pg.is_visible("#cv-speed") and not pg.is_visible("#cv-tag-menu")
        # speech from the page, in a voice saved with this engine
        q3_studio.run_voice_job(q3_studio.add_voice("Вера", PROMPT, ZH_PROMPT_TEXT, "zh"))
        pg.reload()
        pg.wait_for_selector("#cv-generate")
        pg.wait_for_function("document.querySelector('#cv-badge').innerText.includes('ready')")
        choose(pg, "cv-voice", "Вера")
        field(pg, "cv-text").fill("Привет! Это мой голос.")
        pg.click("#cv-generate")
        assert "Done" in pg.wait_for_selector("#cv-progress .cv-ok").inner_text()
        info = pg.inner_text("#cv-info")
        assert "Talker + code predictor" in info and "llama.cpp (CPU)" in info and "Decoder" in info
        pg.get_by_role("tab", name="Status").click()
        pg.wait_for_function("document.querySelector('#cv-status').innerText.includes('Engine: Qwen3-TTS')")
        status = pg.inner_text("#cv-status")
        assert "Prompt: recording" in status and "Talker + code predictor" in status and "Flow" not in status
        ctx.close()


def test_the_openai_api_names_the_engine_and_refuses_what_it_lacks(q3_studio):
    import json
    import urllib.error
    import urllib.request

    q3_studio.run_voice_job(q3_studio.add_voice("Api", PROMPT, ZH_PROMPT_TEXT, "zh", overwrite=True))
    with urllib.request.urlopen(q3_studio.url.rstrip("/") + "/v1/models") as r:
        assert "qwen3-tts" in [m["id"] for m in json.load(r)["data"]]
    for extra, msg in (({"instructions": "Softly."}, "has no instruct mode"), ({"speed": 1.5}, "no speed control")):
        body = json.dumps({"model": "qwen3-tts", "voice": "Api", "input": "Привет!", **extra}).encode()
        req = urllib.request.Request(q3_studio.url.rstrip("/") + "/v1/audio/speech", body,
                                     {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        assert e.value.code == 400 and msg in json.load(e.value)["error"]["message"]
    before = q3_studio.worker.status()["queued"]
    assert before == 0


def test_normalize_splits_with_the_qwen3_tts_tokenizer(q3_studio):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "normalize", "--bundle", str(q3_studio.bundle_path),
                        "В 2024 году.", "--language", "ru"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "две тысячи двадцать четвёртом" in r.stdout
