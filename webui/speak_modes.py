"""The Speak tab's controls for the speech modes, speed and control tags: the mode choice with its instruction box
(and upstream's instruct_list examples to pick from), the speed slider, and the tag menu next to the text box.
``webui/app.py`` places them and passes their values to :meth:`webui.client.Studio.speak`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pipeline.engines import EngineInfo
from pipeline.engines.cosyvoice3.modes import SPEED_RANGE

from .i18n import t
from .i18n_modes import INSTRUCT_EXAMPLES, TAG_MENU

MODE_CHOICES = [("m_zero_shot", "zero_shot"), ("m_cross_lingual", "cross_lingual"), ("m_instruct", "instruct")]

# Inserts the picked tag at the cursor of the text box (a span around the selected words), then clears the menu.
# The textarea keeps its selection while the menu is open; if the page's value and the textarea differ (not yet
# synced), the tag goes at the end.
INSERT_TAG_JS = """(tag, text) => {
  const s = text || '';
  if (!tag) return [s, null];
  const ta = document.querySelector('#cv-text textarea');
  let a = s.length, b = s.length;
  if (ta && ta.value === s) { a = ta.selectionStart; b = ta.selectionEnd; }
  const span = tag.match(/^(<[a-z]+>)(<\\/[a-z]+>)$/);
  const ins = span ? span[1] + s.slice(a, b) + span[2] : tag;
  return [s.slice(0, a) + ins + s.slice(b), null];
}"""


@dataclass
class ModeControls:
    mode: Any
    instruct_box: Any
    instruct: Any
    examples: Any
    instruct_msg: Any


def page_modes(engine_modes: tuple[str, ...]) -> list[tuple[str, str]]:
    """The mode radio's (label key, value) pairs an engine offers (its ``instruct2`` is the page's instruct)."""
    have = {"instruct" if m == "instruct2" else m for m in engine_modes}
    return [(k, v) for k, v in MODE_CHOICES if v in have]


def mode_controls(tr: Any, engine: Callable[[], EngineInfo]) -> ModeControls:
    """The mode radio (the modes of the bundle's engine) and, shown in instruct mode only, the instruction box
    with upstream's examples."""
    mode = tr(gr.Radio([(t(k), v) for k, v in page_modes(engine().modes)], value="zero_shot",
                       label=t("speech_mode"), info=t("speech_mode_info"), elem_id="cv-speech-mode"),
              label="speech_mode", info="speech_mode_info",
              choices=lambda lang: [(t(k, lang), v) for k, v in page_modes(engine().modes)])
    with gr.Group(visible=False, elem_id="cv-instruct-box") as box:
        with gr.Row(equal_height=False):
            instruct = tr(gr.Textbox(label=t("instruct"), placeholder=t("instruct_ph"), info=t("instruct_info"),
                                     scale=3, elem_id="cv-instruct"),
                          label="instruct", placeholder="instruct_ph", info="instruct_info")
            examples = tr(gr.Dropdown([(t(k), v) for k, v in INSTRUCT_EXAMPLES], value=None,
                                      label=t("instruct_examples"), scale=2, elem_id="cv-instruct-examples"),
                          label="instruct_examples", choices=INSTRUCT_EXAMPLES)
    msg = gr.Markdown("", elem_classes="cv-msg", elem_id="cv-instruct-msg")
    return ModeControls(mode, box, instruct, examples, msg)


def speed_slider(tr: Any) -> Any:
    return tr(gr.Slider(*SPEED_RANGE, value=1.0, step=0.05, label=t("speed"), info=t("speed_info"),
                        elem_id="cv-speed", min_width=200), label="speed", info="speed_info")


def tag_menu(tr: Any) -> Any:
    return tr(gr.Dropdown([(t(k), v) for k, v in TAG_MENU], value=None, label=t("insert_tag"),
                          info=t("insert_tag_info"), elem_id="cv-tag-menu", scale=1, min_width=150),
              label="insert_tag", info="insert_tag_info", choices=TAG_MENU)


def engine_view(engine: EngineInfo, lang: str) -> list[Any]:
    """What the Speak tab shows for the bundle's engine: its modes, the speed slider and the tag menu only where
    the engine has them (read on every page load: the first run may have set up a bundle meanwhile)."""
    return [gr.update(choices=[(t(k, lang), v) for k, v in page_modes(engine.modes)]),
            gr.update(visible=engine.speed), gr.update(visible=engine.tags)]


def wire(c: ModeControls, tags: Any, text: Any) -> None:
    """The instruction box follows the mode; an example fills the instruction; a tag goes into the text."""
    c.mode.change(lambda m: gr.update(visible=m == "instruct"), [c.mode], [c.instruct_box],
                  api_visibility="private", show_progress="hidden")
    c.examples.change(None, [c.examples, c.instruct], [c.instruct, c.examples],
                      js="(ex, cur) => [ex || cur, null]", api_visibility="private")
    tags.change(None, [tags, text], [text, tags], js=INSERT_TAG_JS, api_visibility="private")
