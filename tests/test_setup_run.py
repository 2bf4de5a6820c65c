"""First run from the page (pipeline/setup_run.py, webui/setup_view.py): a fresh folder with no bundle gets one
through the Status tab, from a local fake of the HuggingFace hub (tests/fake_hub.py, reached through HF_ENDPOINT
by huggingface_hub's own code) or from a checkpoint folder, and the page speaks without a restart.

The checkpoint served is the tiny one in upstream's release layout: ``make_random_checkpoint(size="tiny")`` (the
tiny fixture's dims, but the real Qwen2 text vocabulary and tokenizer files: tests/fixtures/tiny-cosyvoice3 has a
1000-id vocabulary and no tokenizer, so a bundle made from it cannot read text) plus the stand-in CAMPPlus and
speech tokenizer of pipeline/engines/cosyvoice3/testmodels.py
(the release's campplus.onnx / speech_tokenizer_v3.onnx) and Qwen2's
tokenizer_config.json, so that every file ``download`` asks for is there. No network; the converter's extras are
present in the test environment, so the install stage is checked and skipped, never run.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from conftest import PROMPTS, ZH_PROMPT_TEXT
from fake_hub import FakeHub
from test_webui import T, _free_port, browser, field, open_tab  # noqa: F401 - browser is a fixture

from pipeline.engines.cosyvoice3.download import NEEDED_FILES, REPO_ID
from pipeline.setup_checks import GB, Resources, extras_present, memory_need
from pipeline.setup_run import FirstRun
from pipeline.setup_steps import torch_pin
from pipeline.shared.bundle import Bundle
from webui.setup_view import progress_html

HUB_REVISION = "main"  # the fake hub serves tiny files: not the pinned release, whose sizes are checked

PROMPT = PROMPTS / "zero_shot_prompt.wav"
QWEN2_ADDED = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    from pipeline.engines.cosyvoice3.convert.random_checkpoint import make_random_checkpoint
    from pipeline.engines.cosyvoice3.testmodels import make_test_campplus, make_test_speech_tokenizer

    root = tmp_path_factory.mktemp("hub") / "repo"
    make_random_checkpoint(root, size="tiny", seed=0, log=lambda m: None)
    make_test_campplus(root / "campplus.onnx")
    make_test_speech_tokenizer(root / "speech_tokenizer_v3.onnx")
    flags = {"special": True, "normalized": False, "lstrip": False, "rstrip": False, "single_word": False}
    (root / "CosyVoice-BlankEN" / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": {str(i): {"content": c, **flags} for i, c in QWEN2_ADDED.items()}}))
    (root / "README.md").write_text("a repository file the converter does not need\n")
    return root


@pytest.fixture
def hub(repo, monkeypatch):
    with FakeHub(repo, REPO_ID, delay=0.002) as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "30")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield h


def plenty() -> Resources:
    return Resources(64 * 2**30, 0, lambda p: 1 << 50)


def wait(fr: FirstRun, timeout: float = 300) -> dict:
    s = fr.wait(timeout)
    assert not fr.running, s
    return s


def test_download_is_cancelled_and_resumed_then_converted(hub, repo, tmp_path):
    bundle = tmp_path / "models" / "bundle"
    events: list[dict] = []
    fr = FirstRun(bundle, probe=plenty, on_bundle=lambda: (Bundle.load(bundle) is not None, ""),
                  revision=HUB_REVISION)
    fr.subscribe(events.append)
    assert fr.start_download()
    assert not fr.start_download()  # one at a time
    deadline = time.monotonic() + 120
    while fr.snapshot()["stage"] != "download" or fr.snapshot()["bytes"] < 5e6:
        assert time.monotonic() < deadline and fr.running, fr.snapshot()
        time.sleep(0.05)
    assert fr.cancel()
    s = wait(fr)
    assert s["phase"] == "cancelled", s
    ckpt = tmp_path / "models" / "cosyvoice3"
    assert not bundle.exists() and not list(ckpt.rglob("*.incomplete"))
    fetched = dict(hub.gets)
    finished = [f for f in NEEDED_FILES if (ckpt / f).is_file()]
    assert finished and "cosyvoice3.yaml" in finished  # fetched first, kept

    # a second click continues: what was finished is not fetched again
    assert fr.start_download()
    s = wait(fr)
    assert s["phase"] == "done", s
    assert s["stages"] == ["check", "download", "convert", "place", "load"]  # extras present: no install
    for f in finished:
        assert hub.gets[f] == fetched[f], f
    assert set(hub.gets) == set(NEEDED_FILES)  # only what the converter needs (no model.safetensors, README)
    b = Bundle.load(bundle, check="full")
    assert b.manifest["frontend"]["tokenizer"] and b.manifest["frontend"]["campplus"] == "campplus.onnx"
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # progress: byte counts of the download against the hub's sizes, then the converter's steps
    total = sum((repo / f).stat().st_size for f in NEEDED_FILES)
    dl = [e for e in events if e["stage"] == "download" and e["phase"] == "running"]
    assert {e["total"] for e in dl} == {total}
    got = [e["bytes"] for e in dl]
    assert max(got) == total and len(set(got)) > 3 and got[-1] == total
    steps = [e["step"] for e in events if e["stage"] == "convert" and e["step"]]
    assert list(dict.fromkeys(steps))[:2] == ["llm", "flow"] and "hift" in steps
    # the memory bound the page refuses below holds for this conversion (its peak, sampled)
    assert 0 < s["peak_rss"]["convert"] <= memory_need((repo / "llm.pt").stat().st_size)


def test_refusals_say_what_to_do(hub, repo, tmp_path):
    bundle = tmp_path / "bundle"
    low_mem = Resources(int(0.2 * GB), int(0.1 * GB), lambda p: 1 << 50)
    fr = FirstRun(bundle, probe=lambda: low_mem, revision=HUB_REVISION)
    fr.start_download()
    s = wait(fr)
    assert s["phase"] == "refused" and [p["key"] for p in s["problems"]] == ["setup_no_memory"]
    assert not hub.gets  # refused before anything was fetched
    en, ru = progress_html(s, "en"), progress_html(s, "ru")
    assert "0.3 GB free" in en and "Convert on an x86 computer" in en and "add swap" in en
    assert "свободно 0.3 ГБ" in ru and "x86-компьютере" in ru

    no_disk = Resources(64 * 2**30, 0, lambda p: 10_000_000)
    fr = FirstRun(bundle, probe=lambda: no_disk, revision=HUB_REVISION)
    fr.start_download()
    s = wait(fr)
    assert [p["key"] for p in s["problems"]] == ["setup_no_disk"] and not hub.gets
    assert "Not enough disk space" in progress_html(s, "en") and "Мало места" in progress_html(s, "ru")

    fr = FirstRun(bundle, probe=plenty, revision=HUB_REVISION)
    for folder, key, en_text, ru_text in [
            ("", "setup_folder_empty", "Type the path", "Введите путь"),
            (str(tmp_path / "nowhere"), "setup_folder_missing", "is not a folder", "не папка"),
            (str(repo / "CosyVoice-BlankEN"), "setup_folder_incomplete", "llm.pt, flow.pt", "нет cosyvoice3.yaml")]:
        fr.start_folder(folder)
        s = wait(fr)
        assert [p["key"] for p in s["problems"]] == [key], s
        assert en_text in progress_html(s, "en") and ru_text in progress_html(s, "ru")
    assert not bundle.exists()


def test_extras_check_is_a_real_import(tmp_path):
    ok, why = extras_present(sys.executable)
    assert ok and why.startswith("torch ")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    ok, why = extras_present(str(tmp_path / "bare" / "bin" / "python"))
    assert not ok and "No module named 'torch'" in why


def find_one_off_seed(st, first: int = 1) -> int:
    for seed in [first, *range(100, 130)]:
        job = st.speak("Привет! Это мой голос.", prompt_audio=PROMPT, prompt_text=ZH_PROMPT_TEXT,
                       prompt_language="zh", language="ru", seed=seed)
        if [s.phase for s in st.follow(job, poll=None)][-1] == "done":
            return seed
    raise AssertionError("no seed in 30 gives speech with this random bundle")


def test_fresh_folder_reaches_a_speaking_page_through_the_status_tab(hub, repo, browser, tmp_path):  # noqa: F811
    from webui.app import launch
    from webui.client import Studio

    models = tmp_path / "fresh" / "models"
    st = Studio(models / "bundle", tmp_path / "spk", tmp_path / "res", n_threads=1)
    assert st.bundle_error and st.worker is None
    st.first_run = FirstRun(st.bundle_path, revision=HUB_REVISION)  # real checks of this machine (memory, disk, extras)
    demo, url = launch(st, port=_free_port(), block=False, quiet=True)
    pg = browser.new_page()
    try:
        pg.goto(url)
        assert "No model bundle" in pg.wait_for_selector("#cv-banner").inner_text()
        open_tab(pg, "Status")
        assert "Download and convert" in pg.inner_text("#cv-setup-intro")
        pg.click("#cv-setup-download")
        pg.wait_for_function("document.querySelector('#cv-setup-progress').innerText.includes(' MB')")
        assert "Download" in pg.inner_text("#cv-setup-progress")
        pg.wait_for_selector("#cv-setup-progress .cv-ok", timeout=300_000)
        assert "The model is ready and loaded" in pg.inner_text("#cv-setup-progress")
        pg.wait_for_function("document.querySelector('#cv-badge').innerText.includes('ready')")
        assert st.worker.state == "ready" and (models / "bundle" / "manifest.json").is_file()

        seed = find_one_off_seed(st)
        before = len(st.history.list())
        open_tab(pg, "Speak")
        pg.click("label:has-text('One-off recording')")
        pg.set_input_files("#cv-s-audio input[type=file]", str(PROMPT))
        pg.wait_for_selector("#cv-s-audio-msg .cv-ok")
        field(pg, "cv-s-ptext").fill(ZH_PROMPT_TEXT)
        field(pg, "cv-text").fill("Привет! Это мой голос.")
        pg.get_by_text("Advanced").click()
        field(pg, "cv-seed").fill(str(seed))
        pg.click("#cv-generate")
        assert "Done" in pg.wait_for_selector("#cv-progress .cv-ok", timeout=T).inner_text()
        entries = st.history.list()
        assert len(entries) == before + 1 and entries[0]["duration"] > 0 and entries[0]["seed"] == seed
        assert "RTF" in pg.inner_text("#cv-info")
        audio, sr = sf.read(entries[0]["path"])
        assert sr == 24000 and len(audio) / sr == pytest.approx(entries[0]["duration"], abs=0.01)
    finally:
        pg.close()
        demo.close()
        st.close()


STUB_CONVERT = """#!/bin/bash
# the studio's interpreter, with the conversion itself stood in for by a copy of a ready bundle (the real folder
# conversion runs in test_missing_extras_are_installed_with_progress_first; here the page's path is the point)
if [[ "$1 $2 $3" == "-m pipeline.cli convert" ]]; then
  [[ -f "$4/llm.pt" ]] || exit 3
  echo "LLM → GGUF (stand-in: a copy of the tiny random bundle)"; cp -r "{bundle}" "$5"; exit 0
