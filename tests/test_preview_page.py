"""The page's preview under the text box (webui/preview.py), without a browser: the same parts as `normalize`."""

from __future__ import annotations

from types import SimpleNamespace

from pipeline.shared.text.preview import preview
from webui.preview import preview_md


def _studio(tmp_path):
    return SimpleNamespace(bundle_path=tmp_path / "no-bundle", max_text_chars=5000)


def test_preview_lists_the_parts_that_will_be_read(tmp_path):
    st = _studio(tmp_path)
    text = "Встретимся 1 мая с 2 друзьями. [breath] <strong>Да!</strong>"
    html = preview_md(st, text, "ru", "en")
    assert preview(text, "ru", st.bundle_path) == ["Встретимся первого мая с двумя друзьями. [breath] "
                                                   "<strong>Да!</strong>"]
    assert html.startswith('<div class="cv-preview"><p>What will be read (parts: 1; each is one model run):</p>')
    assert "<li>Встретимся первого мая с двумя друзьями. [breath] &lt;strong&gt;Да!&lt;/strong&gt;</li>" in html
    assert "Что будет прочитано (частей: 1" in preview_md(st, text, "ru", "ru")


def test_preview_says_why_text_cannot_be_read(tmp_path):
    st = _studio(tmp_path)
    assert preview_md(st, "", "ru", "en") == "" and preview_md(st, "  \n", "ru", "en") == ""
    assert "unknown tag [smile]" in preview_md(st, "Привет [smile]", "ru", "en")
    assert "неизвестный тег [smile]: CosyVoice3 знает теги [breath]" in preview_md(st, "Привет [smile]", "ru", "ru")
    assert 'class="cv-err"' in preview_md(st, "<strong>громко", "ru", "en")
    assert preview_md(st, "а" * 5001, "ru", "en") == ""  # the counter and Generate say it is too long


def test_the_preview_loads_no_model_runtime(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom types import SimpleNamespace\nfrom webui.preview import preview_md\n"
            f"st = SimpleNamespace(bundle_path={str(tmp_path)!r}, max_text_chars=5000)\n"
            "assert 'двумя' in preview_md(st, 'с 2 друзьями', 'ru', 'en')\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert "pymorphy3" in mods and not mods & {"onnxruntime", "llama_cpp", "torch", "rknnlite"}
