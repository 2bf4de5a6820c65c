"""RAS sampling, the decode loop and the silent-token filter against upstream semantics.

The reference below re-states upstream's ``nucleus_sampling`` / ``random_sampling`` / ``ras_sampling``
(cosyvoice/utils/common.py) in torch. torch's RNG cannot be matched, so the candidate sets and the
fallback are compared deterministically (through a scripted RNG) and the draws statistically.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.engines.cosyvoice3.convert import upstream
from pipeline.engines.cosyvoice3.sampling import (
    Cancelled,
    filter_silent,
    generate_tokens,
    greedy,
    log_softmax32,
    make_ras_sampler,
    nucleus_candidates,
    ras_sampling,
)

SIZE = 6561
CONSTANTS = {
    "speech_token_size": SIZE, "sos": SIZE, "eos": SIZE + 1, "task_id": SIZE + 2, "fill": SIZE + 3,
    "speech_vocab": SIZE + 200,
    "sampling": {"top_p": 0.8, "top_k": 25, "win_size": 10, "tau_r": 0.1},
    "min_token_text_ratio": upstream.MIN_TOKEN_TEXT_RATIO,
    "max_token_text_ratio": upstream.MAX_TOKEN_TEXT_RATIO,
    "silent_tokens": upstream.SILENT_TOKENS, "max_silent_run": upstream.MAX_SILENT_RUN,
}
RAS = CONSTANTS["sampling"]


# --- torch reference of upstream's sampling --------------------------------------------------------

def ref_nucleus(scores: torch.Tensor, top_p: float, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    probs, ids = [], []
    total = 0.0
    values, order = scores.softmax(dim=0).sort(descending=True, stable=True)
    for i in range(len(order)):
        if not (total < top_p and len(probs) < top_k):
            break
        total += values[i]
        probs.append(values[i])
        ids.append(order[i])
    return torch.stack(probs), torch.stack(ids)


def ref_ras(scores: torch.Tensor, decoded: list[int], top_p: float, top_k: int, win_size: int,
            tau_r: float) -> int:
    probs, ids = ref_nucleus(scores, top_p, top_k)
    tok = ids[probs.multinomial(1, replacement=True)].item()
    if (torch.tensor(decoded[-win_size:]) == tok).sum().item() >= win_size * tau_r:
        scores[tok] = -float("inf")
        tok = scores.softmax(dim=0).multinomial(1, replacement=True).item()
    return tok


class ScriptedRng:
    """Stands in for np.random.Generator: returns scripted Exp(1) vectors and records the sizes asked."""

    def __init__(self, *vectors: np.ndarray) -> None:
        self.vectors = list(vectors)
        self.sizes: list[int] = []

    def standard_exponential(self, n: int) -> np.ndarray:
        self.sizes.append(n)
        v = self.vectors.pop(0) if self.vectors else np.ones(n)
        assert len(v) == n, f"scripted vector has {len(v)} values, sampler asked {n}"
        return v


def random_logp(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    return log_softmax32(rng.normal(size=n).astype(np.float32) * np.float32(scale))


# --- candidate set --------------------------------------------------------------------------------

def test_candidates_equal_reference_on_many_distributions():
    rng = np.random.default_rng(0)
    cases = []
    for scale in (0.1, 0.5, 1.0, 2.0, 4.0, 8.0):
        cases += [random_logp(rng, 200, scale) for _ in range(20)]
    tied = np.zeros(50, np.float32)  # all equal: stable order = lowest ids first, top_k bound hits
    tied[[7, 3]] = 2.0
    masked = random_logp(rng, 300, 3.0)
    masked[rng.choice(300, 40, replace=False)] = -np.inf
    cases += [log_softmax32(tied), masked]
    sizes = set()
    for logp in cases:
        for top_p, top_k in ((0.8, 25), (0.5, 3), (0.99, 100)):
            ids, probs = nucleus_candidates(logp, top_p, top_k)
            rprobs, rids = ref_nucleus(torch.from_numpy(logp.copy()), top_p, top_k)
            assert ids.tolist() == rids.tolist()
            np.testing.assert_allclose(probs, rprobs.numpy(), rtol=1e-6, atol=1e-9)
            sizes.add(len(ids))
    assert min(sizes) == 1 and max(sizes) >= 25  # both the top_p and the top_k bound were exercised


def test_nucleus_keeps_the_token_that_crosses_top_p():
    p = np.array([0.5, 0.25, 0.15, 0.1], np.float32)
    ids, _ = nucleus_candidates(np.log(p), top_p=0.8, top_k=25)
    assert ids.tolist() == [0, 1, 2]  # 0.5, 0.75 < 0.8 before the 3rd, 0.9 before the 4th
    ids, _ = nucleus_candidates(np.log(p), top_p=0.8, top_k=2)
    assert ids.tolist() == [0, 1]


def test_draw_is_argmax_p_over_exponentials_on_the_candidates():
    logp = random_logp(np.random.default_rng(1), 100, 2.0)
    ids, probs = nucleus_candidates(logp, RAS["top_p"], RAS["top_k"])
    assert len(ids) > 3
    for j in range(len(ids)):
        q = np.full(len(ids), 1e6)
        q[j] = 1e-6
        rng = ScriptedRng(q)
        assert ras_sampling(logp, [], rng, **RAS) == ids[j]
        assert rng.sizes == [len(ids)]  # one exponential per candidate, as torch.multinomial draws
    q = np.random.default_rng(2).standard_exponential(len(ids))
    assert ras_sampling(logp, [], ScriptedRng(q), **RAS) == ids[np.argmax(probs / q)]


# --- repetition fallback --------------------------------------------------------------------------

def test_fallback_when_token_repeats_in_window():
    logp = random_logp(np.random.default_rng(3), 80, 3.0)
    ids, probs = nucleus_candidates(logp, RAS["top_p"], RAS["top_k"])
    top = int(ids[0])
    first = np.full(len(ids), 1e6)
    first[0] = 1e-6  # the nucleus draw picks `top`
    # repeat inside the last 10 -> redraw over all ids with `top` removed; give `top` the smallest q
    q_all = np.ones(80)
    q_all[top] = 1e-12
    rng = ScriptedRng(first, q_all)
    got = ras_sampling(logp, [5, top, 6], rng, **RAS)
    assert rng.sizes == [len(ids), 80]
    masked = logp.copy()
    masked[top] = -np.inf
    assert got == int(np.argmax(masked)) and got != top
    # the caller's array is not modified
    assert np.isfinite(logp[top])
    # the same token only outside the window: no fallback
    rng = ScriptedRng(first)
    assert ras_sampling(logp, [top] + [1] * 10, rng, **RAS) == top
    assert rng.sizes == [len(ids)]
    # tau_r 0.2 with win 10 needs two repeats
    rng = ScriptedRng(first)
    assert ras_sampling(logp, [top, 1, 2], rng, **{**RAS, "tau_r": 0.2}) == top
    rng = ScriptedRng(first, q_all)
    assert ras_sampling(logp, [top, 1, top], rng, **{**RAS, "tau_r": 0.2}) != top


def test_fallback_can_reach_stop_ids():
    logp = np.full(SIZE + 200, -1e4, np.float32)
    logp[10] = 0.0
    logp[SIZE + 1] = -3.0  # only id 10 is in the nucleus (p 0.95)
    logp = log_softmax32(logp)
    got = ras_sampling(logp, [10], ScriptedRng(np.ones(1), np.ones(SIZE + 200)), **RAS)
    assert got == SIZE + 1


def _expected_ras_distribution(logp: np.ndarray, decoded: list[int]) -> np.ndarray:
    """Exact distribution of the reference: nucleus pick, then the full-softmax redraw for repeats."""
    probs, ids = ref_nucleus(torch.from_numpy(logp.copy()), RAS["top_p"], RAS["top_k"])
    probs, ids = probs.numpy().astype(np.float64), ids.numpy()
    out = np.zeros(logp.shape[0])
    window = decoded[-RAS["win_size"]:]
    for tok, w in zip(ids, probs / probs.sum(), strict=True):
        if window.count(int(tok)) >= RAS["win_size"] * RAS["tau_r"]:
            m = logp.astype(np.float64)
            m[tok] = -np.inf
            out += w * np.exp(m - np.log(np.exp(m).sum()))
        else:
            out[tok] += w
    return out


@pytest.mark.parametrize("decoded", [[], [0, 1, 2, 3]])
def test_draw_distribution_matches_torch_reference(decoded):
    logp = random_logp(np.random.default_rng(4), 40, 1.5)
    order = np.argsort(-logp, kind="stable")
    decoded = [int(order[i]) for i in decoded]  # repeats of the most likely ids exercise the fallback
    n = 4000
    expected = _expected_ras_distribution(logp, decoded)
    rng = np.random.default_rng(123)
    ours = np.bincount([ras_sampling(logp, decoded, rng, **RAS) for _ in range(n)], minlength=40)
    torch.manual_seed(123)
    ref = np.bincount([ref_ras(torch.from_numpy(logp.copy()), decoded, **RAS) for _ in range(n)],
                      minlength=40)
    support = expected > 0
    assert ours[~support].sum() == 0 and ref[~support].sum() == 0
    for counts in (ours, ref):
        e = expected[support] * n
        chi2 = float((((counts[support] - e) ** 2) / e).sum())
        dof = int(support.sum()) - 1
        # chi-square 99.9% quantile is below dof + 4.5 sqrt(2 dof) + 10 for these dofs
        assert chi2 < dof + 4.5 * np.sqrt(2 * dof) + 10, (chi2, dof)


def test_greedy():
    logp = np.array([0.1, 3.0, 3.0, -1.0], np.float32)
    assert greedy(logp, [], None) == 1


# --- decode loop ----------------------------------------------------------------------------------

V = SIZE + 200


def onehot_logits(tok: int, second: int | None = None) -> np.ndarray:
    x = np.zeros(V, np.float32)
    x[tok] = 10.0
    if second is not None:
        x[second] = 5.0
    return x


class ScriptedLM:
    """Returns scripted logits for each step and records the fed tokens."""

    def __init__(self, script: list[np.ndarray]) -> None:
        self.script = list(script)
        self.fed: list[int] = []

    def step(self, token: int) -> np.ndarray:
        self.fed.append(token)
        return self.script.pop(0) if self.script else onehot_logits(100)


def test_min_len_masks_only_sos_quirk():
    # n_tts 2 -> min_len 4. sos (6561) on top is masked below min_len, the second best is taken.
    lm = ScriptedLM([onehot_logits(SIZE, 7), onehot_logits(SIZE + 1, 8)])
    out = generate_tokens(lm, onehot_logits(SIZE, 5), n_tts_text_tokens=2, constants=CONSTANTS, rng=None,
                          sampler=greedy)
    # step 0: sos masked -> 5; step 1: sos masked -> 7; step 2: eos 6562 is NOT masked -> stop
    assert out == [5, 7]
    assert lm.fed == [5, 7]


def test_sos_allowed_after_min_len_stops():
    lm = ScriptedLM([onehot_logits(SIZE, 7)])
    c = {**CONSTANTS, "min_token_text_ratio": 1}  # min_len 1: from step 1 on sos is allowed, and stops
    out = generate_tokens(lm, onehot_logits(3), n_tts_text_tokens=1, constants=c, rng=None, sampler=greedy)
    assert out == [3]


@pytest.mark.parametrize("stop_id", [SIZE + 1, SIZE + 3, V - 1])
def test_any_id_from_speech_token_size_stops(stop_id):
    lm = ScriptedLM([onehot_logits(9), onehot_logits(stop_id)])
    no_min = {**CONSTANTS, "min_token_text_ratio": 0}
    out = generate_tokens(lm, onehot_logits(4), n_tts_text_tokens=1, constants=no_min, rng=None,
                          sampler=greedy)
    assert out == [4, 9]
    assert lm.fed == [4, 9]  # nothing is fed after the stop id


def test_max_len_and_max_tokens():
    lm = ScriptedLM([])
    out = generate_tokens(lm, onehot_logits(100), n_tts_text_tokens=3, constants=CONSTANTS, rng=None,
                          sampler=greedy)
    assert len(out) == 3 * upstream.MAX_TOKEN_TEXT_RATIO
    assert len(lm.fed) == len(out) - 1  # no LLM step after the last allowed token
    lm = ScriptedLM([])
    out = generate_tokens(lm, onehot_logits(100), n_tts_text_tokens=3, constants=CONSTANTS, rng=None,
                          sampler=greedy, max_tokens=7)
    assert len(out) == 7 and len(lm.fed) == 6


def test_logp_given_to_sampler_and_temperature():
    logits = np.random.default_rng(5).normal(size=V).astype(np.float32) * 3
    seen = []

    def spy(logp, decoded, rng):
        seen.append(logp.copy())
        return SIZE + 1

    for temp in (1.0, 0.7, 2.0):
        generate_tokens(ScriptedLM([]), logits, n_tts_text_tokens=1, constants=CONSTANTS, rng=None,
                        sampler=spy, temperature=temp)
        want = torch.log_softmax(torch.from_numpy(logits) / temp, dim=-1).numpy()
        want[SIZE] = -np.inf  # step 0 < min_len
        got = seen[-1]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    assert not np.allclose(seen[0][:SIZE], seen[1][:SIZE])
    with pytest.raises(ValueError):
        generate_tokens(ScriptedLM([]), logits, n_tts_text_tokens=1, constants=CONSTANTS, rng=None,
                        sampler=spy, temperature=0)


def test_callbacks_and_cancel():
    calls = []
    lm = ScriptedLM([onehot_logits(11), onehot_logits(12), onehot_logits(13)])
    stop_after = 2

    def should_stop():
        return len(calls) >= stop_after

    with pytest.raises(Cancelled):
        generate_tokens(lm, onehot_logits(10), n_tts_text_tokens=5, constants=CONSTANTS, rng=None,
                        sampler=greedy, on_token=lambda i, t: calls.append((i, t)), should_stop=should_stop)
    assert calls == [(0, 10), (1, 11)]
    assert lm.fed == [10]  # cancelled before the third LLM step


def test_default_sampler_is_ras_from_constants():
    logits = np.random.default_rng(6).normal(size=V).astype(np.float32)
    logits[SIZE + 1] = -50  # keep it going
    rng = ScriptedRng()
    c = {**CONSTANTS, "min_token_text_ratio": 0}
    out = generate_tokens(ScriptedLM([logits] * 3), logits, n_tts_text_tokens=1, constants=c, rng=rng,
                          max_tokens=4)
    assert len(out) == 4 and all(t < SIZE for t in out)
    ids, _ = nucleus_candidates(log_softmax32(logits), 0.8, 25)
    assert rng.sizes[0] == len(ids)
    assert make_ras_sampler(RAS).keywords == RAS


# --- silent filter --------------------------------------------------------------------------------

def test_filter_silent_runs():
    s = upstream.SILENT_TOKENS
    assert filter_silent([1] * 8, s, 5) == [1] * 5
    assert filter_silent([1, 2, 28, 29, 55, 248, 494, 7], s, 5) == [1, 2, 28, 29, 55, 7]
    assert filter_silent([1, 1, 1, 7, 1, 1, 1, 1, 1, 1, 2], s, 5) == [1, 1, 1, 7, 1, 1, 1, 1, 1]
    assert filter_silent([7, 8, 9], s, 5) == [7, 8, 9]
    assert filter_silent([2241] * 3 + [9] + [2323] * 7 + [9, 1], s, 2) == [2241, 2241, 9, 2323, 2323, 9, 1]
    assert filter_silent([], s, 5) == []
