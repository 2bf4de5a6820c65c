"""Decoder stage of the Qwen3-TTS converter: speech tokenizer decoder → ``q3_decoder.onnx`` (spec §9, §13.3).

The graph is the whole of upstream's ``Qwen3TTSTokenizerV2Decoder.forward`` for one chunk: input ``codes``
(1, n_q, T) int64 (each in [0, codebook_size); the runtime clamps), output ``wav`` (T·samples_per_frame,)
float32, already clamped to [-1, 1]. T is dynamic. Chunking (300 frames, 25 of left context) and the ICL cut
stay in numpy (``pipeline/engines/qwen3_tts/decoder.py``).
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.shared.errors import BackendError, SourceError
from pipeline.shared.fsutil import atomic_write_bytes

from .decoder_config import DecoderDims, decoder_dims
from .decoder_stream_torch import StreamStep
from .decoder_torch import SpeechDecoder, build_decoder

DECODER_FILE = "q3_decoder.onnx"
STREAM_FILE = "q3_decoder_stream.onnx"
ONNX_OPSET = 17
CHUNK_FRAMES = 300  # upstream chunked_decode defaults
LEFT_CONTEXT_FRAMES = 25
WEIGHT_PREFIX = "decoder."
CHECK_FRAMES = (3, 11)  # two lengths, so a shape baked in at export time shows up
CHECK_TOL = 1e-3  # waveform max |diff| (fp32 reorderings give ~1e-4 with random weights, spec §9)


class _OnnxDecoder(nn.Module):
    def __init__(self, net: SpeechDecoder) -> None:
        super().__init__()
        self.net = net

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net(codes).reshape(-1)


def read_speech_tokenizer(ckpt_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(``speech_tokenizer/config.json`` as a dict, ``decoder.*`` weights without the prefix, float32).

    ``ckpt_dir`` is the model folder (holding ``speech_tokenizer/``) or the speech tokenizer folder itself."""
    from safetensors import safe_open

    ckpt_dir = Path(ckpt_dir)
    st = ckpt_dir / "speech_tokenizer" if (ckpt_dir / "speech_tokenizer").is_dir() else ckpt_dir
    cfg_path, w_path = st / "config.json", st / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise SourceError(f"{p} is missing (the Qwen3-TTS speech tokenizer)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"{cfg_path} is not readable JSON ({e})") from e
    state: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(w_path), framework="np") as f:
            for k in f.keys():
                if k.startswith(WEIGHT_PREFIX):
                    state[k[len(WEIGHT_PREFIX):]] = np.asarray(f.get_tensor(k), dtype=np.float32)
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise SourceError(f"{w_path} is not a readable safetensors file ({e})") from e
    if not state:
        raise SourceError(f"{w_path} holds no decoder.* tensors")
    return cfg, state


def export_onnx(net: SpeechDecoder) -> bytes:
    """FP32 ONNX of ``net`` for one chunk, dynamic T."""
    d = net.dims
    codes = torch.zeros(1, d.num_quantizers, 5, dtype=torch.int64)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _OnnxDecoder(net).eval(), (codes,), buf, input_names=["codes"], output_names=["wav"],
            dynamic_axes={"codes": {2: "T"}, "wav": {0: "samples"}},
            opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False,
        )
    return buf.getvalue()


def check_onnx(data: bytes | str, net: SpeechDecoder, *, seed: int = 1) -> float:
    """ONNX Runtime against the torch module on random codes of ``CHECK_FRAMES`` lengths; max |diff|.

    The bound is ``CHECK_TOL`` or, when larger, 4× torch's own float32 error against a float64 run of the same
    module (computed only then): random weights can drive the conv stack far past the clamp, where fp32
    roundoff alone reaches 1e-3 (measured 2e-3 at full size before the last conv was rescaled)."""
    import onnxruntime as ort

    d = net.dims
    rng = np.random.RandomState(seed)
    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types
        raise BackendError(f"ONNX Runtime cannot load the exported decoder: {e}") from e
    err, worst = 0.0, None
    for t in CHECK_FRAMES:
        codes = rng.randint(0, d.codebook_size, size=(1, d.num_quantizers, t)).astype(np.int64)
        with torch.no_grad():
            ref = net(torch.from_numpy(codes)).reshape(-1).numpy()
        got = sess.run(["wav"], {"codes": codes})[0]
        if got.shape != ref.shape:
            raise BackendError(f"exported decoder returns {got.shape} for {t} frames, torch gives {ref.shape}")
        e = float(np.max(np.abs(got - ref)))
        if e > err:
            err, worst = e, (codes, ref)
    if err > CHECK_TOL and worst is not None:
        with torch.no_grad():
            ref64 = copy.deepcopy(net).double()(torch.from_numpy(worst[0])).reshape(-1).numpy()
        fp32_err = float(np.max(np.abs(worst[1] - ref64)))
        if not err <= 4 * fp32_err:
            raise BackendError(f"exported decoder differs from torch by {err:.3g} (ONNX Runtime check; torch's "
                               f"own float32 error is {fp32_err:.3g})")
    return err


