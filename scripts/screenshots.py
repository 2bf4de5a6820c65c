"""The screenshot pass of the studio page: desktop and phone width, English and Russian, in headless Chromium.

    python scripts/screenshots.py --bundle bundles/tiny --out docs/screenshots

Starts a studio on a temp speakers/results folder, saves one voice and makes one result (so the page shows what a
visitor sees after the first minute), then photographs the Speak and Voices tabs. PNGs are palette-reduced to
keep the repository small. Needs Debian's chromium and the test extras (playwright).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = ROOT / "tests" / "fixtures" / "prompts" / "zero_shot_prompt.wav"
PROMPT_TEXT = "希望你以后能够做的比我还好呦。"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shrink(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        im.convert("RGB").quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> int:
    from playwright.sync_api import sync_playwright

    from webui.app import launch
    from webui.client import Studio

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="cv-shots-"))
    st = Studio(a.bundle, tmp / "speakers", tmp / "results", n_threads=1)
    try:
        assert st.worker is not None and st.worker.wait_ready(180) == "ready", st.status()
        st.run_voice_job(st.add_voice("Анна", PROMPT, PROMPT_TEXT, "zh"))
        for seed in (1, 2, 3, 100, 101):
            states = list(st.follow(st.speak("Привет! Это мой голос.", voice="Анна", language="ru", seed=seed),
                                    poll=None))
            if states[-1].phase == "done":
                break
        demo, url = launch(st, port=_free_port(), block=False, quiet=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                        args=["--no-sandbox", "--disable-gpu"])
            for size, (w, h) in SIZES.items():
                for lang in ("en", "ru"):
                    ctx = browser.new_context(viewport={"width": w, "height": h}, locale=f"{lang}-{lang.upper()}",
                                              device_scale_factor=1)
                    pg = ctx.new_page()
                    pg.goto(f"{url}?lang={lang}")
                    pg.wait_for_selector("#cv-generate")
                    pg.wait_for_timeout(2500)
                    pg.fill("#cv-text textarea", "Привет! Это мой голос." if lang == "ru" else
                            "Hello! This is my voice, made from a ten second recording.")
                    shot = a.out / f"speak-{size}-{lang}.png"
                    pg.screenshot(path=str(shot), full_page=size == "phone")
                    _shrink(shot)
                    pg.get_by_role("tab").nth(1).click()
                    pg.wait_for_timeout(1200)
                    shot = a.out / f"voices-{size}-{lang}.png"
                    pg.screenshot(path=str(shot), full_page=size == "phone")
                    _shrink(shot)
                    ctx.close()
            browser.close()
        demo.close()
    finally:
        st.close()
        shutil.rmtree(tmp, ignore_errors=True)
    for f in sorted(a.out.glob("*.png")):
        print(f"{f}: {f.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
