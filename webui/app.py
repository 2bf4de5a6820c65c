"""The studio page: Gradio Blocks over :class:`webui.client.Studio`.

This process serves the page and never touches a model (see ``pipeline/worker.py``). Every handler catches
its errors and shows a message next to the input that caused it; nothing reaches the page as a traceback.
Named API endpoints (for ``gradio_client``): ``/synthesize``, ``/synthesize_with_prompt``, ``/add_voice``,
``/voices``, ``/rename_voice``, ``/delete_voice``, ``/export_voice``, ``/import_voice``, ``/status``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from pipeline.shared.errors import CosyVoiceRKError

from . import live, openai_api
from .api import _api
from .client import TEMPERATURE_RANGE, TOP_K_RANGE, TOP_P_RANGE, FieldError, SpeakState, Studio
from .i18n import LANG_CHOICES, LANGS, localize, pick_language, t
from .preview import wire_preview
from .serve import SlowAuth
from .setup_view import build_setup
from .speak_modes import engine_view, mode_controls, speed_slider, tag_menu, wire
from .style import CSS, LOCALE_JS, REVEAL_ERROR_JS, STUDIO_HEAD, theme
from .transcribe import wire_transcription
from .views import (
    _err,
    _esc,
    _lang_choices,
    _msg,
    _ok,
    _Tr,
    badge_md,
    banner_md,
    damaged_md,
    heading,
    history_rows,
    progress_md,
    result_md,
    status_md,
    title_md,
    voice_details_md,
)

# The live player (webui/live_player.js, served by webui/live.py) plays a job's audio chunks gaplessly as they
# are made; here only the mark for pages the browser will not give the microphone to.
HEAD = live.head_html() + """
<script>
(() => {
  const mark = () => { if (!window.isSecureContext) document.body.classList.add('cv-insecure'); };
  if (document.body) mark(); else document.addEventListener('DOMContentLoaded', mark);
})();
</script>
"""
LIVE_JS, LIVE_HTML = live.LIVE_JS, live.LIVE_HTML


def build_app(studio: Studio) -> gr.Blocks:
    tr = _Tr()
    sampling = studio.sampling_defaults()
    h_cols = ("#", "h_time", "h_voice", "h_text", "h_seconds", "h_rtf")

    # delete_cache: Gradio's copies of uploads and results older than a day go, hourly (boards have small disks)
    with gr.Blocks(title="CosyVoice-RK", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        saved_lang = gr.BrowserState("", storage_key="cosyvoice-rk-ui-language")
        # the job this browser started last: Cancel still reaches it after a reload (a new Gradio session)
        last_job = gr.BrowserState("", storage_key="cosyvoice-rk-last-job")
        with gr.Row(equal_height=True, elem_id="cv-header"):
            with gr.Column(scale=4, min_width=300):
                tr(gr.HTML(title_md("en")), value=title_md)
            with gr.Column(scale=2, min_width=220):
                lang = tr(gr.Radio(LANG_CHOICES, value="en", label=t("ui_language"), elem_id="cv-lang",
                                   show_label=False, container=False), label="ui_language")
                badge = gr.Markdown(badge_md(studio.status(), "en"), elem_id="cv-badge")
        with gr.Group(visible=False) as banner_box:
            banner = gr.Markdown("", elem_id="cv-banner")
            check_again = tr(gr.Button(t("check_again"), size="sm", visible=False, elem_id="cv-check-again"),
                             value="check_again")

        with gr.Tabs() as tabs:
            # ---------------------------------------------------------------------------------- Speak
            with tr(gr.Tab(t("tab_speak"), id="speak"), label="tab_speak") as tab_speak:
                has_voices = bool(studio.voice_names())
                with gr.Row(visible=not has_voices, elem_id="cv-first", equal_height=True) as s_first:
                    with gr.Column(scale=4, min_width=240):
                        tr(gr.Markdown(t("first_visit")), value="first_visit")
                    with gr.Column(scale=1, min_width=160):
                        s_first_go = tr(gr.Button(t("first_visit_go"), variant="primary", size="sm",
                                                  elem_id="cv-first-go"), value="first_visit_go")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=320, elem_classes="cv-card"):
                        s_mode = tr(gr.Radio([(t("src_saved"), "saved"), (t("src_prompt"), "prompt")], value="saved",
                                             label=t("voice_source"), elem_id="cv-mode"),
                                    label="voice_source", choices=[("src_saved", "saved"), ("src_prompt", "prompt")])
                        with gr.Row(equal_height=False) as s_saved_row:
                            s_voice = tr(gr.Dropdown(studio.voice_names(), label=t("saved_voice"), scale=4,
                                                     elem_id="cv-voice"), label="saved_voice")
                            s_refresh = tr(gr.Button(t("refresh"), size="sm", scale=1, min_width=80,
                                                     elem_classes="cv-refresh"), value="refresh")
                        s_voice_msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-voice-msg")
                        with gr.Group(visible=False) as s_prompt_box:
                            s_audio = tr(gr.Audio(sources=["upload", "microphone"], type="filepath",
                                                  label=t("prompt_audio"), elem_id="cv-s-audio"),
                                         label="prompt_audio")
                            s_audio_msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-s-audio-msg")
                            s_ptext = tr(gr.Textbox(label=t("prompt_text"), placeholder=t("prompt_text_ph"), lines=2,
                                                    elem_id="cv-s-ptext"),
                                         label="prompt_text", placeholder="prompt_text_ph")
                            s_ptext_msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-s-ptext-msg")
                            s_plang = tr(gr.Dropdown(_lang_choices(), value="auto", label=t("prompt_language")),
                                         label="prompt_language")
                        s_how = mode_controls(tr, lambda: studio.engine)
                        with gr.Row(equal_height=False):
                            s_text = tr(gr.Textbox(label=t("text"), placeholder=t("text_ph"), lines=6, max_lines=20,
                                                   elem_id="cv-text", scale=4), label="text", placeholder="text_ph")
                            s_tags = tag_menu(tr)
                        s_count = gr.Markdown(f"0 / {studio.max_text_chars}", elem_classes="cv-msg",
                                              elem_id="cv-count")
                        s_text_msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-text-msg")
                        s_preview = gr.HTML("", elem_id="cv-preview")
                        with gr.Row():
                            s_lang = tr(gr.Dropdown(_lang_choices(), value="ru", label=t("language"),
                                                    elem_id="cv-language", min_width=160), label="language")
                            s_temp = tr(gr.Slider(*TEMPERATURE_RANGE, value=1.0, step=0.05, label=t("temperature"),
                                                  info=t("temperature_info"), elem_id="cv-temperature",
                                                  min_width=200),
                                        label="temperature", info="temperature_info")
                            s_speed = speed_slider(tr)
                        with tr(gr.Accordion(t("advanced"), open=False), label="advanced"):
                            with gr.Row():
                                s_seed = tr(gr.Number(-1, precision=0, minimum=-1, label=t("seed"), info=t("seed_info"),
                                                      elem_id="cv-seed"), label="seed", info="seed_info")
                                s_topk = tr(gr.Slider(*TOP_K_RANGE, value=sampling["top_k"], step=1, label=t("top_k")),
                                            label="top_k")
                                s_topp = tr(gr.Slider(*TOP_P_RANGE, value=sampling["top_p"], step=0.05,
                                                      label=t("top_p")), label="top_p")
                            s_stream = tr(gr.Checkbox(True, label=t("stream"), info=t("stream_info"),
                                                      elem_id="cv-stream"), label="stream", info="stream_info")
                        with gr.Row():
                            s_go = tr(gr.Button(t("generate"), variant="primary", elem_id="cv-generate", scale=3,
                                                size="lg"), value="generate")
                            s_cancel = tr(gr.Button(t("cancel"), variant="stop", elem_id="cv-cancel", scale=1,
                                                    size="lg"), value="cancel")
                        # right under the button: what runs, how far, and any error (never off-screen above it)
                        s_progress = gr.HTML("", elem_classes="cv-msg", elem_id="cv-progress")
                    with gr.Column(scale=2, min_width=320, elem_classes="cv-card"):
                        tr(gr.Markdown(heading("result_title", "**"), elem_classes="cv-card-title"),
                           value=lambda lg: heading("result_title", "**", lg))
                        s_result = tr(gr.Audio(label=t("result"), type="filepath", interactive=False,
                                               elem_id="cv-result"), label="result")
                        s_download = tr(gr.DownloadButton(t("download_wav"), visible=False, elem_id="cv-download",
                                                          size="sm"), label="download_wav")
                        s_info = gr.Markdown("", elem_id="cv-info")
                        with tr(gr.Accordion(t("live"), open=True), label="live"):
                            gr.HTML(LIVE_HTML, js_on_load=None)
                        s_live = gr.Textbox("", visible="hidden", elem_id="cv-live-data")
                        tr(gr.Markdown(heading("history", "**"), elem_classes="cv-card-title"),
                           value=lambda lg: heading("history", "**", lg))
                        s_history = gr.Dataframe(history_rows(studio, "en"),
                                                 headers=["#"] + [t(k) for k in h_cols[1:]], interactive=False,
                                                 wrap=True, elem_id="cv-history",
                                                 column_widths=["7%", "18%", "16%", "35%", "13%", "11%"])
                        h_player = tr(gr.Audio(label=t("history_player"), type="filepath", interactive=False,
                                               visible=False, elem_id="cv-h-player"), label="history_player")
                        h_info = gr.Markdown("", elem_id="cv-h-info")

            # ---------------------------------------------------------------------------------- Voices
            with tr(gr.Tab(t("tab_voices"), id="voices"), label="tab_voices") as tab_voices:
                with gr.Row(equal_height=False):
                    with gr.Column(min_width=320, elem_classes="cv-card"):
                        tr(gr.Markdown(heading("new_voice"), elem_classes="cv-card-title"),
                           value=lambda lg: heading("new_voice", "###", lg))
                        v_audio = tr(gr.Audio(sources=["upload", "microphone"], type="filepath",
                                              label=t("voice_audio"), elem_id="cv-v-audio"), label="voice_audio")
                        tr(gr.Markdown(t("mic_hint"), elem_classes="cv-mic-hint"), value="mic_hint")
                        v_audio_msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-v-audio-msg")
                        v_transcript = tr(gr.Textbox(label=t("transcript"), placeholder=t("transcript_ph"), lines=2,
                                                     elem_id="cv-v-transcript"),
                                          label="transcript", placeholder="transcript_ph")
                        v_transcript_msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-v-transcript-msg")
                        with gr.Row():
                            v_name = tr(gr.Textbox(label=t("voice_name"), placeholder=t("voice_name_ph"),
                                                   elem_id="cv-v-name", min_width=160), label="voice_name",
                                        placeholder="voice_name_ph")
                            v_lang = tr(gr.Dropdown(_lang_choices(), value="auto", label=t("voice_language"),
                                                    elem_id="cv-v-lang", min_width=160), label="voice_language")
                        v_name_msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-v-name-msg")
                        v_overwrite = tr(gr.Checkbox(False, label=t("replace"), elem_id="cv-v-overwrite"),
                                         label="replace")
                        v_save = tr(gr.Button(t("save_voice"), variant="primary", elem_id="cv-v-save", size="lg"),
                                    value="save_voice")
                        v_save_msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-v-save-msg")
                    with gr.Column(min_width=320, elem_classes="cv-card"):
                        tr(gr.Markdown(heading("saved_voices"), elem_classes="cv-card-title"),
                           value=lambda lg: heading("saved_voices", "###", lg))
                        names = studio.voice_names()
                        v_list = tr(gr.Dropdown(names, value=names[0] if names else None, label=t("voice_list"),
                                                elem_id="cv-v-list"), label="voice_list")
                        details, audio0 = voice_details_md(studio, names[0] if names else None, "en")
                        v_details = gr.Markdown(details, elem_id="cv-v-details")
                        v_player = tr(gr.Audio(audio0, label=t("voice_player"), type="filepath", interactive=False),
                                      label="voice_player")
                        with gr.Row(equal_height=False):
                            v_rename_to = tr(gr.Textbox(names[0] if names else "", label=t("rename_to"), scale=3,
                                                        elem_id="cv-v-rename-to"), label="rename_to")
                            v_rename = tr(gr.Button(t("rename"), scale=1, elem_id="cv-v-rename",
                                                    elem_classes="cv-inline-btn"), value="rename")
                        with gr.Row():
                            v_export = tr(gr.Button(t("export"), elem_id="cv-v-export"), value="export")
                            v_delete = tr(gr.Button(t("delete"), variant="stop", elem_id="cv-v-delete"),
                                          value="delete")
                        with gr.Row(visible=False) as v_confirm_row:
                            v_confirm_text = gr.Markdown("")
                            v_delete_yes = tr(gr.Button(t("delete_yes"), variant="stop", size="sm",
                                                        elem_id="cv-v-delete-yes"), value="delete_yes")
                            v_delete_no = tr(gr.Button(t("delete_no"), size="sm"), value="delete_no")
                        v_manage_msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-v-manage-msg")
                        v_export_file = tr(gr.File(label=t("export_file"), visible=False, interactive=False,
                                                   elem_id="cv-v-export-file"), label="export_file")
                        damaged0 = studio.damaged_voices()
                        with gr.Group(visible=bool(damaged0), elem_id="cv-damaged") as d_box:
                            d_md = gr.Markdown(damaged_md(damaged0, "en"), elem_id="cv-damaged-list")
                            d_pick = tr(gr.Dropdown([d["slug"] for d in damaged0],
                                                    value=damaged0[0]["slug"] if damaged0 else None,
                                                    label=t("damaged_pick"), elem_id="cv-damaged-pick"),
                                        label="damaged_pick")
                            with gr.Row():
                                d_repair = tr(gr.Button(t("repair"), size="sm", elem_id="cv-repair"), value="repair")
                                d_delete = tr(gr.Button(t("delete"), size="sm", variant="stop",
                                                        elem_id="cv-damaged-delete"), value="delete")
                        # outside the panel: "Deleted" stays said when the last damaged voice goes
                        d_msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-damaged-msg")
                        tr(gr.Markdown(heading("import_title", "####")),
                           value=lambda lg: heading("import_title", "####", lg))
                        v_import_file = tr(gr.File(label=t("import_file"), file_types=[".cvvoice", ".zip"],
                                                   type="filepath", elem_id="cv-v-import-file"), label="import_file")
                        with gr.Row(equal_height=False):
                            v_import_name = tr(gr.Textbox(label=t("import_name"), scale=3), label="import_name")
                            v_import = tr(gr.Button(t("import"), scale=1, elem_id="cv-v-import",
                                                    elem_classes="cv-inline-btn"), value="import")
                        v_import_msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-v-import-msg")

            # ---------------------------------------------------------------------------------- Status
            with tr(gr.Tab(t("tab_status"), id="status"), label="tab_status"):
                build_setup(studio, tr, lang)  # first run: download and convert, or a local checkpoint folder
                st_md = gr.Markdown(status_md(studio.status(), "en"), elem_id="cv-status")
                with gr.Row():
                    st_refresh = tr(gr.Button(t("status_refresh"), size="sm"), value="status_refresh")
                    st_restart = tr(gr.Button(t("restart_worker"), size="sm", variant="stop",
                                              elem_id="cv-restart"), value="restart_worker")
        timer = gr.Timer(4.0)

        # ---------------------------------------------------------------------------------- language
        def translations(lang_: str) -> list[Any]:
            return tr.updates(lang_ if lang_ in LANGS else "en")

        def live_view(lang_: str) -> list[Any]:
            s = studio.status()
            text, show, fixable = banner_md(s, lang_)
            return [badge_md(s, lang_), gr.update(value=text), gr.update(visible=show),
                    gr.update(visible=fixable), status_md(s, lang_)]

        live_outputs = [badge, banner, banner_box, check_again, st_md]

        def history_view(lang_: str) -> Any:
            return gr.update(value=history_rows(studio, lang_), headers=["#"] + [t(k, lang_) for k in h_cols[1:]])

        def voices_view(lang_: str) -> list[Any]:
            """The first-visit hint and the damaged-voices panel, as the voices on disk are now."""
            damaged = studio.damaged_voices()
            slugs = [d["slug"] for d in damaged]
            return [gr.update(visible=not studio.voice_names()), gr.update(visible=bool(damaged)),
                    damaged_md(damaged, lang_), gr.update(choices=slugs, value=slugs[0] if slugs else None)]

        voices_outputs = [s_first, d_box, d_md, d_pick]

        def on_lang(lang_: str, name: str | None) -> list[Any]:
            details_, _ = voice_details_md(studio, name, lang_)
            return [*translations(lang_), *live_view(lang_), lang_, details_, history_view(lang_),
                    *voices_view(lang_)]

        lang.change(on_lang, [lang, v_list], [*tr.components, *live_outputs, saved_lang, v_details, s_history,
                                              *voices_outputs],
                    api_visibility="private", show_progress="hidden")
        lang.change(None, [lang], None, js=LOCALE_JS, api_visibility="private")

        def on_load(saved: str, request: gr.Request) -> list[Any]:
            # ?lang=ru in the address, else the choice this browser made before, else its preferred language
            q = request.query_params.get("lang") if request else None
            if q in LANGS:
                choice = q
            elif saved in LANGS:
                choice = saved
            else:
                choice = pick_language(request.headers.get("accept-language") if request else "")
            # everything that changes on the server is read again: a reload shows the results made meanwhile
            latest = next(iter(studio.history.list()), None)  # the last result is in front, with its waveform
            return [choice, voice_choices(None), voice_choices(None), *live_view(choice), history_view(choice),
                    *voices_view(choice), latest["path"] if latest else None,
                    gr.update(value=latest["path"], visible=True) if latest else gr.update(),
                    result_md(latest, choice)]

        demo.load(on_load, [saved_lang], [lang, s_voice, v_list, *live_outputs, s_history, *voices_outputs,
                                          s_result, s_download, s_info],
                  api_visibility="private", show_progress="hidden")
        demo.load(None, [lang], None, js=LOCALE_JS, api_visibility="private")
        demo.load(lambda lang_: engine_view(studio.engine, lang_), [lang], [s_how.mode, s_speed, s_tags],
                  api_visibility="private", show_progress="hidden")
        timer.tick(live_view, [lang], live_outputs, api_visibility="private", show_progress="hidden",
                   concurrency_limit=None)
        st_refresh.click(live_view, [lang], live_outputs, api_visibility="private", concurrency_limit=None)

        def on_check_again(lang_: str) -> list[Any]:
            studio.refresh_bundle()
            return live_view(lang_)

        check_again.click(on_check_again, [lang], live_outputs, api_visibility="private")

        def on_restart(lang_: str) -> list[Any]:
            studio.restart_worker()
            return live_view(lang_)

        st_restart.click(on_restart, [lang], live_outputs, api_visibility="private")

        # ---------------------------------------------------------------------------------- prompt checks
        def prompt_feedback(lang_: str, path: str | None) -> str:
            if not path:
                return ""
            try:
                c = studio.check_prompt(path)
            except Exception as e:  # noqa: BLE001 - shown next to the input
                return _err(_msg(e, lang_))
            return _ok(t("prompt_ok", lang_, secs=c.duration, trimmed=c.trimmed, rate=c.sample_rate))

        v_audio.change(prompt_feedback, [lang, v_audio], [v_audio_msg], api_visibility="private",
                       show_progress="hidden")
        s_audio.change(prompt_feedback, [lang, s_audio], [s_audio_msg], api_visibility="private",
                       show_progress="hidden")
        wire_transcription(studio, lang, v_audio, v_transcript, v_transcript_msg, v_lang)
        wire_transcription(studio, lang, s_audio, s_ptext, s_ptext_msg, s_plang, s_how.mode, s_mode)
        s_text.change(None, [s_text], [s_count], js=f"(t) => `${{(t || '').length}} / {studio.max_text_chars}`",
                      api_visibility="private")

        wire_preview(studio, s_preview, lang, s_text, s_lang)

        def on_mode(mode: str) -> list[Any]:
            return [gr.update(visible=mode == "saved"), gr.update(visible=mode == "prompt")]

        s_mode.change(on_mode, [s_mode], [s_saved_row, s_prompt_box], api_visibility="private",
                      show_progress="hidden")

        def voice_choices(selected: str | None = None) -> Any:
            names_ = studio.voice_names()
            return gr.update(choices=names_, value=selected if selected in names_ else (names_[0] if names_ else None))

        s_refresh.click(lambda v: voice_choices(v), [s_voice], [s_voice], api_visibility="private")
        tab_speak.select(lambda v: voice_choices(v), [s_voice], [s_voice], api_visibility="private",
                         show_progress="hidden")
        tab_voices.select(lambda v: voice_choices(v), [v_list], [v_list], api_visibility="private",
                          show_progress="hidden")
        s_first_go.click(lambda: gr.Tabs(selected="voices"), None, [tabs], api_visibility="private",
                         show_progress="hidden")

        # ---------------------------------------------------------------------------------- generate
        gen_outputs = [s_progress, s_live, s_result, s_download, s_info, s_history, s_text_msg, s_voice_msg,
                       s_audio_msg, s_ptext_msg, s_go, last_job, s_how.instruct_msg]

        def on_generate(lang_: str, mode: str, voice: str | None, p_audio: str | None, p_text: str, p_lang: str,
                        text: str, language: str, temperature: float, seed: float | None, top_k: float,
                        top_p: float, stream: bool, how: str, instruct: str, speed: float,
                        request: gr.Request) -> Iterator[list[Any]]:
            keep = gr.update()
            # stale errors go; the prompt check next to the recording describes the recording, so it stays
            msgs: dict[str, Any] = {"text": "", "voice": "", "audio": keep, "transcript": "", "instruct": ""}

            def out(progress: Any = keep, live: Any = keep, result: Any = keep, download: Any = keep,
                    info: Any = keep, history: Any = keep, go: Any = keep, job_id: Any = keep) -> list[Any]:
                return [progress, live, result, download, info, history, msgs["text"], msgs["voice"],
                        msgs["audio"], msgs["transcript"], go, job_id, msgs["instruct"]]

            try:
                job = studio.speak(text, voice=voice if mode == "saved" else None,
                                   prompt_audio=p_audio if mode == "prompt" else None, prompt_text=p_text,
                                   prompt_language=p_lang, language=language, temperature=temperature,
                                   seed=None if seed is None else int(seed), top_k=int(top_k), top_p=float(top_p),
                                   stream=bool(stream), session=request.session_hash if request else None,
                                   mode=how, instruct=instruct if how == "instruct" else None, speed=speed)
            except FieldError as e:
                # next to the input it is about, and under the button too: the input may be scrolled away
                if e.field in msgs:
                    msgs[e.field] = _err(_msg(e, lang_))
                yield out(progress=_err(_msg(e, lang_)))
                return
            except Exception as e:  # noqa: BLE001 - shown on the page
                yield out(progress=_err(_msg(e, lang_)))
                return
            live_spec = {"job": job.id, "url": job.meta["live_url"], "rate": studio.sample_rate}
            yield out(progress=progress_md(SpeakState(job.id), lang_), live=json.dumps(live_spec),
                      result=None, download=gr.update(visible=False, value=None), info="",
                      go=gr.update(interactive=False), job_id=str(job.id))
            last = ""
            try:
                for st in studio.follow(job):
                    md = progress_md(st, lang_)
                    if st.phase in ("queued", "running") and md == last:
                        continue
                    last = md
                    if st.phase == "done" and st.result:
                        yield out(progress=md, result=st.result["path"],
                                  download=gr.update(value=st.result["path"], visible=True),
                                  info=result_md(st.result, lang_), history=history_rows(studio, lang_),
                                  go=gr.update(interactive=True))
                    elif st.phase in ("error", "cancelled"):
                        kept = st.result  # the parts made before it stopped, kept in Recent results
                        yield out(progress=md, go=gr.update(interactive=True),
                                  result=kept["path"] if kept else keep,
                                  download=gr.update(value=kept["path"], visible=True) if kept else keep,
                                  info=result_md(kept, lang_) if kept else keep,
                                  history=history_rows(studio, lang_) if kept else keep)
                    else:
                        yield out(progress=md)
            except Exception as e:  # noqa: BLE001
                yield out(progress=_err(_msg(e, lang_)), go=gr.update(interactive=True))

        s_go.click(on_generate, [lang, s_mode, s_voice, s_audio, s_ptext, s_plang, s_text, s_lang, s_temp, s_seed,
                                 s_topk, s_topp, s_stream, s_how.mode, s_how.instruct, s_speed], gen_outputs,
                   api_visibility="private",
                   show_progress="hidden", concurrency_limit=None)
        wire(s_how, s_tags, s_text)
        s_live.change(None, [s_live], None, js=LIVE_JS, api_visibility="private")
        s_progress.change(None, None, None, js=REVEAL_ERROR_JS, api_visibility="private")

        def on_cancel(lang_: str, job_id: str, request: gr.Request) -> Any:
            if studio.cancel_session(request.session_hash if request else ""):
                return
            if str(job_id).isdigit() and studio.cancel(int(job_id)):  # started before a reload of this page
                return
            gr.Info(t("p_nothing_to_cancel", lang_))

        s_cancel.click(on_cancel, [lang, last_job], None, api_visibility="private", concurrency_limit=None,
                       show_progress="hidden")

        def on_history(lang_: str, evt: gr.SelectData) -> list[Any]:
            row = evt.row_value if evt is not None else None
            e = studio.history.get(int(row[0])) if row else None
            if not e:
                return [gr.update(visible=False, value=None), ""]
            return [gr.update(value=e["path"], visible=True), result_md(e, lang_)]

        s_history.select(on_history, [lang], [h_player, h_info], api_visibility="private")

        # ---------------------------------------------------------------------------------- voices
        def on_save_voice(lang_: str, name: str, audio: str | None, transcript: str, language: str,
                          overwrite: bool) -> Iterator[list[Any]]:
            keep = gr.update()
            errors = studio.validate_new_voice(name, audio, transcript, language, overwrite)
            by_field = {e.field: _err(_msg(e, lang_)) for e in reversed(errors)}
            audio_ok = "" if "audio" in by_field else prompt_feedback(lang_, audio)
            fields = [by_field.get("audio", audio_ok), by_field.get("transcript", ""), by_field.get("name", "")]
            if errors:
                yield [*fields, by_field.get("language", ""), keep, keep, *[keep] * len(voices_outputs)]
                return
            try:
                job = studio.add_voice(name, audio, transcript, language, overwrite)
                same = [keep, keep, *[keep] * len(voices_outputs)]
                yield [*fields, t("saving", lang_), *same]
                for ev in job.events_until_done():
                    if ev["type"] == "queued" and ev["ahead"]:
                        yield [*fields, t("saving_queued", lang_, ahead=ev["ahead"]), *same]
                    elif ev["type"] == "started":
                        yield [*fields, t("saving", lang_), *same]
                final = job.final or {}
                if final.get("type") != "done":
                    raise CosyVoiceRKError(final.get("message") or t("p_cancelled", lang_))
                res = final["result"]
                info = res.get("info", {})
                msg = _ok(t("saved", lang_, name=res["name"], secs=info.get("duration", 0.0),
                            tokens=info.get("prompt_tokens", "?")))
                if info.get("warning"):
                    msg += "\n\n⚠ " + _esc(localize(info["warning"], lang_))
                yield [*fields, msg, voice_choices(res["name"]), voice_choices(None), *voices_view(lang_)]
            except Exception as e:  # noqa: BLE001 - shown next to the save button
                yield [*fields, _err(_msg(e, lang_)), keep, keep, *[keep] * len(voices_outputs)]

        v_save.click(on_save_voice, [lang, v_name, v_audio, v_transcript, v_lang, v_overwrite],
                     [v_audio_msg, v_transcript_msg, v_name_msg, v_save_msg, v_list, s_voice, *voices_outputs],
                     api_visibility="private", show_progress="minimal")

        def on_pick(lang_: str, name: str | None) -> list[Any]:
            md, audio = voice_details_md(studio, name, lang_)
            return [md, audio, gr.update(value=name or ""), gr.update(visible=False, value=None),
                    gr.update(visible=False)]

        # the list also changes after a rename or delete: what was done stays said until the person picks again
        v_list.change(on_pick, [lang, v_list], [v_details, v_player, v_rename_to, v_export_file, v_confirm_row],
                      api_visibility="private", show_progress="hidden")
        v_list.input(lambda: "", None, [v_manage_msg], api_visibility="private", show_progress="hidden")

        def guarded(fn: Callable[..., list[Any]], n_out: int, msg_index: int) -> Callable[..., list[Any]]:
            def run(lang_: str, *args: Any) -> list[Any]:
                try:
                    return fn(lang_, *args)
                except Exception as e:  # noqa: BLE001 - shown next to the input
                    out = [gr.update()] * n_out
                    out[msg_index] = _err(_msg(e, lang_))
                    return out
            return run

        def on_rename(lang_: str, name: str | None, new: str) -> list[Any]:
            if not name:
                return [_err(t("choose_voice", lang_)), gr.update(), gr.update()]
            new_name = studio.rename_voice(name, new)
            return [_ok(t("renamed", lang_, name=new_name)), voice_choices(new_name), voice_choices(None)]

        v_rename.click(guarded(on_rename, 3, 0), [lang, v_list, v_rename_to], [v_manage_msg, v_list, s_voice],
                       api_visibility="private")

        def on_delete_ask(lang_: str, name: str | None) -> list[Any]:
            if not name:
                return [gr.update(visible=False), "", _err(t("choose_voice", lang_))]
            return [gr.update(visible=True), t("delete_confirm", lang_, name=_esc(name)), ""]

        v_delete.click(on_delete_ask, [lang, v_list], [v_confirm_row, v_confirm_text, v_manage_msg],
                       api_visibility="private", show_progress="hidden")
        v_delete_no.click(lambda: gr.update(visible=False), None, [v_confirm_row], api_visibility="private",
                          show_progress="hidden")

        def on_delete(lang_: str, name: str | None) -> list[Any]:
            if not name:
                return [_err(t("choose_voice", lang_)), gr.update(), gr.update(), gr.update(visible=False)]
            studio.delete_voice(name)
            return [_ok(t("deleted", lang_, name=name)), voice_choices(None), voice_choices(None),
                    gr.update(visible=False), *voices_view(lang_)]

        v_delete_yes.click(guarded(on_delete, 8, 0), [lang, v_list],
                           [v_manage_msg, v_list, s_voice, v_confirm_row, *voices_outputs], api_visibility="private")

        def on_repair(lang_: str, slug: str | None) -> list[Any]:
            """Load a damaged voice's recording into the new-voice form, to be saved again in its place."""
            if not slug:
                return [_err(t("choose_voice", lang_)), *[gr.update()] * 4]
            audio = studio.damaged_audio(slug)
            return [t("repair_hint", lang_, name=_esc(slug)) if audio else t("repair_no_audio", lang_, name=_esc(slug)),
                    gr.update(value=slug), gr.update(value=audio) if audio else gr.update(), gr.update(value=True),
                    gr.update(value="")]

        d_repair.click(guarded(on_repair, 5, 0), [lang, d_pick], [d_msg, v_name, v_audio, v_overwrite, v_transcript],
                       api_visibility="private")

        def on_delete_damaged(lang_: str, slug: str | None) -> list[Any]:
            if not slug:
                return [_err(t("choose_voice", lang_)), *[gr.update()] * len(voices_outputs)]
            studio.delete_damaged(slug)
            return [_ok(t("deleted", lang_, name=slug)), *voices_view(lang_)]

        d_delete.click(guarded(on_delete_damaged, 1 + len(voices_outputs), 0), [lang, d_pick],
                       [d_msg, *voices_outputs], api_visibility="private")

        def on_export(lang_: str, name: str | None) -> list[Any]:
            if not name:
                return [gr.update(visible=False), _err(t("choose_voice", lang_))]
            path = studio.export_voice(name)
            return [gr.update(value=str(path), visible=True), _ok(t("exported", lang_))]

        v_export.click(guarded(on_export, 2, 1), [lang, v_list], [v_export_file, v_manage_msg],
                       api_visibility="private")

        def on_import(lang_: str, path: str | None, name: str, overwrite: bool) -> Iterator[list[Any]]:
            keep = gr.update()
            if not path:
                yield [_err(t("choose_file", lang_)), keep, keep, *[keep] * len(voices_outputs)]
                return
            try:
                job = studio.import_voice(path, name or None, overwrite)
                yield [t("saving", lang_), keep, keep, *[keep] * len(voices_outputs)]
                res = studio.run_voice_job(job)
                yield [_ok(t("imported", lang_, name=res["name"])), voice_choices(res["name"]), voice_choices(None),
                       *voices_view(lang_)]
            except Exception as e:  # noqa: BLE001 - shown next to the input
                yield [_err(_msg(e, lang_)), keep, keep, *[keep] * len(voices_outputs)]

        v_import.click(on_import, [lang, v_import_file, v_import_name, v_overwrite],
                       [v_import_msg, v_list, s_voice, *voices_outputs], api_visibility="private")

        _api(studio)
    demo.queue(max_size=64, default_concurrency_limit=4)
    return demo