def export_stream_onnx(net: SpeechDecoder) -> bytes:
    """FP32 ONNX of the stateful step: ``codes`` (1, n_q, k), ``pos0`` (1,) int64, ``state_in_<name>`` →
    ``wav`` (k·spf,), ``state_out_<name>`` (same order and shapes)."""
    step = StreamStep(net).eval()
    names = [n for n, _ in step.state_specs()]
    codes = torch.zeros(1, net.dims.num_quantizers, 3, dtype=torch.int64)
    args = (codes, torch.tensor([5], dtype=torch.int64), *step.initial_states())
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            step, args, buf, input_names=["codes", "pos0"] + [f"state_in_{n}" for n in names],
            output_names=["wav"] + [f"state_out_{n}" for n in names],
            dynamic_axes={"codes": {2: "k"}, "wav": {0: "samples"}},
            opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False,
        )
    return buf.getvalue()


def check_stream_onnx(data: bytes | str, net: SpeechDecoder, *, seed: int = 2) -> float:
    """Frames fed in pieces through the exported step equal the torch module's one call; max |diff|."""
    import onnxruntime as ort

    d = net.dims
    pieces = (2, 1, 6)
    codes = np.random.RandomState(seed).randint(0, d.codebook_size, size=(1, d.num_quantizers, sum(pieces)))
    with torch.no_grad():
        ref = net(torch.from_numpy(codes)).reshape(-1).numpy()
    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        ins = sess.get_inputs()[2:]
        states = [np.zeros(i.shape, np.float32) for i in ins]
        parts, p = [], 0
        for k in pieces:
            feed = {"codes": codes[..., p: p + k], "pos0": np.array([p], np.int64)}
            feed.update({i.name: s for i, s in zip(ins, states, strict=True)})
            wav, *states = sess.run(None, feed)
            parts.append(wav)
            p += k
    except Exception as e:  # ORT raises its own exception types
        raise BackendError(f"ONNX Runtime cannot run the exported streaming decoder: {e}") from e
    err = float(np.max(np.abs(np.concatenate(parts) - ref)))
    if not err <= CHECK_TOL:
        raise BackendError(f"exported streaming decoder differs from torch by {err:.3g} (ONNX Runtime check)")
    return err


def runtime_dims(d: DecoderDims, sample_rate: int) -> dict[str, Any]:
    """What ``CodeDecoder`` needs (the manifest's decoder dims)."""
    return {
        "num_quantizers": d.num_quantizers,
        "codebook_size": d.codebook_size,
        "samples_per_frame": d.samples_per_frame,
        "sample_rate": int(sample_rate),
        "chunk_frames": CHUNK_FRAMES,
        "left_context_frames": LEFT_CONTEXT_FRAMES,
    }


def convert_decoder(ckpt_dir: Path, out_dir: Path, *, one_shot: bool = True, stream: bool = True) -> dict:
    """Speech tokenizer decoder → ``out_dir/q3_decoder.onnx`` (``one_shot``) and/or the stateful step
    ``q3_decoder_stream.onnx`` (``stream``; ~457 MB each at full size). ``CodeDecoder`` runs either, so a
    bundle may ship the stream graph alone. Returns the manifest's decoder section: ``decoder_onnx`` is the file
    for ``CodeDecoder``, ``decoder_stream_onnx`` (when written) the one for ``StatefulStreamDecoder``."""
    if not (one_shot or stream):
        raise ValueError("convert_decoder: nothing to write (one_shot and stream both off)")
    out_dir = Path(out_dir)
    cfg, state = read_speech_tokenizer(Path(ckpt_dir))
    d = decoder_dims(cfg.get("decoder_config"))
    spf = int(cfg.get("decode_upsample_rate", d.samples_per_frame))
    if spf != d.samples_per_frame:
        raise SourceError(f"speech tokenizer: decode_upsample_rate {spf} != product of the decoder's rates "
                          f"{d.samples_per_frame}")
    net = build_decoder(d, state, where="speech_tokenizer/model.safetensors decoder.*")
    graphs: dict[str, bytes] = {}
    files: dict[str, str] = {}
    result: dict[str, Any] = {}
    if one_shot:
        graphs[DECODER_FILE] = export_onnx(net)
        result["onnx_check_max_abs_diff"] = check_onnx(graphs[DECODER_FILE], net)
        files[DECODER_FILE] = "speech tokenizer decoder: codes (1, n_q, T) int64 -> wav (T*spf,) float32"
    if stream:
        graphs[STREAM_FILE] = export_stream_onnx(net)
        result["stream_check_max_abs_diff"] = check_stream_onnx(graphs[STREAM_FILE], net)
        result["decoder_stream_onnx"] = STREAM_FILE
        files[STREAM_FILE] = "stateful decoder step for streaming: codes (1, n_q, k), pos0, states -> wav, states"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in graphs.items():
        atomic_write_bytes(out_dir / name, data)
    return {
        "files": files,
        "decoder_onnx": DECODER_FILE if one_shot else STREAM_FILE,
        **result,
        "dims": runtime_dims(d, int(cfg.get("output_sample_rate", 24000))),
        "decoder_config": d.to_dict(),
    }
