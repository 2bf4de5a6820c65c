"""Flow stage of the converter: ``flow.pt`` + the shipped DiT ONNX → bundle files.

Writes ``flow_frontend.npz`` (token embedding, pre-lookahead convs, speaker affine; float32),
``flow_noise.npy`` (upstream's fixed CFM noise, drawn here with torch's CPU generator exactly as
``CausalConditionalCFM.__init__`` does) and ``flow_estimator.onnx`` (the shipped estimator, checked
against ``flow.pt`` and run once). Returns the manifest's ``flow`` section.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines.cosyvoice3.convert import upstream
from pipeline.engines.cosyvoice3.flow import ESTIMATOR_INPUTS
from pipeline.shared.errors import SourceError
from pipeline.shared.fsutil import atomic_path, atomic_save_npy, atomic_save_npz

FLOW_PT = "flow.pt"
ESTIMATOR_SRC = "flow.decoder.estimator.fp32.onnx"
FRONTEND_FILE = "flow_frontend.npz"
NOISE_FILE = "flow_noise.npy"
ESTIMATOR_FILE = "flow_estimator.onnx"
# Upstream hard-codes 80 channels in rand_noise and in solve_euler's CFG buffers.
UPSTREAM_MEL_BINS = 80

# npz key -> flow.pt key
FRONTEND_KEYS = {
    "input_embedding": "input_embedding.weight",
    "spk_affine_weight": "spk_embed_affine_layer.weight",
    "spk_affine_bias": "spk_embed_affine_layer.bias",
    "pre_lookahead_conv1_weight": "pre_lookahead_layer.conv1.weight",
    "pre_lookahead_conv1_bias": "pre_lookahead_layer.conv1.bias",
    "pre_lookahead_conv2_weight": "pre_lookahead_layer.conv2.weight",
    "pre_lookahead_conv2_bias": "pre_lookahead_layer.conv2.bias",
}
_EST = "decoder.estimator."
_REQUIRED = object()


def convert_flow(src: Path, out: Path, cfg: dict) -> dict:
    """Convert the flow of checkpoint ``src`` into bundle folder ``out``; returns the manifest section."""
    src, out = Path(src), Path(out)
    y = cfg.get("yaml") or {}
    hp = _hyperparams(y, _section(y, "flow"))
    sd = _load_state_dict(src / FLOW_PT)
    arrays = {k: _tensor(sd, v) for k, v in FRONTEND_KEYS.items()}
    _check_frontend_shapes(arrays, hp)
    dims = _dit_dims(sd, hp)

    est_src = src / ESTIMATOR_SRC
    check_estimator_onnx(est_src, mel_bins=hp["mel_bins"], spk_dim=dims["spk_dim"], state_dict=sd)

    out.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(out / FRONTEND_FILE, **arrays)
    atomic_save_npy(out / NOISE_FILE, make_flow_noise())
    with atomic_path(out / ESTIMATOR_FILE) as tmp:
        shutil.copyfile(est_src, tmp)

    return {
        "frontend": FRONTEND_FILE,
        "noise": NOISE_FILE,
        "estimator": {"onnx": ESTIMATOR_FILE},
        "n_timesteps": upstream.FLOW_N_TIMESTEPS,
        "inference_cfg_rate": hp["inference_cfg_rate"],
        "t_scheduler": hp["t_scheduler"],
        "token_mel_ratio": hp["token_mel_ratio"],
        "pre_lookahead_len": hp["pre_lookahead_len"],
        "pre_lookahead_channels": hp["pre_lookahead_channels"],
        "mel_bins": hp["mel_bins"],
        "spk_embed_dim": hp["spk_embed_dim"],
        "vocab_size": hp["vocab_size"],
        "prompt_mel": hp["prompt_mel"],
        "dims": dims,
        "files": [FRONTEND_FILE, NOISE_FILE, ESTIMATOR_FILE],
    }


def make_flow_noise(
    seed: int = upstream.FLOW_NOISE_SEED, frames: int = upstream.FLOW_NOISE_FRAMES
) -> np.ndarray:
    """``set_all_random_seed(seed); torch.randn([1, 80, frames])`` on the CPU generator, as float32."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn([1, UPSTREAM_MEL_BINS, frames], generator=gen, dtype=torch.float32).numpy()


