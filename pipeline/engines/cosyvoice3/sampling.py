"""Speech-token sampling and the upstream decode loop (spec §3.3, §3.4), numpy only.

Random draws mirror ``torch.multinomial(p, 1)`` on CPU: one Exp(1) variate per candidate and
``argmax(p / q)``. The numbers differ from torch's (different generator), the distribution does not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.shared.errors import Cancelled

if TYPE_CHECKING:
    from pipeline.engines.cosyvoice3.llm import SpeechLM

Sampler = Callable[[np.ndarray, Sequence[int], Any], int]


def _softmax32(logp: np.ndarray) -> np.ndarray:
    x = np.asarray(logp, dtype=np.float32)
    e = np.exp(x - x.max())
    return e / e.sum(dtype=np.float32)


def log_softmax32(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float32)
    s = x - x.max()
    return s - np.log(np.exp(s).sum(dtype=np.float32))


def _draw(p: np.ndarray, rng: Any) -> int:
    """Index drawn with probability proportional to ``p`` (not necessarily normalised)."""
    q = np.asarray(rng.standard_exponential(p.shape[0]), dtype=np.float64)
    return int(np.argmax(p.astype(np.float64) / q))


def _top_stable(p: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` ids of ``np.argsort(-p, kind="stable")`` (descending, ties lower id first), without
    sorting all of ``p``: a partition finds the k-th largest value, only the ids at or above it are sorted.
    Falls back to the full sort for non-finite values or when k covers most of ``p``."""
    n = p.shape[0]
    if k <= 0 or 4 * k >= n or not np.isfinite(p).all():
        return np.argsort(-p, kind="stable")
    kth = p[np.argpartition(-p, k - 1)[k - 1]]  # the k-th largest value
    above = np.flatnonzero(p > kth)  # ascending ids, fewer than k of them
    tied = np.flatnonzero(p == kth)[: k - above.size]  # the lowest ids among the ties come first
    sel = np.concatenate([above, tied])  # every tie group in ascending id order
    return sel[np.argsort(-p[sel], kind="stable")]


def nucleus_candidates(logp: np.ndarray, top_p: float, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Upstream ``nucleus_sampling``'s candidate set: (ids, probs) in descending-probability order.

    Stable sort (ties keep the lower id first); a candidate is kept while the float32 sum of the
    ones before it is < top_p and fewer than top_k are kept, so at least one is always kept.
    """
    p = _softmax32(logp)
    order = _top_stable(p, int(top_k))
    ps = p[order]
    before = np.concatenate([np.zeros(1, np.float32), np.cumsum(ps, dtype=np.float32)[:-1]])
    n = int(np.count_nonzero(before < np.float32(top_p)))  # cumulative sums never decrease
    n = max(1, min(n, top_k, ps.shape[0]))
    return order[:n], ps[:n]


def ras_sampling(logp: np.ndarray, decoded: Sequence[int], rng: Any, *, top_p: float, top_k: int,
                 win_size: int, tau_r: float) -> int:
    """Repetition-aware sampling (upstream ``ras_sampling``): nucleus draw, and if that id occurs at
    least ``win_size * tau_r`` times in the last ``win_size`` decoded tokens, redraw from the full
    softmax with that id removed. ``rng`` needs ``standard_exponential(n)`` (a numpy Generator)."""
    ids, probs = nucleus_candidates(logp, top_p, top_k)
    tok = int(ids[_draw(probs, rng)])
    window = list(decoded[-win_size:])
    if window.count(tok) >= win_size * tau_r:
        masked = np.array(logp, dtype=np.float32, copy=True)
        masked[tok] = -np.inf
        tok = _draw(_softmax32(masked), rng)
    return tok


def make_ras_sampler(sampling: dict) -> Sampler:
    """A sampler with the bundle's ``constants["sampling"]`` (top_p, top_k, win_size, tau_r)."""
    return functools.partial(ras_sampling, top_p=float(sampling["top_p"]), top_k=int(sampling["top_k"]),
                             win_size=int(sampling["win_size"]), tau_r=float(sampling["tau_r"]))


def greedy(logp: np.ndarray, decoded: Sequence[int], rng: Any = None) -> int:
    """Argmax (lowest id on ties); for verification against argmax goldens."""
    return int(np.argmax(logp))


def generate_tokens(lm: SpeechLM, logits: np.ndarray, *, n_tts_text_tokens: int, constants: dict,
                    rng: Any, temperature: float = 1.0, sampler: Sampler | None = None,
                    max_tokens: int | None = None, on_token: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None) -> list[int]:
    """Upstream's decode loop after the prefill; ``logits`` are the prefill's last-row logits.

    min_len / max_len are ``int(n_tts_text_tokens * ratio)``. While ``i < min_len`` only id
    ``speech_token_size`` (sos) is masked, as upstream does (so eos can still end early).
    Any id >= speech_token_size stops and is not returned. ``temperature`` 1.0 is upstream.
    ``on_token(i, token)`` is called per kept token; ``should_stop()`` is polled before every
    LLM step and raises :class:`Cancelled` when true.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    size = int(constants["speech_token_size"])
    min_len = int(n_tts_text_tokens * constants["min_token_text_ratio"])
    max_len = int(n_tts_text_tokens * constants["max_token_text_ratio"])
    if max_tokens is not None:
        max_len = min(max_len, int(max_tokens))
    if sampler is None:
        sampler = make_ras_sampler(constants["sampling"])
    out: list[int] = []
    for i in range(max_len):
        if i > 0:
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped after {len(out)} speech tokens")
            logits = lm.step(out[-1])
        x = np.asarray(logits, dtype=np.float32)
        logp = log_softmax32(x if temperature == 1.0 else x / np.float32(temperature))
        if i < min_len:
            logp[size] = -np.inf
        tok = int(sampler(logp, out, rng))
        if tok >= size:
            break
        out.append(tok)
        if on_token is not None:
            on_token(i, tok)
    return out


def filter_silent(tokens: Sequence[int], silent_tokens: Sequence[int], max_run: int) -> list[int]:
    """Drop silent tokens beyond ``max_run`` in a row (upstream ``llm_job``; done before the flow only)."""
    silent = set(int(t) for t in silent_tokens)
    kept, run = [], 0
    for t in tokens:
        if t in silent:
            run += 1
            if run > max_run:
                continue
        else:
            run = 0
        kept.append(t)
    return kept
