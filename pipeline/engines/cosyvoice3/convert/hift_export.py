"""HiFT stage of the converter: ``hift.pt`` (upstream ``CausalHiFTGenerator``) → bundle files.

Writes
- ``hift_f0.npz``: the weights the numpy runtime runs itself. The f0 predictor's convs and classifier
  in float64 (``conv{i}_weight/bias``, ``classifier_weight/bias``; weight norm folded in float64,
  as upstream casts that module to float64 before computing ``g·v/‖v‖``), and the source module's
  ``Linear(9→1)`` (``source_linear_weight/bias``, float32).
- ``hift_decoder.onnx``: FP32 graph of ``decode`` from ``conv_pre`` to ``conv_post`` (inputs ``mel``
  (1, 80, T) and ``s_stft`` (1, n_fft+2, F), output ``conv_post`` (1, n_fft+2, F), F = T·prod(ups)+1).
  STFT, exp/sin and iSTFT stay in numpy.
- ``hift_noise.npz``: ``rand_ini`` (1, 9) and the first ``noise_seconds`` of ``sine_waves``
  (1, N, 9), drawn with torch's CPU generator in the order upstream's yaml construction draws them.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engines.cosyvoice3.convert import upstream
from pipeline.shared.errors import BackendError, SourceError
from pipeline.shared.fsutil import atomic_save_npz, atomic_write_bytes

HIFT_PT = "hift.pt"
F0_FILE = "hift_f0.npz"
DECODER_FILE = "hift_decoder.onnx"
NOISE_FILE = "hift_noise.npz"
ONNX_OPSET = 17
# SineGen2.__init__ hard-codes these shapes: rand(1, 9) and rand(1, 300 * 24000, 9).
UPSTREAM_NOISE_COLUMNS = 9
UPSTREAM_NOISE_RATE = 24000
SNAKE_EPS = 1e-9
FINAL_LRELU_SLOPE = 0.01  # F.leaky_relu default, used before conv_post
F0_KERNELS = (4, 3, 3, 3, 3)  # CausalConvRNNF0Predictor: 'right' k=4, then 4 × 'left' k=3
F0_CONDNET_INDEX = (0, 2, 4, 6, 8)  # nn.Sequential positions of the convs (ELUs in between)


def causal_padding(kernel_size: int, dilation: int = 1) -> int:
    """``CausalConv1d.causal_padding`` (upstream formula, (k−1)·d for odd k, k−1 for k=4)."""
    return int((kernel_size * dilation - dilation) / 2) * 2 + (kernel_size + 1) % 2


@dataclass(frozen=True)
class HiftDims:
    in_channels: int
    base_channels: int
    nb_harmonics: int
    sampling_rate: int
    nsf_alpha: float
    nsf_sigma: float
    voiced_threshold: float
    upsample_rates: list[int]
    upsample_kernel_sizes: list[int]
    n_fft: int
    hop_len: int
    resblock_kernel_sizes: list[int]
    resblock_dilation_sizes: list[list[int]]
    source_resblock_kernel_sizes: list[int]
    source_resblock_dilation_sizes: list[list[int]]
    lrelu_slope: float
    audio_limit: float
    conv_pre_look_right: int
    f0_in_channels: int
    f0_cond_channels: int

    @property
    def samples_per_frame(self) -> int:
        return math.prod(self.upsample_rates) * self.hop_len

    @property
    def source_down_rates(self) -> list[int]:
        # upstream: cumprod([1] + upsample_rates[::-1][:-1]) reversed
        rates = [1] + self.upsample_rates[::-1][:-1]
        return [int(r) for r in np.cumprod(rates)[::-1]]


# Defaults of upstream's CausalHiFTGenerator / CausalConvRNNF0Predictor signatures (what hyperpyyaml
# would use for a key the yaml leaves out).
_HIFT_DEFAULTS: dict[str, Any] = {
    "in_channels": 80, "base_channels": 512, "nb_harmonics": 8, "sampling_rate": 22050, "nsf_alpha": 0.1,
    "nsf_sigma": 0.003, "nsf_voiced_threshold": 10, "upsample_rates": [8, 8], "upsample_kernel_sizes": [16, 16],
    "istft_params": {"n_fft": 16, "hop_len": 4}, "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "source_resblock_kernel_sizes": [7, 11],
    "source_resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]], "lrelu_slope": 0.1, "audio_limit": 0.99,
    "conv_pre_look_right": 4,
}


def hift_dims(cfg_yaml: dict) -> HiftDims:
    """HiFT hyperparameters from the parsed ``cosyvoice3.yaml`` (``cfg["yaml"]``)."""
    h = cfg_yaml.get("hift")
    if not isinstance(h, dict):
        raise SourceError("cosyvoice3.yaml: section 'hift' is missing")
    v = {**_HIFT_DEFAULTS, **h}
    f0 = h.get("f0_predictor")
    if not isinstance(f0, dict):
        raise SourceError("cosyvoice3.yaml: hift.f0_predictor is missing")
    try:
        dims = HiftDims(
            in_channels=int(v["in_channels"]), base_channels=int(v["base_channels"]),
            nb_harmonics=int(v["nb_harmonics"]), sampling_rate=int(v["sampling_rate"]),
            nsf_alpha=float(v["nsf_alpha"]), nsf_sigma=float(v["nsf_sigma"]),
            voiced_threshold=float(v["nsf_voiced_threshold"]),
            upsample_rates=[int(x) for x in v["upsample_rates"]],
            upsample_kernel_sizes=[int(x) for x in v["upsample_kernel_sizes"]],
            n_fft=int(v["istft_params"]["n_fft"]), hop_len=int(v["istft_params"]["hop_len"]),
            resblock_kernel_sizes=[int(x) for x in v["resblock_kernel_sizes"]],
            resblock_dilation_sizes=[[int(d) for d in ds] for ds in v["resblock_dilation_sizes"]],
            source_resblock_kernel_sizes=[int(x) for x in v["source_resblock_kernel_sizes"]],
            source_resblock_dilation_sizes=[[int(d) for d in ds] for ds in v["source_resblock_dilation_sizes"]],
            lrelu_slope=float(v["lrelu_slope"]), audio_limit=float(v["audio_limit"]),
            conv_pre_look_right=int(v["conv_pre_look_right"]),
            f0_in_channels=int(f0.get("in_channels", 80)), f0_cond_channels=int(f0.get("cond_channels", 512)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"cosyvoice3.yaml: bad hift hyperparameter ({e!r})") from e
    if int(f0.get("num_class", 1)) != 1:
        raise SourceError("cosyvoice3.yaml: hift.f0_predictor.num_class must be 1")
    # 22050 Hz selects the CosyVoice1 SineGen, and SineGen2's fixed tables have 9 columns.
    if dims.sampling_rate == 22050 or dims.nb_harmonics + 1 != UPSTREAM_NOISE_COLUMNS:
        raise SourceError(
            f"cosyvoice3.yaml: hift sampling_rate {dims.sampling_rate} / nb_harmonics {dims.nb_harmonics} "
            "is not a CosyVoice3 causal HiFT (needs SineGen2 with 8 harmonics)"
        )
    if not (len(dims.upsample_rates) == len(dims.upsample_kernel_sizes) == len(dims.source_resblock_kernel_sizes)):
        raise SourceError("cosyvoice3.yaml: hift upsample_rates / kernel sizes / source resblocks differ in length")
    return dims


# ---------------------------------------------------------------------------------------------------------
# Checkpoint reading


def fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``W = g · v / ‖v‖`` with the norm over every dim but 0 (weight_norm dim=0), in float64."""
    g64 = np.asarray(g, np.float64)
    v64 = np.asarray(v, np.float64)
    norm = np.sqrt(np.sum(v64 * v64, axis=tuple(range(1, v64.ndim)), keepdims=True))
    return g64.reshape((-1,) + (1,) * (v64.ndim - 1)) * v64 / norm


