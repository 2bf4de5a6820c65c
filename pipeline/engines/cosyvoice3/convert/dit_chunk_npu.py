"""The streaming DiT chunk step with static shapes for the NPU (host side, for ``convert --rknn``).

Same math per frame as :class:`.convert.dit_chunk.ChunkDiT` (the ONNX chunk graph the CPU streams with),
written for rknn-toolkit2's fixed-shape compiler:

- fixed chunk length C (upstream's 50-frame mask chunk); a shorter last chunk is right-padded by the runtime;
- one past K/V input of fixed length P (a bucket): the voice's prompt cache and the request's own past,
  concatenated and right-padded by the runtime;
- ``key_bias`` (B, P + C): 0 for a valid key, ``MASK_BIAS`` for a padded one (past padding and the padded
  tail of a short chunk; 2-D: the toolkit takes a 4-D input for an NHWC image); attention is MatMul →
  Add(bias) → Softmax → MatMul, which the toolkit fuses into its NPU SDPA op (``docs/rk3588.md`` §2: the
  boolean-mask form puts an IsNaN guard on the CPU);
- ``t_freq`` (the sinusoidal time embedding) and ``rope_cos``/``rope_sin`` (C, dim_head) are computed by the
  runtime in float32: their arguments (1000·t, absolute frame index up to ~1500) lose whole radians in fp16;
- ``batch`` 1 (one CFG row: the runtime runs the conditional and unconditional rows as two graphs on two NPU
  cores) or 2 (the CFG pair in one graph).

Outputs: velocity (B, mel, C), k_new/v_new (depth, B, heads, C, dim_head), conv1_tail/conv2_tail (B, dim, K-1).
The tails and new K/V of a padded chunk are not meaningful; the streaming flow never keeps them (a short chunk
is always the last one).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import nn

from pipeline.engines.cosyvoice3.convert.dit_torch import DiT

NPU_CHUNK_INPUTS = ("x", "mu", "cond", "spks", "t_freq", "rope_cos", "rope_sin", "key_bias",
                    "conv1_cache", "conv2_cache", "k_past", "v_past")
NPU_CHUNK_OUTPUTS = ("velocity", "k_new", "v_new", "conv1_tail", "conv2_tail")
MASK_BIAS = -10000.0  # exp(-1e4) is exactly 0 in fp16 and fp32 (as the non-streaming RKNN graphs)
OPSET = 18


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Upstream's RoPE on the first dim_head channels of the flattened q/k (B, C, inner) (head 0 only)."""
    rot = cos.shape[-1]
    head, tail = x[..., :rot], x[..., rot:]
    return torch.cat((head * cos + _rotate_pairs(head) * sin, tail), dim=-1)


