"""The numbers of ``cosyvoice-rk quality`` (docs/quality.md says what each one means), numpy only.

- :func:`cer`: character error rate, Levenshtein distance over normalised characters / reference length;
- :func:`cosine`: speaker similarity of two CAMPPlus embeddings;
- :func:`mel_distance`: distance of a mel to the reference mel of the same shape;
- :func:`logprob_agreement`: how close an LLM's next-token distributions are to the reference LLM's on the same
  (teacher-forced) tokens;
- :func:`token_agreement`: how many speech tokens two free-running generations share, position by position.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

# Unicode categories dropped before the CER: punctuation (P*), symbols (S*), separators (Z*: spaces) and
# control/format characters (C*). Letters, marks and digits are what an ASR transcript is compared on.
_DROPPED = ("P", "S", "Z", "C")


def normalize_for_cer(text: str) -> str:
    """The characters a CER counts: NFKC, case-folded, ``ё`` read as ``е`` (Russian ASR rarely writes ``ё``),
    without punctuation, symbols and spaces (so word splitting, which zh/ja do not write, never counts)."""
    t = unicodedata.normalize("NFKC", text).casefold().replace("ё", "е")
    return "".join(ch for ch in t if unicodedata.category(ch)[0] not in _DROPPED)


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance (insertions, deletions, substitutions, each costing 1) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate of ``hypothesis`` against ``reference`` after :func:`normalize_for_cer`: edits /
    reference characters. 0 is perfect; it exceeds 1 when the transcript is much longer than the text."""
    ref, hyp = normalize_for_cer(reference), normalize_for_cer(hypothesis)
    if not ref:
        raise ValueError(f"the reference {reference!r} has no characters to compare after normalisation")
    return levenshtein(ref, hyp) / len(ref)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (1: same direction, 0: unrelated)."""
    x, y = np.asarray(a, np.float64).reshape(-1), np.asarray(b, np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"embeddings differ in size: {x.shape} and {y.shape}")
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if not (nx > 0 and ny > 0 and np.isfinite(nx) and np.isfinite(ny)):
        raise ValueError("a speaker embedding is zero or not finite: no similarity can be computed")
    return float(x @ y / (nx * ny))


def mel_distance(reference: np.ndarray, mel: np.ndarray) -> dict[str, float] | None:
    """``max_abs``, ``mean_abs`` and ``rel_l2`` (‖mel − ref‖ / ‖ref‖) of two mels, or None when their shapes
    differ (different lengths have no frame-by-frame distance)."""
    r, m = np.asarray(reference, np.float64), np.asarray(mel, np.float64)
    if r.shape != m.shape:
        return None
    d = m - r
    return {"max_abs": float(np.abs(d).max(initial=0.0)), "mean_abs": float(np.abs(d).mean()) if d.size else 0.0,
            "rel_l2": float(np.linalg.norm(d) / max(float(np.linalg.norm(r)), 1e-12))}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def logprob_agreement(ref_logp: np.ndarray, logp: np.ndarray, targets: Sequence[int]) -> dict[str, float]:
    """Agreement of two LLMs' next-token log-probs (rows: the same positions, both fed the same tokens).

    ``top1_agreement``: share of positions whose most likely token is the same; ``kl_mean``: mean KL(ref ‖ this)
    in nats; ``logprob_delta_mean``: mean |Δ log p| of ``targets`` (the reference's own tokens, one per row
    from the first; rows after them, e.g. the stop decision, count for the other two only)."""
    r, q = np.asarray(ref_logp, np.float64), np.asarray(logp, np.float64)
    if r.shape != q.shape or r.ndim != 2 or not len(r):
        raise ValueError(f"log-prob arrays must be the same (positions, vocab) shape: {r.shape} and {q.shape}")
    t = np.asarray(targets, np.int64).reshape(-1)
    if len(t) > len(r):
        raise ValueError(f"{len(t)} target tokens for {len(r)} positions")
    pr = np.exp(r)
    # 0 · log 0 counts as 0; a -inf in this model where the reference has mass makes the KL infinite, as it is
    with np.errstate(invalid="ignore"):
        terms = np.where(pr > 0, pr * (r - q), 0.0)
    kl = terms.sum(axis=1)
    rows = np.arange(len(t))
    return {"top1_agreement": float(np.mean(r.argmax(axis=1) == q.argmax(axis=1))),
            "kl_mean": float(np.mean(kl)),
            "logprob_delta_mean": float(np.mean(np.abs(r[rows, t] - q[rows, t]))) if len(t) else 0.0}


def token_agreement(reference: Sequence[int], tokens: Sequence[int]) -> tuple[float, int | None]:
    """(share of positions with the same token, over the longer sequence; the first position where they differ,
    None when they are identical)."""
    a, b = list(reference), list(tokens)
    n = max(len(a), len(b))
    if n == 0:
        return 1.0, None
    same = sum(x == y for x, y in zip(a, b, strict=False))
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    return same / n, first
