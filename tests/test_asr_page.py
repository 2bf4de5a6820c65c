"""The transcript box fills itself in a real browser (chromium, as tests/test_webui.py), with the tiny random ASR
models: on the Voices tab and for the Speak tab's one-off prompt; never over what the user typed; not in the
modes that need no transcript; without the model, the box says how to get it."""

import pytest
import soundfile as sf
from conftest import PROMPTS
from test_webui import CHROMIUM_ARGS, T, _chromium, _free_port, field, open_tab

from pipeline.shared.asr import load_transcriber

PROMPT = PROMPTS / "zero_shot_prompt.wav"
# whether the "transcribing…" state was ever on the page (it may last only a moment with the tiny models)
WATCH_BUSY = """(sel) => { window.cvSawBusy = false;
  new MutationObserver(() => { if (document.querySelector(sel + ' .cv-busy')) window.cvSawBusy = true; })
    .observe(document.body, {subtree: true, childList: true, characterData: true}); }"""


@pytest.fixture(scope="module")
def servers(random_bundle, test_asr, tmp_path_factory):
    from webui.app import launch
    from webui.client import Studio

    root = tmp_path_factory.mktemp("asr-studio")
    st = Studio(random_bundle.root, root / "speakers", root / "results", n_threads=1, asr_dir=test_asr)
    assert st.worker.wait_ready(120) == "ready", st.worker.last_error
    demo, url = launch(st, port=_free_port(), block=False, quiet=True)
    bare = Studio(root / "no-bundle", root / "spk2", root / "res2", asr_dir=root / "no-asr")
    demo2, url2 = launch(bare, port=_free_port(), block=False, quiet=True)
    yield url, url2
    demo.close()
    demo2.close()
    st.close()
    bare.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=exe, headless=True,
            args=CHROMIUM_ARGS, locale="en-US", viewport={"width": 1400, "height": 1000})
        ctx.set_default_timeout(T)
        yield ctx
        ctx.close()


def value(elem_id: str) -> str:
    """JS expression: the box's value."""
    return f"document.querySelector('#{elem_id} :is(input, textarea)').value"


def box_value(pg, elem_id: str) -> str:
    return field(pg, elem_id).input_value()


def test_an_uploaded_prompt_gets_its_transcript_without_typing(servers, browser, test_asr, tmp_path):
    audio, sr = sf.read(PROMPTS / "cross_lingual_prompt.wav", dtype="float32")
    OTHER = tmp_path / "other.wav"  # noqa: N806
    sf.write(OTHER, audio[: 6 * sr], sr)  # a second prompt: 6 s of another speaker
    t = load_transcriber(test_asr)
    auto = t.recognize(*sf.read(PROMPT, dtype="float32"), None)  # the Voices tab's language: auto (detected)
    other = t.recognize(*sf.read(OTHER, dtype="float32"), None)
    assert auto.text and other.text and auto.text != other.text
    pg = browser.new_page()
    pg.goto(servers[0])
    pg.wait_for_selector("#cv-generate")
    pg.wait_for_function("document.querySelector('#cv-badge').innerText.includes('ready')")
    open_tab(pg, "Voices")
    pg.evaluate(WATCH_BUSY, "#cv-v-transcript-msg")
    pg.set_input_files("#cv-v-audio input[type=file]", str(PROMPT))
    pg.wait_for_function(f"{value('cv-v-transcript')} === {auto.text!r}")
    msg = pg.wait_for_selector("#cv-v-transcript-msg .cv-ok").inner_text()
    assert "Filled in from the recording" in msg and auto.model in msg and f"language {auto.language}" in msg
    assert pg.evaluate("window.cvSawBusy")

    # an automatic text is replaced by the next recording's ...
    pg.click("#cv-v-audio button[aria-label='Clear']")
    pg.set_input_files("#cv-v-audio input[type=file]", str(OTHER))
    pg.wait_for_function(f"{value('cv-v-transcript')} === {other.text!r}")
    # ... but what the user typed never is
    field(pg, "cv-v-transcript").fill("Мои собственные слова.")
    pg.evaluate(WATCH_BUSY, "#cv-v-transcript-msg")
    pg.click("#cv-v-audio button[aria-label='Clear']")
    pg.set_input_files("#cv-v-audio input[type=file]", str(PROMPT))
    pg.wait_for_selector("#cv-v-audio-msg .cv-ok")
    pg.wait_for_timeout(1500)
    assert box_value(pg, "cv-v-transcript") == "Мои собственные слова."
    assert not pg.evaluate("window.cvSawBusy")  # nothing was transcribed needlessly

    # Speak tab, one-off prompt: not in "Another language" (no transcript needed), filled in Clone mode
    open_tab(pg, "Speak")
    pg.click("label:has-text('One-off recording')")
    pg.click("#cv-speech-mode label:has-text('Another language')")
    pg.evaluate(WATCH_BUSY, "#cv-s-ptext-msg")
    pg.set_input_files("#cv-s-audio input[type=file]", str(PROMPT))
    pg.wait_for_selector("#cv-s-audio-msg .cv-ok")
    pg.wait_for_timeout(1500)
    assert box_value(pg, "cv-s-ptext") == "" and not pg.evaluate("window.cvSawBusy")
    pg.click("#cv-speech-mode label:has-text('Clone')")  # the recording is there: its words are needed now
    pg.wait_for_function(f"{value('cv-s-ptext')} === {auto.text!r}")
    assert pg.evaluate("window.cvSawBusy")
    pg.close()


