"""The report of ``cosyvoice-rk quality``: per-sentence numbers pooled per setting, the JSON fields and the table.

Every field listed here is explained in docs/quality.md (a test checks that each one is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.engines.cosyvoice3.quality_metrics import (
    cosine,
    levenshtein,
    logprob_agreement,
    mel_distance,
    normalize_for_cer,
    token_agreement,
)

if TYPE_CHECKING:
    from pipeline.engines.cosyvoice3.quality import Sentence, Setting

JSON_FIELDS = ("date", "machine", "bundle", "voice", "reference", "seed", "sentence_set", "asr", "settings")
BUNDLE_FIELDS = ("path", "fingerprint", "random_weights", "quants")
VOICE_FIELDS = ("name", "source", "language", "transcript", "prompt_s", "prompt_tokens")
REFERENCE_FIELDS = ("quant", "flow", "flow_steps")
SENTENCE_SET_FIELDS = ("sha256", "languages", "sentences")
ASR_FIELDS = ("available", "reason")
SETTING_FIELDS = ("name", "quant", "flow", "flow_steps", "is_reference", "speaker_similarity",
                  "speaker_similarity_min", "cer", "audio_s", "wall_s", "llm_s", "flow_s", "vocoder_s", "rtf", "llm",
                  "flow_mel", "output_mel", "sentences")
LLM_FIELDS = ("positions", "top1_agreement", "kl_mean", "logprob_delta_mean", "token_agreement",
              "identical_sentences")
MEL_FIELDS = ("compared", "max_abs", "mean_abs", "rel_l2")
SENTENCE_FIELDS = ("id", "language", "segments", "tokens", "audio_s", "llm_s", "flow_s", "vocoder_s", "wall_s",
                   "speaker_similarity", "cer", "char_errors", "chars", "transcript", "token_agreement",
                   "first_divergence", "top1_agreement", "kl_mean", "flow_mel_rel_l2", "output_mel_rel_l2", "notes")


@dataclass
class _MelSums:
    """Sums of several sentences' mel differences, pooled as if they were one long mel."""

    compared: int = 0
    n: int = 0
    max_abs: float = 0.0
    abs_sum: float = 0.0
    sq_diff: float = 0.0
    sq_ref: float = 0.0

    def add(self, ref: np.ndarray, mel: np.ndarray) -> float | None:
        """Add one sentence; returns its rel-L2, or None when the shapes differ (not added)."""
        d = mel_distance(ref, mel)
        if d is None:
            return None
        diff = np.asarray(mel, np.float64) - np.asarray(ref, np.float64)
        self.compared += 1
        self.n += diff.size
        self.max_abs = max(self.max_abs, d["max_abs"])
        self.abs_sum += float(np.abs(diff).sum())
        self.sq_diff += float((diff * diff).sum())
        self.sq_ref += float((np.asarray(ref, np.float64) ** 2).sum())
        return d["rel_l2"]

    def as_dict(self) -> dict[str, Any]:
        if not self.compared:
            return {"compared": 0, "max_abs": None, "mean_abs": None, "rel_l2": None}
        return {"compared": self.compared, "max_abs": self.max_abs, "mean_abs": self.abs_sum / max(self.n, 1),
                "rel_l2": math.sqrt(self.sq_diff) / max(math.sqrt(self.sq_ref), 1e-12)}


@dataclass
class SettingResult:
    setting: Setting
    is_reference: bool
    sentences: list[dict[str, Any]] = field(default_factory=list)
    flow_mel: _MelSums = field(default_factory=_MelSums)
    output_mel: _MelSums = field(default_factory=_MelSums)
    summary: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        s = self.setting
        return {"name": s.name, "quant": s.quant, "flow": s.flow, "flow_steps": s.flow_steps,
                "is_reference": self.is_reference, **self.summary, "flow_mel": self.flow_mel.as_dict(),
                "output_mel": self.output_mel.as_dict(), "sentences": self.sentences}


@dataclass
class _LlmSums:
    rows: int = 0
    top1: float = 0.0
    kl: float = 0.0
    targets: int = 0
    delta: float = 0.0


