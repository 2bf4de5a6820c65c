"""``cosyvoice-rk quality``: how much each speed setting changes the speech, on a fixed sentence set.

Every setting (LLM quantization × flow estimator × Euler steps) speaks the same sentences (``data/
quality_sentences.json``) in the same voice with the same seeds, and is compared with the reference setting:
the F32 GGUF, the full-fidelity flow (fp32 estimator on ONNX Runtime) and the bundle's step count (upstream's 10).

The LLM samples, so a quantized LLM may draw other tokens; comparing its audio with the reference's frame by frame
would then measure luck. So each part is compared where the comparison is fair (docs/quality.md):

- LLM: every quantization is fed the reference's own tokens (teacher forcing) and its next-token distributions
  are compared with the F32 ones at the same positions (top-1 agreement, KL, |Δ log p| of the reference tokens);
  its free-running tokens (same seed) are compared position by position too;
- flow: every flow setting turns the reference's tokens into mel with the same noise, compared with the reference
  mel frame by frame;
- output: each setting's own audio (its tokens through its flow and the vocoder) gets the speaker similarity to
  the prompt (CAMPPlus cosine), the ASR character error rate when an ASR model is present, durations and wall
  time, and its mel distance to the reference output when the lengths match.
"""

from __future__ import annotations

import datetime as _dt
import gc
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.engines.cosyvoice3.quality_report import Accumulator, SettingResult
from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import BundleError, InputError

SENTENCES_FILE = Path(__file__).parent / "data" / "quality_sentences.json"
ASR_HINT = "get the ASR model with `./cv download --asr`"
Log = Callable[[str], None]


class Transcriber(Protocol):
    def transcribe(self, audio: np.ndarray, sample_rate: int, language: str | None = None) -> str: ...


@dataclass(frozen=True)
class Sentence:
    id: str
    language: str
    text: str


@dataclass(frozen=True)
class Setting:
    quant: str
    flow: str  # "full" (fp32 estimator) or "int8" (the fast flow's estimator)
    flow_steps: int

    @property
    def name(self) -> str:
        return f"{self.quant} / {self.flow} / {self.flow_steps} steps"

    @property
    def slug(self) -> str:
        return f"{self.quant}-{self.flow}-{self.flow_steps}"


@dataclass
class QualityOptions:
    bundle: Path | str
    quants: Sequence[str] | None = None  # None: every GGUF of the bundle
    flow_fast: bool = False  # also the INT8 flow
    flow_steps: Sequence[int] = ()  # also these step counts
    voice: str | None = None  # a saved voice ...
    speakers_dir: Path | str = "speakers"
    prompt_wav: Path | None = None  # ... or a recording and its words
    prompt_text: str | None = None
    prompt_language: str = "auto"
    languages: Sequence[str] | None = None  # None: the whole set
    seed: int = 0
    threads: int | None = None
    out_dir: Path | None = None  # write every output as WAV here


@dataclass
class AsrStatus:
    transcriber: Transcriber | None
    reason: str | None = None  # why there is none


@dataclass
class _VoiceIn:
    name: str
    source: str
    language: str
    transcript: str
    features: Any
    prompt_s: float
    embedding: np.ndarray = field(repr=False, default=None)


def load_sentences(languages: Sequence[str] | None = None) -> tuple[list[Sentence], str]:
    """The fixed sentence set (Russian first) and its sha256; ``languages`` keeps only those."""
    raw = SENTENCES_FILE.read_bytes()
    items = [Sentence(**s) for s in json.loads(raw)["sentences"]]
    if languages:
        known = sorted({s.language for s in items})
        bad = [lang for lang in languages if lang not in known]
        if bad:
            raise InputError(f"the sentence set has no {', '.join(bad)} sentences; its languages are "
                             f"{', '.join(known)}")
        items = [s for s in items if s.language in languages]
    return items, hashlib.sha256(raw).hexdigest()


def load_asr(path: Path | str | None = None) -> AsrStatus:
    """The ASR of the modes issue (``pipeline.shared.asr``), or why it is absent: never a silent CER of 0."""
    try:
        from pipeline.shared.asr import AsrMissing, load_transcriber  # type: ignore[import-not-found]
    except ImportError as e:
        return AsrStatus(None, f"no ASR in this installation ({e}); {ASR_HINT}")
    try:
        return AsrStatus(load_transcriber(path))
    except AsrMissing as e:
        msg = str(e)
        return AsrStatus(None, msg if "--asr" in msg else f"{msg}; {ASR_HINT}")


