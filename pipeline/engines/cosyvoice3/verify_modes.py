"""``verify`` on ``modes_goldens.npz`` (found beside ``--goldens``): upstream's LLM input per mode and ``speed``.

For each mode the goldens hold the ids upstream passed as ``prompt_text`` / ``text``, the LLM's prompt speech
tokens, its ``lm_input`` rows and min/max length. The check maps the goldens' zero-shot inputs (system prefix +
transcript, tts text, prompt tokens) through :func:`.modes.llm_inputs` the way the engine does, compares
the ids it would feed, builds the prefill rows from the bundle (speech rows read from the GGUF) and compares
them and the length limits; then ``speed``: the resampled mel (bit-exact) and its audio.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import BundleError
from pipeline.shared.goldens import StageResult, load_npz

ROW_TOL = 1e-6
AUDIO_TOL = 1e-3


def load_modes_goldens(path) -> dict[str, np.ndarray]:
    need = [f"{m}_{k}" for m in ("zero_shot", "cross_lingual", "instruct2")
            for k in ("prompt_text", "tts_text", "llm_prompt_speech_token", "lm_input", "min_len", "max_len")]
    return load_npz(path, need, "modes goldens")


def run_verify_modes(bundle: Bundle, m: dict[str, np.ndarray], g: dict[str, np.ndarray], *,
                     log: Callable[[str], None] = print) -> list[StageResult]:
    """``m``: modes goldens; ``g``: the main goldens (flow mel and HiFT noise for the speed check)."""
    from pipeline.engines.cosyvoice3.llm import SpeechLM, TextEmbedding, zero_shot_rows
    from pipeline.engines.cosyvoice3.modes import llm_inputs, speed_mel
    from pipeline.engines.cosyvoice3.vocoder import HiFT

    c = bundle.constants
    gguf = bundle.manifest["llm"]["gguf"].get("f32")
    if gguf is None:
        raise BundleError(f"bundle {bundle.root} has no F32 GGUF; convert with --quant f32,...")
    res: list[StageResult] = []
    zs_prompt = m["zero_shot_prompt_text"].astype(np.int64).tolist()
    tts = m["zero_shot_tts_text"].astype(np.int64).tolist()
    prompt_tokens = m["zero_shot_llm_prompt_speech_token"].astype(np.int64).tolist()
    n_prefix = len(m["cross_lingual_tts_text"]) - len(tts)
    # what a person gives each mode: the transcript (zero_shot), the system prefix (cross_lingual), the instruction
    given = {"zero_shot": zs_prompt, "cross_lingual": m["cross_lingual_tts_text"][:n_prefix].astype(np.int64).tolist(),
             "instruct2": m["instruct2_prompt_text"].astype(np.int64).tolist()}
    temb = TextEmbedding(bundle.path(bundle.manifest["llm"]["text_embedding"]))
    with SpeechLM(bundle.path(gguf), n_ctx=256, exact=True) as lm:
        for mode in ("zero_shot", "cross_lingual", "instruct2"):
            log(f"modes: {mode} LLM input")
            p, t, s = llm_inputs(mode, given[mode], tts, prompt_tokens)
            ok = (p == m[f"{mode}_prompt_text"].tolist() and t == m[f"{mode}_tts_text"].tolist()
                  and s == m[f"{mode}_llm_prompt_speech_token"].tolist())
            res.append(StageResult(f"{mode}_ids", 0.0 if ok else float("inf"), None, ok,
                                   f"{len(p)} prompt text, {len(t)} text ids, {len(s)} prompt tokens"))
            rows = zero_shot_rows(lm, temb, p + t, s, c)
            want = m[f"{mode}_lm_input"]
            err = float(np.abs(rows - want).max()) if rows.shape == want.shape else float("inf")
            res.append(StageResult(f"{mode}_lm_input", err, ROW_TOL, err <= ROW_TOL, f"{want.shape[0]} rows"))
            lim = (int(len(t) * c["min_token_text_ratio"]), int(len(t) * c["max_token_text_ratio"]))
            want_lim = (int(m[f"{mode}_min_len"]), int(m[f"{mode}_max_len"]))
            res.append(StageResult(f"{mode}_min_max_len", 0.0 if lim == want_lim else float("inf"), None,
                                   lim == want_lim, f"{lim} vs upstream {want_lim}"))
    if "speed_mel" in m:
        log(f"modes: speed {float(m['speed']):g}")
        mel = speed_mel(g["flow_mel"][0], float(m["speed"]))
        want = m["speed_mel"][0]
        err = float(np.abs(mel - want).max()) if mel.shape == want.shape else float("inf")
        res.append(StageResult("speed_mel", err, None, err == 0.0, f"{want.shape[1]} frames"))
        hift = HiFT.from_bundle(bundle)
        audio = hift(mel, noise=g["hift_sine_noise_buffer"][0])
        want = m["speed_speech"][0]
        err = float(np.abs(audio - want).max()) if audio.shape == want.shape else float("inf")
        res.append(StageResult("speed_speech", err, AUDIO_TOL, err <= AUDIO_TOL, f"{want.size} samples"))
    return res
