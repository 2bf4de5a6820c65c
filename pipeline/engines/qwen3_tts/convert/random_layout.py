"""The on-disk layout of ``Qwen/Qwen3-TTS-12Hz-0.6B-Base`` at two sizes: configs and tensor specs (spec §1).

``model_config`` / ``speech_config`` give ``config.json`` (§1.2, the release's compact form) and
``speech_tokenizer/config.json`` (§1.4) for ``tiny`` (the dims of the tiny-qwen3-tts fixture) or ``full`` (the real
0.6B dims); ``model_specs`` / ``speech_specs`` derive every tensor's name and shape from those configs the way the
package builds its modules (§1.5), each with how :mod:`.random_checkpoint` draws it (``Init``: kind, argument).
"""

from __future__ import annotations

SIZES = ("tiny", "full")
# (kind, arg): "w" N(0, (arg / sqrt(fan_in))^2); "wt" transposed conv with stride arg; "emb", "b", "snake" normals;
# "norm", "scale", "usage" uniforms; "cbsum" codebook sums (centroid ~ N(0, 1)); "const" arg
Init = tuple[str, float]
Specs = dict[str, tuple[tuple[int, ...], Init]]


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
