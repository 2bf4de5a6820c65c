"""``verify`` for a Qwen3-TTS bundle: every stage against ``goldens.npz`` computed by upstream's ``qwen-tts`` code
(the fixture README's format), each stage on the goldens' own inputs so stages are judged independently.

Stages: prompt codes (exact), speaker log-mel and embedding (relative to their scale), the four talker prefill
layouts and their trailing text rows, teacher-forced talker hidden states and logits, code predictor logits and
greedy codes (exact), greedy generation end to end (code-0 ids and all codes exact, logits, processed scores with
the same masked ids), and the decoder waveform (random codes; [prompt; greedy] decoded; the ICL cut). Works for any
checkpoint made the same way: shapes come from the goldens and the bundle (its F32 GGUFs are used).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import BundleError
from pipeline.shared.goldens import StageResult, format_table, load_npz  # noqa: F401 - cli imports format_table here

# (stage, tolerance on max abs error; None = identical; "rel" stages divide by the golden's max abs)
TOLERANCES: dict[str, float | None] = {
    "prompt_codes": None, "speaker_mel": 1e-4, "speaker_embedding": 1e-4,
    "prefill_rows": 1e-5, "trailing_rows": 1e-5, "talker_tf_hidden": 1e-3, "talker_tf_logits": 1e-3,
    "cp_logits": 1e-3, "cp_greedy_codes": None, "greedy_talker_logits": 1e-3, "greedy_talker_scores": 1e-3,
    "greedy_code0": None, "greedy_codes": None, "greedy_cp_logits": 1e-3,
    "decoder_wav": 1e-3, "voice_clone_wav_full": 1e-3, "voice_clone_wav": 1e-3,
}
RELATIVE = {"speaker_mel", "speaker_embedding"}
LAYOUTS = {"icl": (True, False), "icl_nonstream": (True, True), "xvec": (False, False),
           "xvec_nonstream": (False, True)}
REQUIRED_KEYS = [
    "in_ref_wav", "in_text_ids", "in_ref_text_ids", "in_tf_codes", "in_dec_codes", "prompt_codes", "prompt_spk_mel",
    "prompt_spk_embedding", "talker_tts_pad_embed", "talker_tf_frame_rows", "talker_tf_hidden", "talker_tf_logits",
    "cp_in_rows", "cp_logits", "cp_greedy_codes", "greedy_talker_logits", "greedy_talker_scores", "greedy_code0",
    "greedy_codes", "greedy_cp_logits", "dec_wav", "greedy_wav_full", "greedy_wav",
    *(f"talker_prefill_{k}" for k in LAYOUTS), *(f"talker_trailing_{k}" for k in LAYOUTS),
]


def load_goldens(path: str | Path) -> dict[str, np.ndarray]:
    return load_npz(path, REQUIRED_KEYS)


def _close(stage: str, got: np.ndarray, want: np.ndarray, detail: str = "") -> StageResult:
    tol = TOLERANCES[stage]
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return StageResult(stage, float("inf"), tol, False, f"shape {got.shape} != golden {want.shape}")
    if want.dtype.kind == "f":
        fin = np.isfinite(want)
        if not np.array_equal(fin, np.isfinite(got)) or not np.array_equal(got[~fin], want[~fin]):
            return StageResult(stage, float("inf"), tol, False, "masked (-inf) ids differ")
        got, want = got[fin], want[fin]
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
    if stage in RELATIVE and want.size:
        err /= max(float(np.max(np.abs(want))), 1e-12)
        detail = detail or "relative to the golden's max abs"
    ok = err == 0.0 if tol is None else err <= tol
    return StageResult(stage, err, tol, ok, detail)


def run_verify(bundle: Bundle, g: dict[str, np.ndarray], log: Callable[[str], None] = lambda m: None
               ) -> list[StageResult]:
    from pipeline.engines.qwen3_tts.decoder import CodeDecoder, voice_clone_wav
    from pipeline.engines.qwen3_tts.generate import GenerationConfig, Trace, generate_codes
    from pipeline.engines.qwen3_tts.lm_session import Qwen3LM
    from pipeline.engines.qwen3_tts.prefill import build_talker_prompt
    from pipeline.engines.qwen3_tts.prompt import PromptEncoder
    from pipeline.engines.qwen3_tts.sampling import SamplingConfig

    m, root = bundle.manifest, bundle.root
    if "f32" not in m["lm"]["talker_gguf"]:
        raise BundleError(f"bundle {root} has no F32 talker GGUF; verify needs it (convert with --quant f32,...)")
    out: list[StageResult] = []

    log("prompt side: codes, speaker mel, speaker embedding")
    p = m["prompt"]
    enc = PromptEncoder({k: root / p[k] for k in ("prompt_encoder", "speaker_encoder")}, p["dims"], n_threads=1)
    wav = g["in_ref_wav"].astype(np.float32)
    out.append(_close("prompt_codes", enc.codes(wav), g["prompt_codes"]))
    out.append(_close("speaker_mel", enc.speaker_mel(wav), g["prompt_spk_mel"]))
    out.append(_close("speaker_embedding", enc.speaker_embedding(wav), g["prompt_spk_embedding"]))

    log("talker prefill layouts, teacher-forced talker, code predictor, greedy generation")
    with Qwen3LM(root, m["lm"], quant="f32", n_ctx=512, n_threads=1, exact=True) as lm:
        ids, tables = lm.ids, lm.tables
        spk = g["prompt_spk_embedding"]
        for layout, (icl, non_stream) in LAYOUTS.items():
            kw = {"ref_ids": g["in_ref_text_ids"], "ref_codes": g["prompt_codes"]} if icl else {}
            pr = build_talker_prompt(tables, ids, g["in_text_ids"], spk, language="English",
                                     non_streaming=non_stream, **kw)
            out.append(_close("prefill_rows", pr.prefill, g[f"talker_prefill_{layout}"], layout))
            out.append(_close("trailing_rows", pr.trailing, g[f"talker_trailing_{layout}"], layout))
        icl_prompt = build_talker_prompt(tables, ids, g["in_text_ids"], spk, language="English",
                                         ref_ids=g["in_ref_text_ids"], ref_codes=g["prompt_codes"])

        h0, _ = lm.talker.prefill(g["talker_prefill_icl"])
        hs = lm.talker.forward_all(g["talker_tf_frame_rows"])
        hidden = np.concatenate([h0[None], hs])
        out.append(_close("talker_tf_hidden", hidden, g["talker_tf_hidden"]))
        out.append(_close("talker_tf_logits", hidden @ tables.codec_head.T, g["talker_tf_logits"]))

        greedy = SamplingConfig(do_sample=False)
        logits = np.empty(g["cp_logits"].shape[1:], np.float32)
        cp_codes, cp_logits = [], []
        for k in range(g["cp_in_rows"].shape[0]):
            cp_codes.append(lm.cp.predict(g["cp_in_rows"][k, 0], int(g["in_tf_codes"][k, 0]), greedy,
                                          logits_out=logits))
            if k < g["cp_logits"].shape[0]:
                cp_logits.append(logits.copy())
        out.append(_close("cp_logits", np.stack(cp_logits), g["cp_logits"]))
        out.append(_close("cp_greedy_codes", np.stack(cp_codes), g["cp_greedy_codes"]))

        cfg = GenerationConfig.from_sampling(lm.sampling, do_sample=False, subtalker_dosample=False,
                                             max_new_tokens=int(len(g["greedy_code0"])))
        trace = Trace()
        codes = generate_codes(lm.talker, lm.cp, icl_prompt, int(ids["codec_eos_token_id"]), cfg, trace=trace)
        out.append(_close("greedy_talker_logits", np.stack(trace.talker_logits), g["greedy_talker_logits"]))
        out.append(_close("greedy_talker_scores", np.stack(trace.talker_scores), g["greedy_talker_scores"]))
        out.append(_close("greedy_code0", np.asarray(trace.code0), g["greedy_code0"]))
        out.append(_close("greedy_codes", codes, g["greedy_codes"]))
        out.append(_close("greedy_cp_logits", np.stack(trace.cp_logits), g["greedy_cp_logits"]))

    log("decoder")
    dec = CodeDecoder(root / m["decoder"]["decoder_onnx"], m["decoder"]["dims"], n_threads=1)
    out.append(_close("decoder_wav", dec.decode(g["in_dec_codes"]), g["dec_wav"]))
    full = dec.decode(np.concatenate([g["prompt_codes"], g["greedy_codes"]]))
    out.append(_close("voice_clone_wav_full", full, g["greedy_wav_full"]))
    out.append(_close("voice_clone_wav", voice_clone_wav(dec, g["greedy_codes"], g["prompt_codes"]), g["greedy_wav"]))
    return out
