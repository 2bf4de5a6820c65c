"""Issue 11: nothing lost. Each test here failed before its fix (names sharing a folder, half-written voices,
untrusted imported features, damaged cached prefixes, hand-moved folders, zip bombs, CLI messages)."""

import io
import json
import shutil
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
import soundfile as sf
from conftest import PROMPTS, ZH_PROMPT_TEXT

from pipeline.engines.cosyvoice3.engine import PromptFeatures
from pipeline.engines.cosyvoice3.tts import CosyVoiceRK
from pipeline.shared.errors import BackendError, PresetError
from pipeline.shared.presets import SpeakerStore

PROMPT = PROMPTS / "zero_shot_prompt.wav"


def _wav() -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000, np.float32), 16000, format="WAV")
    return buf.getvalue()


def _feats(p: int = 4) -> PromptFeatures:
    return PromptFeatures(np.arange(p), np.zeros((2 * p, 80), np.float32), np.ones(192, np.float32))


def _save(store: SpeakerStore, name: str, transcript: str = "hello", **kw):
    return store.create(name, _wav(), ".wav", transcript, language="en", features=_feats(),
                        bundle_fingerprint="fp", **kw)


def _voice_dirs(store: SpeakerStore) -> list[str]:
    return sorted(d.name for d in store.root.iterdir() if not d.name.startswith("."))


@pytest.fixture(scope="module")
def tts(random_bundle, tmp_path_factory):
    with CosyVoiceRK(random_bundle, speakers_dir=tmp_path_factory.mktemp("spk"), n_threads=1) as t:
        yield t


def test_names_that_share_a_folder_are_refused_naming_the_other_voice(tmp_path):
    store = SpeakerStore(tmp_path / "spk")
    _save(store, "Vera", "Vera's words")
    for overwrite in (False, True):
        with pytest.raises(PresetError, match=r"'VERA!' is taken by the saved voice 'Vera'"):
            _save(store, "VERA!", "other words", overwrite=overwrite)
    assert store.load("Vera").transcript == "Vera's words"  # the other voice is not replaced
    with pytest.raises(PresetError, match="no voice named 'VERA!'"):
        store.load("VERA!")  # and is not found under a name that only maps to its folder
    _save(store, "Vera", "new words", overwrite=True)  # its own name replaces it
    assert store.load("Vera").transcript == "new words"
    _save(store, "Anna")
    with pytest.raises(PresetError, match="taken by the saved voice 'Vera'"):
        store.rename("Anna", "vera")
    assert _voice_dirs(store) == ["anna", "vera"]


def test_a_save_that_fails_late_leaves_nothing_behind(tts, monkeypatch):
    p, _ = tts.add_voice("Keep", PROMPT, ZH_PROMPT_TEXT, language="zh")
    before = sorted(x.name for x in tts.store.root.iterdir())

    def boom(ids):
        raise BackendError("llama.cpp failed")

    monkeypatch.setattr(tts.engine, "prompt_prefix_state", boom)
    with pytest.raises(BackendError):
        tts.add_voice("Late failure", PROMPT, ZH_PROMPT_TEXT, language="zh")
    with pytest.raises(BackendError):
        tts.add_voice("Keep", PROMPT, "replacement words", language="zh", overwrite=True)
    monkeypatch.undo()
    assert sorted(x.name for x in tts.store.root.iterdir()) == before  # no voice, no temp folder
    assert tts.load_voice("Keep").transcript == ZH_PROMPT_TEXT  # the replaced voice is intact
    with pytest.raises(Exception, match="transcript has 1001 characters"):
        tts.add_voice("Too long", PROMPT, "x" * 1001, language="en")
    assert not tts.store.exists("Too long")


def _edit_export(src: bytes, **changes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(src)) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "preset.json" and "meta" in changes:
                data = json.dumps({**json.loads(data), **changes["meta"]}).encode()
            if item.filename == "features.npz" and "features" in changes:
                buf = io.BytesIO()
                np.savez(buf, **changes["features"])
                data = buf.getvalue()
            zout.writestr(item.filename, data)
    return out.getvalue()


