"""Upstream's PyTorch Qwen3-TTS, timed for ``bench --engine qwen3-tts --reference``. Runs in ``.venv-qwen-ref``
(scripts/setup-qwen-tts-ref-env.sh), never in the project's environment: standard library + that venv only.

Protocol: one JSON command per stdin line, one JSON answer per stdout line prefixed with ``@@Q3REF `` (the package
prints warnings of its own). Commands:
- ``{"cmd": "load", "checkpoint": dir, "threads": n, "wav": file.npy, "ref_text": s, "text": s}``: torch threads,
  ``Qwen3TTSModel.from_pretrained(dir)`` (fp32 on CPU, the package's default there), the inputs.
- ``{"cmd": "run", "frames": n, "seed": s}``: ``create_voice_clone_prompt`` then ``generate_voice_clone`` forced
  to ``frames`` frames, with timers around the talker forward, the code predictor's generate and forward, and the
  speech tokenizer's decode (as spec §12.1 measured them).
- ``{"cmd": "quit"}``.
Forced length: ``max_new_tokens`` = frames + 1 (the last code-0 id is dropped) and ``eos_token_id`` = the first
suppressed codec id (vocab − 1024), which the suppression makes impossible, so generation never stops early. The
real EOS (2150) stays an ordinary id then; random weights practically never sample it, and the answer says how many
frames came out.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
import warnings
from typing import Any

PREFIX = "@@Q3REF "


def _answer(obj: dict[str, Any]) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _vmhwm_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class _Timer:
    """Wraps ``obj.name`` (an instance attribute shadows the class method) and records each call's seconds."""

    def __init__(self, obj: Any, name: str, clock: Any) -> None:
        self.calls: list[tuple[float, float]] = []  # (start, seconds)
        real = getattr(obj, name)

        @functools.wraps(real)  # keeps the signature: transformers' generate checks its kwargs against it
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = clock()
            try:
                return real(*a, **kw)
            finally:
                self.calls.append((t0, clock() - t0))

        setattr(obj, name, timed)

    def total_between(self, start: float, end: float) -> float:
        return sum(s for t, s in self.calls if start <= t < end)


class Ref:
    def __init__(self, cmd: dict[str, Any]) -> None:
        warnings.filterwarnings("ignore")
        import numpy as np
        import torch

        torch.set_num_threads(int(cmd["threads"]))
        from qwen_tts import Qwen3TTSModel

        t0 = time.perf_counter()
        self.tts = Qwen3TTSModel.from_pretrained(cmd["checkpoint"])
        self.load_s = time.perf_counter() - t0
        self.torch = torch
        self.wav = np.load(cmd["wav"]).astype(np.float32)
        self.ref_text, self.text = cmd["ref_text"], cmd["text"]
        model = self.tts.model
        talker = model.talker
        self.vocab = int(model.config.talker_config.vocab_size)
        clock = time.perf_counter
        self.talker = _Timer(talker, "forward", clock)
        self.cp_generate = _Timer(talker.code_predictor, "generate", clock)
        self.cp_forward = _Timer(talker.code_predictor, "forward", clock)
        self.decode = _Timer(model.speech_tokenizer, "decode", clock)

    def info(self) -> dict[str, Any]:
        import importlib.metadata as md

        p = next(self.tts.model.parameters())
        return {"load_s": self.load_s, "torch": self.torch.__version__, "transformers": md.version("transformers"),
                "qwen_tts": md.version("qwen-tts"), "threads": self.torch.get_num_threads(), "dtype": str(p.dtype),
                "device": str(p.device)}

    def run(self, frames: int, seed: int) -> dict[str, Any]:
        torch = self.torch
        torch.manual_seed(seed)
        for t in (self.talker, self.cp_generate, self.cp_forward, self.decode):
            t.calls.clear()
        with torch.inference_mode():
            t0 = time.perf_counter()
            items = self.tts.create_voice_clone_prompt(ref_audio=(self.wav, 24000), ref_text=self.ref_text)
            t1 = time.perf_counter()
            wavs, sr = self.tts.generate_voice_clone(
                text=self.text, language="Auto", voice_clone_prompt=items, max_new_tokens=frames + 1,
                eos_token_id=self.vocab - 1024)
            t2 = time.perf_counter()
        ref_frames = int(items[0].ref_code.shape[0])
        audio_s = len(wavs[0]) / sr
        out_frames = round(audio_s * 12.5)
        talker = self.talker.calls
        prefill = talker[0][1]
        steps = [s - self.cp_generate.total_between(t, t + s) for t, s in talker[1:]]
        cp = [s for _, s in self.cp_generate.calls]
        dec = sum(s for _, s in self.decode.calls)
        decoded_s = (ref_frames + out_frames) / 12.5
        n_cp = len(self.cp_forward.calls) / max(len(cp), 1)
        return {
            "frames": out_frames, "prompt_frames": ref_frames, "audio_s": audio_s,
            "prompt_features_s": t1 - t0, "prefill_s": prefill,
            "talker_step_ms": 1e3 * statistics.median(steps) if steps else 0.0,
            "talker_tok_per_s": len(steps) / sum(steps) if steps else 0.0,
            "cp_ms_per_frame": 1e3 * statistics.median(cp) if cp else 0.0,
            "cp_forward_calls_per_frame": n_cp,
            "cp_ms_per_step": 1e3 * statistics.median(cp) / 15 if cp else 0.0,
            "decoder_s": dec, "decoder_s_per_audio_s": dec / decoded_s,
            "generate_s": t2 - t1 - dec, "total_s": t2 - t1, "total_with_prompt_s": t2 - t0,
            "rtf": (t2 - t1) / audio_s, "rtf_with_prompt": (t2 - t0) / audio_s, "peak_rss_mb": _vmhwm_mb(),
        }


def main() -> int:
    ref: Ref | None = None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                _answer({"ok": True})
                return 0
            if cmd["cmd"] == "load":
                ref = Ref(cmd)
                _answer({"ok": True, **ref.info()})
            elif cmd["cmd"] == "run":
                if ref is None:
                    raise RuntimeError("run before load")
                _answer({"ok": True, **ref.run(int(cmd["frames"]), int(cmd["seed"]))})
            else:
                raise ValueError(f"unknown command {cmd['cmd']!r}")
        except Exception as e:  # report every failure to the bench, which shows it
            _answer({"ok": False, "error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
