"""Random ``decoder.*`` weights in the release's layout, for tests and full-size random bundles (spec §1.5).

Scales follow the fixture generator's description (fixtures README): normal std 1/sqrt(fan_in) for linear
and conv weights, biases std 0.1, norm weights U(0.7, 1.3), Snake log-parameters std 0.3, layer scales
U(0.1, 0.5), codebook usage U(0.5, 2), embedding sums std 1 (times the usage, so centroids are ~N(0, 1)).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .decoder_config import DecoderDims
from .decoder_torch import SpeechDecoder, build_decoder


def random_decoder_state(d: DecoderDims, seed: int = 0, wav_std: float = 0.15) -> dict[str, np.ndarray]:
    """State dict (keys without ``decoder.``) of a ``SpeechDecoder`` with dims ``d``, float32. The last conv
    is rescaled so that random codes give a waveform of std ``wav_std`` before the clamp (as the fixture's
    generator did); without it the signal saturates and float32 roundoff grows past 1e-3."""
    rng = np.random.default_rng(seed)
    net = SpeechDecoder(d)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    transposed = {f"{n}.weight" for n, m in net.named_modules() if isinstance(m, nn.ConvTranspose1d)}
    out: dict[str, np.ndarray] = {}
    for k, shape in shapes.items():
        leaf = k.rsplit(".", 1)[-1]
        if leaf == "cluster_usage":
            a = rng.uniform(0.5, 2.0, shape)
        elif leaf == "embedding_sum":
            a = rng.standard_normal(shape)  # scaled by the usage below
        elif leaf in ("alpha", "beta"):
            a = 0.3 * rng.standard_normal(shape)
        elif leaf == "scale":
            a = rng.uniform(0.1, 0.5, shape)
        elif leaf == "gamma":
            a = rng.uniform(0.1, 0.5, shape)
        elif leaf == "bias":
            a = 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:  # RMSNorm / LayerNorm weights
            a = rng.uniform(0.7, 1.3, shape)
        else:
            # ConvTranspose1d weights are (in, out, k)
            fan_in = shape[0] * shape[2] if k in transposed else int(np.prod(shape[1:]))
            a = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        out[k] = a.astype(np.float32)
    for k in shapes:
        if k.endswith("embedding_sum"):
            out[k] *= out[k.replace("embedding_sum", "cluster_usage")][:, None]
    last = f"decoder.{len(d.upsample_rates) + 2}.conv"
    net = build_decoder(d, out)
    codes = torch.from_numpy(rng.integers(0, d.codebook_size, size=(1, d.num_quantizers, 4)))
    with torch.no_grad():
        h = net.forward_stages(codes)["upsampled"]
        for m in net.decoder[:-1]:
            h = m(h)
        y = F.conv1d(F.pad(h, (6, 0)), torch.from_numpy(out[f"{last}.weight"]))
    out[f"{last}.weight"] *= np.float32(wav_std / max(float(y.std()), 1e-12))
    return out


def write_random_speech_tokenizer(folder: Path, d: DecoderDims, seed: int = 0) -> Path:
    """``folder/config.json`` + ``folder/model.safetensors`` (decoder part only) with random weights."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_type": "qwen3_tts_tokenizer_12hz",
        "decode_upsample_rate": d.samples_per_frame,
        "output_sample_rate": 24000,
        "decoder_config": {**d.to_dict(), "hidden_act": "silu"},
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    save_file({f"decoder.{k}": v for k, v in random_decoder_state(d, seed).items()},
              str(folder / "model.safetensors"))
    return folder