def launch(studio: Studio, *, host: str = "127.0.0.1", port: int = 7860, auth: list[tuple[str, str]] | None = None,
           max_upload_mb: float = 20, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
           block: bool = True, quiet: bool = False, api_key: str | None = None) -> tuple[gr.Blocks, str]:
    """Build the page and serve it, with the OpenAI-compatible API under ``/v1`` (``webui/openai_api.py``).
    With ``block=False`` returns at once (tests); the caller closes it."""
    demo = build_app(studio)
    slow_auth = SlowAuth(auth) if auth else None
    allowed = [str(studio.live_dir), str(studio.results_dir.resolve()), str(studio.store.root.resolve())]
    app, url, _ = demo.launch(
        server_name=host, server_port=port, auth=slow_auth.check if slow_auth else None,
        max_file_size=f"{max_upload_mb}mb",
        allowed_paths=allowed, prevent_thread_lock=True, quiet=quiet, show_error=False,
        ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, ssl_verify=not ssl_certfile,
        footer_links=["api", "settings"], head=HEAD + STUDIO_HEAD, css=live.LIVE_CSS + CSS, theme=theme(),
        ssr_mode=False,
    )
    live.install_route(app, studio.live)  # the page's first fetch of it comes after a Generate click
    openai_api.install(app, studio, api_key=api_key, users=auth or [], slow_auth=slow_auth)
    if block:
        demo.block_thread()
    return demo, url
