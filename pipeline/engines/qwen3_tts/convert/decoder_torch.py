"""Torch re-implementation of the Qwen3-TTS speech tokenizer decoder (spec §9), for export and checks.

Written from the spec, module by module, so that ``decoder.*`` weights of ``speech_tokenizer/model.safetensors``
load by name (minus the ``decoder.`` prefix):
- ``quantizer``: split RVQ lookups (1 + 15 codebooks of ``codebook_dim // 2``) + two 1×1 output projections;
- ``pre_conv``: causal conv k3; ``pre_transformer``: sliding-window causal transformer (RMSNorm, NeoX RoPE,
  SwiGLU, layer scale; attention width heads·head_dim may differ from hidden);
- ``upsample``: per ratio, causal transposed conv + ConvNeXt block;
- ``decoder``: causal conv k7, blocks of SnakeBeta → causal transposed conv → 3 residual units, SnakeBeta,
  causal conv k7 → 1; clamp to [-1, 1].

``forward_stages`` returns the intermediates the fixture's goldens hold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.shared.errors import SourceError

from .decoder_config import N_SEMANTIC, DecoderDims
from .decoder_transformer import PreTransformer

SNAKE_EPS = 1e-9
CONVNEXT_LN_EPS = 1e-6
CODEBOOK_EPS = 1e-5
RESIDUAL_DILATIONS = (1, 3, 9)


# ---------------------------------------------------------------------------------------------------------
# Building blocks (named as upstream's state dict)


class CausalConv(nn.Module):
    """Conv1d with (k−1)·dilation zeros on the left (stride 1: no extra right padding)."""

    def __init__(self, cin: int, cout: int, k: int, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, dilation=dilation, groups=groups)
        self.pad = (k - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.pad, 0)))


class CausalTransConv(nn.Module):
    """ConvTranspose1d(k, stride s) with the last k − s samples dropped (output length = T·s)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, k, stride=stride)
        self.trim = k - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y[..., : y.shape[-1] - self.trim] if self.trim else y