def test_without_the_model_the_page_says_how_to_get_it(servers, browser):
    pg = browser.new_page()
    pg.goto(servers[1])
    pg.wait_for_selector("#cv-generate")
    open_tab(pg, "Voices")
    pg.set_input_files("#cv-v-audio input[type=file]", str(PROMPT))
    msg = pg.wait_for_selector("#cv-v-transcript-msg .cv-err").inner_text()
    assert "needs the speech recognition model" in msg and "./cv download --asr" in msg
    assert box_value(pg, "cv-v-transcript") == ""
    field(pg, "cv-v-transcript").fill("Что говорится в записи.")  # typing still works, nothing else changed
    assert box_value(pg, "cv-v-transcript") == "Что говорится в записи."
    pg.click("#cv-lang label:has-text('Русский')")
    pg.click("#cv-v-audio button[aria-label='Clear']")
    field(pg, "cv-v-transcript").fill("")
    pg.set_input_files("#cv-v-audio input[type=file]", str(PROMPT))
    pg.wait_for_function("document.querySelector('#cv-v-transcript-msg').innerText.includes('скачайте её командой')")
    pg.close()


class _CountingStudio:
    """What transcribe_into needs of the studio: a prompt check and a transcription job that counts."""

    def __init__(self) -> None:
        self.calls = 0

    def check_prompt(self, path: str) -> None:
        pass

    def transcribe(self, path: str, language: str):
        self.calls += 1
        result = {"type": "done", "result": {"text": f"words of {path}", "model": "m", "language": "ru"}}
        return type("Job", (), {"wait": lambda self: result})()


def test_a_recording_whose_transcript_the_box_holds_is_not_transcribed_again():
    """The audio's change event can fire twice for one upload (seen under load in CI): the second run finds the box
    holding that recording's automatic text and must not transcribe it again."""
    from webui.transcribe import transcribe_into

    st = _CountingStudio()
    *_, text, path = list(transcribe_into(st, "en", "/a.wav", "", "", "", "auto"))[-1]
    assert (text, path, st.calls) == ("words of /a.wav", "/a.wav", 1)
    again = list(transcribe_into(st, "en", "/a.wav", text, text, path, "auto"))
    assert st.calls == 1 and len(again) == 1 and again[0][2:] == [text, path]
    list(transcribe_into(st, "en", "/b.wav", text, text, path, "auto"))  # another recording: its words
    assert st.calls == 2
    list(transcribe_into(st, "en", "/a.wav", "", "words of /b.wav", "/b.wav", "auto"))  # box emptied: filled again
    assert st.calls == 3
    list(transcribe_into(st, "en", "/c.wav", "typed", "words of /a.wav", "/a.wav", "auto"))  # typed: never
    assert st.calls == 3
