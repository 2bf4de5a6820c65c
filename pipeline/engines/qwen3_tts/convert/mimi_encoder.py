"""Torch re-implementation of the speech tokenizer's encoder half (spec §3.2): 24 kHz waveform → (T12, 16) codes.

SEANet causal convs (25 Hz) → causal transformer → stride-2 downsample (12.5 Hz, replicate padding) → split RVQ
(semantic codebook on one projection of the latent, acoustic residual chain on a separate projection of the
same latent). Weights come from ``speech_tokenizer/model.safetensors`` ``encoder.*``; this module is the source
of ``q3_prompt_encoder.onnx``.

Causal padding: upstream pads ``k_eff − stride`` on the left and ``ceil(L/s)·s − L`` on the right. Padding
``stride − 1`` on the right instead gives the same windows and the same ``ceil(L/s)`` outputs (the extra
columns are never read), so every pad here is static and the graph needs no shape arithmetic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .prompt_source import MimiDims, Weights


class CausalConv(nn.Module):
    """``MimiConv1d`` with causal padding: zeros (``constant``) or edge copies (``replicate``)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None, *, stride: int = 1, dilation: int = 1,
                 replicate: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", w)
        self.register_buffer("bias", b if b is not None else None)
        k_eff = (w.shape[-1] - 1) * dilation + 1
        self.pads = (k_eff - stride, stride - 1)
        self.stride, self.dilation = stride, dilation
        self.mode = "replicate" if replicate else "constant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pads != (0, 0):
            x = F.pad(x, self.pads, mode=self.mode)
        return F.conv1d(x, self.weight, self.bias, stride=self.stride, dilation=self.dilation)