class Accumulator:
    """Collects what :func:`.quality.run_quality` measures and turns it into per-setting results."""

    def __init__(self, sentences: list[Sentence], reference: Setting) -> None:
        self.sentences = sentences
        self.reference = reference
        self.tokens: dict[tuple[str, int, int], list[int]] = {}
        self.llm_s: dict[tuple[str, int], float] = {}
        self.llm: dict[tuple[str, int], _LlmSums] = {}
        self._ref_logp: dict[tuple[int, int], np.ndarray] = {}
        self._ref_mel: dict[int, np.ndarray | None] = {}
        self._flow_mel: dict[tuple[str, int, int], tuple[np.ndarray | None, np.ndarray | None]] = {}
        self.results: list[SettingResult] = []

    def add_tokens(self, quant: str, i: int, j: int, tokens: list[int], seconds: float) -> None:
        self.tokens[quant, i, j] = list(tokens)
        self.llm_s[quant, i] = self.llm_s.get((quant, i), 0.0) + seconds

    def add_logprobs(self, quant: str, i: int, j: int, logp: np.ndarray) -> None:
        """This quantization's teacher-forced log-probs on the reference tokens of sentence ``i``, part ``j``."""
        if quant == self.reference.quant:
            self._ref_logp[i, j] = logp
        ref_tokens = self.tokens[self.reference.quant, i, j]
        a = logprob_agreement(self._ref_logp[i, j], logp, ref_tokens)
        s = self.llm.setdefault((quant, i), _LlmSums())
        s.rows += len(logp)
        s.top1 += a["top1_agreement"] * len(logp)
        s.kl += a["kl_mean"] * len(logp)
        s.targets += len(ref_tokens)
        s.delta += a["logprob_delta_mean"] * len(ref_tokens)

    def _joined(self, quant: str, i: int) -> list[int]:
        out: list[int] = []
        j = 0
        while (quant, i, j) in self.tokens:
            out += self.tokens[quant, i, j]
            j += 1
        return out

    def add_output(self, res: SettingResult, i: int, mel: np.ndarray | None, wav: np.ndarray, flow_s: float,
                   vocoder_s: float, emb: np.ndarray | None, prompt_emb: np.ndarray, transcript: str | None,
                   asr_on: bool, sample_rate: int) -> None:
        st, s, ref_q = res.setting, self.sentences[i], self.reference.quant
        notes: list[str] = []
        if res.is_reference:
            self._ref_mel[i] = mel
        ref_mel = self._ref_mel.get(i)
        key = (st.flow, st.flow_steps, i)
        if st.quant == ref_q:  # this flow setting on the reference tokens: the teacher-forced flow distance
            self._flow_mel[key] = (ref_mel, mel)
        tf_ref, tf_mel = self._flow_mel.get(key, (None, None))
        flow_rel = res.flow_mel.add(tf_ref, tf_mel) if tf_ref is not None and tf_mel is not None else None
        out_rel = res.output_mel.add(ref_mel, mel) if ref_mel is not None and mel is not None else None
        if mel is None:
            notes.append("the LLM produced no speech tokens: no audio")
        elif ref_mel is not None and out_rel is None:
            notes.append("its tokens are not as many as the reference's: no output mel distance")
        toks, ref_toks = self._joined(st.quant, i), self._joined(ref_q, i)
        agree, first = token_agreement(ref_toks, toks)
        sim = cosine(prompt_emb, emb) if emb is not None else None
        if emb is None and len(wav):
            notes.append("the output is silent or too short for the speaker encoder: no similarity")
        err = None
        if asr_on:
            ref_c, hyp_c = normalize_for_cer(s.text), normalize_for_cer(transcript or "")
            err = (levenshtein(ref_c, hyp_c), len(ref_c))
        ll = self.llm.get((st.quant, i), _LlmSums())
        llm_s = self.llm_s.get((st.quant, i), 0.0)
        audio_s = len(wav) / sample_rate
        res.sentences.append({
            "id": s.id, "language": s.language, "segments": sum(1 for k in self.tokens if k[:2] == (st.quant, i)),
            "tokens": len(toks), "audio_s": audio_s, "llm_s": llm_s, "flow_s": flow_s, "vocoder_s": vocoder_s,
            "wall_s": llm_s + flow_s + vocoder_s, "speaker_similarity": sim,
            "cer": err[0] / err[1] if err else None, "char_errors": err[0] if err else None,
            "chars": err[1] if err else None, "transcript": transcript, "token_agreement": agree,
            "first_divergence": first, "top1_agreement": ll.top1 / ll.rows if ll.rows else None,
            "kl_mean": ll.kl / ll.rows if ll.rows else None, "flow_mel_rel_l2": flow_rel,
            "output_mel_rel_l2": out_rel, "notes": notes,
        })

    def finish(self, res: SettingResult) -> None:
        """Pool the setting's sentences into its summary and keep it."""
        ss, q = res.sentences, res.setting.quant
        sims = [x["speaker_similarity"] for x in ss if x["speaker_similarity"] is not None]
        chars = sum(x["chars"] or 0 for x in ss)
        audio = sum(x["audio_s"] for x in ss)
        wall = sum(x["wall_s"] for x in ss)
        llm = [self.llm.get((q, i), _LlmSums()) for i in range(len(self.sentences))]
        rows, targets = sum(x.rows for x in llm), sum(x.targets for x in llm)
        n_tok = [(len(self._joined(self.reference.quant, i)), len(self._joined(q, i))) for i in range(len(ss))]
        same = sum(x["token_agreement"] * max(a, b) for x, (a, b) in zip(ss, n_tok, strict=True))
        res.summary = {
            "speaker_similarity": float(np.mean(sims)) if sims else None,
            "speaker_similarity_min": float(min(sims)) if sims else None,
            "cer": sum(x["char_errors"] for x in ss) / chars if chars else None,
            "audio_s": audio, "wall_s": wall, "llm_s": sum(x["llm_s"] for x in ss),
            "flow_s": sum(x["flow_s"] for x in ss), "vocoder_s": sum(x["vocoder_s"] for x in ss),
            "rtf": wall / audio if audio > 0 else None,
            "llm": {"positions": rows, "top1_agreement": sum(x.top1 for x in llm) / rows if rows else None,
                    "kl_mean": sum(x.kl for x in llm) / rows if rows else None,
                    "logprob_delta_mean": sum(x.delta for x in llm) / targets if targets else None,
                    "token_agreement": same / max(sum(max(a, b) for a, b in n_tok), 1),
                    "identical_sentences": sum(x["first_divergence"] is None for x in ss)},
        }
        self.results.append(res)


