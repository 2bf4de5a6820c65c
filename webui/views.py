"""What the page shows, as text: progress, results, status, voice details, and the per-language component table.

Pure functions of the studio's state and the page language (no Gradio events here; ``webui.app`` wires them).
"""

from __future__ import annotations

import html
import sys
import traceback
from collections.abc import Callable
from typing import Any

import gradio as gr

from pipeline.engines import engine_name, engine_title
from pipeline.shared.errors import CosyVoiceRKError
from pipeline.shared.text import LANGUAGES

from .client import FieldError, SpeakState, Studio
from .i18n import localize, t

LANGUAGE_NAMES = {"auto": "auto", "ru": "русский (ru)", "en": "English (en)", "zh": "中文 (zh)", "ja": "日本語 (ja)"}
BACKEND_NAMES = {"llama.cpp": "llama.cpp (CPU)", "onnxruntime-cpu": "ONNX Runtime (CPU)",
                 "rknn": "RKNN (NPU)", "rknn-npu": "RKNN (NPU)"}
STAGES = (("llm", "stage_llm"), ("flow", "stage_flow"), ("vocoder", "stage_vocoder"))  # CosyVoice3's
STAGE_LABELS = {**dict(STAGES), "talker": "stage_talker", "prompt": "stage_prompt", "decoder": "stage_decoder"}


def _stages(keys: Any) -> list[tuple[str, str]]:
    """(key, label key) of the stages an engine reported, in its order (CosyVoice3's when it reported none)."""
    keys = [k for k in keys if k in STAGE_LABELS] or [k for k, _ in STAGES]
    return [(k, STAGE_LABELS[k]) for k in keys]


def _esc(s: str) -> str:
    return html.escape(str(s), quote=False)


def _err(msg: str) -> str:
    return f'<span class="cv-err">✗ {_esc(msg)}</span>'


def _ok(msg: str) -> str:
    return f'<span class="cv-ok">✓ {_esc(msg)}</span>'


def _msg(e: BaseException, lang: str) -> str:
    """User-facing text of an error: our own keys are translated, pipeline messages shown as they are."""
    if isinstance(e, FieldError) and e.key:
        return t(e.key, lang, **e.params)
    if isinstance(e, CosyVoiceRKError):
        return localize(str(e), lang)
    traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    return t("err_internal", lang, error=f"{type(e).__name__}: {e}")


