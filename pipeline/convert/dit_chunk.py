"""The flow DiT as a chunk step with attention K/V caches (host side, for ONNX export).

Upstream's streaming flow (spec §4.4–4.5) runs the DiT over prompt + all tokens so far with a static chunk
mask: a query in chunk c sees every key in chunks <= c. With the fixed, absolutely indexed noise, the whole
Euler trajectory of chunk c therefore depends only on chunks <= c, so each chunk can be computed once if
the attention keys/values of the earlier chunks (per Euler step, block and CFG row) and the causal
position-conv left context are carried over. This module wraps the project's :class:`DiT` (same parameters,
same op order per frame) into one such step:

    velocity, k_new, v_new, conv1_tail, conv2_tail = ChunkDiT(dit)(
        x, mu, cond, spks, t, offset, conv1_cache, conv2_cache, k_voice, v_voice, k_past, v_past)

- ``x, mu, cond`` (B, mel, C): the chunk's frames; ``offset`` (1,) int64: absolute frame index of its first
  frame (RoPE position); ``conv*_cache`` (B, dim, K-1): the position convs' inputs for the K-1 frames before
  the chunk (zeros at the start = upstream's causal zero padding).
- ``k_voice``/``v_voice`` and ``k_past``/``v_past`` (depth, B, heads, T, dim_head): keys/values of the
  frames before the chunk, split in two so that a voice's shared prompt cache is never copied into a
  request. Every query of the chunk sees all of them and all frames of the chunk, which is exactly upstream's
  chunk mask when the chunk is one 50-frame mask chunk (or the partial last one). With empty caches and C = T
  it is upstream's non-streaming full attention.
- The cache tensors have ``cache_dtype`` (float32, or float16 to halve the memory); the chunk's own
  attention always uses its float32 keys/values.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .dit_torch import DiT, apply_rotary

INPUT_NAMES = ("x", "mu", "cond", "spks", "t", "offset", "conv1_cache", "conv2_cache",
               "k_voice", "v_voice", "k_past", "v_past")
OUTPUT_NAMES = ("velocity", "k_new", "v_new", "conv1_tail", "conv2_tail")


class ChunkDiT(nn.Module):
    def __init__(self, dit: DiT, cache_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.dit = dit.eval()
        self.cache_dtype = cache_dtype
        blk = dit.transformer_blocks[0].attn
        self.heads = blk.heads
        self.dim_head = blk.to_q.out_features // blk.heads
        self.depth = len(dit.transformer_blocks)
        self.dim = blk.to_q.in_features
        self.conv_context = dit.input_embed.conv_pos_embed.kernel_size - 1

    def forward(self, x: torch.Tensor, mu: torch.Tensor, cond: torch.Tensor, spks: torch.Tensor,
                t: torch.Tensor, offset: torch.Tensor, conv1_cache: torch.Tensor, conv2_cache: torch.Tensor,
                k_voice: torch.Tensor, v_voice: torch.Tensor, k_past: torch.Tensor, v_past: torch.Tensor):
        d = self.dit
        x, mu, cond = x.transpose(1, 2), mu.transpose(1, 2), cond.transpose(1, 2)
        b, n = x.shape[0], x.shape[1]
        temb = d.time_embed(t)
        emb = d.input_embed
        sp = spks.unsqueeze(1).expand(-1, n, -1)
        h = emb.proj(torch.cat([x, cond, mu, sp], dim=-1))
        # causal position convs with the carried left context instead of zero padding
        pos = emb.conv_pos_embed
        c1_in = torch.cat([conv1_cache, h.transpose(1, 2)], dim=-1)
        c1 = pos.conv1(c1_in)
        c2_in = torch.cat([conv2_cache, c1], dim=-1)
        c2 = pos.conv2(c2_in)
        h = c2.transpose(1, 2) + h
        ctx = self.conv_context
        conv1_tail = c1_in[:, :, c1_in.shape[-1] - ctx:]
        conv2_tail = c2_in[:, :, c2_in.shape[-1] - ctx:]

        inv = d.rotary_embed.inv_freq
        p = (torch.arange(n, device=x.device) + offset).to(inv.dtype)
        freqs = torch.outer(p, inv)
        freqs = torch.stack((freqs, freqs), dim=-1).flatten(-2).unsqueeze(0)

        ks, vs = [], []
        for i, block in enumerate(d.transformer_blocks):
            norm, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.attn_norm(h, temb)
            a = block.attn
            q = apply_rotary(a.to_q(norm), freqs)
            k = apply_rotary(a.to_k(norm), freqs)
            v = a.to_v(norm)
            q, k, v = (z.view(b, n, self.heads, self.dim_head).transpose(1, 2) for z in (q, k, v))
            ks.append(k)
            vs.append(v)
            k_all = torch.cat([k_voice[i].to(k.dtype), k_past[i].to(k.dtype), k], dim=2)
            v_all = torch.cat([v_voice[i].to(v.dtype), v_past[i].to(v.dtype), v], dim=2)
            out = F.scaled_dot_product_attention(q, k_all, v_all)
            out = a.to_out[0](out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))
            h = h + gate_msa.unsqueeze(1) * out
            ff_in = block.ff_norm(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            h = h + gate_mlp.unsqueeze(1) * block.ff(ff_in)
        velocity = d.proj_out(d.norm_out(h, temb)).transpose(1, 2)
        k_new = torch.stack(ks).to(self.cache_dtype)
        v_new = torch.stack(vs).to(self.cache_dtype)
        return velocity, k_new, v_new, conv1_tail, conv2_tail

    def example_inputs(self, batch: int = 2, frames: int = 50, past: int = 50) -> tuple[torch.Tensor, ...]:
        d = self.dit
        mel = d.proj_out.out_features
        spk = d.input_embed.proj.in_features - 3 * mel
        g = torch.Generator().manual_seed(0)
        kv = (self.depth, batch, self.heads, past, self.dim_head)
        return (
            torch.rand(batch, mel, frames, generator=g), torch.rand(batch, mel, frames, generator=g),
            torch.rand(batch, mel, frames, generator=g), torch.rand(batch, spk, generator=g),
            torch.rand(batch, generator=g), torch.tensor([past], dtype=torch.int64),
            torch.rand(batch, self.dim, self.conv_context, generator=g),
            torch.rand(batch, self.dim, self.conv_context, generator=g),
            *(torch.rand(*kv, generator=g).to(self.cache_dtype) for _ in range(2)),
            *(torch.zeros(*kv[:3], 0, kv[4]).to(self.cache_dtype) for _ in range(2)),
        )


def export_chunk_onnx(dit: DiT, path: Path | str, *, cache_dtype: torch.dtype = torch.float32,
                      opset: int = 18) -> Path:
    """Export :class:`ChunkDiT` (TorchScript exporter; dynamic chunk length and cache lengths)."""
    model = ChunkDiT(dit, cache_dtype).eval()
    args = model.example_inputs()
    dyn = {
        "x": {2: "frames"}, "mu": {2: "frames"}, "cond": {2: "frames"}, "velocity": {2: "frames"},
        "k_voice": {3: "voice_frames"}, "v_voice": {3: "voice_frames"},
        "k_past": {3: "past_frames"}, "v_past": {3: "past_frames"},
        "k_new": {3: "frames"}, "v_new": {3: "frames"},
    }
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, args, str(path), export_params=True, opset_version=opset, do_constant_folding=True,
            input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), dynamic_axes=dyn, dynamo=False,
        )
    return path