class ResnetBlock(nn.Module):
    """x + conv_k1(ELU(conv_k(ELU(x)))) (``MimiResnetBlock``, identity shortcut)."""

    def __init__(self, w: Weights, prefix: str, dim: int, d: MimiDims, dilation: int) -> None:
        super().__init__()
        hid, k = dim // d.compress, d.residual_kernel_size
        self.conv1 = CausalConv(w.get(f"{prefix}.block.1.conv.weight", (hid, dim, k)),
                                w.get(f"{prefix}.block.1.conv.bias", (hid,)), dilation=dilation)
        self.conv2 = CausalConv(w.get(f"{prefix}.block.3.conv.weight", (dim, hid, 1)),
                                w.get(f"{prefix}.block.3.conv.bias", (dim,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.elu(self.conv1(F.elu(x))))


class Seanet(nn.Module):
    """``MimiEncoder``: conv → [resnet blocks, ELU, strided conv] per ratio → ELU → conv to hidden_size."""

    def __init__(self, w: Weights, d: MimiDims) -> None:
        super().__init__()
        nf, p = d.num_filters, "encoder.encoder.layers"
        self.layers = nn.ModuleList()
        self.elu_before: list[bool] = []  # whether an ELU precedes layer i (ELUs hold their own index in upstream)
        self.layers.append(CausalConv(w.get(f"{p}.0.conv.weight", (nf, d.audio_channels, d.kernel_size)),
                                      w.get(f"{p}.0.conv.bias", (nf,))))
        self.elu_before.append(False)
        i, dim = 1, nf
        for ratio in d.ratios:
            for j in range(d.num_residual_layers):
                self.layers.append(ResnetBlock(w, f"{p}.{i}", dim, d, d.dilation_growth_rate**j))
                self.elu_before.append(False)
                i += 1
            i += 1  # ELU
            self.layers.append(CausalConv(w.get(f"{p}.{i}.conv.weight", (2 * dim, dim, 2 * ratio)),
                                          w.get(f"{p}.{i}.conv.bias", (2 * dim,)), stride=ratio))
            self.elu_before.append(True)
            i += 1
            dim *= 2
        i += 1  # ELU
        self.layers.append(CausalConv(w.get(f"{p}.{i}.conv.weight", (d.hidden_size, dim, d.last_kernel_size)),
                                      w.get(f"{p}.{i}.conv.bias", (d.hidden_size,))))
        self.elu_before.append(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, elu in zip(self.layers, self.elu_before, strict=True):
            x = layer(F.elu(x) if elu else x)
        return x


class TransformerLayer(nn.Module):
    """Pre-norm layer: x += s₁ ⊙ Attn(LN(x)); x += s₂ ⊙ fc2(GELU(fc1(LN(x)))) (``MimiTransformerLayer``)."""

    def __init__(self, w: Weights, prefix: str, d: MimiDims) -> None:
        super().__init__()
        h, q, kv = d.hidden_size, d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim
        m = d.intermediate_size

        def g(name: str, shape: tuple[int, ...]) -> nn.Parameter:
            return nn.Parameter(w.get(f"{prefix}.{name}", shape), requires_grad=False)

        self.ln1_w, self.ln1_b = g("input_layernorm.weight", (h,)), g("input_layernorm.bias", (h,))
        self.ln2_w, self.ln2_b = g("post_attention_layernorm.weight", (h,)), g("post_attention_layernorm.bias", (h,))
        self.wq, self.wk = g("self_attn.q_proj.weight", (q, h)), g("self_attn.k_proj.weight", (kv, h))
        self.wv, self.wo = g("self_attn.v_proj.weight", (kv, h)), g("self_attn.o_proj.weight", (h, q))
        self.fc1, self.fc2 = g("mlp.fc1.weight", (m, h)), g("mlp.fc2.weight", (h, m))
        self.s1, self.s2 = g("self_attn_layer_scale.scale", (h,)), g("mlp_layer_scale.scale", (h,))
        self.d = d

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        d = self.d
        t = x.shape[0]
        y = F.layer_norm(x, (d.hidden_size,), self.ln1_w, self.ln1_b, d.norm_eps)
        q = (y @ self.wq.T).reshape(t, d.num_heads, d.head_dim).transpose(0, 1)
        k = (y @ self.wk.T).reshape(t, d.num_kv_heads, d.head_dim).transpose(0, 1)
        v = (y @ self.wv.T).reshape(t, d.num_kv_heads, d.head_dim).transpose(0, 1)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        rep = d.num_heads // d.num_kv_heads
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
        a = (q @ k.transpose(1, 2)) * (1.0 / math.sqrt(d.head_dim)) + mask
        a = torch.softmax(a, dim=-1) @ v
        x = x + self.s1 * (a.transpose(0, 1).reshape(t, -1) @ self.wo.T)
        y = F.layer_norm(x, (d.hidden_size,), self.ln2_w, self.ln2_b, d.norm_eps)
        return x + self.s2 * (F.gelu(y @ self.fc1.T) @ self.fc2.T)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # NeoX rotate_half
    return x * cos + rot * sin


class Transformer(nn.Module):
    """``MimiTransformerModel`` on (T, C): plain causal mask, RoPE over the full head, no final norm."""

    def __init__(self, w: Weights, d: MimiDims) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(w, f"encoder.encoder_transformer.layers.{i}", d) for i in range(d.num_layers))
        inv = 1.0 / (d.rope_theta ** (torch.arange(0, d.head_dim, 2, dtype=torch.int64).float() / d.head_dim))
        self.register_buffer("inv_freq", inv.to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[0], dtype=torch.int64)
        freqs = pos.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        mask = torch.zeros(pos.shape[0], pos.shape[0]).masked_fill(pos[None, :] > pos[:, None], float("-inf"))
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return x


class SplitRVQ(nn.Module):
    """Semantic + acoustic nearest-centroid chains (``MimiSplitResidualVectorQuantizer.encode``).

    Distances follow ``torch.cdist``'s matrix-product path (taken for codebooks of more than 25 rows): one
    product of ``[−2x, ‖x‖², 1]`` and ``[e, 1, ‖e‖²]``, clamped at 0, square root, first index of the minimum.
    """

    def __init__(self, w: Weights, d: MimiDims) -> None:
        super().__init__()
        p = "encoder.quantizer"
        self.sem_proj = self._proj(w, f"{p}.semantic_residual_vector_quantizer", d)
        self.ac_proj = self._proj(w, f"{p}.acoustic_residual_vector_quantizer", d)
        books = [self._book(w, f"{p}.semantic_residual_vector_quantizer.layers.{i}", d)
                 for i in range(d.num_semantic)]
        books += [self._book(w, f"{p}.acoustic_residual_vector_quantizer.layers.{i}", d)
                  for i in range(d.valid_quantizers - d.num_semantic)]
        self.n_sem, self.dim = d.num_semantic, d.codebook_dim
        # Each augmented codebook is stored once, transposed, as its own buffer: the distance product reads it as
        # is and the residual update gathers its columns; a transpose or slice of a stored tensor would be
        # constant-folded into a second copy in the graph.
        self.n_books = len(books)
        for q, b in enumerate(books):
            self.register_buffer(f"aug{q}", b.T.contiguous())  # (D + 2, K)

    @staticmethod
    def _proj(w: Weights, prefix: str, d: MimiDims) -> torch.Tensor | None:
        if d.vq_hidden == d.hidden_size and not w.has(f"{prefix}.input_proj.weight"):
            return None
        return w.get(f"{prefix}.input_proj.weight", (d.vq_hidden, d.hidden_size, 1))[:, :, 0].T.contiguous()

    @staticmethod
    def _book(w: Weights, prefix: str, d: MimiDims) -> torch.Tensor:
        s = w.get(f"{prefix}.codebook.embed_sum", (d.codebook_size, d.codebook_dim))
        u = w.get(f"{prefix}.codebook.cluster_usage", (d.codebook_size,))
        e = s / u.clamp(min=1e-5)[:, None]
        return torch.cat([e, torch.ones_like(e[:, :1]), e.pow(2).sum(-1, keepdim=True)], dim=-1)

    def book(self, q: int) -> torch.Tensor:
        """Augmented codebook q, transposed: rows are the D centroid coordinates, then 1, then ‖e‖²."""
        return getattr(self, f"aug{q}")

    def centroid(self, q: int, c: torch.Tensor) -> torch.Tensor:
        return self.book(q)[:, c][: self.dim].T

    @staticmethod
    def nearest_dist(x: torch.Tensor, aug_t: torch.Tensor) -> torch.Tensor:
        xa = torch.cat([x * -2.0, x.pow(2).sum(-1, keepdim=True), torch.ones_like(x[:, :1])], dim=-1)
        return (xa @ aug_t).clamp_min(0.0).sqrt()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """(T, C) latent → (T, Q) int64 codes."""
        codes = []
        z = latent if self.sem_proj is None else latent @ self.sem_proj
        for q in range(self.n_sem):
            c = self.nearest_dist(z, self.book(q)).argmin(dim=-1)
            codes.append(c)
            z = z - self.centroid(q, c)
        r = latent if self.ac_proj is None else latent @ self.ac_proj
        for q in range(self.n_sem, self.n_books):
            c = self.nearest_dist(r, self.book(q)).argmin(dim=-1)
            codes.append(c)
            r = r - self.centroid(q, c)
        return torch.stack(codes, dim=1)


class MimiEncoder(nn.Module):
    """wav (1, N) float32 at 24 kHz → (codes (T12, Q) int64, latent (T12, C) float32), T12 = ceil(N / 1920)."""

    def __init__(self, w: Weights, d: MimiDims) -> None:
        super().__init__()
        self.seanet = Seanet(w, d)
        self.transformer = Transformer(w, d)
        s = d.downsample_stride
        self.downsample = CausalConv(w.get("encoder.downsample.conv.weight", (d.hidden_size, d.hidden_size, 2 * s)),
                                     None, stride=s, replicate=True)
        self.rvq = SplitRVQ(w, d)
        self.dims = d

    def stages(self, wav: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every intermediate, in upstream's layouts: seanet (C, T25), transformer (T25, C), downsample (C, T12)."""
        x = self.seanet(wav[:, None, :])[0]
        h = self.transformer(x.T)
        z = self.downsample(h.T[None])[0]
        return {"seanet": x, "transformer": h, "downsample": z, "codes": self.rvq(z.T)}

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.downsample(self.transformer(self.seanet(wav[:, None, :])[0].T).T[None])[0].T
        return self.rvq(z), z