class _Tr:
    """Components whose text depends on the page language, and the keys of each translated property."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, comp: Any, **keys: Any) -> Any:
        self.items.append((comp, keys))
        return comp

    @property
    def components(self) -> list[Any]:
        return [c for c, _ in self.items]

    def updates(self, lang: str) -> list[Any]:
        out = []
        for _, keys in self.items:
            kw: dict[str, Any] = {}
            for prop, key in keys.items():
                if callable(key):
                    kw[prop] = key(lang)
                elif prop == "choices":
                    kw["choices"] = [(t(k, lang), v) for k, v in key]
                elif prop == "headers":
                    kw["headers"] = [t(k, lang) for k in key]
                else:
                    kw[prop] = t(key, lang)
            out.append(gr.update(**kw))
        return out


_LOGO = ('<svg width="26" height="26" viewBox="0 0 26 26" fill="#fff">'
         '<rect x="2" y="10" width="3" height="6" rx="1.5"/>'
         '<rect x="7" y="6" width="3" height="14" rx="1.5"/><rect x="12" y="2" width="3" height="22" rx="1.5"/>'
         '<rect x="17" y="7" width="3" height="12" rx="1.5"/><rect x="22" y="11" width="3" height="4" rx="1.5"/></svg>')


def title_md(lang: str) -> str:
    """The header: mark, name, one line on what it does, and the two steps (make a voice, speak)."""
    return (f'<div class="cv-brand"><div class="cv-logo" aria-hidden="true">{_LOGO}</div><div>'
            f'<h1>{_esc(t("title", lang))}</h1><p>{_esc(t("subtitle", lang))}</p></div></div>'
            f'<div class="cv-steps"><span class="cv-step"><b>1</b>{_esc(t("step_voice", lang))}</span>'
            f'<span class="cv-step"><b>2</b>{_esc(t("step_speak", lang))}</span>'
            f'<span class="cv-step"><b>3</b>{_esc(t("step_listen", lang))}</span></div>')


def heading(key: str, level: str = "###", lang: str = "en") -> str:
    return f"**{t(key, lang)}**" if level == "**" else f"{level} {t(key, lang)}"


def _lang_choices() -> list[tuple[str, str]]:
    return [(LANGUAGE_NAMES[c], c) for c in LANGUAGES]


def _ordinal_stage(st: SpeakState, lang: str) -> str:
    info = st.info
    what = {
        "prefill": lambda: t("p_prefill", lang, positions=info.get("positions", "?"),
                             cached=t("p_cached", lang) if info.get("cached") else ""),
        "tokens": lambda: t("p_tokens", lang, n=info.get("n", 0)),
        "flow": lambda: t("p_flow", lang, tokens=info.get("tokens", "?")),
        "vocoder": lambda: t("p_vocoder", lang),
    }.get(st.stage)
    if what is None:
        return t("p_voice", lang) if st.stage == "voice" else t("p_starting", lang)
    return t("p_segment", lang, i=info.get("segment", st.segments_done + 1),
             n=info.get("segments", st.segments_total or "?"), what=what())


def _bar(fraction: float, kind: str = "") -> str:
    pct = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="cv-bar {kind}" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
            f'aria-valuenow="{pct:.0f}"><i style="width:{pct:.1f}%"></i></div>')


_STAGE_SHARE = {"prefill": 0.05, "tokens": 0.35, "flow": 0.75, "vocoder": 0.9}


def _fraction(st: SpeakState) -> float:
    """How far the job is: finished parts plus the running part's stage (each part is one unit)."""
    n = st.segments_total or st.info.get("segments") or 0
    if not n:
        return 0.02
    return (st.segments_done + _STAGE_SHARE.get(st.stage, 0.0) * (st.segments_done < n)) / n


def _p(text: str) -> str:
    return f"<p>{text}</p>"


def progress_md(st: SpeakState, lang: str) -> str:
    """The progress area under the Generate button (HTML): a bar, what runs now, and how much is ready."""
    if st.phase == "queued":
        text = t("p_queued", lang, ahead=st.ahead) if st.ahead else t("p_queued_next", lang)
        return _bar(0.0) + _p(_esc(text))
    ready = (t("p_ready", lang, k=st.segments_done, n=st.segments_total, secs=st.audio_seconds)
             if st.segments_done else "")
    note = _p("ℹ " + _esc(localize(st.note, lang))) if st.note and st.phase in ("running", "done") else ""
    if st.phase == "running":
        return (_bar(_fraction(st)) + _p("▶ " + _esc(_ordinal_stage(st, lang))) + (_p(_esc(ready)) if ready else "")
                + note)
    if st.phase == "done":
        return _bar(1.0, "cv-bar-done") + _p(_ok(t("p_done", lang, secs=st.audio_seconds))) + note
    kept = _p(_esc(t("p_kept", lang, secs=st.audio_seconds))) if st.result else ""
    if st.phase == "cancelled":
        text = (t("p_cancelled_after", lang, k=st.segments_done, n=st.segments_total) if st.segments_done
                else t("p_cancelled", lang))
        return (_bar(_fraction(st), "cv-bar-stopped") + _p(f"■ {_esc(text)}" + (f" {_esc(st.note)}" if st.note else ""))
                + kept)
    return _bar(_fraction(st), "cv-bar-stopped") + _p(_err(t("p_error", lang, error=localize(st.error, lang)))) + kept