fi
exec "{real}" "$@"
"""


def test_a_local_checkpoint_folder_from_the_page(repo, random_bundle, browser, tmp_path,  # noqa: F811
                                                 monkeypatch):
    from webui.app import launch
    from webui.client import Studio

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # no hub: this path must not need one
    stub = tmp_path / "python"
    stub.write_text(STUB_CONVERT.format(bundle=random_bundle.root, real=sys.executable))
    stub.chmod(0o755)
    st = Studio(tmp_path / "bundle", tmp_path / "spk", tmp_path / "res", n_threads=1)
    st.first_run = FirstRun(st.bundle_path, python=str(stub), revision=HUB_REVISION)
    demo, url = launch(st, port=_free_port(), block=False, quiet=True)
    pg = browser.new_page()
    try:
        pg.goto(url + "?lang=ru")
        open_tab(pg, "Состояние")
        field(pg, "cv-setup-folder").fill(str(tmp_path / "nowhere"))
        pg.click("#cv-setup-use-folder")
        msg = pg.wait_for_selector("#cv-setup-progress .cv-err").inner_text()
        assert "Здесь это не получится" in msg
        assert "не папка на этой машине" in pg.inner_text("#cv-setup-progress")
        field(pg, "cv-setup-folder").fill(str(repo))
        pg.click("#cv-setup-use-folder")
        pg.wait_for_selector("#cv-setup-progress .cv-ok", timeout=300_000)
        assert "Модель готова и загружена" in pg.inner_text("#cv-setup-progress")
        assert st.worker is not None and st.worker.wait_ready(60) == "ready"
        assert st.first_run.snapshot()["stages"] == ["check", "convert", "place", "load"]
        assert (repo / "llm.pt").is_file()  # the source folder is left as it was
    finally:
        pg.close()
        demo.close()
        st.close()


def test_the_download_child_reports_a_failed_download(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")  # fails at once, through download()'s own error path
    r = subprocess.run([sys.executable, "-m", "pipeline.setup_steps", "download", str(tmp_path / "c"),
                        "--repo-id", REPO_ID], capture_output=True, text=True, env=env, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2 and "error: cannot download" in r.stdout and "Traceback" not in r.stdout + r.stderr


FAKE_PYTHON = """#!/bin/bash
# the interpreter of a venv without the converter's extras: pip is a stand-in (no network, nothing installed)
echo "$*" >> "{log}"
if [[ "$1" == "-c" && "$2" == "import torch"* && ! -f "{mark}" ]]; then
  echo "ModuleNotFoundError: No module named 'torch'" >&2; exit 1
