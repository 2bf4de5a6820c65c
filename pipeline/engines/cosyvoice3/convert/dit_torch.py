"""PyTorch re-implementation of upstream CosyVoice3's flow DiT estimator (host side, for ONNX export).

Written from spec §4.4 (upstream ``cosyvoice/flow/DiT/dit.py`` + ``modules.py`` at commit ace7c47 and
x-transformers' rotary embedding). Module and parameter names follow upstream so that the
``decoder.estimator.*`` part of ``flow.pt`` loads with ``strict=True``. Only what inference needs is here:
no dropout (eval), no long skip connection (off in CosyVoice3).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ESTIMATOR_PREFIX = "decoder.estimator."
INPUT_NAMES = ("x", "mask", "mu", "t", "spks", "cond")
OUTPUT_NAME = "estimator_out"
OPSET = 18
# Upstream export_onnx.py traces with batch 2 (the CFG pair) and 256 frames.
EXPORT_BATCH = 2
EXPORT_SEQ_LEN = 256
_CONV_POS_KERNEL = 31
_CONV_POS_GROUPS = 16
_TIME_FREQ_DIM = 256


class _SinusTimeEmbedding(nn.Module):
    """Sinusoidal embedding of the flow time t in [0, 1], scaled by 1000 (no parameters)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor, scale: float = 1000.0) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
        arg = scale * t.unsqueeze(1) * freqs.unsqueeze(0)
        return torch.cat((arg.sin(), arg.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, freq_embed_dim: int = _TIME_FREQ_DIM) -> None:
        super().__init__()
        self.time_embed = _SinusTimeEmbedding(freq_embed_dim)
        self.time_mlp = nn.Sequential(nn.Linear(freq_embed_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_mlp(self.time_embed(t).to(t.dtype))


class CausalConvPositionEmbedding(nn.Module):
    """Two grouped Conv1d + Mish, each left-padded by kernel-1 frames (causal); no mask applied."""

    def __init__(self, dim: int, kernel_size: int = _CONV_POS_KERNEL, groups: int = _CONV_POS_GROUPS) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv1 = nn.Sequential(nn.Conv1d(dim, dim, kernel_size, groups=groups), nn.Mish())
        self.conv2 = nn.Sequential(nn.Conv1d(dim, dim, kernel_size, groups=groups), nn.Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        h = self.conv1(F.pad(h, (self.kernel_size - 1, 0)))
        h = self.conv2(F.pad(h, (self.kernel_size - 1, 0)))
        return h.transpose(1, 2)


class InputEmbedding(nn.Module):
    def __init__(self, mel_dim: int, mu_dim: int, out_dim: int, spk_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(mel_dim * 2 + mu_dim + spk_dim, out_dim)
        self.conv_pos_embed = CausalConvPositionEmbedding(out_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor) -> torch.Tensor:
        spks = spks.unsqueeze(1).expand(-1, x.shape[1], -1)
        h = self.proj(torch.cat([x, cond, mu, spks], dim=-1))
        return self.conv_pos_embed(h) + h


class RotaryEmbedding(nn.Module):
    """x-transformers RotaryEmbedding(dim_head): persistent ``inv_freq`` buffer, interleaved angle pairs."""

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, seq_len: int) -> torch.Tensor:
        t = torch.arange(seq_len, device=self.inv_freq.device).type_as(self.inv_freq)
        freqs = torch.outer(t, self.inv_freq)
        return torch.stack((freqs, freqs), dim=-1).flatten(-2).unsqueeze(0)  # (1, T, dim): f0 f0 f1 f1 ...


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``freqs.shape[-1]`` channels of ``x`` (B, T, C); the rest pass through."""
    rot = freqs.shape[-1]
    head, tail = x[..., :rot], x[..., rot:]
    head = head * freqs.cos() + _rotate_pairs(head) * freqs.sin()
    return torch.cat((head, tail), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, key_valid: torch.Tensor,
                freqs: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        # Upstream (F5-TTS heritage) rotates q/k BEFORE the head split: only head 0's channels see RoPE.
        q = apply_rotary(self.to_q(x), freqs)
        k = apply_rotary(self.to_k(x), freqs)
        v = self.to_v(x)
        q, k, v = (z.view(b, -1, self.heads, z.shape[-1] // self.heads).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[3])
        out = self.to_out[0](out)
        return out.masked_fill(~key_valid.unsqueeze(-1), 0.0)


class AdaLayerNormZero(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, dim * 6)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.linear(self.silu(emb)).chunk(6, 1)
        return self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None], gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormZeroFinal(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, dim * 2)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(self.silu(emb)).chunk(2, 1)  # scale first, unlike the block norms
        return self.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :]


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        inner = int(dim * mult)
        self.ff = nn.Sequential(nn.Sequential(nn.Linear(dim, inner), nn.GELU(approximate="tanh")),
                                nn.Dropout(0.0), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int) -> None:
        super().__init__()
        self.attn_norm = AdaLayerNormZero(dim)
        self.attn = Attention(dim, heads, dim_head)
        self.ff_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, ff_mult)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, attn_mask: torch.Tensor, key_valid: torch.Tensor,
                freqs: torch.Tensor) -> torch.Tensor:
        norm, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.attn_norm(x, temb)
        x = x + gate_msa.unsqueeze(1) * self.attn(norm, attn_mask, key_valid, freqs)
        ff_in = self.ff_norm(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp.unsqueeze(1) * self.ff(ff_in)


def _attention_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, T, T) boolean SDPA mask and the (B, T) row-keep mask, as upstream's non-streaming
    add_optional_chunk_mask: every query sees the valid keys. A batch row with no valid key is opened to all
    keys (upstream does the same in torch; its traced ONNX lacks this step, it only matters for all-padding rows).
    """
    keys = mask.bool()  # (B, 1, T)
    keys = keys | ~keys.any(dim=-1, keepdim=True)
    return keys.unsqueeze(1).expand(-1, -1, mask.shape[-1], -1), keys[:, 0, :]


class DiT(nn.Module):
    """Upstream ``cosyvoice.flow.DiT.dit.DiT`` (inference only); parameter names match ``flow.pt``.

    ``static_chunk_size`` / ``num_decoding_left_chunks`` only matter for streaming and are not taken.
    """

    def __init__(self, *, dim: int, depth: int = 8, heads: int = 8, dim_head: int = 64, ff_mult: int = 4,
                 mel_dim: int = 80, mu_dim: int | None = None, spk_dim: int = 0,
                 out_channels: int | None = None) -> None:
        super().__init__()
        mu_dim = mel_dim if mu_dim is None else mu_dim
        self.time_embed = TimestepEmbedding(dim)
        self.input_embed = InputEmbedding(mel_dim, mu_dim, dim, spk_dim)
        self.rotary_embed = RotaryEmbedding(dim_head)
        self.transformer_blocks = nn.ModuleList(DiTBlock(dim, heads, dim_head, ff_mult) for _ in range(depth))
        self.norm_out = AdaLayerNormZeroFinal(dim)
        self.proj_out = nn.Linear(dim, mel_dim)
        self.out_channels = mel_dim if out_channels is None else out_channels

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, t: torch.Tensor,
                spks: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x, mu, cond (B, mel, T); mask (B, 1, T); t (B,); spks (B, spk) → velocity (B, mel, T).

        Non-streaming only (upstream's ``streaming=False``, the mode its shipped ONNX was traced in).
        """
        x, mu, cond = x.transpose(1, 2), mu.transpose(1, 2), cond.transpose(1, 2)
        if t.ndim == 0:
            t = t.repeat(x.shape[0])
        temb = self.time_embed(t)
        h = self.input_embed(x, cond, mu, spks)
        freqs = self.rotary_embed(h.shape[1])
        attn_mask, key_valid = _attention_mask(mask)
        for block in self.transformer_blocks:
            h = block(h, temb, attn_mask, key_valid, freqs)
        return self.proj_out(self.norm_out(h, temb)).transpose(1, 2)


def estimator_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The estimator's tensors: ``decoder.estimator.*`` of a flow.pt dict (prefix removed), or the dict as is."""
    if any(k.startswith(ESTIMATOR_PREFIX) for k in state_dict):
        return {k[len(ESTIMATOR_PREFIX):]: v for k, v in state_dict.items() if k.startswith(ESTIMATOR_PREFIX)}
    return dict(state_dict)


def dit_dims_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """DiT constructor arguments read off the tensor shapes (mu_dim is taken equal to mel_dim, as upstream)."""
    sd = estimator_state_dict(state_dict)
    dim, in_width = sd["input_embed.proj.weight"].shape
    mel = sd["proj_out.weight"].shape[0]
    dim_head = 2 * sd["rotary_embed.inv_freq"].shape[0]
    depth = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    return {
        "dim": dim, "depth": depth, "heads": sd["transformer_blocks.0.attn.to_q.weight"].shape[0] // dim_head,
        "dim_head": dim_head, "ff_mult": sd["transformer_blocks.0.ff.ff.0.0.weight"].shape[0] // dim,
        "mel_dim": mel, "mu_dim": mel, "spk_dim": in_width - 3 * mel,
    }


def load_dit(state_dict: Mapping[str, torch.Tensor], dims: Mapping[str, int] | None = None) -> DiT:
    """A DiT in eval mode with ``state_dict`` (flow.pt or estimator-only) loaded strictly."""
    sd = estimator_state_dict(state_dict)
    model = DiT(**dict(dims if dims is not None else dit_dims_from_state_dict(sd)))
    model.load_state_dict(sd, strict=True)
    return model.eval()


def export_estimator_onnx(
    estimator: DiT | Mapping[str, torch.Tensor],
    path: Path | str,
    dims: Mapping[str, int] | None = None,
    *,
    seq_len: int = EXPORT_SEQ_LEN,
) -> Path:
    """Export like upstream ``cosyvoice/bin/export_onnx.py``: TorchScript exporter, opset 18, batch fixed at
    2, dynamic ``seq_len`` on axis 2 of x/mask/mu/cond/estimator_out, non-streaming (full attention)."""
    model = estimator if isinstance(estimator, DiT) else load_dit(estimator, dims)
    model = model.eval()
    mel = model.proj_out.out_features
    spk = model.input_embed.proj.in_features - 3 * mel
    g = torch.Generator().manual_seed(0)
    args = (
        torch.rand(EXPORT_BATCH, mel, seq_len, generator=g),
        torch.ones(EXPORT_BATCH, 1, seq_len),
        torch.rand(EXPORT_BATCH, mel, seq_len, generator=g),
        torch.rand(EXPORT_BATCH, generator=g),
        torch.rand(EXPORT_BATCH, spk, generator=g),
        torch.rand(EXPORT_BATCH, mel, seq_len, generator=g),
    )
    dyn = {2: "seq_len"}
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter reports every strided Slice it cannot fold; harmless (upstream sees it too).
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy TorchScript-based export": wanted
        torch.onnx.export(
            model, args, str(path), export_params=True, opset_version=OPSET, do_constant_folding=True,
            input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
            dynamic_axes={"x": dyn, "mask": dyn, "mu": dyn, "cond": dyn, OUTPUT_NAME: dyn},
            dynamo=False,
        )
    return path