def result_md(e: dict[str, Any] | None, lang: str) -> str:
    if not e:
        return ""
    if e.get("partial"):
        return t("r_partial", lang, secs=e["duration"], k=e["segments"], n=e.get("parts_total", "?"))
    lines = [t("r_summary", lang, secs=e["duration"], compute=e.get("compute_s", 0.0), rtf=e["rtf"],
               tokens=e["tokens"], segments=e["segments"], seed=e.get("seed", "?")), "",
             f"| {t('r_stage', lang)} | {t('r_backend', lang)} | {t('r_time', lang)} |", "|---|---|---|"]
    backends, timings = e.get("backends", {}), e.get("timings", {})
    for key, label in _stages(timings or backends):
        b = backends.get(key, "?")
        lines.append(f"| {t(label, lang)} | {BACKEND_NAMES.get(b, b)} | {t('u_sec2', lang, n=timings.get(key, 0.0))} |")
    if e.get("ttfa_s") is not None:
        lines += ["", t("r_ttfa", lang, secs=e["ttfa_s"])]
    for n in e.get("notes", []) or []:
        lines += ["", f"ℹ {_esc(localize(n, lang))}"]
    for w in e.get("warnings", []) or []:
        lines += ["", f"⚠ {_esc(t('warning', lang, w=localize(w, lang)))}"]
    return "\n".join(lines)


def history_rows(studio: Studio, lang: str) -> list[list[Any]]:
    return [[e["id"], e["created"].replace("T", " ")[5:16], e.get("voice") or t("one_off", lang),
             (e.get("text", "")[:40] + ("…" if len(e.get("text", "")) > 40 else "")), round(e["duration"], 1),
             round(e["rtf"], 2)] for e in studio.history.list()]


def _state_name(state: str, lang: str) -> str:
    key = f"state_{state}"
    try:
        return t(key, lang)
    except KeyError:
        return state


def badge_md(s: dict[str, Any], lang: str) -> str:
    st = s["worker"]
    return (f'<span class="cv-dot cv-{st["state"]}">●</span> '
            + t("badge", lang, state=_state_name(st["state"], lang), queued=st.get("queued", 0)))


def banner_md(s: dict[str, Any], lang: str) -> tuple[str, bool, bool]:
    """(text, show the banner, show "check again") for a ``Studio.status()``."""
    b, w = s["bundle"], s["worker"]
    if not b["found"]:
        text = (t("no_bundle", lang, error=_esc(localize(b["error"], lang))) + "\n\n"
                + t("how_to_get", lang, bundle=_esc(b["location"])))
        return text, True, True
    if w.get("state") in ("unavailable", "failed"):
        text = t("worker_unavailable", lang, error=_esc(w.get("last_error", ""))) + "\n\n" + \
            t("how_to_get", lang, bundle=_esc(b["location"]))
        return text, True, True
    if b.get("random_weights"):
        return "⚠ " + t("random_bundle", lang), True, False
    return "", False, False


def _source_rows(src: dict[str, Any], lang: str, item: Callable[[str, Any], str]) -> list[str]:
    """The LLM checkpoint and the text tokenizer the bundle was converted with (cosyvoice3's bundle_info)."""
    llm, tok = src.get("llm"), src.get("tokenizer")
    if llm:
        value = t("s_llm_rl" if llm.get("choice") == "rl" else "s_llm_base", lang, file=f"`{_esc(llm.get('file'))}`")
    else:
        value = t("s_not_recorded", lang)
    rows = [item("s_llm_ckpt", value)]
    if tok:
        rows.append(item("s_tokenizer", f"{_esc(tok.get('upstream_class'))} (`{_esc(tok.get('version'))}`)"))
    return rows