class NpuChunkDiT(nn.Module):
    def __init__(self, dit: DiT) -> None:
        super().__init__()
        self.dit = dit.eval()
        blk = dit.transformer_blocks[0].attn
        self.heads = blk.heads
        self.dim_head = blk.to_q.out_features // blk.heads
        self.depth = len(dit.transformer_blocks)
        self.dim = blk.to_q.in_features
        self.conv_context = dit.input_embed.conv_pos_embed.kernel_size - 1
        self.mel = dit.proj_out.out_features
        self.spk = dit.input_embed.proj.in_features - 3 * self.mel
        self.t_freq_dim = int(dit.time_embed.time_mlp[0].in_features)

    def forward(self, x: torch.Tensor, mu: torch.Tensor, cond: torch.Tensor, spks: torch.Tensor,
                t_freq: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor, key_bias: torch.Tensor,
                conv1_cache: torch.Tensor, conv2_cache: torch.Tensor, k_past: torch.Tensor,
                v_past: torch.Tensor):
        d = self.dit
        x, mu, cond = x.transpose(1, 2), mu.transpose(1, 2), cond.transpose(1, 2)
        b, n = x.shape[0], x.shape[1]
        temb = d.time_embed.time_mlp(t_freq)
        emb = d.input_embed
        sp = spks.unsqueeze(1).expand(-1, n, -1)
        h = emb.proj(torch.cat([x, cond, mu, sp], dim=-1))
        pos = emb.conv_pos_embed
        c1_in = torch.cat([conv1_cache, h.transpose(1, 2)], dim=-1)
        c1 = pos.conv1(c1_in)
        c2_in = torch.cat([conv2_cache, c1], dim=-1)
        c2 = pos.conv2(c2_in)
        h = c2.transpose(1, 2) + h
        ctx = self.conv_context
        conv1_tail = c1_in[:, :, n:]
        conv2_tail = c2_in[:, :, n:]
        assert conv1_tail.shape[-1] == ctx
        cos, sin = rope_cos.unsqueeze(0), rope_sin.unsqueeze(0)
        bias = key_bias[:, None, None, :]
        scale = 1.0 / math.sqrt(self.dim_head)  # a power of two for dim_head 64 (and the tiny 32): exact
        ks, vs = [], []
        for i, block in enumerate(d.transformer_blocks):
            norm, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.attn_norm(h, temb)
            a = block.attn
            q = _rotary(a.to_q(norm), cos, sin)
            k = _rotary(a.to_k(norm), cos, sin)
            v = a.to_v(norm)
            q, k, v = (z.view(b, n, self.heads, self.dim_head).transpose(1, 2) for z in (q, k, v))
            ks.append(k)
            vs.append(v)
            k_all = torch.cat([k_past[i], k], dim=2)
            v_all = torch.cat([v_past[i], v], dim=2)
            att = torch.softmax((q * scale) @ k_all.transpose(-1, -2) + bias, dim=-1) @ v_all
            out = a.to_out[0](att.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))
            h = h + gate_msa.unsqueeze(1) * out
            ff_in = block.ff_norm(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            h = h + gate_mlp.unsqueeze(1) * block.ff(ff_in)
        velocity = d.proj_out(d.norm_out(h, temb)).transpose(1, 2)
        return velocity, torch.stack(ks), torch.stack(vs), conv1_tail, conv2_tail

    def example_inputs(self, batch: int, chunk: int, past: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(0)
        kv = (self.depth, batch, self.heads, past, self.dim_head)
        return (
            torch.rand(batch, self.mel, chunk, generator=g), torch.rand(batch, self.mel, chunk, generator=g),
            torch.rand(batch, self.mel, chunk, generator=g), torch.rand(batch, self.spk, generator=g),
            torch.rand(batch, self.t_freq_dim, generator=g),
            torch.rand(chunk, self.dim_head, generator=g), torch.rand(chunk, self.dim_head, generator=g),
            torch.zeros(batch, past + chunk),
            torch.rand(batch, self.dim, self.conv_context, generator=g),
            torch.rand(batch, self.dim, self.conv_context, generator=g),
            torch.rand(*kv, generator=g), torch.rand(*kv, generator=g),
        )


def export_npu_chunk_onnx(dit: DiT, path: Path | str, *, batch: int, chunk: int, past: int,
                          dynamic_past: bool = False) -> Path:
    """Export :class:`NpuChunkDiT` with static shapes (``dynamic_past``: the past length as a dynamic axis, for
    rknn-toolkit2's ``dynamic_input``; the traced shapes are then the ``past`` example)."""
    model = NpuChunkDiT(dit).eval()
    args = model.example_inputs(batch, chunk, past)
    dyn = None
    if dynamic_past:
        dyn = {"k_past": {3: "past"}, "v_past": {3: "past"}, "key_bias": {1: "keys"}}
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, args, str(path), export_params=True, opset_version=OPSET, do_constant_folding=True,
            input_names=list(NPU_CHUNK_INPUTS), output_names=list(NPU_CHUNK_OUTPUTS), dynamic_axes=dyn,
            dynamo=False,
        )
    return path
