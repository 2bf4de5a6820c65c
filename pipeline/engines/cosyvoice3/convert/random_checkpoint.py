"""Random-weight CosyVoice3 checkpoint in upstream's on-disk format (host side, needs torch).

``make_random_checkpoint`` writes what ``cosyvoice-rk download`` would fetch: ``cosyvoice3.yaml``,
``llm.pt``, ``flow.pt``, ``hift.pt``, ``CosyVoice-BlankEN/{config.json, generation_config.json,
model.safetensors}`` (+ the Qwen2 tokenizer files when vendored) and ``flow.decoder.estimator.fp32.onnx``
exported from :mod:`.dit_torch` with the random flow weights. Key sets and tensor order equal upstream's
(the tiny fixture's); ``tiny`` has the fixture's dims, ``full`` the real Fun-CosyVoice3-0.5B dims.
Values mimic the fixture's statistics (fan-in scaled normals, norms near 1, weight norm with g != ||v||),
so every stage keeps sane activations. Every tensor is a pure function of (size, seed).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from pipeline.engines.cosyvoice3.convert.config import load_yaml_config
from pipeline.engines.cosyvoice3.convert.dit_torch import DiT, export_estimator_onnx
from pipeline.engines.cosyvoice3.convert.random_config import (  # noqa: F401 - TEXT_VOCAB re-exported
    DIMS,
    GENERATION_CONFIG,
    TEXT_VOCAB,
    RandomDims,
    qwen_config,
    render_yaml,
)
from pipeline.shared.errors import SourceError

SIZES = ("tiny", "full")
BLANK_EN = "CosyVoice-BlankEN"
# vocab.json / merges.txt vendored by the project (copied into CosyVoice-BlankEN when present).
TOKENIZER_ASSETS = Path(__file__).resolve().parents[4] / "assets" / "qwen2-tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
# Seed offsets per part, as the tiny fixture's generator (Qwen2 body, LLM heads, flow, HiFT).
_SEED_QWEN, _SEED_HEADS, _SEED_FLOW, _SEED_HIFT = 0, 1, 2, 3
_EST = "decoder.estimator."
# f0 = |classifier(h)| in Hz; this gain (fixture: std 17 at 32 channels) puts f0 at ~0-150 Hz, ~80 % voiced.
F0_CLASSIFIER_GAIN = 96.0


class _Rand:
    """Seeded float32 draws, one tensor at a time (in place, so a 136M-row draw costs one allocation)."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.g).mul_(std).add_(mean)

    def uniform(self, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        return torch.rand(shape, generator=self.g).mul_(hi - lo).add_(lo)

    def fan_in(self, shape: tuple[int, ...], gain: float = 1.0) -> torch.Tensor:
        """Weight ~ N(0, gain² / fan_in): keeps unit-scale activations unit scale."""
        return self.normal(shape, gain / math.sqrt(math.prod(shape[1:])))

    def bias(self, n: int) -> torch.Tensor:
        return self.normal((n,), 0.05)

    def norm_weight(self, n: int) -> torch.Tensor:
        return self.normal((n,), 0.1, 1.0)


# ---------------------------------------------------------------- LLM (llm.pt, Qwen2 body + speech heads)

def _qwen_body(d: RandomDims, r: _Rand) -> dict[str, torch.Tensor]:
    h, kv = d.qwen_hidden, d.qwen_hidden // d.qwen_heads * d.qwen_kv_heads
    sd = {"embed_tokens.weight": r.normal((d.text_vocab, h), 1.0)}
    for i in range(d.qwen_layers):
        p = f"layers.{i}."
        for name, rows in (("q", h), ("k", kv), ("v", kv)):
            sd[f"{p}self_attn.{name}_proj.weight"] = r.fan_in((rows, h))
            sd[f"{p}self_attn.{name}_proj.bias"] = r.normal((rows,), 0.1)
        sd[p + "self_attn.o_proj.weight"] = r.fan_in((h, h))
        sd[p + "mlp.gate_proj.weight"] = r.fan_in((d.qwen_intermediate, h))
        sd[p + "mlp.up_proj.weight"] = r.fan_in((d.qwen_intermediate, h))
        sd[p + "mlp.down_proj.weight"] = r.fan_in((h, d.qwen_intermediate))
        sd[p + "input_layernorm.weight"] = r.norm_weight(h)
        sd[p + "post_attention_layernorm.weight"] = r.norm_weight(h)
    sd["norm.weight"] = r.norm_weight(h)
    return sd


def llm_state_dict(d: RandomDims, cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """``CosyVoice3LM.state_dict()``: Qwen2 body, tied lm_head, llm_decoder and speech_embedding."""
    body = _qwen_body(d, _Rand(seed + _SEED_QWEN))
    sd = {f"llm.model.model.{k}": v for k, v in body.items()}
    # Tied to embed_tokens: the same tensor, so torch.save stores it once (as upstream's tied module does).
    sd["llm.model.lm_head.weight"] = body["embed_tokens.weight"]
    rows = int(cfg["llm"]["speech_token_size"]) + 200
    r = _Rand(seed + _SEED_HEADS)
    sd["llm_decoder.weight"] = r.fan_in((rows, d.qwen_hidden), gain=4.0)  # logits std ~4 at any width
    sd["speech_embedding.weight"] = r.normal((rows, d.qwen_hidden), 1.0)
    return sd


# ---------------------------------------------------------------- flow (flow.pt)

def flow_state_dict(d: RandomDims, cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """``CausalMaskedDiffWithDiT.state_dict()`` (the estimator's keys and order come from :class:`DiT`)."""
    f = cfg["flow"]
    mel, spk_in, ch = int(f["input_size"]), int(f["spk_embed_dim"]), d.pre_lookahead_channels
    spk_out = int(f["decoder"]["spk_emb_dim"])
    la = int(f["pre_lookahead_layer"]["pre_lookahead_len"])
    r = _Rand(seed + _SEED_FLOW)
    sd = {
        "input_embedding.weight": r.normal((int(f["vocab_size"]), mel), 1.0),
        "spk_embed_affine_layer.weight": r.fan_in((spk_out, spk_in), gain=8.0),
        "spk_embed_affine_layer.bias": r.bias(spk_out),
        "pre_lookahead_layer.conv1.weight": r.fan_in((ch, mel, la + 1)),
        "pre_lookahead_layer.conv1.bias": r.bias(ch),
        "pre_lookahead_layer.conv2.weight": r.fan_in((mel, ch, 3)),
        "pre_lookahead_layer.conv2.bias": r.bias(mel),
    }
    with torch.device("meta"):
        template = DiT(**dit_kwargs(d, cfg)).state_dict()
    for key, t in template.items():
        shape = tuple(t.shape)
        if key == "rotary_embed.inv_freq":
            value = 1.0 / (10000 ** (torch.arange(0, d.dit_dim_head, 2).float() / d.dit_dim_head))
        elif key.endswith(".bias"):
            value = r.bias(shape[0])
        else:
            value = r.fan_in(shape)
        sd[_EST + key] = value
    return sd


def dit_kwargs(d: RandomDims, cfg: dict) -> dict[str, int]:
    est = cfg["flow"]["decoder"]["estimator"]
    return {"dim": d.dit_dim, "depth": d.dit_depth, "heads": d.dit_heads, "dim_head": d.dit_dim_head,
            "ff_mult": d.dit_ff_mult, "mel_dim": int(est["mel_dim"]), "mu_dim": int(est["mu_dim"]),
            "spk_dim": int(est["spk_dim"]), "out_channels": int(est["out_channels"])}


# ---------------------------------------------------------------- HiFT (hift.pt)

def _wn(r: _Rand, prefix: str, shape: tuple[int, ...], g_range: tuple[float, float] | None = None,
        bias: torch.Tensor | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """A weight-normed conv in the parametrizations spelling: bias, g (out, 1, 1), v."""
    yield prefix + ".bias", r.bias(shape[0]) if bias is None else bias
    g_shape = (shape[0],) + (1,) * (len(shape) - 1)
    if g_range is None:
        g = r.normal(g_shape, 0.2, 1.0).clamp_(min=0.5)
    else:
        g = r.uniform(g_shape, *g_range)
    yield prefix + ".parametrizations.weight.original0", g
    # ||v|| per row is ~1 while g spreads around 1: the folded weight differs from v (g != ||v||).
    yield prefix + ".parametrizations.weight.original1", r.fan_in(shape)


def _resblock(r: _Rand, prefix: str, ch: int, k: int, dilations: list) -> Iterator[tuple[str, torch.Tensor]]:
    for conv in ("convs1", "convs2"):
        for j in range(len(dilations)):
            yield from _wn(r, f"{prefix}.{conv}.{j}", (ch, ch, k))
    for act in ("activations1", "activations2"):
        for j in range(len(dilations)):
            yield f"{prefix}.{act}.{j}.alpha", r.uniform((ch,), 0.5, 1.5)


def _hift_items(d: RandomDims, h: dict, r: _Rand) -> Iterator[tuple[str, torch.Tensor]]:
    base, cond = d.hift_base_channels, d.f0_cond_channels
    mel = int(h["in_channels"])
    ups, up_k = list(h["upsample_rates"]), list(h["upsample_kernel_sizes"])
    n_fft = int(h["istft_params"]["n_fft"])
    harmonics = int(h["nb_harmonics"]) + 1
    yield "m_source.l_linear.weight", r.fan_in((1, harmonics))
    yield "m_source.l_linear.bias", r.bias(1)
    yield from _wn(r, "conv_pre", (base, mel, int(h["conv_pre_look_right"]) + 1))
    for i, k in enumerate(up_k):
        yield from _wn(r, f"ups.{i}", (base >> (i + 1), base >> i, k))
    # Source branch: stage i downsamples the source STFT by the product of the later upsample rates.
    for i in range(len(ups)):
        u = math.prod(ups[i + 1:])
        k = 1 if u == 1 else 2 * u
        yield f"source_downs.{i}.weight", r.fan_in((base >> (i + 1), n_fft + 2, k))
        yield f"source_downs.{i}.bias", r.bias(base >> (i + 1))
    for i, (k, dil) in enumerate(zip(h["source_resblock_kernel_sizes"], h["source_resblock_dilation_sizes"],
                                     strict=True)):
        yield from _resblock(r, f"source_resblocks.{i}", base >> (i + 1), int(k), dil)
    n = 0
    for i in range(len(ups)):
        for k, dil in zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"], strict=True):
            yield from _resblock(r, f"resblocks.{n}", base >> (i + 1), int(k), dil)
            n += 1
    # conv_post: small gain, log-magnitude rows biased to exp(-3) so the iSTFT output stays well below the clamp.
    half = n_fft // 2 + 1
    post_bias = torch.cat([torch.full((half,), -3.0), r.normal((n_fft + 2 - half,), 0.5)])
    yield from _wn(r, "conv_post", (n_fft + 2, base >> len(ups), 7), g_range=(0.1, 0.2), bias=post_bias)
    yield from _wn(r, "f0_predictor.condnet.0", (cond, mel, 4))
    for i in (2, 4, 6, 8):
        yield from _wn(r, f"f0_predictor.condnet.{i}", (cond, cond, 3))
    yield "f0_predictor.classifier.weight", r.fan_in((1, cond), gain=F0_CLASSIFIER_GAIN)
    yield "f0_predictor.classifier.bias", torch.full((1,), 5.0)


def hift_state_dict(d: RandomDims, cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """``CausalHiFTGenerator.state_dict()`` with weight norm as parametrizations (original0 = g, original1 = v)."""
    return dict(_hift_items(d, cfg["hift"], _Rand(seed + _SEED_HIFT)))


# ---------------------------------------------------------------- writers

_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors(path: Path, tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype,
                      metadata: dict[str, str] | None = None) -> None:
    """Stream tensors into a safetensors file, converting one tensor at a time (no whole-model copy)."""
    items = sorted(tensors, key=lambda kv: kv[0])
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset, width = 0, torch.empty((), dtype=dtype).element_size()
    for name, t in items:
        size = t.numel() * width
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, t in items:
            f.write(t.detach().to(dtype).contiguous().view(torch.uint8).numpy())  # buffer protocol: no copy


def _copy_tokenizer(src: Path | None, dst: Path, log: Callable[[str], None]) -> list[str]:
    src = TOKENIZER_ASSETS if src is None else Path(src)
    if not all((src / n).is_file() for n in TOKENIZER_FILES[:2]):
        log(f"no vendored Qwen2 tokenizer at {src}: {BLANK_EN}/ gets no vocab.json/merges.txt "
            "(the bundle will have no text tokenizer)")
        return []
    copied = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    for n in copied:
        shutil.copyfile(src / n, dst / n)
    return copied


def make_random_checkpoint(
    out_dir: Path,
    size: str = "tiny",
    seed: int = 0,
    *,
    tokenizer_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Write a random-weight CosyVoice3 checkpoint folder in upstream's format; returns ``out_dir``.

    ``size`` "tiny" = the test fixture's dims (but the real 151936-row text vocabulary), "full" = the real
    Fun-CosyVoice3-0.5B dims. ``tokenizer_dir`` (default: the vendored assets/qwen2-tokenizer) supplies
    vocab.json/merges.txt; when absent they are skipped with a log line. The folder appears only when complete.
    """
    if size not in DIMS:
        raise SourceError(f"unknown random checkpoint size {size!r}; choose from {', '.join(SIZES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SourceError(f"{out_dir} exists and is not an empty folder; choose a new one for the random checkpoint")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        _write_checkpoint(work, DIMS[size], size, seed, tokenizer_dir, log)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out_dir


def _write_checkpoint(out: Path, d: RandomDims, size: str, seed: int, tokenizer_dir: Path | None,
                      log: Callable[[str], None]) -> None:
    blank = out / BLANK_EN
    blank.mkdir()
    (out / "cosyvoice3.yaml").write_text(render_yaml(d), encoding="utf-8")
    cfg = load_yaml_config(out / "cosyvoice3.yaml")

    t0 = time.monotonic()
    sd = llm_state_dict(d, cfg, seed)
    torch.save(sd, out / "llm.pt")
    # The real BlankEN ships bf16 (988 MB for 0.5B); the tiny fixture ships float32.
    st_dtype = torch.bfloat16 if size == "full" else torch.float32
    body = [(k[len("llm.model."):], v) for k, v in sd.items() if k.startswith("llm.model.model.")]
    write_safetensors(blank / "model.safetensors", body, st_dtype)
    del sd, body
    dtype_name = str(st_dtype).removeprefix("torch.")
    (blank / "config.json").write_text(json.dumps(qwen_config(d, dtype_name), indent=2) + "\n", encoding="utf-8")
    (blank / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n",
                                                  encoding="utf-8")
    _copy_tokenizer(tokenizer_dir, blank, log)
    log(f"llm.pt + {BLANK_EN}/ written ({time.monotonic() - t0:.1f} s)")

    t0 = time.monotonic()
    sd = flow_state_dict(d, cfg, seed)
    torch.save(sd, out / "flow.pt")
    est = {k[len(_EST):]: v for k, v in sd.items() if k.startswith(_EST)}
    del sd
    with torch.device("meta"):
        dit = DiT(**dit_kwargs(d, cfg))
    dit.load_state_dict(est, strict=True, assign=True)  # shares the tensors, no copy
    export_estimator_onnx(dit, out / "flow.decoder.estimator.fp32.onnx")
    del dit, est
    log(f"flow.pt + flow.decoder.estimator.fp32.onnx written ({time.monotonic() - t0:.1f} s)")

    t0 = time.monotonic()
    torch.save(hift_state_dict(d, cfg, seed), out / "hift.pt")
    log(f"hift.pt written ({time.monotonic() - t0:.1f} s)")
