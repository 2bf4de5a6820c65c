"""The flow DiT as a chunk step with attention K/V caches (host side, for ONNX export).

Upstream's streaming flow (spec §4.4–4.5) runs the DiT over prompt + all tokens so far with a static chunk
mask: a query in chunk c sees every key in chunks <= c. With the fixed, absolutely indexed noise, the whole
Euler trajectory of chunk c therefore depends only on chunks <= c, so each chunk can be computed once if
the attention keys/values of the earlier chunks (per Euler step, block and CFG row) and the causal
position-conv left context are carried over. This module wraps the project's :class:`DiT` (same parameters,
same op order per frame) into two graphs:

    mod, mod_out = TimeMod(dit)(t)                       # once per Euler step value, not per chunk
    velocity, k_new, v_new, conv1_tail, conv2_tail = ChunkDiT(dit)(
        x, mu, cond, spks, mod, mod_out, offset, bias, conv1_cache, conv2_cache,
        k_voice_0, v_voice_0, k_past_0, v_past_0, …, k_voice_{depth-1}, …, v_past_{depth-1})

- ``TimeMod``: the time embedding and every block's AdaLN modulation (``linear(silu(temb))``). They depend on
  t only, which is the same for both CFG rows and for every chunk of an Euler step; inside the chunk graph
  they were ~10 % of a 50-frame call and 0.55 GB of its weights. ``mod`` (S, depth, 6·dim), ``mod_out``
  (S, 2·dim) for S time values.
- ``x, mu, cond`` (B, mel, C): the call's frames (one or more chunks); ``offset`` (1,) int64: absolute frame
  index of its first frame (RoPE position); ``bias`` (C, C): additive attention mask among the call's own
  frames (0 or -inf: several chunks in one call keep upstream's chunk mask; zeros for one chunk);
  ``conv*_cache`` (B, dim, K-1): the position convs' inputs for the K-1 frames before the call (zeros at the
  start = upstream's causal zero padding).
- ``k_voice_i``/``v_voice_i`` and ``k_past_i``/``v_past_i`` (B, heads, T, dim_head), one per block: keys/values
  of the frames before the call, split in two so that a voice's shared prompt cache is never copied into a
  request, and per block so that no slice of a stacked cache is copied in the graph. Every query sees all of
  them. With empty caches, a zero bias and C = T it is upstream's non-streaming full attention.
- The cache tensors have ``cache_dtype`` (float32, or float16 to halve the memory); the call's own
  attention always uses its float32 keys/values. ``k_new``/``v_new`` are stacked (depth, B, heads, C, dim_head).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engines.cosyvoice3.convert.dit_torch import DiT, apply_rotary

HEAD_INPUTS = ("x", "mu", "cond", "spks", "mod", "mod_out", "offset", "bias", "conv1_cache", "conv2_cache")
OUTPUT_NAMES = ("velocity", "k_new", "v_new", "conv1_tail", "conv2_tail")
TIME_INPUTS = ("t",)
TIME_OUTPUTS = ("mod", "mod_out")


def cache_input_names(depth: int) -> list[str]:
    return [f"{kind}_{part}_{i}" for i in range(depth) for part in ("voice", "past") for kind in ("k", "v")]


def input_names(depth: int) -> list[str]:
    return [*HEAD_INPUTS, *cache_input_names(depth)]


class TimeMod(nn.Module):
    """t (S,) → every block's AdaLN modulation (S, depth, 6·dim) and the final norm's (S, 2·dim)."""

    def __init__(self, dit: DiT) -> None:
        super().__init__()
        self.dit = dit.eval()

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.dit
        e = F.silu(d.time_embed(t))
        mod = torch.stack([b.attn_norm.linear(e) for b in d.transformer_blocks], dim=1)
        return mod, d.norm_out.linear(e)


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
                mod: torch.Tensor, mod_out: torch.Tensor, offset: torch.Tensor, bias: torch.Tensor,
                conv1_cache: torch.Tensor, conv2_cache: torch.Tensor, *caches: torch.Tensor):
        d = self.dit
        x, mu, cond = x.transpose(1, 2), mu.transpose(1, 2), cond.transpose(1, 2)
        b, n = x.shape[0], x.shape[1]
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
            k_voice, v_voice, k_past, v_past = caches[4 * i: 4 * i + 4]
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod[i].unsqueeze(0).chunk(6, 1)
            norm = block.attn_norm.norm(h) * (1 + scale_msa[:, None]) + shift_msa[:, None]
            a = block.attn
            q = apply_rotary(a.to_q(norm), freqs)
            k = apply_rotary(a.to_k(norm), freqs)
            v = a.to_v(norm)
            q, k, v = (z.view(b, n, self.heads, self.dim_head).transpose(1, 2) for z in (q, k, v))
            ks.append(k)
            vs.append(v)
            k_all = torch.cat([k_voice.to(k.dtype), k_past.to(k.dtype), k], dim=2)
            v_all = torch.cat([v_voice.to(v.dtype), v_past.to(v.dtype), v], dim=2)
            seen = torch.zeros(n, k_voice.shape[2] + k_past.shape[2], dtype=bias.dtype)
            out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=torch.cat([seen, bias], dim=1))
            out = a.to_out[0](out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))
            h = h + gate_msa.unsqueeze(1) * out
            ff_in = block.ff_norm(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            h = h + gate_mlp.unsqueeze(1) * block.ff(ff_in)
        scale, shift = mod_out.unsqueeze(0).chunk(2, 1)  # scale first, unlike the block norms
        h = d.norm_out.norm(h) * (1 + scale)[:, None, :] + shift[:, None, :]
        velocity = d.proj_out(h).transpose(1, 2)
        k_new = torch.stack(ks).to(self.cache_dtype)
        v_new = torch.stack(vs).to(self.cache_dtype)
        return velocity, k_new, v_new, conv1_tail, conv2_tail

    def example_inputs(self, batch: int = 2, frames: int = 50, past: int = 50) -> tuple[torch.Tensor, ...]:
        d = self.dit
        mel = d.proj_out.out_features
        spk = d.input_embed.proj.in_features - 3 * mel
        g = torch.Generator().manual_seed(0)
        kv = (batch, self.heads, past, self.dim_head)
        caches = []
        for _ in range(self.depth):
            caches += [torch.rand(*kv, generator=g).to(self.cache_dtype) for _ in range(2)]
            caches += [torch.zeros(*kv[:2], 0, kv[3]).to(self.cache_dtype) for _ in range(2)]
        return (
            torch.rand(batch, mel, frames, generator=g), torch.rand(batch, mel, frames, generator=g),
            torch.rand(batch, mel, frames, generator=g), torch.rand(batch, spk, generator=g),
            torch.rand(self.depth, 6 * self.dim, generator=g), torch.rand(2 * self.dim, generator=g),
            torch.tensor([past], dtype=torch.int64), torch.zeros(frames, frames),
            torch.rand(batch, self.dim, self.conv_context, generator=g),
            torch.rand(batch, self.dim, self.conv_context, generator=g),
            *caches,
        )


def _export(model: nn.Module, args: tuple, path: Path, names_in: list[str], names_out: list[str],
            dyn: dict, opset: int) -> Path:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model, args, str(path), export_params=True, opset_version=opset, do_constant_folding=True,
            input_names=names_in, output_names=names_out, dynamic_axes=dyn, dynamo=False,
        )
    return path


def export_chunk_onnx(dit: DiT, path: Path | str, *, cache_dtype: torch.dtype = torch.float32,
                      opset: int = 18) -> Path:
    """Export :class:`ChunkDiT` (TorchScript exporter; dynamic call length and cache lengths)."""
    model = ChunkDiT(dit, cache_dtype).eval()
    names = input_names(model.depth)
    dyn: dict = {
        "x": {2: "frames"}, "mu": {2: "frames"}, "cond": {2: "frames"}, "velocity": {2: "frames"},
        "bias": {0: "frames", 1: "frames"}, "k_new": {3: "frames"}, "v_new": {3: "frames"},
    }
    for name in cache_input_names(model.depth):
        dyn[name] = {2: "voice_frames" if "_voice_" in name else "past_frames"}
    return _export(model, model.example_inputs(), Path(path), names, list(OUTPUT_NAMES), dyn, opset)


def export_time_onnx(dit: DiT, path: Path | str, *, opset: int = 18) -> Path:
    """Export :class:`TimeMod` (dynamic number of time values)."""
    return _export(TimeMod(dit), (torch.rand(3),), Path(path), list(TIME_INPUTS), list(TIME_OUTPUTS),
                   {"t": {0: "steps"}, "mod": {0: "steps"}, "mod_out": {0: "steps"}}, opset)