def test_imports_with_an_unknown_language_or_nan_features(tts, tmp_path):
    tts.add_voice("Source", PROMPT, ZH_PROMPT_TEXT, language="zh")
    data = tts.store.export("Source", tmp_path).read_bytes()
    with pytest.raises(PresetError, match="language is 'xx'"):
        tts.import_voice(_edit_export(data, meta={"language": "xx"}), name="Imported xx")
    assert not tts.store.exists("Imported xx")

    with np.load(tts.store.root / "source" / "features.npz") as z:
        good = {k: z[k] for k in z.files}
    nan = {**good, "mel": np.full_like(good["mel"], np.nan)}
    p = tts.import_voice(_edit_export(data, features=nan), name="Imported NaN")
    assert np.isfinite(p.features.mel).all() and np.array_equal(p.features.mel, good["mel"])
    wrong = {**good, "embedding": np.ones(7, np.float32)}
    p = tts.import_voice(_edit_export(data, features=wrong), name="Imported shape")
    assert p.features.embedding.shape == (192,)

    # a saved voice whose features rotted on disk is recomputed, not used
    np.savez(tts.store.root / "imported-nan" / "features.npz", **nan)
    v = tts.load_voice("Imported NaN")
    assert np.isfinite(v.features.mel).all() and "features.npz did not pass the checks" in v.warnings[0]


def test_a_damaged_cached_prefix_is_rebuilt(tts):
    p, _ = tts.add_voice("Prefix", PROMPT, ZH_PROMPT_TEXT, language="zh")
    f = p.path / "llm_prefix.bin"
    good = f.read_bytes()
    f.write_bytes(bytes(len(good)))
    v = tts.load_voice("Prefix")
    assert v.prefix_state == good and f.read_bytes() == good
    assert v.warnings == ["voice 'Prefix': its saved llm_prefix.bin did not pass the checks (damaged on disk?) and "
                          "was rebuilt from its recording"]
    assert tts.load_voice("Prefix").warnings == []  # rebuilt once
    list(tts.create_stream("Раз.", v, language="ru", seed=1))


def test_folders_moved_or_copied_by_hand_are_usable_by_their_listed_name(tmp_path):
    store = SpeakerStore(tmp_path / "spk")
    _save(store, "Vera", "Vera's words")
    shutil.copytree(store.root / "vera", store.root / "vera-copy")
    (store.root / "vera").rename(store.root / "anna")
    names = [v["name"] for v in store.list()]
    assert sorted(names) == ["anna", "vera-copy"]
    for name in names:
        p = store.load(name)
        assert p.slug == name and p.transcript == "Vera's words"
    store.rename("anna", "Anna")
    assert store.load("Anna").name == "Anna"


def test_damaged_voices_are_listed_as_damaged_and_can_be_replaced(tmp_path):
    store = SpeakerStore(tmp_path / "spk")
    _save(store, "Vera")
    (store.root / "vera" / "preset.json").write_text("{oops")
    (v,) = store.list()
    assert v["slug"] == "vera" and "error" in v
    with pytest.raises(PresetError, match="'vera' is damaged.*repair it by saving it again.*or delete it"):
        store.load("vera")
    with pytest.raises(PresetError, match="damaged voice is stored under the name 'Vera'.*replace"):
        _save(store, "Vera")
    _save(store, "Vera", "repaired", overwrite=True)
    assert store.load("Vera").transcript == "repaired"


