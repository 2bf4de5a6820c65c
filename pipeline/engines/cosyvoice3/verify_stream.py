"""``verify --streaming``: the O(n) streaming path against upstream's own streaming output.

Goldens format: the fixture README's ``streaming_goldens.npz`` (request ``stream_*`` with the full prompt and
``pad_*`` with a prompt that ends inside a chunk; one chunk-masked estimator call ``est_*``; HiFT with finalize
false/true ``hift_*``). Each request is streamed with the goldens' fixed token list in place of the LLM and the
bundle's fixed noise, on upstream's emission schedule, with an fp32 K/V cache:

- every intermediate call's mel and audio against ``<req>_c<k>_mel`` / ``_speech``;
- the chunk-causal final call (this project's default) against ``<req>_final_causal_mel`` / ``_causal_audio``;
- upstream's full-attention final call (``final="full"``) against the last ``<req>_c<k>_mel`` / ``_speech``;
- the emission schedule (token offsets) exactly; the estimator chunk by chunk against ``est_out``.
The fp16 cache's errors are reported in the details.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.shared.bundle import Bundle
from pipeline.shared.goldens import StageResult, load_npz

TOLERANCE = 1e-3
REQUIRED = ["in_prompt_speech_token", "in_prompt_feat", "in_embedding", "in_stream_token", "est_x", "est_mu",
            "est_cond", "est_spks", "est_t", "est_out", "est_chunk_frames", "hift_mel", "hift_nf_speech",
            "hift_fin_speech"]


def load_streaming_goldens(path) -> dict[str, np.ndarray]:
    return load_npz(path, REQUIRED, "streaming goldens")


def _err(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    return float(np.abs(got - want).max()) if want.size else 0.0


def _row(stage: str, got: np.ndarray, want: np.ndarray, detail: str = "") -> StageResult:
    e = _err(got, want)
    shape = "" if np.shape(got) == np.shape(want) else f"shape {np.shape(got)} != golden {np.shape(want)}"
    return StageResult(stage, e, TOLERANCE, e <= TOLERANCE, "; ".join(x for x in (shape, detail) if x))


def requests(g: dict[str, np.ndarray]) -> list[str]:
    return [p for p in ("stream", "pad") if f"{p}_token_offset" in g]


def run_verify_streaming(bundle: Bundle, g: dict[str, np.ndarray], *,
                         log: Callable[[str], None] = print) -> list[StageResult]:
    from pipeline.engines.cosyvoice3.engine import Engine, PromptFeatures
    from pipeline.engines.cosyvoice3.flow import Flow
    from pipeline.engines.cosyvoice3.streaming import emission_points
    from pipeline.engines.cosyvoice3.vocoder import HiFT
    from pipeline.engines.cosyvoice3.vocoder_stream import HiFTStream

    flow = Flow.from_bundle(bundle)
    hift = HiFT.from_bundle(bundle)
    engines = {}
    for cache in ("fp32", "fp16"):
        e = Engine(bundle, None, None, flow, hift)
        e.flow_cache_type = cache
        engines[cache] = e
    res: list[StageResult] = []
    log("streaming: estimator chunk by chunk (chunk mask)")
    res.append(_estimator_row(engines["fp32"].chunked_flow(), g))
    log("streaming: HiFT finalize false / true")
    s = HiFTStream(hift)
    nf = s.push(g["hift_mel"][0], finalize=False)
    res.append(_row("stream_hift_nf", nf, g["hift_nf_speech"][0]))
    res.append(_row("stream_hift_fin", np.concatenate([nf, s.push(g["hift_mel"][0][:, :0], finalize=True)]),
                    g["hift_fin_speech"][0]))
    for pre in requests(g):
        pt = g["in_prompt_speech_token"] if pre == "stream" else g[f"{pre}_prompt_speech_token"]
        pf = g["in_prompt_feat"][0] if pre == "stream" else g[f"{pre}_prompt_feat"][0]
        prompt = PromptFeatures(pt, pf, g["in_embedding"])
        offsets = g[f"{pre}_token_offset"].astype(int).tolist()
        n_tokens = int(g[f"{pre}_n_tokens"][-1])
        toks = g["in_stream_token"][:n_tokens]
        pts = emission_points(len(pt), hop=engines["fp32"].chunked_flow().chunk_tokens)
        sched = [0] + [next(pts) for _ in offsets[1:]]
        res.append(StageResult(f"{pre}_schedule", 0.0 if sched == offsets else float("inf"), None,
                               sched == offsets, f"offsets {sched} vs upstream {offsets}"))
        n_calls = len(offsets)
        for final in ("causal", "full"):
            log(f"streaming: request {pre!r} ({len(pt)} prompt tokens, {n_tokens} tokens), final call {final}")
            mels, parts = _stream(engines["fp32"], prompt, toks, final)
            m16, p16 = _stream(engines["fp16"], prompt, toks, final)
            for k in range(n_calls):
                last = k == n_calls - 1
                if final == "full" and not last:
                    continue  # the intermediate calls do not depend on the final call's kind
                if last and final == "causal":
                    wm, wa = g[f"{pre}_final_causal_mel"][0], g[f"{pre}_causal_audio"][0]
                    name = f"{pre}_final_causal"
                    got_a, got16 = np.concatenate(parts), np.concatenate(p16)
                else:
                    wm, wa = g[f"{pre}_c{k}_mel"][0], g[f"{pre}_c{k}_speech"][0]
                    name = f"{pre}_c{k}" + ("_full_attn" if final == "full" else "")
                    got_a, got16 = (parts[k], p16[k]) if k < len(parts) else (np.zeros(0), np.zeros(0))
                got_m = mels[k] if k < len(mels) else np.zeros((0, 0))
                g16 = m16[k] if k < len(m16) else np.zeros((0, 0))
                res.append(_row(f"{name}_mel", got_m, wm, f"fp16 cache {_err(g16, wm):.1e}"))
                res.append(_row(f"{name}_audio", got_a, wa, f"fp16 cache {_err(got16, wa):.1e}"))
    return res


def _stream(engine, prompt, tokens, final: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Mel handed to the vocoder and audio yielded per call."""
    mels: list[np.ndarray] = []
    parts: list[np.ndarray] = []
    for item in engine.synthesize_stream([0], [0], prompt, tokens=tokens, final=final, schedule="upstream",
                                         use_prompt_cache=True, on_mel=lambda m, _f: mels.append(np.array(m))):
        if isinstance(item, np.ndarray):
            parts.append(item)
    return mels, parts