fi
if [[ "$1 $2" == "-m pip" ]]; then
  [[ "$3" == "--version" ]] && {{ echo "pip 26.3 from {root} (python 3.11)"; exit 0; }}
  [[ " $* " == *" --dry-run "* ]] && exit 0
  echo "Collecting ${{@: -1}}"
  for i in 1 2 3; do echo "Progress $((i * 70000000)) of 210000000"; sleep 0.2; done
  touch "{mark}"; exit 0
fi
exec "{real}" "$@"
"""


def test_missing_extras_are_installed_with_progress_first(repo, tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed-runtime").touch()  # a venv ./cv made for the runtime only
    fake = venv / "bin" / "python"
    fake.write_text(FAKE_PYTHON.format(log=tmp_path / "calls", mark=tmp_path / "installed", root=tmp_path,
                                       real=sys.executable))
    fake.chmod(0o755)
    broken = tmp_path / "bundle"  # a folder the worker could not load: kept aside, not deleted
    broken.mkdir()
    (broken / "notes.txt").write_text("mine")
    events: list[dict] = []
    fr = FirstRun(broken, probe=plenty, python=str(fake), on_bundle=lambda: (True, ""),
                  revision=HUB_REVISION)
    fr.subscribe(events.append)
    fr.start_folder(repo)
    s = wait(fr)
    assert s["phase"] == "done", s
    assert s["stages"] == ["check", "install", "convert", "place", "load"]
    calls = (tmp_path / "calls").read_text().splitlines()
    installs = [c for c in calls if c.startswith("-m pip install") and "--dry-run" not in c]
    assert installs[0].endswith(f"--progress-bar raw torch=={torch_pin()}")
    assert installs[1].endswith("[convert]") and "-e" in installs[1].split()
    assert any("--dry-run" in c and "--only-binary=:all:" in c for c in calls)  # wheels checked before
    shown = {(e["bytes"], e["total"]) for e in events if e["stage"] == "install"}
    assert {(70000000, 210000000), (210000000, 210000000)} <= shown
    now = {"phase": "running", "stages": s["stages"], "done": ["check"], "stage": "install", "bytes": 70e6,
           "total": 210e6, "elapsed": 3.0}
    assert "▶ Install PyTorch" in progress_html(now, "en") and "70.0 of 210.0 MB" in progress_html(now, "en")
    assert "70.0 из 210.0 МБ" in progress_html(now, "ru")
    assert (venv / ".installed-convert").is_file()  # ./cv reuses the install
    assert Bundle.load(tmp_path / "bundle", check="full").manifest["frontend"]["tokenizer"]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("bundle.before-setup-")]
    assert len(aside) == 1 and (aside[0] / "notes.txt").read_text() == "mine"
    assert f"kept as `{aside[0]}`" in progress_html(s, "en") and "сохранено как" in progress_html(s, "ru")


def test_no_wheel_and_no_compiler_is_refused_up_front(repo, tmp_path, monkeypatch):
    fake = tmp_path / "python"
    fake.write_text(f"""#!/bin/bash
