"""Stateful step of the Qwen3-TTS decoder for streaming (spec §11), built on ``SpeechDecoder``'s weights.

One call decodes k new frames given the state left by the previous call, so a stream of calls computes
what one call over the whole window computes (the decoder is causal), at the cost of the new frames only:
- every causal conv keeps the last (kernel−1)·dilation samples of its input (zeros = upstream's padding);
- every causal transposed conv with kernel 2r, stride r keeps its previous input sample;
- every transformer layer keeps the last ``sliding_window − 1`` keys and values (after RoPE); ``pos0`` is the
  position of the first new frame in the window (upstream: positions restart at 0 in every decode call), and
  cache slots at negative positions are masked.
States are a flat list; ``state_specs`` gives their names and shapes (batch 1) in call order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .decoder_torch import CausalConv, CausalTransConv, ConvNeXt, DecoderBlock, ResidualUnit, SpeechDecoder
from .decoder_transformer import Attention, rotate_half


def _conv(cc: CausalConv, x: torch.Tensor, st: list, out: list) -> torch.Tensor:
    if cc.pad == 0:
        return cc.conv(x)
    xin = torch.cat([next(st), x], dim=-1)
    out.append(xin[..., -cc.pad:])
    return cc.conv(xin)


def _trans(tc: CausalTransConv, x: torch.Tensor, st: list, out: list) -> torch.Tensor:
    s = tc.conv.stride[0]
    n_prev = math.ceil(tc.trim / s)
    if n_prev == 0:
        y = tc.conv(x)
        return y[..., : y.shape[-1] - tc.trim] if tc.trim else y
    xin = torch.cat([next(st), x], dim=-1)
    out.append(xin[..., -n_prev:])
    y = tc.conv(xin)
    return y[..., n_prev * s: n_prev * s + x.shape[-1] * s]


def _attn(att: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
          st: list, out: list) -> torch.Tensor:
    b, t, _ = x.shape
    q = att.q_proj(x).view(b, t, att.n_head, att.head_dim).transpose(1, 2)
    k = att.k_proj(x).view(b, t, att.n_kv, att.head_dim).transpose(1, 2)
    v = att.v_proj(x).view(b, t, att.n_kv, att.head_dim).transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    kc, vc = next(st), next(st)
    k = torch.cat([kc, k], dim=2)
    v = torch.cat([vc, v], dim=2)
    n_cache = kc.shape[2]
    out.append(k[:, :, k.shape[2] - n_cache:])
    out.append(v[:, :, v.shape[2] - n_cache:])
    if att.n_kv != att.n_head:
        rep = att.n_head // att.n_kv
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    w = torch.matmul(q, k.transpose(2, 3)) * (att.head_dim ** -0.5) + mask
    o = torch.matmul(torch.softmax(w, dim=-1), v)
    return att.o_proj(o.transpose(1, 2).reshape(b, t, att.n_head * att.head_dim))


class StreamStep(nn.Module):
    """forward(codes (1, n_q, k) int64, pos0 (1,) int64, *states) → (wav (k·spf,), *new states)."""

    def __init__(self, net: SpeechDecoder) -> None:
        super().__init__()
        self.net = net
        self.n_cache = net.dims.sliding_window - 1

    def state_specs(self) -> list[tuple[str, tuple[int, ...]]]:
        d, n = self.net.dims, self.net
        specs: list[tuple[str, tuple[int, ...]]] = []

        def conv(name: str, cc: CausalConv) -> None:
            if cc.pad:
                specs.append((name, (1, cc.conv.in_channels, cc.pad)))

        def trans(name: str, tc: CausalTransConv) -> None:
            n_prev = math.ceil(tc.trim / tc.conv.stride[0])
            if n_prev:
                specs.append((name, (1, tc.conv.in_channels, n_prev)))

        conv("pre_conv", n.pre_conv)
        for i in range(d.num_hidden_layers):
            specs += [(f"layer{i}_k", (1, d.num_key_value_heads, self.n_cache, d.head_dim)),
                      (f"layer{i}_v", (1, d.num_key_value_heads, self.n_cache, d.head_dim))]
        for i, (tc, cnx) in enumerate(n.upsample):
            trans(f"upsample{i}_trans", tc)
            conv(f"upsample{i}_dwconv", cnx.dwconv)
        for i, m in enumerate(n.decoder):
            if isinstance(m, CausalConv):
                conv(f"decoder{i}", m)
            elif isinstance(m, DecoderBlock):
                for j, sub in enumerate(m.block):
                    if isinstance(sub, CausalTransConv):
                        trans(f"decoder{i}_trans", sub)
                    elif isinstance(sub, ResidualUnit):
                        conv(f"decoder{i}_res{j}_conv1", sub.conv1)
                        conv(f"decoder{i}_res{j}_conv2", sub.conv2)
        return specs

    def initial_states(self) -> list[torch.Tensor]:
        return [torch.zeros(shape) for _, shape in self.state_specs()]

    def forward(self, codes: torch.Tensor, pos0: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = self.net
        st, out = iter(states), []
        h = _conv(n.pre_conv, n.quantizer.decode(codes), st, out).transpose(1, 2)

        tr = n.pre_transformer
        t = h.shape[1]
        qpos = pos0 + torch.arange(t, device=h.device)
        kpos = pos0 - self.n_cache + torch.arange(self.n_cache + t, device=h.device)
        freqs = qpos.to(torch.float32)[:, None] * tr.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        rel = qpos[:, None] - kpos[None, :]
        visible = (rel >= 0) & (rel < tr.window) & (kpos >= 0)[None, :]
        mask = torch.where(visible, torch.zeros((), dtype=h.dtype), torch.full((), float("-inf"), dtype=h.dtype))
        h = tr.input_proj(h)
        for layer in tr.layers:
            h = h + layer.self_attn_layer_scale(_attn(layer.self_attn, layer.input_layernorm(h), cos, sin, mask,
                                                      st, out))
            h = h + layer.mlp_layer_scale(layer.mlp(layer.post_attention_layernorm(h)))
        h = tr.output_proj(tr.norm(h)).transpose(1, 2)

        for tc, cnx in n.upsample:
            h = _trans(tc, h, st, out)
            h = _convnext(cnx, h, st, out)
        for m in n.decoder:
            if isinstance(m, CausalConv):
                h = _conv(m, h, st, out)
            elif isinstance(m, DecoderBlock):
                for sub in m.block:
                    if isinstance(sub, CausalTransConv):
                        h = _trans(sub, h, st, out)
                    elif isinstance(sub, ResidualUnit):
                        r = _conv(sub.conv1, sub.act1(h), st, out)
                        h = h + _conv(sub.conv2, sub.act2(r), st, out)
                    else:
                        h = sub(h)
            else:
                h = m(h)
        return (h.clamp(min=-1.0, max=1.0).reshape(-1), *out)


def _convnext(cnx: ConvNeXt, x: torch.Tensor, st: list, out: list) -> torch.Tensor:
    h = _conv(cnx.dwconv, x, st, out).transpose(1, 2)
    h = cnx.pwconv2(F.gelu(cnx.pwconv1(cnx.norm(h))))
    return x + (cnx.gamma * h).transpose(1, 2)