def _estimator_row(cf, g: dict[str, np.ndarray]) -> StageResult:
    """``est_out`` (one chunk-masked estimator call over T frames) rebuilt chunk by chunk with K/V carried."""
    est = cf.est
    chunk = int(g["est_chunk_frames"])
    x, mu, cond = g["est_x"], g["est_mu"], g["est_cond"]
    n = x.shape[-1]
    kp, vp = est.empty_kv(), est.empty_kv()
    c1 = c2 = np.zeros((2, est.dim, est.conv_context), np.float32)
    outs = []
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        out, kn, vn, c1, c2 = est({
            "x": np.ascontiguousarray(x[:, :, a:b]), "mu": np.ascontiguousarray(mu[:, :, a:b]),
            "cond": np.ascontiguousarray(cond[:, :, a:b]), "spks": g["est_spks"], "t": g["est_t"],
            "offset": np.array([a], np.int64), "conv1_cache": c1, "conv2_cache": c2, "k_voice": est.empty_kv(),
            "v_voice": est.empty_kv(), "k_past": kp, "v_past": vp})
        kp, vp = np.concatenate([kp, kn], axis=3), np.concatenate([vp, vn], axis=3)
        outs.append(out)
    return _row("stream_estimator", np.concatenate(outs, axis=2), g["est_out"],
                f"{n} frames in chunks of {chunk}")
