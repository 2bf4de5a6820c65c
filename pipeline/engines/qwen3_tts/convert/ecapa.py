"""Torch re-implementation of the speaker encoder (spec §4.2, ``Qwen3TTSSpeakerEncoder``): log-mel → x-vector.

ECAPA-TDNN without BatchNorm: every conv has ``padding="same"`` with reflect padding, every TDNN block is
conv → ReLU; SE-Res2Net blocks, multi-layer feature aggregation, attentive statistics pooling with global
context, a final 1×1 conv. Weights: ``model.safetensors`` ``speaker_encoder.*`` (bf16, upcast to float32).
This module is the source of ``q3_speaker_encoder.onnx``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .prompt_source import SpeakerDims, Weights

STATS_EPS = 1e-12


class SameConv(nn.Module):
    """Conv1d, stride 1, ``padding="same"`` in reflect mode (torch puts the odd extra column on the right)."""

    def __init__(self, w: Weights, prefix: str, cin: int, cout: int, k: int, dilation: int = 1) -> None:
        super().__init__()
        self.register_buffer("weight", w.get(f"{prefix}.weight", (cout, cin, k)))
        self.register_buffer("bias", w.get(f"{prefix}.bias", (cout,)))
        total = dilation * (k - 1)
        self.pads = (total // 2, total - total // 2)
        self.dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pads != (0, 0):
            x = F.pad(x, self.pads, mode="reflect")
        return F.conv1d(x, self.weight, self.bias, dilation=self.dilation)


class Tdnn(nn.Module):
    def __init__(self, w: Weights, prefix: str, cin: int, cout: int, k: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = SameConv(w, f"{prefix}.conv", cin, cout, k, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class SeRes2NetBlock(nn.Module):
    """tdnn1 (1×1) → Res2Net → tdnn2 (1×1) → squeeze-excitation → + input."""

    def __init__(self, w: Weights, prefix: str, cin: int, cout: int, d: SpeakerDims, k: int, dilation: int) -> None:
        super().__init__()
        if cin != cout or cout % d.res2net_scale:
            raise ValueError(f"SE-Res2Net block {prefix}: channels {cin}→{cout}, scale {d.res2net_scale}")
        part = cout // d.res2net_scale
        self.tdnn1 = Tdnn(w, f"{prefix}.tdnn1", cin, cout, 1)
        self.res2 = nn.ModuleList(Tdnn(w, f"{prefix}.res2net_block.blocks.{i}", part, part, k, dilation)
                                  for i in range(d.res2net_scale - 1))
        self.tdnn2 = Tdnn(w, f"{prefix}.tdnn2", cout, cout, 1)
        self.se1 = SameConv(w, f"{prefix}.se_block.conv1", cout, d.se_channels, 1)
        self.se2 = SameConv(w, f"{prefix}.se_block.conv2", d.se_channels, cout, 1)
        self.scale = d.res2net_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tdnn1(x)
        parts = torch.chunk(h, self.scale, dim=1)
        outs = [parts[0]]
        y = parts[0]
        for i in range(1, self.scale):
            y = self.res2[i - 1](parts[i] if i == 1 else parts[i] + y)
            outs.append(y)
        h = self.tdnn2(torch.cat(outs, dim=1))
        s = torch.sigmoid(self.se2(torch.relu(self.se1(h.mean(dim=2, keepdim=True)))))
        return h * s + x


def _stats(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = (m * x).sum(dim=2)
    std = torch.sqrt((m * (x - mean.unsqueeze(2)).pow(2)).sum(dim=2).clamp(STATS_EPS))
    return mean, std


class EcapaTdnn(nn.Module):
    """mel (1, T, mel_dim) → embedding (enc_dim,)."""

    def __init__(self, w: Weights, d: SpeakerDims) -> None:
        super().__init__()
        ch, ks, ds = d.channels, d.kernels, d.dilations
        self.block0 = Tdnn(w, "blocks.0", d.mel_dim, ch[0], ks[0], ds[0])
        self.blocks = nn.ModuleList(SeRes2NetBlock(w, f"blocks.{i}", ch[i - 1], ch[i], d, ks[i], ds[i])
                                    for i in range(1, len(ch) - 1))
        cat = sum(ch[1:-1])
        self.mfa = Tdnn(w, "mfa", cat, ch[-1], ks[-1], ds[-1])
        self.asp_tdnn = Tdnn(w, "asp.tdnn", 3 * ch[-1], d.attention_channels, 1)
        self.asp_conv = SameConv(w, "asp.conv", d.attention_channels, ch[-1], 1)
        self.fc = SameConv(w, "fc", 2 * ch[-1], d.enc_dim, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.block0(mel.transpose(1, 2))
        feats = []
        for b in self.blocks:
            x = b(x)
            feats.append(x)
        x = self.mfa(torch.cat(feats, dim=1))
        t = x.shape[2]
        ones = torch.ones_like(x[:, :1, :])
        mean, std = _stats(x, ones / ones.sum(dim=2, keepdim=True))  # upstream's mask / total: weights 1/T
        ctx = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, t), std.unsqueeze(2).expand(-1, -1, t)], dim=1)
        att = torch.softmax(self.asp_conv(torch.tanh(self.asp_tdnn(ctx))), dim=2)
        mean, std = _stats(x, att)
        return self.fc(torch.cat([mean, std], dim=1).unsqueeze(2))[0, :, 0]