def test_a_small_voice_file_that_inflates_is_refused_without_inflating_it(tmp_path):
    bomb = tmp_path / "bomb.cvvoice"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("preset.json", json.dumps({"name": "B", "transcript": "b", "audio": "prompt.wav"}))
        with z.open("prompt.wav", "w", force_zip64=True) as f:
            block = bytes(1 << 20)
            for _ in range(200):
                f.write(block)
    assert bomb.stat().st_size < 1_000_000
    store = SpeakerStore(tmp_path / "spk")
    tracemalloc.start()
    try:
        with pytest.raises(PresetError, match="prompt.wav in the voice file inflates to 200 MB"):
            store.read_export(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20
    for bad, msg in ((b"", "empty"), (b"PK\x03\x04garbage", "not a cosyvoice-rk voice file")):
        with pytest.raises(PresetError, match=msg):
            store.read_export(bad)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_cli_seed_and_list_json(tmp_path):
    store = SpeakerStore(tmp_path / "spk")
    _save(store, "Vera")
    r = _cli("speakers", "list", "--json", "--speakers-dir", store.root)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["name"] == "Vera"  # JSON only, nothing after it
    # -1 is the page's "random": accepted (the run then stops at the missing bundle, not at the seed)
    r = _cli("say", "--bundle", tmp_path / "nope", "--speaker", "Vera", "--text", "hi", "--seed", -1,
             "-o", tmp_path / "o.wav")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = _cli("say", "--bundle", tmp_path / "nope", "--speaker", "Vera", "--text", "hi", "--seed", 2**70,
             "-o", tmp_path / "o.wav")
    assert r.returncode == 2 and "too large; give 0–4294967295, or -1 for random" in r.stderr


def test_prompt_messages_name_the_file_not_its_folder_and_call_an_empty_file_empty(tmp_path):
    from pipeline.shared.audio import prepare_prompt
    from pipeline.shared.errors import InputError

    up = tmp_path / "gradio" / "3f9a0c" / "my voice.wav"
    up.parent.mkdir(parents=True)
    up.write_bytes(b"")
    with pytest.raises(InputError) as e:
        prepare_prompt(up)
    assert str(e.value) == "my voice.wav is empty (0 bytes); upload or record 3–10 s of speech"
    up.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    with pytest.raises(InputError) as e:
        prepare_prompt(up)
    msg = str(e.value)
    assert msg.startswith("my voice.wav is not an audio file that can be read (damaged, or a format")
    assert str(tmp_path) not in msg and "Error" not in msg and "recognised" not in msg
    with pytest.raises(InputError, match=r"^prompt file gone\.wav does not exist$"):
        prepare_prompt(tmp_path / "gradio" / "gone.wav")


def test_api_numbers_are_checked_before_anything_runs(tmp_path):
    from webui.client import FieldError, Studio

    st = Studio(tmp_path / "no-bundle", tmp_path / "spk", tmp_path / "res")
    try:
        with pytest.raises(FieldError, match=r"seed must be a whole number within -1–4294967295 \(-1 = random\)"):
            st.speak("hi", voice="Vera", seed=2**70)
        with pytest.raises(FieldError, match="temperature must be a number, got 'hot'"):
            st.speak("hi", voice="Vera", temperature="hot")
        with pytest.raises(FieldError, match="no voice named 'Vera'"):  # no temperature: the default, no TypeError
            st.speak("hi", voice="Vera", temperature=None, seed=None, top_k=None, top_p=None)
    finally:
        st.close()


def test_failed_logins_are_slowed_per_user_and_a_good_login_resets():
    from webui.serve import SlowAuth

    auth = SlowAuth([("anna", "secret")], base_delay=1.0, max_delay=30.0)
    assert [auth._verdict("anna", "guess")[1] for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert auth._verdict("bob", "x") == (False, 1.0)  # another name has its own count
    assert auth._verdict("anna", "secret") == (True, 0.0)
    assert auth._verdict("anna", "guess") == (False, 1.0)
    import asyncio
    import inspect

    assert inspect.iscoroutinefunction(auth.check)  # awaited by Gradio: the wait does not block other pages
    assert asyncio.run(SlowAuth([("a", "b")], base_delay=0.0).check("a", "b")) is True


@pytest.fixture
def bare_page(tmp_path):
    """The page on a studio without a bundle (no worker: voices are written straight to the folder)."""
    from playwright.sync_api import sync_playwright
    from test_webui import CHROMIUM_ARGS, _chromium, _free_port

    from webui.app import launch
    from webui.client import Studio

    st = Studio(tmp_path / "no-bundle", tmp_path / "spk", tmp_path / "res")
    demo, url = launch(st, port=_free_port(), block=False, quiet=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_ARGS)
        ctx = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(60_000)
        pg = ctx.new_page()

        def open_page(query: str = "") -> None:
            pg.goto(url + query)
            pg.wait_for_selector("#cv-generate")
            pg.wait_for_timeout(500)

        yield st, pg, open_page
        browser.close()
    demo.close()
    st.close()


def test_first_visit_hint_damaged_voices_and_messages_that_stay(bare_page):
    st, pg, open_page = bare_page
    open_page()
    # first visit: no voice yet, the Speak tab says to make one first and the button goes there
    assert "no voice is saved yet" in pg.inner_text("#cv-first")
    pg.click("#cv-first-go")
    pg.wait_for_selector("#cv-v-save", state="visible")

    _save(st.store, "Vera")
    _save(st.store, "Anna")
    _save(st.store, "Broken")
    (st.store.root / "broken" / "preset.json").write_text("{oops")
    open_page()
    assert pg.locator("#cv-first").is_hidden()
    pg.get_by_role("tab", name="Voices").click()
    # the damaged voice is listed, with what is wrong and the two ways out
    assert "broken" in pg.inner_text("#cv-damaged-list") and "cannot be read" in pg.inner_text("#cv-damaged-list")
    pg.click("#cv-repair")
    pg.wait_for_function("document.querySelector('#cv-v-name :is(input, textarea)').value === 'broken'")
    assert pg.locator("#cv-v-overwrite input").is_checked()
    assert "is in the form on the left" in pg.inner_text("#cv-damaged-msg")
    pg.click("#cv-damaged-delete")
    pg.wait_for_function("document.querySelector('#cv-damaged-msg').innerText.includes('Deleted')")
    assert not (st.store.root / "broken").exists()
    pg.wait_for_selector("#cv-damaged", state="hidden")

    # "Deleted" stays on the page after the list moves on to the next voice
    pg.click("#cv-v-delete")
    pg.click("#cv-v-delete-yes")
    pg.wait_for_function("document.querySelector('#cv-v-manage-msg').innerText.includes('Deleted')")
    pg.wait_for_timeout(1500)
    assert "Deleted" in pg.inner_text("#cv-v-manage-msg")
    assert len(st.store.list()) == 1


def test_russian_page_translates_gradio_widgets_and_pipeline_messages(bare_page, tmp_path):
    st, pg, open_page = bare_page
    open_page("?lang=ru")
    pg.get_by_role("tab", name="Голоса").click()
    # Gradio's own upload text follows the page language, though the browser is English
    pg.wait_for_function("document.querySelector('#cv-v-audio').innerText.includes('Перетащите')")
    empty = tmp_path / "пусто.wav"
    empty.write_bytes(b"")
    pg.set_input_files("#cv-v-audio input[type=file]", str(empty))
    msg = pg.wait_for_selector("#cv-v-audio-msg .cv-err").inner_text()
    assert "пуст (0 байт)" in msg and str(tmp_path) not in msg and "/tmp" not in msg
    # Gradio's own refusal of an upload over --max-upload-mb (20 MB here) comes in the page's words and language
    big = tmp_path / "big.cvvoice"
    with open(big, "wb") as f:
        f.truncate(21 * 2**20)
    pg.set_input_files("#cv-v-import-file input[type=file]", str(big))
    pg.wait_for_function("document.body.innerText.includes('больше, чем принимает студия')")
    assert "exceed the maximum" not in pg.inner_text("body")
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    pg.set_input_files("#cv-v-import-file input[type=file]", str(notes))
    pg.wait_for_function("document.body.innerText.includes('notes.txt сюда не подходит')")
    assert "Invalid file type" not in pg.inner_text("body")


def _fake_venv(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    for name, body in (("python", "exit 0"), ("pip", f'echo "$@" >> {log}'), ("cosyvoice-rk", 'echo "ran $@"')):
        f = venv / "bin" / name
        f.write_text(f"#!/bin/sh\n{body}\n")
        f.chmod(0o755)
    return venv, log


def test_cv_runtime_commands_install_no_torch_and_reuse_a_bigger_install(tmp_path):
    """Issue 11: `./cv webui` installed PyTorch and the converter's extras, and reinstalled after `./cv test`."""
    import os
    from pathlib import Path

    cv = Path(__file__).resolve().parents[1] / "cv"
    venv, log = _fake_venv(tmp_path)
    env = {**os.environ, "COSYVOICE_RK_VENV": str(venv)}
    r = subprocess.run([str(cv), "webui", "--port", "1"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "ran webui --port 1" in r.stdout, r.stderr
    installs = log.read_text()
    assert "torch" not in installs and "[" not in installs.split("install -q -e")[1], installs
    log.write_text("")
    r = subprocess.run([str(cv), "convert", "a", "b"], capture_output=True, text=True, env=env, timeout=60)
    assert "torch==" in log.read_text() and "[convert]" in log.read_text()
    # after the test install, nothing is installed again for any command
    for f in venv.glob(".installed-*"):
        f.unlink()
    (venv / ".installed-test,convert").touch()
    log.write_text("")
    for cmd in ("webui", "convert", "say"):
        subprocess.run([str(cv), cmd], capture_output=True, text=True, env=env, timeout=60)
    assert log.read_text() == ""


def test_the_speakers_folder_is_in_the_repository_and_voices_saved_there_are_not():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files", "speakers"], cwd=root, capture_output=True, text=True).stdout.split()
    assert {"speakers/README.md", "speakers/.gitignore"} <= set(tracked)
    for path in ("speakers/anna/preset.json", "speakers/anna/prompt.wav", "speakers/.anna.tmp-1/x"):
        assert subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0, path
    assert subprocess.run(["git", "check-ignore", "-q", "speakers/README.md"], cwd=root).returncode == 1
    assert [v for v in SpeakerStore(root / "speakers").list() if v["slug"] in ("README.md", ".gitignore")] == []


def test_100_bad_inputs_are_refused_clearly_in_both_languages_and_lose_nothing(tmp_path):
    """The catalogue behind docs/reliability.md: each input refused with a message (no traceback, no internal
    error, no temp folder), the page's Russian is Russian, and the saved voices and the bundle are unchanged."""
    import re

    import bad_inputs

    outcomes = bad_inputs.run_all(tmp_path)  # raises when an input is accepted or a voice/bundle changed
    assert len(outcomes) >= 100
    for o in outcomes:
        where = f"{o.case.kind}: {o.case.what}"
        assert o.en and "Traceback" not in o.en and "nternal error" not in o.en, where
        assert "uploads/" not in o.en and "8c1f2e" not in o.en, where  # never the server's upload folder
        if o.case.page:
            assert o.ru != o.en and re.search("[а-яё]", o.ru), f"{where}: not translated: {o.ru}"
            assert "uploads/" not in o.ru, where

    def masked(text: str) -> list[str]:  # which racing client loses is chance: its words are not compared
        return [re.sub(r"^(\| \d+ \| concurrent clients \| [^|]+\|).*$", r"\1", row)
                for row in text.splitlines() if row.startswith("| ")]

    assert masked(bad_inputs.table(outcomes)) == masked(bad_inputs.DOC.read_text(encoding="utf-8")), \
        "docs/reliability.md is out of date: run `python tests/bad_inputs.py`"