class ConvNeXt(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = CausalConv(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=CONVNEXT_LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dwconv(x).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class SnakeBeta(nn.Module):
    """x + 1/(exp(β) + 1e-9) · sin²(exp(α) · x), α and β per channel, stored as logs."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.exp(self.alpha)[None, :, None]
        b = torch.exp(self.beta)[None, :, None]
        return x + (1.0 / (b + SNAKE_EPS)) * torch.sin(x * a).pow(2)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act2(self.conv1(self.act1(x))))


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, rate: int) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            [SnakeBeta(cin), CausalTransConv(cin, cout, 2 * rate, rate)]
            + [ResidualUnit(cout, d) for d in RESIDUAL_DILATIONS]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.block:
            x = m(x)
        return x


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.cluster_usage = nn.Parameter(torch.ones(size))
        self.embedding_sum = nn.Parameter(torch.zeros(size, dim))

    def table(self) -> torch.Tensor:
        return self.embedding_sum / self.cluster_usage.clamp(min=CODEBOOK_EPS)[:, None]


class _VQ(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self._codebook = Codebook(size, dim)


class _VQList(nn.Module):
    def __init__(self, n: int, size: int, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_VQ(size, dim) for _ in range(n)])


class _RVQ(nn.Module):
    """One half of the split RVQ: codebooks, then a 1×1 projection of their sum (input_proj is unused)."""

    def __init__(self, n: int, size: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.vq = _VQList(n, size, dim)
        self.input_proj = nn.Conv1d(out_dim, dim, 1, bias=False)
        self.output_proj = nn.Conv1d(dim, out_dim, 1, bias=False)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, n, T) → (B, out_dim, T)."""
        q = None
        for i, layer in enumerate(self.vq.layers):
            e = F.embedding(codes[:, i], layer._codebook.table()).transpose(1, 2)
            q = e if q is None else q + e
        return self.output_proj(q)


class SplitRVQ(nn.Module):
    def __init__(self, d: DecoderDims) -> None:
        super().__init__()
        half = d.codebook_dim // 2
        self.rvq_first = _RVQ(N_SEMANTIC, d.codebook_size, half, d.codebook_dim)
        self.rvq_rest = _RVQ(d.num_quantizers - N_SEMANTIC, d.codebook_size, half, d.codebook_dim)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.rvq_first.decode(codes[:, :N_SEMANTIC]) + self.rvq_rest.decode(codes[:, N_SEMANTIC:])


# ---------------------------------------------------------------------------------------------------------
# The decoder


class SpeechDecoder(nn.Module):
    """``Qwen3TTSTokenizerV2Decoder``: codes (B, n_q, T) int64 → waveform (B, 1, T·samples_per_frame)."""

    def __init__(self, d: DecoderDims) -> None:
        super().__init__()
        self.dims = d
        self.quantizer = SplitRVQ(d)
        self.pre_conv = CausalConv(d.codebook_dim, d.latent_dim, 3)
        self.pre_transformer = PreTransformer(d)
        self.upsample = nn.ModuleList(
            nn.ModuleList([CausalTransConv(d.latent_dim, d.latent_dim, r, r), ConvNeXt(d.latent_dim)])
            for r in d.upsampling_ratios
        )
        blocks: list[nn.Module] = [CausalConv(d.latent_dim, d.decoder_dim, 7)]
        for i, rate in enumerate(d.upsample_rates):
            blocks.append(DecoderBlock(d.decoder_dim // 2**i, d.decoder_dim // 2 ** (i + 1), rate))
        out_dim = d.decoder_dim // 2 ** len(d.upsample_rates)
        blocks += [SnakeBeta(out_dim), CausalConv(out_dim, 1, 7)]
        self.decoder = nn.ModuleList(blocks)

    def forward_stages(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """All intermediates: quantized (B, cb, T), pre_conv (B, latent, T), transformer (B, T, latent),
        upsampled (B, latent, 4T), wav (B, 1, T·spf)."""
        out: dict[str, torch.Tensor] = {}
        out["quantized"] = q = self.quantizer.decode(codes)
        out["pre_conv"] = h = self.pre_conv(q)
        out["transformer"] = h = self.pre_transformer(h.transpose(1, 2))
        h = h.transpose(1, 2)
        for up in self.upsample:
            for m in up:
                h = m(h)
        out["upsampled"] = h
        for m in self.decoder:
            h = m(h)
        out["wav"] = h.clamp(min=-1.0, max=1.0)
        return out

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.forward_stages(codes)["wav"]


def build_decoder(d: DecoderDims, state: dict[str, Any], *, where: str = "decoder weights") -> SpeechDecoder:
    """A ``SpeechDecoder`` in eval mode with ``state`` loaded (keys without the ``decoder.`` prefix; values
    numpy arrays or tensors). Missing, unexpected or mis-shaped keys raise ``SourceError``."""
    net = SpeechDecoder(d)
    want = net.state_dict()
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        raise SourceError(
            f"{where}: {len(missing)} missing key(s) {missing[:3]}, {len(extra)} unexpected {extra[:3]} "
            "(not a Qwen3-TTS 12 Hz speech tokenizer decoder, or decoder_config does not match)"
        )
    loaded = {}
    for k, ref in want.items():
        v = state[k]
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) if isinstance(v, np.ndarray) else v.float()
        if tuple(t.shape) != tuple(ref.shape):
            raise SourceError(f"{where}: {k} has shape {tuple(t.shape)}, decoder_config implies {tuple(ref.shape)}")
        loaded[k] = t
    net.load_state_dict(loaded, strict=True)
    return net.eval()


def chunked_decode(net: SpeechDecoder, codes: torch.Tensor, chunk: int = 300, context: int = 25) -> torch.Tensor:
    """Upstream's ``chunked_decode`` rule with the torch module (an independent reference for tests):
    codes (B, n_q, T) → (B, 1, T·spf)."""
    spf = net.dims.samples_per_frame
    wavs, start, total = [], 0, codes.shape[-1]
    with torch.no_grad():
        while start < total:
            end = min(start + chunk, total)
            ctx = context if start - context > 0 else start
            wavs.append(net(codes[..., start - ctx: end])[..., ctx * spf:])
            start = end
    return torch.cat(wavs, dim=-1)
