"""Prompt-side hyperparameters and weights read from a Qwen3-TTS checkpoint folder (spec §1.2, §1.4, §1.5).

- :func:`mimi_dims`: the speech tokenizer's encoder (a transformers ``MimiConfig`` under
  ``speech_tokenizer/config.json`` ``encoder_config``), with MimiConfig's defaults for keys a file leaves out.
- :func:`speaker_dims`: ``config.json`` ``speaker_encoder_config``; the release gives only ``enc_dim`` and
  ``sample_rate``, the rest are the package defaults (spec §1.2).
- :func:`load_tensors`: named tensors of one safetensors file as float32 torch tensors (bf16 upcast exactly).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.shared.errors import SourceError

SPEECH_TOKENIZER_DIR = "speech_tokenizer"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# transformers MimiConfig defaults (the Kyutai Mimi hyperparameters, spec §1.4).
_MIMI_DEFAULTS: dict[str, Any] = {
    "sampling_rate": 24000, "frame_rate": 12.5, "audio_channels": 1, "hidden_size": 512, "num_filters": 64,
    "num_residual_layers": 1, "upsampling_ratios": [8, 6, 5, 4], "kernel_size": 7, "last_kernel_size": 3,
    "residual_kernel_size": 3, "dilation_growth_rate": 2, "use_causal_conv": True, "pad_mode": "constant",
    "compress": 2, "codebook_size": 2048, "codebook_dim": 256, "num_quantizers": 32,
    "use_conv_shortcut": False, "vector_quantization_hidden_dimension": 256, "num_semantic_quantizers": 1,
    "num_hidden_layers": 8, "intermediate_size": 2048, "num_attention_heads": 8, "num_key_value_heads": None,
    "head_dim": None, "hidden_act": "gelu", "rope_theta": 10000.0, "norm_eps": 1e-5,
}

# Qwen3TTSSpeakerEncoderConfig defaults (spec §1.2).
_SPEAKER_DEFAULTS: dict[str, Any] = {
    "mel_dim": 128, "enc_dim": 192, "enc_channels": [512, 512, 512, 512, 1536], "enc_kernel_sizes": [5, 3, 3, 3, 1],
    "enc_dilations": [1, 2, 3, 4, 1], "enc_attention_channels": 128, "enc_res2net_scale": 8, "enc_se_channels": 128,
    "sample_rate": 24000,
}


@dataclass(frozen=True)
class MimiDims:
    sample_rate: int
    audio_channels: int
    num_filters: int
    ratios: list[int]  # encoder order (the config's upsampling_ratios reversed)
    kernel_size: int
    last_kernel_size: int
    residual_kernel_size: int
    dilation_growth_rate: int
    num_residual_layers: int
    compress: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    rope_theta: float
    downsample_stride: int
    codebook_size: int
    codebook_dim: int
    vq_hidden: int
    num_semantic: int
    num_quantizers: int  # all quantizers in the file (semantic + acoustic)
    valid_quantizers: int  # codes kept per frame
    samples_per_frame: int

    @property
    def seanet_stride(self) -> int:
        s = 1
        for r in self.ratios:
            s *= r
        return s


@dataclass(frozen=True)
class SpeakerDims:
    mel_dim: int
    enc_dim: int
    channels: list[int]
    kernels: list[int]
    dilations: list[int]
    attention_channels: int
    res2net_scale: int
    se_channels: int
    sample_rate: int


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise SourceError(f"{path} is missing")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path} is not readable JSON ({e})") from e
    if not isinstance(obj, dict):
        raise SourceError(f"{path} does not hold a JSON object")
    return obj


def mimi_dims(tok_cfg: dict) -> MimiDims:
    """Encoder dims from the parsed ``speech_tokenizer/config.json``."""
    enc = tok_cfg.get("encoder_config")
    if not isinstance(enc, dict):
        raise SourceError("speech_tokenizer/config.json: 'encoder_config' is missing")
    v = {**_MIMI_DEFAULTS, **enc}
    if "_frame_rate" in enc and "frame_rate" not in enc:
        v["frame_rate"] = enc["_frame_rate"]
    try:
        ratios = [int(r) for r in reversed(v["upsampling_ratios"])]
        heads = int(v["num_attention_heads"])
        head_dim = int(v["head_dim"]) if v["head_dim"] is not None else int(v["hidden_size"]) // heads
        seanet_stride = 1
        for r in ratios:
            seanet_stride *= r
        seanet_rate = int(v["sampling_rate"]) / seanet_stride
        down = int(round(seanet_rate / float(v["frame_rate"])))
        d = MimiDims(
            sample_rate=int(v["sampling_rate"]), audio_channels=int(v["audio_channels"]),
            num_filters=int(v["num_filters"]), ratios=ratios, kernel_size=int(v["kernel_size"]),
            last_kernel_size=int(v["last_kernel_size"]), residual_kernel_size=int(v["residual_kernel_size"]),
            dilation_growth_rate=int(v["dilation_growth_rate"]), num_residual_layers=int(v["num_residual_layers"]),
            compress=int(v["compress"]), hidden_size=int(v["hidden_size"]), num_layers=int(v["num_hidden_layers"]),
            num_heads=heads, num_kv_heads=int(v["num_key_value_heads"] or heads), head_dim=head_dim,
            intermediate_size=int(v["intermediate_size"]), norm_eps=float(v["norm_eps"]),
            rope_theta=float(v["rope_theta"]), downsample_stride=down, codebook_size=int(v["codebook_size"]),
            codebook_dim=int(v["codebook_dim"]), vq_hidden=int(v["vector_quantization_hidden_dimension"]),
            num_semantic=int(v["num_semantic_quantizers"]), num_quantizers=int(v["num_quantizers"]),
            valid_quantizers=int(tok_cfg.get("encoder_valid_num_quantizers", 16)),
            samples_per_frame=int(tok_cfg.get("encode_downsample_rate", seanet_stride * down)),
        )
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise SourceError(f"speech_tokenizer/config.json: bad encoder hyperparameter ({e!r})") from e
    if d.audio_channels != 1:
        raise SourceError(f"speech_tokenizer encoder: audio_channels {d.audio_channels} (only mono is supported)")
    if not v["use_causal_conv"] or v["use_conv_shortcut"] or str(v["pad_mode"]) != "constant":
        raise SourceError("speech_tokenizer encoder: only causal convs, constant padding, identity shortcuts")
    if str(v["hidden_act"]) != "gelu":
        raise SourceError(f"speech_tokenizer encoder: hidden_act {v['hidden_act']!r} (only 'gelu')")
    if d.num_heads % d.num_kv_heads:
        raise SourceError("speech_tokenizer encoder: attention heads not a multiple of the kv heads")
    if d.seanet_stride * d.downsample_stride != d.samples_per_frame:
        raise SourceError(
            f"speech_tokenizer: encoder strides give {d.seanet_stride * d.downsample_stride} samples per frame, "
            f"config says {d.samples_per_frame}"
        )
    if d.codebook_dim != d.vq_hidden:
        raise SourceError(f"speech_tokenizer encoder: codebook_dim {d.codebook_dim} differs from "
                          f"vector_quantization_hidden_dimension {d.vq_hidden}")
    if not d.num_semantic < d.valid_quantizers <= d.num_quantizers:
        raise SourceError(f"speech_tokenizer: {d.valid_quantizers} valid quantizers of {d.num_quantizers}")
    return d


def speaker_dims(cfg: dict) -> SpeakerDims:
    """Speaker-encoder dims from the parsed root ``config.json`` (package defaults for missing keys)."""
    s = cfg.get("speaker_encoder_config")
    if not isinstance(s, dict):
        raise SourceError("config.json: 'speaker_encoder_config' is missing")
    v = {**_SPEAKER_DEFAULTS, **s}
    try:
        d = SpeakerDims(
            mel_dim=int(v["mel_dim"]), enc_dim=int(v["enc_dim"]), channels=[int(c) for c in v["enc_channels"]],
            kernels=[int(k) for k in v["enc_kernel_sizes"]], dilations=[int(x) for x in v["enc_dilations"]],
            attention_channels=int(v["enc_attention_channels"]), res2net_scale=int(v["enc_res2net_scale"]),
            se_channels=int(v["enc_se_channels"]), sample_rate=int(v["sample_rate"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"config.json: bad speaker_encoder_config ({e!r})") from e
    if not len(d.channels) == len(d.kernels) == len(d.dilations) or len(d.channels) < 3:
        raise SourceError("config.json: speaker encoder channels / kernels / dilations differ in length")
    return d


def load_tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor of ``path`` whose name starts with ``prefix``, as float32 (prefix removed)."""
    from safetensors import safe_open

    if not path.is_file():
        raise SourceError(f"{path} is missing")
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                if k.startswith(prefix):
                    t = f.get_tensor(k)
                    out[k[len(prefix):]] = t.to(torch.float32) if t.is_floating_point() else t
    except (OSError, ValueError, RuntimeError) as e:
        raise SourceError(f"{path} is not a readable safetensors file ({e})") from e
    if not out:
        raise SourceError(f"{path} holds no '{prefix}*' tensors")
    return out


class Weights:
    """Named float32 tensors of one module with shape checks and user-facing errors."""

    def __init__(self, sd: dict[str, torch.Tensor], where: str) -> None:
        self.sd, self.where = sd, where

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        if key not in self.sd:
            raise SourceError(f"{self.where}: tensor {key!r} is missing (wrong config dims or not Qwen3-TTS)")
        t = self.sd[key]
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise SourceError(f"{self.where}: {key} has shape {tuple(t.shape)}, the config implies {tuple(shape)}")
        return t.detach().to(torch.float32).contiguous()

    def has(self, key: str) -> bool:
        return key in self.sd
