"""Child process of ``bench --engine qwen3-tts`` for the worker-equivalent peak RSS.

``python -m pipeline.engines.qwen3_tts.bench_rss JOB_JSON`` opens the bundle with ``open_tts`` as the studio's
worker does (default quant, or the job's ``quant``; the engine class itself, voice store included), computes the
prompt's codes and speaker embedding, generates the forced number of frames and decodes them (with the primed
stream decoder when the bundle streams, as the worker does), then prints one JSON
line: ``{"peak_rss_mb", "peak_rss_source", "quant", "frames", "audio_samples", "rss_after_load_mb"}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def _status_mb(key: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run(job: dict[str, Any]) -> dict[str, Any]:
    from pipeline.engines import open_tts
    from pipeline.engines.qwen3_tts.bench import forced_overrides
    from pipeline.engines.qwen3_tts.decoder import voice_clone_wav
    from pipeline.shared.benchkit import peak_rss_mb

    wav = np.load(job["wav"]).astype(np.float32)
    with open_tts(job["bundle"], speakers_dir=job["speakers"], n_threads=int(job["threads"]),
                  quant=job.get("quant")) as tts:
        after_load = _status_mb("VmRSS")
        voice = tts.prompt_features(wav)  # as a worker computes a new voice's features
        codes_p, spk = voice.codes, voice.embedding
        prompt = tts.lm.prompt(job["text"], spk, ref_text=job["ref_text"], ref_codes=codes_p)
        codes = tts.lm.generate(prompt, rng=np.random.default_rng(int(job["seed"])),
                                **forced_overrides(int(job["frames"])))
        if tts.streams:  # what the worker holds when it streams: the primed stream decoder, fed at emission points
            from pipeline.engines.qwen3_tts.streaming import emission_points

            dec, _ = tts._primed.decoder(codes_p)
            parts, done = [], 0
            for point in emission_points():
                parts.append(dec.push(codes[done:min(point, len(codes))]))
                done = min(point, len(codes))
                if done == len(codes):
                    break
            audio = np.concatenate(parts)
        else:
            audio = voice_clone_wav(tts.decoder, codes, codes_p)
        quant = tts.quant
    peak, source = peak_rss_mb()
    return {"peak_rss_mb": round(peak, 1), "peak_rss_source": source, "quant": quant, "frames": int(len(codes)),
            "audio_samples": int(len(audio)), "rss_after_load_mb": round(after_load, 1)}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
    sys.exit(0)