def load_hift_state(path: Path) -> dict[str, np.ndarray]:
    """hift.pt as ``{key: float32 array}``, keys with any ``generator.`` prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path} is missing (the HiFT vocoder checkpoint)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt pickle/zip
        raise SourceError(f"{path} is not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise SourceError(f"{path} does not hold a state dict")
    out: dict[str, np.ndarray] = {}
    for k, t in sd.items():
        if not isinstance(k, str) or not isinstance(t, torch.Tensor):
            continue
        out[k.replace("generator.", "")] = t.detach().to(torch.float32).numpy()
    return out


class _Weights:
    """Named weights of one hift.pt with shape checks; weight norm folded (both key spellings)."""

    def __init__(self, sd: dict[str, np.ndarray], path: Path) -> None:
        self.sd = sd
        self.path = path

    def _get(self, key: str, shape: tuple[int, ...] | None) -> np.ndarray:
        if key not in self.sd:
            raise SourceError(f"{self.path}: key {key!r} is missing (not a CosyVoice3 HiFT or wrong yaml dims)")
        a = self.sd[key]
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise SourceError(
                f"{self.path}: {key} has shape {tuple(a.shape)}, cosyvoice3.yaml implies {tuple(shape)}"
            )
        return a

    def plain(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        return self._get(key, shape)

    def weight(self, prefix: str, shape: tuple[int, ...]) -> np.ndarray:
        """Effective ``<prefix>.weight`` in float64, folding weight norm if the layer has it."""
        if f"{prefix}.weight" in self.sd:
            return self._get(f"{prefix}.weight", shape).astype(np.float64)
        gshape = (shape[0],) + (1,) * (len(shape) - 1)
        for gk, vk in (("parametrizations.weight.original0", "parametrizations.weight.original1"),
                       ("weight_g", "weight_v")):
            if f"{prefix}.{vk}" in self.sd or f"{prefix}.{gk}" in self.sd:
                return fold_weight_norm(self._get(f"{prefix}.{gk}", gshape), self._get(f"{prefix}.{vk}", shape))
        raise SourceError(
            f"{self.path}: key {prefix + '.parametrizations.weight.original1'!r} is missing "
            "(also no .weight or .weight_v spelling)"
        )


# ---------------------------------------------------------------------------------------------------------
# Torch decode network with folded weights (exported to ONNX)


class _Conv(nn.Module):
    """Conv1d with one-sided zero padding (``left`` or ``right``).

    Exported as a Conv with symmetric ``pads`` plus a Slice with constant bounds that drops the outputs
    the other side's padding adds: the same numbers as pad-then-conv, without the dynamic-shape
    subgraph the exporter emits for F.pad. :func:`one_sided_pads` then folds each such Slice into the Conv's
    ``pads`` (ONNX allows begin ≠ end). For the strided source convs the symmetric padding adds no output
    at all, because their input length is always up·T + 1 (a multiple of the stride, plus 1).
    """

    def __init__(self, w: np.ndarray, b: np.ndarray, *, stride: int = 1, dilation: int = 1,
                 left: int = 0, right: int = 0) -> None:
        super().__init__()
        if left and right:
            raise ValueError("one-sided padding only")
        self.register_buffer("weight", torch.from_numpy(np.ascontiguousarray(w, np.float32)))
        self.register_buffer("bias", torch.from_numpy(np.ascontiguousarray(b, np.float32)))
        self.stride, self.dilation, self.left, self.right = stride, dilation, left, right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.left or self.right
        y = F.conv1d(x, self.weight, self.bias, stride=self.stride, dilation=self.dilation, padding=pad)
        if self.stride != 1 or pad == 0:
            return y
        return y[:, :, :-pad] if self.left else y[:, :, pad:]


class _Upsample(nn.Module):
    """CausalConv1dUpsample: nearest ×u, left pad k−1, conv."""

    def __init__(self, conv: _Conv, rate: int) -> None:
        super().__init__()
        self.conv, self.rate = conv, rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(-1).expand(-1, -1, -1, self.rate).reshape(x.shape[0], x.shape[1], -1)
        return self.conv(x)


class _Snake(nn.Module):
    def __init__(self, alpha: np.ndarray) -> None:
        super().__init__()
        a = torch.from_numpy(np.ascontiguousarray(alpha, np.float32)).reshape(1, -1, 1)
        self.register_buffer("alpha", a)
        self.register_buffer("inv", 1.0 / (a + SNAKE_EPS))  # float32, as upstream computes it per call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sin(x * self.alpha)
        return x + self.inv * (s * s)


class _ResBlock(nn.Module):
    def __init__(self, w: _Weights, prefix: str, ch: int, k: int, dilations: list[int]) -> None:
        super().__init__()
        self.convs1, self.convs2 = nn.ModuleList(), nn.ModuleList()
        self.acts1, self.acts2 = nn.ModuleList(), nn.ModuleList()
        for j, d in enumerate(dilations):
            self.convs1.append(_Conv(w.weight(f"{prefix}.convs1.{j}", (ch, ch, k)),
                                     w.plain(f"{prefix}.convs1.{j}.bias", (ch,)),
                                     dilation=d, left=causal_padding(k, d)))
            self.convs2.append(_Conv(w.weight(f"{prefix}.convs2.{j}", (ch, ch, k)),
                                     w.plain(f"{prefix}.convs2.{j}.bias", (ch,)), left=causal_padding(k, 1)))
            self.acts1.append(_Snake(w.plain(f"{prefix}.activations1.{j}.alpha", (ch,))))
            self.acts2.append(_Snake(w.plain(f"{prefix}.activations2.{j}.alpha", (ch,))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.acts1, self.acts2, strict=True):
            x = c2(a2(c1(a1(x)))) + x
        return x


class HiftDecoderNet(nn.Module):
    """``CausalHiFTGenerator.decode`` (finalize=True) from conv_pre to conv_post, folded weights."""

    def __init__(self, w: _Weights, d: HiftDims) -> None:
        super().__init__()
        base, n_ch = d.base_channels, d.n_fft + 2
        k_pre = d.conv_pre_look_right + 1
        self.conv_pre = _Conv(w.weight("conv_pre", (base, d.in_channels, k_pre)),
                              w.plain("conv_pre.bias", (base,)), right=causal_padding(k_pre))
        self.ups, self.source_downs, self.source_resblocks = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, (u, k) in enumerate(zip(d.upsample_rates, d.upsample_kernel_sizes, strict=True)):
            cin, cout = base // 2**i, base // 2 ** (i + 1)
            conv = _Conv(w.weight(f"ups.{i}", (cout, cin, k)), w.plain(f"ups.{i}.bias", (cout,)), left=k - 1)
            self.ups.append(_Upsample(conv, u))
        for i, (u, k, dil) in enumerate(zip(d.source_down_rates, d.source_resblock_kernel_sizes,
                                            d.source_resblock_dilation_sizes, strict=True)):
            ch = base // 2 ** (i + 1)
            ks = 1 if u == 1 else 2 * u
            self.source_downs.append(_Conv(w.weight(f"source_downs.{i}", (ch, n_ch, ks)),
                                           w.plain(f"source_downs.{i}.bias", (ch,)),
                                           stride=u, left=0 if u == 1 else u - 1))
            self.source_resblocks.append(_ResBlock(w, f"source_resblocks.{i}", ch, k, dil))
        self.resblocks = nn.ModuleList()
        for i in range(len(d.upsample_rates)):
            ch = base // 2 ** (i + 1)
            for j, (k, dil) in enumerate(zip(d.resblock_kernel_sizes, d.resblock_dilation_sizes, strict=True)):
                m = i * len(d.resblock_kernel_sizes) + j
                self.resblocks.append(_ResBlock(w, f"resblocks.{m}", ch, k, dil))
        self.conv_post = _Conv(w.weight("conv_post", (n_ch, ch, 7)), w.plain("conv_post.bias", (n_ch,)),
                               left=causal_padding(7))
        self.lrelu_slope = d.lrelu_slope
        self.num_kernels = len(d.resblock_kernel_sizes)

    def forward(self, mel: torch.Tensor, s_stft: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        n_up = len(self.ups)
        for i in range(n_up):
            x = F.leaky_relu(x, self.lrelu_slope)
            x = self.ups[i](x)
            if i == n_up - 1:
                x = torch.cat([x[:, :, 1:2], x], dim=2)  # ReflectionPad1d((1, 0))
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            xs = self.resblocks[i * self.num_kernels](x)
            for j in range(1, self.num_kernels):
                xs = xs + self.resblocks[i * self.num_kernels + j](x)
            x = xs / self.num_kernels
        x = F.leaky_relu(x, FINAL_LRELU_SLOPE)
        return self.conv_post(x)


def f0_arrays(w: _Weights, d: HiftDims) -> dict[str, np.ndarray]:
    """f0 predictor weights (float64, folded) and the source Linear(9→1) (float32)."""
    out: dict[str, np.ndarray] = {}
    cin = d.f0_in_channels
    for i, (pos, k) in enumerate(zip(F0_CONDNET_INDEX, F0_KERNELS, strict=True)):
        c = d.f0_cond_channels
        out[f"conv{i}_weight"] = w.weight(f"f0_predictor.condnet.{pos}", (c, cin, k))
        out[f"conv{i}_bias"] = w.plain(f"f0_predictor.condnet.{pos}.bias", (c,)).astype(np.float64)
        cin = c
    out["classifier_weight"] = w.plain("f0_predictor.classifier.weight", (1, cin)).astype(np.float64)
    out["classifier_bias"] = w.plain("f0_predictor.classifier.bias", (1,)).astype(np.float64)
    h = d.nb_harmonics + 1
    out["source_linear_weight"] = w.plain("m_source.l_linear.weight", (1, h)).astype(np.float32)
    out["source_linear_bias"] = w.plain("m_source.l_linear.bias", (1,)).astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------------------
# Noise tables


def replay_noise_tables(cfg_yaml: dict, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Replay upstream's torch RNG draws up to SineGen2's tables: ``(rand_ini (1, 9), sine_waves (1, n, 9))``.

    Order (hyperpyyaml builds nested args first, llm → flow → hift): the CFM's ``manual_seed(0)`` and
    ``randn(1, 80, 15000)``; the flow's ``Embedding(vocab, input_size)`` and ``Linear(spk_dim, output_size)``;
    the f0 predictor's five convs and its classifier (weight_norm draws nothing); then SineGen2's
    ``rand(1, 9)`` and ``rand(1, 300·24000, 9)``. CPU ``uniform_`` fills serially, one 32-bit draw per
    element, so drawing only the first ``n_samples`` rows gives exactly the table's prefix.
    The global RNG state is restored afterwards.
    """
    d = hift_dims(cfg_yaml)
    flow = {"vocab_size": 4096, "input_size": 512, "spk_embed_dim": 192, "output_size": 80,
            **(cfg_yaml.get("flow") or {})}
    n_max = upstream.HIFT_NOISE_TABLE_SECONDS * UPSTREAM_NOISE_RATE
    if not 0 < n_samples <= n_max:
        raise ValueError(f"noise table length {n_samples} outside 1..{n_max}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(upstream.FLOW_NOISE_SEED)
        torch.randn([1, 80, upstream.FLOW_NOISE_FRAMES])
        nn.Embedding(int(flow["vocab_size"]), int(flow["input_size"]))
        nn.Linear(int(flow["spk_embed_dim"]), int(flow["output_size"]))
        cin = d.f0_in_channels
        for k in F0_KERNELS:
            nn.Conv1d(cin, d.f0_cond_channels, k)
            cin = d.f0_cond_channels
        nn.Linear(d.f0_cond_channels, 1)
        rand_ini = torch.rand(1, UPSTREAM_NOISE_COLUMNS)
        rand_ini[:, 0] = 0
        sine_waves = torch.rand(1, n_samples, UPSTREAM_NOISE_COLUMNS)
    return rand_ini.numpy(), sine_waves.numpy()


# ---------------------------------------------------------------------------------------------------------
# Export


def _export_onnx(net: HiftDecoderNet, d: HiftDims) -> bytes:
    up = math.prod(d.upsample_rates)
    mel = torch.zeros(1, d.in_channels, 6)
    s = torch.zeros(1, d.n_fft + 2, 6 * up + 1)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (mel, s), buf, input_names=["mel", "s_stft"], output_names=["conv_post"],
            dynamic_axes={"mel": {2: "T"}, "s_stft": {2: "F"}, "conv_post": {2: "F"}},
            opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False,
        )
    return buf.getvalue()