def settings_grid(bundle: Bundle, opts: QualityOptions) -> list[Setting]:
    """The reference (F32, full flow, the bundle's steps) first, then every asked combination."""
    gguf = bundle.manifest["llm"]["gguf"]
    if "f32" not in gguf:
        raise BundleError(f"bundle {bundle.root} has no F32 GGUF, the reference every setting is compared with "
                          f"(it has {', '.join(gguf)}); convert with --quant f32,{','.join(gguf)}")
    quants = list(dict.fromkeys(["f32", *(opts.quants or gguf)]))
    bad = [q for q in quants if q not in gguf]
    if bad:
        raise InputError(f"bundle {bundle.root} has no {', '.join(bad)} LLM; it has {', '.join(gguf)}")
    ref_steps = int(bundle.manifest["flow"]["n_timesteps"])
    for s in opts.flow_steps:
        if int(s) < 1:
            raise InputError(f"--flow-steps must be at least 1, not {s}")
    steps = list(dict.fromkeys([ref_steps, *(int(s) for s in opts.flow_steps)]))
    flows = ["full", "int8"] if opts.flow_fast else ["full"]
    return [Setting(q, f, s) for f in flows for s in steps for q in quants]


def _voice(bundle: Bundle, models: Any, opts: QualityOptions) -> _VoiceIn:
    from pipeline.engines.base import check_transcript
    from pipeline.engines.cosyvoice3.speaker import extract_prompt_features
    from pipeline.shared.audio import prepare_prompt
    from pipeline.shared.presets import SpeakerStore

    if opts.voice:
        p = SpeakerStore(opts.speakers_dir).load(opts.voice)
        src, name, transcript = p.audio_path.read_bytes(), p.name, p.transcript
        language, source = p.meta.get("language", "auto"), f"saved voice in {opts.speakers_dir}"
    elif opts.prompt_wav and opts.prompt_text:
        src, name, transcript = opts.prompt_wav, Path(opts.prompt_wav).name, opts.prompt_text
        language, source = opts.prompt_language, str(opts.prompt_wav)
    else:
        raise InputError("give --voice NAME (a saved voice) or --prompt-wav FILE with --prompt-text TEXT")
    check_transcript(transcript)
    prepared = prepare_prompt(src)
    feats, _ = extract_prompt_features(prepared, models, bundle=bundle)
    return _VoiceIn(name, source, language, transcript, feats, prepared.duration, feats.embedding)


def output_embedding(audio: np.ndarray, sample_rate: int, speaker: Any) -> np.ndarray | None:
    """CAMPPlus embedding of an output, prepared as the prompt's is (silence trimmed with the same margin,
    resampled to 16 kHz); None when it is silent (as quiet as a prompt that is refused) or too short."""
    from pipeline.shared.audio import SILENCE_DBFS, TOKENIZER_SR, peak_dbfs, resample, trim_silence

    x = np.asarray(audio, np.float32)
    if not len(x) or peak_dbfs(x, sample_rate) < SILENCE_DBFS:  # the prompt's own silence check
        return None
    y, _ = trim_silence(x, sample_rate, margin_s=0.2)
    y16 = resample(y, sample_rate, TOKENIZER_SR) if len(y) else y
    if len(y16) < int(0.025 * TOKENIZER_SR):  # below one fbank frame
        return None
    return speaker(y16)