def status_md(s: dict[str, Any], lang: str) -> str:
    b, w = s["bundle"], s["worker"]

    def item(key: str, value: Any) -> str:
        return f"- **{t(key, lang)}:** {value}"

    rows = [f"### {t('s_bundle', lang)}", "", item("s_path", f"`{_esc(b['location'])}`")]
    if b["found"]:
        quant = w.get("bundle", {}).get("quant") or ", ".join(b.get("quants", []))
        rows += [item("s_engine", _esc(b.get("engine_title", ""))),
                 item("s_fingerprint", f"`{b.get('fingerprint', '')}`"),
                 item("s_weights", t("s_random" if b.get("random_weights") else "s_real", lang)),
                 item("s_quant", quant)]
        if b.get("engine", "cosyvoice3") == "cosyvoice3":
            rows += _source_rows(b.get("source") or {}, lang, item)
        elif b.get("model"):
            rows.append(item("s_model", _esc(b["model"])))
    else:
        rows.append(f"- {_err(localize(b['error'], lang))}")
    rows += ["", f"### {t('s_backends', lang)}", "", f"| {t('r_stage', lang)} | {t('r_backend', lang)} |", "|---|---|"]
    for key, label in _stages(w.get("backends", {})):
        be = w.get("backends", {}).get(key)
        rows.append(f"| {t(label, lang)} | {BACKEND_NAMES.get(be, be) if be else '—'} |")
    placement = w.get("placement") or {}
    if placement:
        rows.append("")
        if placement.get("flow_backend_reason"):
            rows.append(item("s_flow_choice", _esc(placement["flow_backend_reason"])))
        rows.append(item("s_cpus", _esc(placement.get("cpus_reason", ""))))
        if placement.get("stream_reason"):
            rows.append(item("s_stream", _esc(placement["stream_reason"])))
        if placement.get("flow_steps"):
            rows.append(item("s_flow_steps", placement["flow_steps"]))
    rows += ["", f"### {t('s_worker', lang)}", "", item("s_state", _state_name(w["state"], lang))]
    if w["state"] != "stopped":
        running = w.get("running")
        run_text = (t("s_running", lang, kind=running["kind"], id=running["id"], secs=running["seconds"])
                    if running else t("s_idle", lang))
        mem = t("u_mb", lang, n=w["rss_mb"]) if w.get("rss_mb") else "—"
        up = t("u_s", lang, n=w["uptime_s"]) if w.get("uptime_s") is not None else "—"
        rows += [item("s_pid", w.get("pid") or "—"), item("s_memory", mem), item("s_uptime", up),
                 item("s_queue", t("s_queue_value", lang, running=run_text, waiting=w["queued"],
                                   max=w["max_queue"])),
                 item("s_jobs", f"{w['done']} / {w['failed']} / {w['cancelled']}"),
                 item("s_restarts", f"{w['restarts']} ({w['crashes']})")]
        if w.get("last_crash"):
            rows.append(item("s_last_crash", _esc(w["last_crash"])))
        if w.get("last_error") and w["state"] in ("unavailable", "failed", "crashed"):
            rows.append(f"- {_err(w['last_error'])}")
    rows += ["", f"### {t('s_folders', lang)}", "", item("s_voices", f"`{_esc(s['speakers_dir'])}` ({s['voices']})"),
             item("history", f"`{_esc(s['results_dir'])}`")]
    return "\n".join(rows)


def voice_details_md(studio: Studio, name: str | None, lang: str) -> tuple[str, str | None]:
    if not name:
        return (t("no_voices_yet", lang) if not studio.voice_names() else ""), None
    try:
        v = studio.voice(name)
    except CosyVoiceRKError as e:
        return _err(t("voice_unreadable", lang, error=str(e))), None
    secs = t("u_sec1", lang, n=v["duration"]) if isinstance(v.get("duration"), (int, float)) else ""
    md = t("voice_details", lang, name=_esc(v["name"]), engine=_esc(engine_title(engine_name(v))),
           language=LANGUAGE_NAMES.get(v["language"], v["language"]),
           secs=secs, created=v["created"].replace("T", " ")[:16], transcript=_esc(v["transcript"]))
    return md, v["audio"]


def damaged_md(damaged: list[dict[str, Any]], lang: str) -> str:
    """The damaged-voices panel: each one with what is wrong, and what Repair and Delete do."""
    if not damaged:
        return ""
    rows = [f"**{t('damaged_title', lang)}**", "", t("damaged_help", lang), ""]
    rows += [f"- `{_esc(d['slug'])}`: {_esc(localize(d['error'], lang))}" for d in damaged]
    return "\n".join(rows)
