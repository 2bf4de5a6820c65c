"""CosyVoice3's voice-cloning modes and ``speed`` (spec §10), as the engine applies them.

What each mode feeds the LLM (``Qwen2LM.inference``: [sos, embed(prompt text + tts text), task_id, prompt speech
tokens]); the flow and HiFT are the same in every mode (prompt tokens, prompt mel and speaker embedding):

| mode          | LLM prompt text            | LLM tts text                 | LLM prompt speech tokens |
|---------------|----------------------------|------------------------------|--------------------------|
| zero_shot     | system prefix + transcript | text                         | the prompt's             |
| cross_lingual | (none)                     | system prefix + text         | none                     |
| instruct2     | instruction (its own form) | text                         | none                     |

``min_len``/``max_len`` count the tts text ids (in cross_lingual the prefix is part of them, as upstream).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.engines.cosyvoice3.tokenizer import ENDOFPROMPT
from pipeline.shared.errors import InputError

MODES = ("zero_shot", "cross_lingual", "instruct2")
# the names a person types: instruct is CosyVoice3's instruct2 (upstream's CosyVoice1 "instruct" raises on CV3)
ALIASES = {"zero_shot": "zero_shot", "zero-shot": "zero_shot", "cross_lingual": "cross_lingual",
           "cross-lingual": "cross_lingual", "instruct": "instruct2", "instruct2": "instruct2"}
SPEED_RANGE = (0.5, 2.0)


def mode_name(mode: str) -> str:
    m = ALIASES.get(str(mode).strip().lower())
    if m is None:
        raise InputError(f"unknown mode {mode!r}: choose zero_shot, cross_lingual or instruct")
    return m


def llm_inputs(mode: str, prompt_text_ids: Sequence[int], tts_ids: Sequence[int],
               prompt_tokens: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """(LLM prompt text ids, LLM tts text ids, LLM prompt speech tokens) for ``mode``.

    ``prompt_text_ids``: zero_shot, the system prefix + transcript; instruct2, the instruction in CosyVoice3's
    form (``You are a helpful assistant. <instruction><|endofprompt|>``); cross_lingual, the system prefix,
    which upstream's examples put in front of the tts text."""
    m = mode_name(mode)
    p, t, s = [int(i) for i in prompt_text_ids], [int(i) for i in tts_ids], [int(i) for i in prompt_tokens]
    if m == "zero_shot":
        return p, t, s
    if m == "cross_lingual":
        return [], p + t, []
    return p, t, []


def check_speed(speed: float) -> float:
    try:
        v = float(speed)
    except (TypeError, ValueError):
        raise InputError(f"speed must be a number from {SPEED_RANGE[0]} to {SPEED_RANGE[1]}, not {speed!r}") from None
    if not SPEED_RANGE[0] <= v <= SPEED_RANGE[1]:
        raise InputError(f"speed must be from {SPEED_RANGE[0]} to {SPEED_RANGE[1]} (1.0 is normal), not {v:g}")
    return v


def speed_mel(mel: np.ndarray, speed: float) -> np.ndarray:
    """Upstream's ``F.interpolate(mel, size=int(T / speed), mode='linear')`` (align_corners=False) on (M, T),
    bit-exact with torch's CPU kernel: float32 positions rounded once, ``fma(w0, a, float32(w1·b))``."""
    speed = check_speed(speed)
    m = np.asarray(mel, np.float32)
    if speed == 1.0:
        return m
    t = m.shape[1]
    t_out = int(t / speed)
    if t_out < 1:
        raise InputError(f"{t} mel frames are too few for speed {speed:g}")
    f32 = np.float32
    scale = f32(t) / f32(t_out)
    i = np.arange(t_out, dtype=np.float64)
    # scale·(i + 0.5) − 0.5 with one float32 rounding (torch fuses it), clamped at 0
    s = np.maximum(np.float64(scale) * (i + 0.5) - 0.5, 0.0).astype(f32)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, t - 1)
    w1 = (s - i0.astype(f32)).astype(f32)
    w0 = (f32(1) - w1).astype(f32)
    b = (w1[None, :] * m[:, i1]).astype(f32)
    # fma(w0, a, b): one rounding of the exact product-sum (float64 holds the product of two float32 exactly)
    out = (w0[None, :].astype(np.float64) * m[:, i0].astype(np.float64) + b.astype(np.float64)).astype(f32)
    return np.ascontiguousarray(out)


# CosyVoice3's instruct form, as in upstream's instruct_list (cosyvoice/utils/common.py): note the space
INSTRUCT_PREFIX = "You are a helpful assistant. "
MAX_INSTRUCT_CHARS = 300


def instruct_text(instruction: str | None) -> str:
    """The instruction a person typed, in CosyVoice3's form:
    ``You are a helpful assistant. <instruction><|endofprompt|>``.

    A prefix or a final ``<|endofprompt|>`` the person typed too (an upstream instruct_list entry pasted as it is)
    is not doubled; other ``<|…|>`` markup is refused, as is an empty instruction. Not normalised (upstream
    passes instruct_text to the tokenizer as it is)."""
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(f"the instruction must be text, got {type(instruction).__name__}")
    body = (instruction or "").strip()
    if body.endswith(ENDOFPROMPT):
        body = body[: -len(ENDOFPROMPT)].rstrip()
    if body.lower().startswith(INSTRUCT_PREFIX.strip().lower()):
        body = body[len(INSTRUCT_PREFIX.strip()):].strip()
    if not body:
        raise InputError("the instruction is empty: say how to speak (for example “Speak very happily.”), "
                         "or choose the zero_shot or cross_lingual mode")
    if len(body) > MAX_INSTRUCT_CHARS:
        raise InputError(f"the instruction has {len(body)} characters, the limit is {MAX_INSTRUCT_CHARS}: "
                         "one short sentence on how to speak")
    if "<|" in body or "|>" in body:
        raise InputError("the instruction may not contain <|…|> markup: type only the instruction, the studio adds "
                         f"“{INSTRUCT_PREFIX.strip()}” and <|endofprompt|> itself")
    return INSTRUCT_PREFIX + body + ENDOFPROMPT


def stream_note(stream: bool, speed: float) -> str | None:
    """Why a request asked to stream is made without streaming, or None: speed resamples a part's whole mel,
    which upstream does only without streaming."""
    if stream and check_speed(speed) != 1.0:
        return (f"speed {float(speed):g}: made without streaming (speed resamples each whole part, as upstream does "
                "only without streaming); each part is heard when it is done")
    return None


def check_request(mode: str, instruct: str | None, speed: float) -> tuple[str, str | None, float]:
    """What can be checked before any model runs: (mode, instruction, speed), or :class:`InputError` with the
    reason (an unknown mode, an empty or malformed instruction in instruct, an instruction in another mode, a
    speed outside 0.5-2.0)."""
    m = mode_name(mode)
    if m == "instruct2":
        instruct_text(instruct)
    elif instruct is not None and str(instruct).strip():
        raise InputError(f"an instruction is used only in the instruct mode (the mode is {m}): choose instruct, "
                         "or leave the instruction out")
    return m, (instruct if m == "instruct2" else None), check_speed(speed)
