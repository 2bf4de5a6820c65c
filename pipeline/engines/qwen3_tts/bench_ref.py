"""The two out-of-process parts of ``bench --engine qwen3-tts``.

``Reference``: upstream's PyTorch ``qwen-tts`` 0.1.1 in its own venv (``.venv-qwen-ref``, made by
``scripts/setup-qwen-tts-ref-env.sh``; torch and transformers 4.57.3 never enter the project's environment), driven
over a pipe (:mod:`.bench_ref_worker`) so that one upstream repeat runs right after each engine repeat, on the same
checkpoint, the same strings and prompt samples, the same forced frame count and the same thread count.

``worker_rss``: a fresh process (``python -m pipeline.engines.qwen3_tts.bench_rss``) that opens the bundle as the
studio's worker does (``open_tts``, default quant), runs one request of the bench's shapes and reports its peak RSS.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import BackendError, InputError

from .bench_inputs import BenchInputs

_REPO = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).with_name("bench_ref_worker.py")
SETUP_SCRIPT = "scripts/setup-qwen-tts-ref-env.sh"
PYTHON_ENV = "COSYVOICE_RK_QWEN_REF_PYTHON"
PREFIX = "@@Q3REF "
REF_METRICS = ("prompt_features_s", "prefill_s", "talker_step_ms", "talker_tok_per_s", "cp_ms_per_frame",
               "cp_ms_per_step", "decoder_s", "decoder_s_per_audio_s", "generate_s", "total_s", "total_with_prompt_s",
               "rtf", "rtf_with_prompt")
# engine metric -> how many times faster the engine is (upstream / engine, medians)
SPEEDUPS = ("prefill_s", "talker_step_ms", "cp_ms_per_frame", "decoder_s", "total_s", "rtf")


def find_ref_python(explicit: Path | str | None = None) -> Path | None:
    """``explicit`` (only it, when given), else $COSYVOICE_RK_QWEN_REF_PYTHON, then ``.venv-qwen-ref/bin/python`` at
    the repository root or in the working directory."""
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    cands = []
    if os.environ.get(PYTHON_ENV):
        cands.append(Path(os.environ[PYTHON_ENV]))
    cands += [_REPO / ".venv-qwen-ref" / "bin" / "python", Path.cwd() / ".venv-qwen-ref" / "bin" / "python"]
    return next((c for c in cands if c.is_file()), None)


def missing_env_message(explicit: Path | str | None = None) -> str:
    where = f"{explicit} does not exist" if explicit else ".venv-qwen-ref not found"
    return (f"no upstream Qwen3-TTS reference environment ({where}); create it with {SETUP_SCRIPT} (torch CPU + "
            f"qwen-tts 0.1.1 in their own venv, a few minutes) or point ${PYTHON_ENV} / --ref-python at its python")


def _checkpoint(bundle: Bundle, explicit: Path | str | None) -> Path:
    if explicit:
        ck = Path(explicit)
    else:
        raise InputError("--reference needs the checkpoint folder the bundle was converted from "
                         "(--ref-checkpoint DIR; for a random bundle, keep the checkpoint that "
                         "make_random_checkpoint wrote)")
    if not (ck / "config.json").is_file() or not (ck / "model.safetensors").is_file():
        raise InputError(f"{ck} is not a Qwen3-TTS checkpoint folder (config.json, model.safetensors)")
    return ck


class Reference:
    """A running upstream worker; :meth:`run` is one timed ``generate_voice_clone``."""

    def __init__(self, proc: subprocess.Popen, checkpoint: Path, python: Path, tmp: tempfile.TemporaryDirectory,
                 log: Any) -> None:
        self.proc, self.checkpoint, self.python, self._tmp, self.log = proc, checkpoint, python, tmp, log
        self.info: dict[str, Any] = {}

    @classmethod
    def start(cls, opts: Any, bundle: Bundle, log: Any) -> Reference:
        python = find_ref_python(opts.ref_python)
        if python is None:
            raise BackendError(missing_env_message(opts.ref_python))
        ck = _checkpoint(bundle, opts.ref_checkpoint)
        tmp = tempfile.TemporaryDirectory(prefix="q3-bench-ref-")
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
        try:
            proc = subprocess.Popen([str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=open(Path(tmp.name) / "stderr.txt", "w"), text=True, env=env)
        except OSError as e:
            tmp.cleanup()
            raise BackendError(f"cannot start the reference environment's python {python}: {e}") from e
        log(f"upstream reference: {python} on {ck}")
        return cls(proc, ck, python, tmp, log)

    def _ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                ans = json.loads(line[len(PREFIX):])
                if not ans.get("ok"):
                    raise BackendError(f"upstream reference failed: {ans.get('error')}")
                return ans
        err = (Path(self._tmp.name) / "stderr.txt").read_text(errors="replace")[-2000:]
        raise BackendError(f"the upstream reference worker ended (exit {self.proc.wait()}): {err}")

    def load(self, inp: BenchInputs, threads: int) -> None:
        wav = Path(self._tmp.name) / "prompt.npy"
        np.save(wav, inp.wav)
        self.info = self._ask({"cmd": "load", "checkpoint": str(self.checkpoint), "threads": threads,
                               "wav": str(wav), "ref_text": inp.ref_text, "text": inp.text})
        self.log(f"upstream loaded in {self.info['load_s']:.1f} s (torch {self.info['torch']}, "
                 f"{self.info['threads']} threads, {self.info['dtype']})")

    def run(self, frames: int, seed: int) -> dict[str, Any]:
        ans = self._ask({"cmd": "run", "frames": frames, "seed": seed})
        if ans["frames"] != frames:
            self.log(f"warning: upstream made {ans['frames']} frames, not {frames} (it sampled its EOS id)")
        return ans

    def report(self, ref_runs: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
        from pipeline.shared.benchkit import stats

        metrics = {k: stats([r[k] for r in ref_runs]) for k in REF_METRICS}
        ours = {k: statistics.median(r["values"][k] for r in runs) for k in SPEEDUPS}
        speedup = {k: metrics[k]["median"] / ours[k] if ours[k] else None for k in SPEEDUPS}
        # per repeat: upstream's RTF over ours in the same repeat (interleaved, so under the same load)
        ratios = [r["rtf"] / o["values"]["rtf"] for r, o in zip(ref_runs, runs, strict=True)]
        return {"python": str(self.python), "checkpoint": str(self.checkpoint), **self.info,
                "frames": [r["frames"] for r in ref_runs], "prompt_frames": ref_runs[-1]["prompt_frames"],
                "metrics": metrics, "speedup": speedup, "rtf_ratio": stats(ratios),
                "peak_rss_mb": ref_runs[-1]["peak_rss_mb"]}

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self._ask({"cmd": "quit"})
                except (BackendError, OSError, ValueError):
                    pass
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._tmp.cleanup()


def format_reference(r: dict[str, Any]) -> list[str]:
    m, s = r["metrics"], r["speedup"]
    lines = [f"upstream reference (qwen-tts {r['qwen_tts']}, torch {r['torch']}, transformers {r['transformers']}, "
             f"{r['dtype']}, {r['threads']} threads; same checkpoint, inputs and frames {r['frames']}):",
             f"{'upstream metric':<26} {'min':>9} {'median':>9} {'max':>9}  engine faster by"]
    for k in REF_METRICS:
        x = s.get(k)
        lines.append(f"{k:<26} {m[k]['min']:>9.3f} {m[k]['median']:>9.3f} {m[k]['max']:>9.3f}  "
                     f"{'' if x is None else f'x{x:.1f}'}")
    q = r["rtf_ratio"]
    lines.append(f"RTF ratio upstream / engine, per interleaved repeat: min {q['min']:.1f}, median "
                 f"{q['median']:.1f}, max {q['max']:.1f}; upstream peak RSS {r['peak_rss_mb']:.0f} MiB")
    return lines


def worker_rss(bundle: Bundle, inp: BenchInputs, opts: Any, threads: int, log: Any) -> dict[str, Any]:
    """Peak RSS of a fresh process that opens the engine (default quant) and runs one request."""
    with tempfile.TemporaryDirectory(prefix="q3-bench-rss-") as tmp:
        wav = Path(tmp) / "prompt.npy"
        np.save(wav, inp.wav)
        job = {"bundle": str(bundle.root), "threads": threads, "wav": str(wav), "text": inp.text,
               "ref_text": inp.ref_text, "frames": opts.frames, "seed": opts.seed, "speakers": str(Path(tmp) / "spk")}
        log("worker-equivalent peak RSS: a fresh process opens the engine (default quant) and runs one request")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_REPO), os.environ.get("PYTHONPATH", "")])}
        p = subprocess.run([sys.executable, "-m", "pipeline.engines.qwen3_tts.bench_rss", json.dumps(job)],
                           capture_output=True, text=True, env=env, timeout=3600)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
        if p.returncode != 0 or not lines:
            raise BackendError(f"the RSS process failed (exit {p.returncode}): {p.stderr[-1500:]}")
        return json.loads(lines[-1])