if [[ "$1" == "-c" ]]; then echo "ModuleNotFoundError: No module named 'torch'" >&2; exit 1; fi
if [[ " $* " == *" --dry-run "* ]]; then
  echo "ERROR: No matching distribution found for torch==2.13.0" >&2; exit 1
fi
exec "{sys.executable}" "$@"
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no cc, gcc or clang
    monkeypatch.delenv("CC", raising=False)
    fr = FirstRun(tmp_path / "bundle", probe=plenty, python=str(fake), revision=HUB_REVISION)
    fr.start_folder(repo)
    s = wait(fr)
    assert s["phase"] == "refused" and [p["key"] for p in s["problems"]] == ["setup_no_compiler"], s
    assert "a C compiler (apt install build-essential)" in progress_html(s, "en")
    assert "собирать из исходников" in progress_html(s, "ru") and not (tmp_path / "bundle").exists()


def test_an_unreachable_hub_fails_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    fr = FirstRun(tmp_path / "bundle", probe=plenty, revision=HUB_REVISION)
    fr.start_download()
    s = wait(fr, 120)
    assert s["phase"] == "failed" and s["error"].startswith(f"cannot reach {REPO_ID}"), s
    assert "check the internet connection" in progress_html(s, "en")
    assert "проверьте подключение к интернету" in progress_html(s, "ru")
    assert not (tmp_path / "bundle").exists()
