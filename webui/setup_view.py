"""The first-run setup on the Status tab: *Download and convert*, *Use a local checkpoint folder*, its progress.

The work is :class:`pipeline.setup_run.FirstRun` (a thread of this process that runs the download and the
conversion as child processes); this module builds its panel and shows its snapshot. When the bundle is in place
the studio's worker is started on it (:meth:`webui.client.Studio.refresh_bundle`): no restart of the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipeline.setup_checks import GB, memory_need
from pipeline.setup_run import STAGES, FirstRun

from .client import Studio
from .i18n import localize, t
from .views import _bar, _err, _esc, _ok, _p

LOAD_TIMEOUT = 600.0  # s: the worker loading the new bundle (hashing ~4 GB on a board's eMMC included)
REAL_LLM_PT = 2.02 * GB  # llm.pt of the real release, for the memory figure shown before anything is fetched


def first_run_for(studio: Studio) -> FirstRun:
    """The studio's setup (made on first use; tests set ``studio.first_run`` to their own)."""
    fr = getattr(studio, "first_run", None)
    if fr is None:
        fr = studio.first_run = FirstRun(studio.bundle_path)
    if fr.on_bundle is None:
        fr.on_bundle = lambda: _load(studio)
    return fr


def _load(studio: Studio) -> tuple[bool, str]:
    studio.refresh_bundle()
    if studio.bundle_error:
        return False, studio.bundle_error
    assert studio.worker is not None
    state = studio.worker.wait_ready(LOAD_TIMEOUT)
    return state == "ready", studio.worker.last_error or state


def wanted(studio: Studio) -> bool:
    """The panel is offered with no bundle, or one the worker cannot load (it is then kept aside, not deleted)."""
    return bool(studio.bundle_error) or (studio.worker is not None and studio.worker.state in ("unavailable",
                                                                                                "failed"))


def intro_md(fr: FirstRun, lang: str) -> str:
    return f"### {t('setup_title', lang)}\n\n" + t("setup_intro", lang, checkpoint=_esc(str(fr.checkpoint)),
                                                    bundle=_esc(str(fr.bundle)), need=memory_need(REAL_LLM_PT) / GB)


def _problem(p: dict[str, Any], lang: str) -> str:
    try:
        return t(p["key"], lang, **p.get("params", {}))
    except KeyError:
        return p["message"]


def progress_html(s: dict[str, Any], lang: str) -> str:
    """The panel's progress: the stages (done ✓, running ▶), the running one's bar and figures, the outcome."""
    phase = s.get("phase", "idle")
    if phase == "idle":
        return ""
    if phase == "refused":
        items = "".join(f"<li>{_esc(_problem(p, lang))}</li>" for p in s.get("problems", []))
        return _p(_err(t("setup_refused", lang))) + f"<ul class='cv-setup-problems'>{items}</ul>"
    stages = s.get("stages") or ["check"]
    done, cur = set(s.get("done", [])), s.get("stage")
    rows = []
    for st in (x for x in STAGES if x in stages):
        mark = "✓" if st in done or phase == "done" else ("▶" if st == cur and phase == "running" else "·")
        rows.append(f"<li class='cv-setup-{'done' if mark == '✓' else 'now' if mark == '▶' else 'todo'}'>"
                    f"{mark} {_esc(t('st_' + st, lang))}</li>")
    out = f"<ul class='cv-setup-stages'>{''.join(rows)}</ul>"
    if phase == "running":
        total, got = s.get("total") or 0, s.get("bytes") or 0
        if total:
            out += _bar(got / total) + _p(_esc(t("setup_mb", lang, done=got / 1e6, total=total / 1e6)))
        detail = " · ".join(x for x in (
            t("setup_step", lang, step=s["step"]) if s.get("step") else "", s.get("detail", ""),
            t("setup_elapsed", lang, secs=s.get("elapsed", 0.0))) if x)
        out += _p("▶ " + _esc(detail))
    elif phase == "done":
        out += _p(_ok(t("setup_done", lang)))
    elif phase == "cancelled":
        out += _p("■ " + _esc(t("setup_cancelled", lang)))
    elif phase == "failed":
        out += _p(_err(t("setup_failed", lang, error=localize(s.get("error", ""), lang))))
    for n in s.get("notes", []):
        text = t("setup_moved", lang, path=n[6:]) if n.startswith("moved:") else t(n, lang)
        out += _p("ℹ " + _esc(text))
    return out


@dataclass
class SetupPanel:
    box: Any
    progress: Any


def build_setup(studio: Studio, tr: Any, lang: Any) -> SetupPanel:
    """The panel (call inside the Status tab) and its events."""
    fr = first_run_for(studio)
    with gr.Group(visible=wanted(studio), elem_id="cv-setup") as box:
        tr(gr.Markdown(intro_md(fr, "en"), elem_id="cv-setup-intro"), value=lambda lg: intro_md(fr, lg))
        with gr.Row(equal_height=True):
            go = tr(gr.Button(t("setup_download"), variant="primary", elem_id="cv-setup-download", scale=2),
                    value="setup_download")
            stop = tr(gr.Button(t("setup_cancel"), variant="stop", elem_id="cv-setup-cancel", scale=1),
                      value="setup_cancel")
        with gr.Row(equal_height=False):
            folder = tr(gr.Textbox(label=t("setup_folder"), placeholder=t("setup_folder_ph"), scale=4,
                                   elem_id="cv-setup-folder"), label="setup_folder", placeholder="setup_folder_ph")
            use = tr(gr.Button(t("setup_use_folder"), scale=1, elem_id="cv-setup-use-folder",
                               elem_classes="cv-inline-btn"), value="setup_use_folder")
        progress = gr.HTML("", elem_id="cv-setup-progress", elem_classes="cv-msg")
    timer = gr.Timer(1.0)

    def view(lang_: str) -> list[Any]:
        s = fr.snapshot()
        return [gr.update(visible=wanted(studio) or s.get("phase", "idle") != "idle"),
                progress_html(s, lang_)]

    def on_go(lang_: str) -> list[Any]:
        if not fr.start_download():
            gr.Info(t("setup_busy", lang_))
        return view(lang_)

    def on_folder(lang_: str, path: str) -> list[Any]:
        if not fr.start_folder(path or ""):
            gr.Info(t("setup_busy", lang_))
        return view(lang_)

    def on_stop(lang_: str) -> list[Any]:
        if not fr.cancel():
            gr.Info(t("setup_nothing", lang_))
        return view(lang_)

    outs = [box, progress]
    go.click(on_go, [lang], outs, api_visibility="private", concurrency_limit=None)
    use.click(on_folder, [lang, folder], outs, api_visibility="private", concurrency_limit=None)
    stop.click(on_stop, [lang], outs, api_visibility="private", concurrency_limit=None)
    timer.tick(view, [lang], outs, api_visibility="private", show_progress="hidden", concurrency_limit=None)
    lang.change(view, [lang], outs, api_visibility="private", show_progress="hidden")
    return SetupPanel(box, progress)