def one_sided_pads(data: bytes) -> tuple[bytes, int]:
    """Fold ``Conv(pads=[p, p]) → Slice(axis 2, [0, −p) or [p, end))`` into ``Conv(pads=[p, 0] or [0, p])``.

    The same numbers (the Slice only dropped the columns the unused side's padding produced) without computing
    and copying those columns: ~3 % of the decoder's time at full size. Returns the graph and how many Slices
    went."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(data)
    g = m.graph
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    consts.update({t.name: numpy_helper.to_array(t) for t in g.initializer})
    users: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    folded = []
    for conv in g.node:
        nxt = users.get(conv.output[0], [])
        if conv.op_type != "Conv" or len(nxt) != 1 or nxt[0].op_type != "Slice" or conv.output[0] in graph_outputs:
            continue
        sl = nxt[0]
        pads = next((a for a in conv.attribute if a.name == "pads"), None)
        bounds = [consts.get(i) for i in sl.input[1:]]
        if pads is None or len(pads.ints) != 2 or pads.ints[0] != pads.ints[1] or len(bounds) < 3 or \
                any(b is None or b.size != 1 for b in bounds):
            continue
        p = int(pads.ints[0])
        start, end, axis = (int(b.ravel()[0]) for b in bounds[:3])
        step = int(bounds[3].ravel()[0]) if len(bounds) > 3 else 1
        if axis not in (2, -1) or step != 1:
            continue
        if start == 0 and end == -p:
            new = [p, 0]
        elif start == p and end >= 2**31 - 1:
            new = [0, p]
        else:
            continue
        del pads.ints[:]
        pads.ints.extend(new)
        conv.output[0] = sl.output[0]  # the Slice was the Conv's only reader
        folded.append(sl)
    for sl in folded:
        g.node.remove(sl)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for n in [n for n in g.node if n.op_type == "Constant" and n.output[0] not in used]:
        g.node.remove(n)
    return m.SerializeToString(), len(folded)


def _check_onnx(data: bytes, net: HiftDecoderNet, d: HiftDims) -> float:
    """One ORT run against the torch module on random inputs; returns the max abs difference."""
    import onnxruntime as ort

    g = torch.Generator().manual_seed(1)
    t = 11
    mel = torch.randn(1, d.in_channels, t, generator=g)
    s = 0.3 * torch.randn(1, d.n_fft + 2, t * math.prod(d.upsample_rates) + 1, generator=g)
    with torch.no_grad():
        ref = net(mel, s).numpy()
    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = sess.run(["conv_post"], {"mel": mel.numpy(), "s_stft": s.numpy()})[0]
    except Exception as e:  # ORT raises its own exception types
        raise BackendError(f"ONNX Runtime cannot run the exported HiFT decoder: {e}") from e
    if got.shape != ref.shape:
        raise BackendError(f"exported HiFT decoder returns {got.shape}, torch gives {ref.shape}")
    err = float(np.max(np.abs(got - ref)))
    if not err <= 1e-4 * max(1.0, float(np.max(np.abs(ref)))):
        raise BackendError(f"exported HiFT decoder differs from torch by {err:.3g} (ONNX Runtime check)")
    return err


def convert_hift(src: Path, out: Path, cfg: dict, *, noise_seconds: float = 60.0) -> dict:
    """Convert ``src/hift.pt`` into ``out``; returns the manifest's ``hift`` section."""
    src, out = Path(src), Path(out)
    d = hift_dims(cfg["yaml"])
    pt = src / HIFT_PT
    w = _Weights(load_hift_state(pt), pt)

    f0 = f0_arrays(w, d)
    net = HiftDecoderNet(w, d).eval()
    onnx_bytes, _ = one_sided_pads(_export_onnx(net, d))
    _check_onnx(onnx_bytes, net, d)

    n_noise = int(round(noise_seconds * d.sampling_rate))
    n_max = upstream.HIFT_NOISE_TABLE_SECONDS * UPSTREAM_NOISE_RATE
    if not 0 < n_noise <= n_max:
        raise ValueError(f"noise_seconds={noise_seconds}: the upstream table holds 1..{n_max} samples")
    rand_ini, sine_waves = replay_noise_tables(cfg["yaml"], n_noise)

    out.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(out / F0_FILE, **f0)
    atomic_write_bytes(out / DECODER_FILE, onnx_bytes)
    atomic_save_npz(out / NOISE_FILE, rand_ini=rand_ini, sine_waves=sine_waves)
    return {
        "f0": F0_FILE,
        "decoder_onnx": DECODER_FILE,
        "noise": NOISE_FILE,
        "noise_samples": n_noise,
        "sample_rate": d.sampling_rate,
        "upsample_rates": d.upsample_rates,
        "upsample_kernel_sizes": d.upsample_kernel_sizes,
        "n_fft": d.n_fft,
        "hop_len": d.hop_len,
        "nb_harmonics": d.nb_harmonics,
        "nsf_alpha": d.nsf_alpha,
        "nsf_sigma": d.nsf_sigma,
        "voiced_threshold": d.voiced_threshold,
        "audio_limit": d.audio_limit,
        "conv_pre_look_right": d.conv_pre_look_right,
        "samples_per_frame": d.samples_per_frame,
        "files": [F0_FILE, DECODER_FILE, NOISE_FILE],
    }