def _f(v: Any, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def format_table(rep: dict[str, Any]) -> str:
    """The report as text: a header, one row per setting, then what the columns mean."""
    b, v, r, a = rep["bundle"], rep["voice"], rep["reference"], rep["asr"]
    lines = [f"bundle {b['path']} ({b['fingerprint']}), voice {v['name']} ({v['prompt_s']:.1f} s, "
             f"{v['prompt_tokens']} tokens), {len(rep['sentence_set']['sentences'])} sentences "
             f"({', '.join(rep['sentence_set']['languages'])}), seed {rep['seed']}",
             f"reference: {r['quant']} / {r['flow']} / {r['flow_steps']} steps"]
    if b["random_weights"]:
        lines.append("RANDOM WEIGHTS: these numbers only exercise the code; they say nothing about the real model")
    if not a["available"]:
        lines.append(f"CER: absent ({a['reason']})")
    head = ("setting", "sim", "sim min", "CER", "top1", "KL", "tokens=", "flow mel", "out mel", "audio s", "wall s",
            "RTF")
    rows = []
    for s in rep["settings"]:
        ll, om = s["llm"], s["output_mel"]
        out = _f(om["rel_l2"], ".2%") + (f" ({om['compared']}/{len(s['sentences'])})" if om["compared"] else "")
        rows.append((s["name"] + (" *" if s["is_reference"] else ""), _f(s["speaker_similarity"], ".3f"),
                     _f(s["speaker_similarity_min"], ".3f"), _f(s["cer"], ".1%"), _f(ll["top1_agreement"], ".1%"),
                     _f(ll["kl_mean"], ".4f"), _f(ll["token_agreement"], ".1%"), _f(s["flow_mel"]["rel_l2"], ".2%"),
                     out, f"{s['audio_s']:.1f}", f"{s['wall_s']:.1f}", _f(s["rtf"], ".2f")))
    widths = [max(len(str(x[k])) for x in [head, *rows]) for k in range(len(head))]
    for row in [head, *rows]:
        lines.append("  ".join(str(x).ljust(w) if k == 0 else str(x).rjust(w)
                               for k, (x, w) in enumerate(zip(row, widths, strict=True))))
    lines += ["* the reference. sim: CAMPPlus cosine to the prompt (mean, min); CER: ASR character error rate; "
              "top1/KL: the LLM's next-token agreement with F32 on F32's tokens; tokens=: same-seed tokens equal to "
              "F32's; flow mel: rel-L2 of this flow on F32's tokens; out mel: rel-L2 of this setting's own output "
              "(sentences with as many tokens as the reference). docs/quality.md"]
    return "\n".join(lines)