def run_quality(opts: QualityOptions, *, asr: AsrStatus | None = None, log: Log = lambda m: None) -> dict[str, Any]:
    """Run every setting on the sentence set; returns the report (``quality_report.JSON_FIELDS``).
    ``asr``: the transcriber to score the CER with (default: :func:`load_asr`)."""
    from pipeline.engines.cosyvoice3.engine import Engine
    from pipeline.engines.cosyvoice3.flow import Flow, OrtEstimator, int8_estimator_path, ort_estimator
    from pipeline.engines.cosyvoice3.llm import SpeechLM, TextEmbedding
    from pipeline.engines.cosyvoice3.speaker import PromptModels
    from pipeline.engines.cosyvoice3.tokenizer import TextTokenizer
    from pipeline.engines.cosyvoice3.vocoder import HiFT
    from pipeline.shared.benchkit import loadavg, machine_info
    from pipeline.shared.text import TextFrontend

    machine = machine_info()
    bundle = Bundle.load(opts.bundle)
    settings = settings_grid(bundle, opts)
    sentences, set_sha = load_sentences(opts.languages)
    asr = asr if asr is not None else load_asr()
    if asr.transcriber is None:
        log(f"quality: no CER column: {asr.reason}")
    c, n = bundle.constants, opts.threads
    sr = int(c["sample_rate"])
    models = PromptModels.from_bundle(bundle, n_threads=n)
    voice = _voice(bundle, models, opts)
    frontend = TextFrontend(TextTokenizer.from_bundle(bundle))
    prompt_ids = frontend.prompt_ids(voice.transcript, voice.language)
    pieces = [[frontend.tokenizer.encode(p) for p in frontend.split(s.text, s.language)] for s in sentences]
    temb = TextEmbedding(bundle.path(bundle.manifest["llm"]["text_embedding"]))
    hift = HiFT.from_bundle(bundle, n_threads=n)
    ref = settings[0]
    acc = Accumulator(sentences, ref)
    quants = list(dict.fromkeys(s.quant for s in settings))

    # 1. the LLMs: free-running tokens (same seed per sentence), and the F32 reference tokens teacher-forced
    full_est = ort_estimator(bundle, n, lazy=True)
    ref_flow = Flow.from_bundle(bundle, estimator=full_est, n_threads=n)
    for q in quants:
        lm = SpeechLM.from_bundle(bundle, quant=q, n_threads=n)
        try:
            engine = Engine(bundle, lm, temb, ref_flow, hift)
            for i, s in enumerate(sentences):
                log(f"quality: LLM {q}, {s.id} ({i + 1}/{len(sentences)})")
                rng = np.random.default_rng(opts.seed + i)
                for j, ids in enumerate(pieces[i]):
                    t0 = time.perf_counter()
                    toks = engine.generate_tokens(ids, prompt_ids, voice.features, rng=rng,
                                                  max_tokens=engine.max_new_tokens(len(voice.features.speech_tokens)))
                    acc.add_tokens(q, i, j, toks, time.perf_counter() - t0)
                    ref_toks = acc.tokens["f32", i, j]
                    acc.add_logprobs(q, i, j, _teacher_forced(lm, temb, prompt_ids, ids, voice.features, ref_toks, c))
        finally:
            lm.close()

    # 2. the flows: each turns every quantization's tokens into mel, then the vocoder makes the audio
    from pipeline.engines.cosyvoice3.sampling import filter_silent

    for kind in dict.fromkeys(s.flow for s in settings):
        if kind == "int8":  # the full estimator is released first: on a board both may not fit
            full_est = ref_flow = est = None
            gc.collect()
            est = OrtEstimator(int8_estimator_path(bundle, log=log), n_threads=n, variant="int8")
        else:
            est = full_est
        for st in [s for s in settings if s.flow == kind]:
            flow = Flow.from_bundle(bundle, estimator=est, n_threads=n, n_timesteps=st.flow_steps)
            res = SettingResult(st, st == ref)
            for i, s in enumerate(sentences):
                log(f"quality: {st.name}, {s.id} ({i + 1}/{len(sentences)})")
                mels, audio, t_flow, t_voc = [], [], 0.0, 0.0
                for j in range(len(pieces[i])):
                    kept = filter_silent(acc.tokens[st.quant, i, j], c["silent_tokens"], c["max_silent_run"])
                    if not kept:
                        continue
                    t0 = time.perf_counter()
                    mel = flow(np.asarray(kept, np.int64), voice.features.speech_tokens, voice.features.mel,
                               voice.features.embedding)
                    t1 = time.perf_counter()
                    audio.append(hift(mel))
                    t_voc += time.perf_counter() - t1
                    t_flow += t1 - t0
                    mels.append(mel)
                wav = np.concatenate(audio).astype(np.float32) if audio else np.zeros(0, np.float32)
                mel = np.concatenate(mels, axis=1) if mels else None
                emb = output_embedding(wav, sr, models.speaker)
                transcript = None
                if asr.transcriber is not None and len(wav):
                    transcript = asr.transcriber.transcribe(wav, sr, language=s.language)
                acc.add_output(res, i, mel, wav, t_flow, t_voc, emb, voice.embedding, transcript,
                               asr.transcriber is not None, sr)
                if opts.out_dir is not None and len(wav):
                    _write_wav(Path(opts.out_dir) / st.slug / f"{s.id}.wav", wav, sr)
            acc.finish(res)

    machine["loadavg_end"] = loadavg()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "bundle": {"path": str(bundle.root), "fingerprint": bundle.fingerprint, "random_weights": bundle.is_random,
                   "quants": quants},
        "voice": {"name": voice.name, "source": voice.source, "language": voice.language,
                  "transcript": voice.transcript, "prompt_s": voice.prompt_s,
                  "prompt_tokens": int(len(voice.features.speech_tokens))},
        "reference": {"quant": ref.quant, "flow": ref.flow, "flow_steps": ref.flow_steps},
        "seed": opts.seed,
        "sentence_set": {"sha256": set_sha, "languages": list(dict.fromkeys(s.language for s in sentences)),
                         "sentences": [{"id": s.id, "language": s.language, "text": s.text} for s in sentences]},
        "asr": {"available": asr.transcriber is not None, "reason": asr.reason},
        "settings": [r.as_dict() for r in acc.results],
    }


def _teacher_forced(lm: Any, temb: Any, prompt_ids: Sequence[int], ids: Sequence[int], feats: Any,
                    ref_tokens: Sequence[int], constants: dict) -> np.ndarray:
    """This LLM's next-token log-probs along the reference tokens: the prefill's row (for token 0), then one row
    after each reference token (the last one: the stop decision). (len(ref_tokens) + 1, vocab) float32."""
    from pipeline.engines.cosyvoice3.llm import prefill_zero_shot
    from pipeline.engines.cosyvoice3.quality_metrics import log_softmax

    lm.reset()
    first = prefill_zero_shot(lm, temb, [*prompt_ids, *ids], feats.speech_tokens, constants)[None]
    rows = [first]
    if len(ref_tokens):
        rows.append(lm.feed(list(ref_tokens), all_logits=True))
    return log_softmax(np.concatenate(rows, axis=0)).astype(np.float32)


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    import io

    import soundfile as sf

    from pipeline.shared.fsutil import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="WAV", subtype="PCM_16")
    atomic_write_bytes(path, buf.getvalue())
