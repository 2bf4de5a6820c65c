"""Sliding-window causal transformer of the Qwen3-TTS speech tokenizer decoder (spec §9.3), torch.

RMSNorm (eps from the config), NeoX RoPE with positions 0.. within the decoded call, q/k/v without bias and no
q/k norm, attention width heads·head_dim (1024 in the release, not hidden 512), SwiGLU MLP, layer scales, and
the mask "key j visible to query i iff i − window < j <= i". Names follow upstream's state dict.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .decoder_config import DecoderDims


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, d: DecoderDims) -> None:
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = d.num_attention_heads, d.num_key_value_heads, d.head_dim
        self.q_proj = nn.Linear(d.hidden_size, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.n_kv != self.n_head:
            rep = self.n_head // self.n_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        w = torch.matmul(q, k.transpose(2, 3)) * (self.head_dim ** -0.5) + mask
        o = torch.matmul(torch.softmax(w, dim=-1), v)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))


class MLP(nn.Module):
    def __init__(self, d: DecoderDims) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d.hidden_size, d.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d.hidden_size, d.intermediate_size, bias=False)
        self.down_proj = nn.Linear(d.intermediate_size, d.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerLayer(nn.Module):
    def __init__(self, d: DecoderDims) -> None:
        super().__init__()
        self.self_attn = Attention(d)
        self.mlp = MLP(d)
        self.input_layernorm = RMSNorm(d.hidden_size, d.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(d.hidden_size, d.rms_norm_eps)
        self.self_attn_layer_scale = LayerScale(d.hidden_size)
        self.mlp_layer_scale = LayerScale(d.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn_layer_scale(self.self_attn(self.input_layernorm(x), cos, sin, mask))
        return x + self.mlp_layer_scale(self.mlp(self.post_attention_layernorm(x)))


class PreTransformer(nn.Module):
    """(B, T, latent) → (B, T, latent); positions 0..T−1 within the decoded chunk."""

    def __init__(self, d: DecoderDims) -> None:
        super().__init__()
        self.window = d.sliding_window
        self.input_proj = nn.Linear(d.latent_dim, d.hidden_size)
        self.output_proj = nn.Linear(d.hidden_size, d.latent_dim)
        self.layers = nn.ModuleList([TransformerLayer(d) for _ in range(d.num_hidden_layers)])
        self.norm = RMSNorm(d.hidden_size, d.rms_norm_eps)
        exps = torch.arange(0, d.head_dim, 2, dtype=torch.int64).to(torch.float32) / d.head_dim
        self.register_buffer("inv_freq", 1.0 / (d.rope_theta ** exps), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        pos = torch.arange(t, device=x.device)
        freqs = pos.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        # key j visible to query i iff i - window < j <= i
        rel = pos[:, None] - pos[None, :]
        visible = (rel >= 0) & (rel < self.window)
        mask = torch.where(visible, torch.zeros((), dtype=x.dtype), torch.full((), float("-inf"), dtype=x.dtype))
        h = self.input_proj(x)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.output_proj(self.norm(h))
