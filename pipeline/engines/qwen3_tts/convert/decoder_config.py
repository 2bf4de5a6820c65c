"""``decoder_config`` of the Qwen3-TTS speech tokenizer (spec §1.4): dims and their validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.shared.errors import SourceError

N_SEMANTIC = 1  # upstream hard-codes one semantic codebook in the decoder's split RVQ

@dataclass(frozen=True)
class DecoderDims:
    """``decoder_config`` of ``speech_tokenizer/config.json`` (defaults: the 0.6B release values, §1.4)."""

    codebook_dim: int = 512
    codebook_size: int = 2048
    latent_dim: int = 1024
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    head_dim: int = 64
    intermediate_size: int = 1024
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int = 72
    num_quantizers: int = 16
    decoder_dim: int = 1536
    upsample_rates: list[int] = field(default_factory=lambda: [8, 5, 4, 3])
    upsampling_ratios: list[int] = field(default_factory=lambda: [2, 2])

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.upsample_rates) * math.prod(self.upsampling_ratios)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()}


_INT_KEYS = ("codebook_size", "latent_dim", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "intermediate_size", "sliding_window", "num_quantizers",
             "decoder_dim")


def decoder_dims(decoder_config: dict) -> DecoderDims:
    """Validated dims from ``decoder_config``; ``codebook_dim`` is required (upstream reads it via kwargs)."""
    if not isinstance(decoder_config, dict):
        raise SourceError("speech_tokenizer/config.json: decoder_config is missing")
    c = decoder_config
    if "codebook_dim" not in c:
        raise SourceError("speech_tokenizer/config.json: decoder_config.codebook_dim is missing")
    if c.get("hidden_act", "silu") != "silu":
        raise SourceError(f"speech_tokenizer decoder: hidden_act {c.get('hidden_act')!r} is not supported (silu)")
    base = DecoderDims()
    try:
        kw: dict[str, Any] = {k: int(c.get(k, getattr(base, k))) for k in _INT_KEYS}
        kw["codebook_dim"] = int(c["codebook_dim"])
        kw["rms_norm_eps"] = float(c.get("rms_norm_eps", base.rms_norm_eps))
        kw["rope_theta"] = float(c.get("rope_theta", base.rope_theta))
        kw["upsample_rates"] = [int(x) for x in c.get("upsample_rates", base.upsample_rates)]
        kw["upsampling_ratios"] = [int(x) for x in c.get("upsampling_ratios", base.upsampling_ratios)]
    except (TypeError, ValueError) as e:
        raise SourceError(f"speech_tokenizer/config.json: bad decoder_config value ({e})") from e
    d = DecoderDims(**kw)
    if d.codebook_dim % 2 or d.num_quantizers <= N_SEMANTIC or d.head_dim % 2:
        raise SourceError("speech_tokenizer decoder: codebook_dim and head_dim must be even, num_quantizers > 1")
    if d.num_attention_heads % d.num_key_value_heads or d.decoder_dim % (2 ** len(d.upsample_rates)):
        raise SourceError("speech_tokenizer decoder: heads / kv heads or decoder_dim / 2^blocks do not divide")
    if (c.get("rope_scaling") or {}).get("rope_type", "default") not in ("default",):
        raise SourceError("speech_tokenizer decoder: only the default RoPE is supported")
    return d