def _section(d: Any, key: str) -> dict:
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, dict):
        raise SourceError(f"cosyvoice3.yaml: section '{key}' is missing or not a mapping")
    return v


def _get(d: dict, key: str, where: str, default: Any = _REQUIRED) -> Any:
    """A yaml value, or upstream's constructor default when the key is absent."""
    if key not in d:
        if default is _REQUIRED:
            raise SourceError(f"cosyvoice3.yaml: {where}.{key} is missing")
        return default
    return d[key]


def _int(d: dict, key: str, where: str, default: Any = _REQUIRED) -> int:
    v = _get(d, key, where, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise SourceError(f"cosyvoice3.yaml: {where}.{key} = {v!r} is not an integer")
    return v


def _float(d: dict, key: str, where: str) -> float:
    v = _get(d, key, where)
    try:
        return float(v)  # PyYAML's safe loader reads '1e-06'-style floats as strings
    except (TypeError, ValueError):
        raise SourceError(f"cosyvoice3.yaml: {where}.{key} = {v!r} is not a number") from None


def _hyperparams(y: dict, yflow: dict) -> dict:
    # Defaults are those of upstream's constructors (CausalMaskedDiffWithDiT, PreLookaheadLayer, CFM).
    dec = _section(yflow, "decoder")
    cfm = _section(dec, "cfm_params")
    cfm = cfm.get("content", cfm)  # `!new:omegaconf.DictConfig {content: {...}}` with the tag dropped
    pla = _section(yflow, "pre_lookahead_layer")
    where_cfm = "flow.decoder.cfm_params"
    hp = {
        "vocab_size": _int(yflow, "vocab_size", "flow", 4096),
        "input_size": _int(yflow, "input_size", "flow", 512),
        "mel_bins": _int(yflow, "output_size", "flow", 80),
        "spk_embed_dim": _int(yflow, "spk_embed_dim", "flow", 192),
        "token_mel_ratio": _int(yflow, "token_mel_ratio", "flow", 2),
        "pre_lookahead_len": _int(yflow, "pre_lookahead_len", "flow", 3),
        "pre_lookahead_channels": _int(pla, "channels", "flow.pre_lookahead_layer"),
        "inference_cfg_rate": _float(cfm, "inference_cfg_rate", where_cfm),
        "t_scheduler": str(_get(cfm, "t_scheduler", where_cfm)),
        "spk_emb_dim": _int(dec, "spk_emb_dim", "flow.decoder", 64),
        "estimator": _section(dec, "estimator"),
    }
    if hp["mel_bins"] != UPSTREAM_MEL_BINS or hp["input_size"] != hp["mel_bins"]:
        raise SourceError(
            f"cosyvoice3.yaml: flow input_size {hp['input_size']} / output_size {hp['mel_bins']}; "
            f"CosyVoice3's flow uses {UPSTREAM_MEL_BINS} mel bins for both"
        )
    pl = _int(pla, "pre_lookahead_len", "flow.pre_lookahead_layer", 1)
    if pl != hp["pre_lookahead_len"]:
        raise SourceError(f"cosyvoice3.yaml: flow.pre_lookahead_len {hp['pre_lookahead_len']} != "
                          f"flow.pre_lookahead_layer.pre_lookahead_len {pl}")
    hp["prompt_mel"] = _prompt_mel_params(y, hp["mel_bins"])
    return hp


def _prompt_mel_params(y: dict, mel_bins: int) -> dict:
    """``feat_extractor`` (matcha mel_spectrogram) arguments, named as ``features`` takes them."""
    fe = _section(y, "feat_extractor")
    if fe.get("center", False):
        raise SourceError("cosyvoice3.yaml: feat_extractor.center is true; only center=False is supported")
    pm: dict[str, Any] = {}
    for k in ("sampling_rate", "n_fft", "num_mels", "hop_size", "win_size"):
        pm[k] = _int(fe, k, "feat_extractor")
    pm["fmin"] = _float(fe, "fmin", "feat_extractor")
    pm["fmax"] = None if fe.get("fmax") is None else _float(fe, "fmax", "feat_extractor")
    pm["sample_rate"] = pm.pop("sampling_rate")
    if pm["num_mels"] != mel_bins:
        raise SourceError(
            f"cosyvoice3.yaml: feat_extractor.num_mels is {pm['num_mels']}, the flow has {mel_bins} mel bins"
        )
    return pm


def _load_state_dict(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise SourceError(f"{path} is missing (the flow checkpoint)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # RuntimeError, UnpicklingError, EOFError, ... depending on how the file is broken
        raise SourceError(f"{path} is corrupt or not a torch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SourceError(f"{path} is not a state dict of tensors (CausalMaskedDiffWithDiT.state_dict())")
    return sd


def _tensor(sd: dict, key: str) -> np.ndarray:
    if key not in sd:
        raise SourceError(f"{FLOW_PT} has no tensor {key!r}; is this a CosyVoice3 flow checkpoint?")
    a = sd[key].detach().float().contiguous().numpy()
    if not np.isfinite(a).all():
        raise SourceError(f"{FLOW_PT}: tensor {key!r} has non-finite values")
    return a


def _expect(name: str, shape: tuple, want: tuple) -> None:
    if tuple(shape) != tuple(want):
        raise SourceError(f"{FLOW_PT}: {name} has shape {tuple(shape)}, the yaml implies {tuple(want)}")


def _check_frontend_shapes(a: dict[str, np.ndarray], hp: dict) -> None:
    mel, ch, k1 = hp["mel_bins"], hp["pre_lookahead_channels"], hp["pre_lookahead_len"] + 1
    want = {
        "input_embedding": (hp["vocab_size"], mel),
        "spk_affine_weight": (hp["spk_emb_dim"], hp["spk_embed_dim"]),
        "spk_affine_bias": (hp["spk_emb_dim"],),
        "pre_lookahead_conv1_weight": (ch, mel, k1),
        "pre_lookahead_conv1_bias": (ch,),
        "pre_lookahead_conv2_weight": (mel, ch, 3),
        "pre_lookahead_conv2_bias": (mel,),
    }
    for k, shape in want.items():
        _expect(FRONTEND_KEYS[k], a[k].shape, shape)


def _dit_dims(sd: dict, hp: dict) -> dict:
    """DiT hyperparameters (yaml, else upstream DiT defaults), checked against the estimator tensors."""
    est, where = hp["estimator"], "flow.decoder.estimator"
    dims = {"dim": _int(est, "dim", where)}
    for k, default in (("depth", 8), ("heads", 8), ("dim_head", 64), ("ff_mult", 4), ("mel_dim", 80)):
        dims[k] = _int(est, k, where, default)
    for k, default in (("mu_dim", dims["mel_dim"]), ("spk_dim", 0), ("out_channels", dims["mel_dim"])):
        dims[k] = _int(est, k, where, default) if est.get(k) is not None else default
    dims["static_chunk_size"] = _int(est, "static_chunk_size", where, 50)
    dims["num_decoding_left_chunks"] = _int(est, "num_decoding_left_chunks", where, 2)
    mel, spk = hp["mel_bins"], hp["spk_emb_dim"]
    if (dims["mel_dim"], dims["mu_dim"], dims["spk_dim"]) != (mel, mel, spk):
        raise SourceError(
            f"cosyvoice3.yaml: estimator mel_dim/mu_dim/spk_dim = {dims['mel_dim']}/{dims['mu_dim']}/"
            f"{dims['spk_dim']}, the flow needs {mel}/{mel}/{spk}"
        )
    d, inner = dims["dim"], dims["heads"] * dims["dim_head"]

    def check(key: str, want: tuple) -> None:
        if _EST + key not in sd:
            raise SourceError(f"{FLOW_PT} has no tensor {_EST + key!r}; is this a CosyVoice3 (DiT) flow?")
        _expect(_EST + key, sd[_EST + key].shape, want)

    check("input_embed.proj.weight", (d, 2 * mel + dims["mu_dim"] + dims["spk_dim"]))
    check("proj_out.weight", (mel, d))
    check("rotary_embed.inv_freq", (dims["dim_head"] // 2,))
    blocks = {k.split(".")[3] for k in sd if k.startswith(_EST + "transformer_blocks.")}
    if len(blocks) != dims["depth"]:
        raise SourceError(f"{FLOW_PT} has {len(blocks)} DiT blocks, the yaml says depth {dims['depth']}")
    for i in range(dims["depth"]):
        b = f"transformer_blocks.{i}."
        check(b + "attn_norm.linear.weight", (6 * d, d))
        check(b + "attn.to_q.weight", (inner, d))
        check(b + "ff.ff.0.0.weight", (d * dims["ff_mult"], d))
    return dims


def check_estimator_onnx(
    path: Path, *, mel_bins: int, spk_dim: int, state_dict: dict | None = None, frames: int = 12
) -> None:
    """Refuse an estimator ONNX that is missing, malformed, from another checkpoint or numerically broken."""
    import onnx
    import onnxruntime as ort

    path = Path(path)
    name = path.name
    if not path.is_file():
        raise SourceError(f"{path} is missing (the flow DiT estimator ONNX)")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise SourceError(f"{name} is not a readable ONNX model ({type(e).__name__}: {e})") from e
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise SourceError(f"{name} keeps its weights in external data files; expected a single-file ONNX")
    if state_dict is not None:
        _check_onnx_weights(name, model, state_dict)
    del model

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise SourceError(f"{name}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from e
    names = [i.name for i in sess.get_inputs()]
    if sorted(names) != sorted(ESTIMATOR_INPUTS):
        raise SourceError(f"{name} has inputs {names}, the flow DiT estimator has {list(ESTIMATOR_INPUTS)}")
    outs = sess.get_outputs()
    if len(outs) != 1 or len(outs[0].shape) != 3:
        raise SourceError(
            f"{name} must have one rank-3 output (2, {mel_bins}, T), not {[(o.name, o.shape) for o in outs]}"
        )
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((2, mel_bins, frames), dtype=np.float32),
        "mask": np.ones((2, 1, frames), np.float32),
        "mu": rng.standard_normal((2, mel_bins, frames), dtype=np.float32),
        "t": np.array([0.5, 0.5], np.float32),
        "spks": rng.standard_normal((2, spk_dim), dtype=np.float32),
        "cond": rng.standard_normal((2, mel_bins, frames), dtype=np.float32),
    }
    try:
        out = sess.run(None, feeds)[0]
    except Exception as e:
        raise SourceError(
            f"{name} fails on x (2, {mel_bins}, {frames}), spks (2, {spk_dim}): {type(e).__name__}: {e}"
        ) from e
    if out.shape != (2, mel_bins, frames):
        raise SourceError(f"{name} returned shape {out.shape}, expected (2, {mel_bins}, {frames})")
    if not np.isfinite(out).all():
        raise SourceError(f"{name} returned non-finite values on random inputs")
    if state_dict is not None:
        _check_against_torch_dit(name, out, feeds, state_dict)


def _check_against_torch_dit(name: str, out: np.ndarray, feeds: dict, sd: dict) -> None:
    """The ONNX must compute what flow.pt's estimator computes (our torch DiT matches upstream exactly)."""
    import torch

    from pipeline.engines.cosyvoice3.convert.dit_torch import load_dit

    with torch.no_grad():
        ref = load_dit(sd)(**{k: torch.from_numpy(v) for k, v in feeds.items()}).numpy()
    err = float(np.max(np.abs(out - ref)))
    if err > 1e-3 * max(1.0, float(np.max(np.abs(ref)))):
        raise SourceError(f"{name} does not compute {FLOW_PT}'s estimator (max abs diff {err:.3g} on random "
                          "inputs); the ONNX belongs to another checkpoint")


def _check_onnx_weights(name: str, model: Any, sd: dict) -> None:
    """Initializers that kept their PyTorch names must equal flow.pt's (same checkpoint, not another one)."""
    from onnx import numpy_helper

    matched = 0
    for init in model.graph.initializer:
        key = _EST + init.name
        if key not in sd:
            continue
        ref = sd[key].float().numpy()
        val = numpy_helper.to_array(init)
        if val.shape != ref.shape:
            raise SourceError(
                f"{name}: weight {init.name} has shape {val.shape}, {FLOW_PT} has {ref.shape}; "
                "the ONNX belongs to another model"
            )
        diff = float(np.max(np.abs(val.astype(np.float32) - ref))) if ref.size else 0.0
        if diff > 1e-6 * max(1.0, float(np.max(np.abs(ref)))):
            raise SourceError(
                f"{name}: weight {init.name} differs from {FLOW_PT} (max abs diff {diff:.3g}); "
                "the ONNX was exported from another checkpoint"
            )
        matched += 1
    # matched == 0 is not an error by itself: the numeric check against the torch DiT decides.
