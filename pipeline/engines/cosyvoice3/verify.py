"""Stage-by-stage comparison of a bundle against goldens computed by upstream code.

Goldens format: the fixture README's ``goldens.npz`` (``in_*`` inputs, ``llm_*``/``flow_*``/``hift_*`` outputs).
Every stage runs on the goldens' own inputs with the goldens' noise injected, so stages are judged
independently of each other. Works for any model size: shapes come from the goldens and the bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import BundleError
from pipeline.shared.goldens import StageResult, format_table, load_npz  # noqa: F401 - cli imports format_table here

# (stage, tolerance on max abs error; None = must be identical)
TOLERANCES: dict[str, float | None] = {
    "prompt_mel": 1e-4,
    "llm_prefill": 1e-6,
    "llm_tf_logp": 1e-3,
    "llm_greedy_tokens": None,
    "flow_mu": 1e-3,
    "flow_mel": 1e-3,
    "hift_noise_table": None,
    "hift_f0": 1e-3,
    "hift_source": 1e-3,
    "hift_speech": 1e-3,
}
REQUIRED_KEYS = [
    "in_prompt_wav", "in_prompt_feat", "in_text", "in_tts_text", "in_prompt_speech_token",
    "in_llm_target_speech_token", "in_flow_token", "in_embedding", "llm_lm_input", "llm_tf_logp",
    "llm_greedy_tokens", "llm_min_len", "llm_max_len", "flow_noise", "flow_mu", "flow_mel",
    "hift_sine_noise_buffer", "hift_f0", "hift_source", "hift_speech",
]


def load_goldens(path: Path | str) -> dict[str, np.ndarray]:
    return load_npz(path, REQUIRED_KEYS)


def _close(stage: str, got: np.ndarray, want: np.ndarray, detail: str = "") -> StageResult:
    tol = TOLERANCES[stage]
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return StageResult(stage, float("inf"), tol, False, f"shape {got.shape} != golden {want.shape}")
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
    ok = err == 0.0 if tol is None else err <= tol
    return StageResult(stage, err, tol, ok, detail)


def run_verify(bundle: Bundle, g: dict[str, np.ndarray], *, log: Callable[[str], None] = print) -> list[StageResult]:
    from pipeline.engines.cosyvoice3 import features
    from pipeline.engines.cosyvoice3.flow import Flow
    from pipeline.engines.cosyvoice3.llm import SpeechLM, TextEmbedding
    from pipeline.engines.cosyvoice3.sampling import generate_tokens, greedy
    from pipeline.engines.cosyvoice3.vocoder import HiFT

    res: list[StageResult] = []
    c = bundle.constants

    log("prompt mel")
    wav = g["in_prompt_wav"].astype(np.float32)
    # the checkpoint's own feat_extractor (its fmax: 8000 or null), as the runtime's voice frontend uses it
    mel_params = dict((bundle.manifest.get("flow") or {}).get("prompt_mel") or {})
    res.append(_close("prompt_mel", features.flow_prompt_mel(wav, **mel_params), g["in_prompt_feat"][0],
                      f"fmax {mel_params.get('fmax')}"))

    gguf = bundle.manifest["llm"]["gguf"].get("f32")
    if gguf is None:
        raise BundleError(f"bundle {bundle.root} has no F32 GGUF; the LLM tolerance is defined for F32 "
                          "(convert with --quant f32,...)")
    log("LLM (teacher-forced log-probs, greedy decode)")
    text_ids = g["in_text"].astype(np.int64)
    prompt_tok = g["in_prompt_speech_token"].astype(np.int64)
    target = g["in_llm_target_speech_token"].astype(np.int64)
    n_ctx = int(len(text_ids) + len(prompt_tok) + int(g["llm_max_len"]) + 8)
    n_ctx = max(n_ctx, len(g["llm_tf_logp"]) + len(g["llm_lm_input"]) + 8)
    temb = TextEmbedding(bundle.path(bundle.manifest["llm"]["text_embedding"]))
    with SpeechLM(bundle.path(gguf), n_ctx=n_ctx, exact=True) as lm:
        res.append(_close("llm_prefill", _prefill_rows(lm, temb, text_ids, prompt_tok, c), g["llm_lm_input"]))
        lm.reset()
        first = _zero_shot_prefill(lm, temb, text_ids, prompt_tok, c)
        rest = lm.feed(target.tolist(), all_logits=True)
        logits = np.concatenate([first[None], rest], axis=0).astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        res.append(_close("llm_tf_logp", logp, g["llm_tf_logp"]))

        lm.reset()
        first = _zero_shot_prefill(lm, temb, text_ids, prompt_tok, c)
        toks = generate_tokens(lm, first, n_tts_text_tokens=len(g["in_tts_text"]), constants=c,
                               rng=np.random.default_rng(0), sampler=greedy)
    want = g["llm_greedy_tokens"].astype(np.int64)
    same = len(toks) == len(want) and bool(np.all(np.asarray(toks) == want))
    n_diff = int(np.sum(np.asarray(toks[: len(want)]) != want[: len(toks)])) + abs(len(toks) - len(want))
    res.append(StageResult("llm_greedy_tokens", float(n_diff), None, same,
                           f"{len(toks)} tokens, golden {len(want)}"))

    log("flow (frontend, 10 Euler steps with CFG)")
    flow = Flow.from_bundle(bundle)
    P = len(prompt_tok)
    prompt_mel = g["in_prompt_feat"][0][: 2 * P] if "flow_cond" not in g else g["flow_cond"][0][:, : 2 * P].T
    mu, spks, cond, mask = flow.prepare(g["in_flow_token"].astype(np.int64), prompt_tok,
                                        np.ascontiguousarray(prompt_mel), g["in_embedding"])
    res.append(_close("flow_mu", mu, g["flow_mu"][0]))
    x = flow.solve(mu, mask, spks, cond, g["flow_noise"][0])
    res.append(_close("flow_mel", x[:, 2 * P:], g["flow_mel"][0]))

    log("HiFT (f0, source, decoder, iSTFT)")
    hift = HiFT.from_bundle(bundle)
    table = hift.noise
    gt = g["hift_sine_noise_buffer"][0]
    n = min(len(table), len(gt))
    r = _close("hift_noise_table", table[:n], gt[:n], f"first {n} samples of the bundle's table")
    res.append(r)
    mel = g["flow_mel"][0]
    f0 = hift.f0(mel)
    res.append(_close("hift_f0", f0, g["hift_f0_f64"][0] if "hift_f0_f64" in g else g["hift_f0"][0]))
    src = hift.source(g["hift_f0"][0].astype(np.float32), noise=gt)
    res.append(_close("hift_source", src, g["hift_source"][0, 0]))
    audio = hift(mel, noise=gt)
    res.append(_close("hift_speech", audio, g["hift_speech"][0]))
    return res


def _zero_shot_prefill(lm, temb, text_ids, prompt_tok, c) -> np.ndarray:
    from pipeline.engines.cosyvoice3.llm import prefill_zero_shot

    return prefill_zero_shot(lm, temb, text_ids, prompt_tok, c)


def _prefill_rows(lm, temb, text_ids, prompt_tok, c) -> np.ndarray:
    from pipeline.engines.cosyvoice3.llm import zero_shot_rows

    return zero_shot_rows(lm, temb, text_ids, prompt_tok, c)
