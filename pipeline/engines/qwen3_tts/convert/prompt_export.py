"""Prompt side of the Qwen3-TTS converter (spec §3, §4, §13.4): checkpoint → two ONNX graphs.

- ``q3_prompt_encoder.onnx``: input ``wav`` (1, N) float32 24 kHz mono, N dynamic; outputs ``codes`` (T12, 16)
  int64 (the split RVQ's nearest-centroid argmin runs inside the graph) and ``latent`` (T12, C) float32 (the
  12.5 Hz latent the RVQ quantizes, for checks), T12 = ceil(N / 1920).
- ``q3_speaker_encoder.onnx``: input ``mel`` (1, T, 128) float32 (``speaker_mel.speaker_log_mel``), T dynamic;
  output ``embedding`` (D,) float32, D = talker hidden.

Each graph is run once in ONNX Runtime against its torch module on a synthetic prompt; the differences are
returned in the section's ``checks``.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.shared.errors import BackendError, SourceError
from pipeline.shared.fsutil import atomic_write_bytes

from ..speaker_mel import FMAX, FMIN, HOP, N_FFT, N_MELS, SAMPLE_RATE, speaker_log_mel
from .ecapa import EcapaTdnn
from .mimi_encoder import MimiEncoder
from .prompt_source import (
    CONFIG_FILE,
    SPEECH_TOKENIZER_DIR,
    WEIGHTS_FILE,
    MimiDims,
    SpeakerDims,
    Weights,
    load_tensors,
    mimi_dims,
    read_json,
    speaker_dims,
)

PROMPT_ENCODER_FILE = "q3_prompt_encoder.onnx"
SPEAKER_ENCODER_FILE = "q3_speaker_encoder.onnx"
ONNX_OPSET = 17
CHECK_SECONDS = (2.3, 1.05)  # two lengths, neither a multiple of a frame: the dynamic axis and the padding
TIE_TOLERANCE = 1e-4  # a code may differ from torch's only where torch's two distances are this close (relative)


def build_mimi_encoder(ckpt_dir: Path) -> tuple[MimiEncoder, MimiDims]:
    """The torch encoder with the checkpoint's ``speech_tokenizer`` weights (float32)."""
    tok = Path(ckpt_dir) / SPEECH_TOKENIZER_DIR
    d = mimi_dims(read_json(tok / CONFIG_FILE))
    w = Weights(load_tensors(tok / WEIGHTS_FILE, "encoder."), str(tok / WEIGHTS_FILE))
    w.sd = {f"encoder.{k}": v for k, v in w.sd.items()}
    return MimiEncoder(w, d).eval(), d


def build_speaker_encoder(ckpt_dir: Path) -> tuple[EcapaTdnn, SpeakerDims]:
    """The torch ECAPA-TDNN with the checkpoint's ``speaker_encoder.*`` weights (bf16 upcast to float32)."""
    ckpt_dir = Path(ckpt_dir)
    d = speaker_dims(read_json(ckpt_dir / CONFIG_FILE))
    if d.sample_rate != SAMPLE_RATE or d.mel_dim != N_MELS:
        raise SourceError(f"config.json: speaker encoder at {d.sample_rate} Hz / {d.mel_dim} mels "
                          f"(the mel front end is fixed at {SAMPLE_RATE} Hz / {N_MELS})")
    w = Weights(load_tensors(ckpt_dir / WEIGHTS_FILE, "speaker_encoder."), str(ckpt_dir / WEIGHTS_FILE))
    return EcapaTdnn(w, d).eval(), d


def check_signal(seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A deterministic speech-like test prompt: a gliding harmonic tone with noise, |x| < 1."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = 110.0 + 60.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.3 + 0.2 * np.sin(2 * np.pi * 2.1 * t))
    x = x + 0.02 * np.random.default_rng(7).standard_normal(n)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def min_mel_frames(d: SpeakerDims) -> int:
    """Fewest mel frames every reflect pad accepts (each pad must be shorter than its input)."""
    pads = [dil * (k - 1) - dil * (k - 1) // 2 for k, dil in zip(d.kernels, d.dilations, strict=True)]
    return max(pads) + 1


def _export(net: torch.nn.Module, args: tuple, names_in: list[str], names_out: list[str],
            axes: dict[str, dict[int, str]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, buf, input_names=names_in, output_names=names_out, dynamic_axes=axes,
                          opset_version=ONNX_OPSET, do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def _session(data: bytes) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types
        raise BackendError(f"ONNX Runtime cannot load the exported graph: {e}") from e


def export_prompt_encoder(net: MimiEncoder) -> bytes:
    wav = torch.from_numpy(check_signal(0.5, net.dims.sample_rate))[None]
    return _export(net, (wav,), ["wav"], ["codes", "latent"],
                   {"wav": {1: "N"}, "codes": {0: "T12"}, "latent": {0: "T12"}})


def export_speaker_encoder(net: EcapaTdnn) -> bytes:
    mel = torch.from_numpy(speaker_log_mel(check_signal(0.5)))[None]
    return _export(net, (mel,), ["mel"], ["embedding"], {"mel": {1: "T"}})


def code_tie_flips(net: MimiEncoder, latent: torch.Tensor, ref: np.ndarray, got: np.ndarray) -> int:
    """Frames whose codes differ; raises unless each first difference is a near-tie in torch's distances."""
    bad = np.nonzero((ref != got).any(axis=1))[0]
    rvq = net.rvq
    for t in bad:
        q = int(np.nonzero(ref[t] != got[t])[0][0])
        semantic = q < rvq.n_sem
        proj = rvq.sem_proj if semantic else rvq.ac_proj
        x = latent[t:t + 1] if proj is None else latent[t:t + 1] @ proj
        for j in range(0 if semantic else rvq.n_sem, q):  # the chain up to q, on torch's own codes
            x = x - rvq.centroid(j, torch.tensor([int(ref[t, j])]))
        dist = rvq.nearest_dist(x, rvq.book(q))[0]
        a, b = float(dist[int(ref[t, q])]), float(dist[int(got[t, q])])
        if abs(a - b) > TIE_TOLERANCE * max(1.0, a):
            raise BackendError(f"exported prompt encoder: frame {t} codebook {q} picks {got[t, q]}, torch "
                               f"{ref[t, q]} (distances {b:.6g} vs {a:.6g}, not a tie)")
    return int(bad.size)


def check_prompt_encoder(data: bytes, net: MimiEncoder) -> dict:
    """ORT vs torch at two prompt lengths: latent max |diff| and code agreement (exact except float ties)."""
    sess = _session(data)
    worst, flips, frames = 0.0, 0, 0
    for sec in CHECK_SECONDS:
        wav = check_signal(sec, net.dims.sample_rate)[None]
        with torch.no_grad():
            codes_ref, latent_ref = net(torch.from_numpy(wav))
        codes, latent = sess.run(["codes", "latent"], {"wav": wav})
        t12 = math.ceil(wav.shape[1] / net.dims.samples_per_frame)
        if codes.shape != (t12, net.dims.valid_quantizers) or codes.dtype != np.int64:
            raise BackendError(f"exported prompt encoder returns codes {codes.shape} {codes.dtype}, "
                               f"expected ({t12}, {net.dims.valid_quantizers}) int64")
        err = float(np.max(np.abs(latent - latent_ref.numpy())))
        if not err <= 1e-4 * max(1.0, float(np.max(np.abs(latent_ref.numpy())))):
            raise BackendError(f"exported prompt encoder's latent differs from torch by {err:.3g}")
        worst = max(worst, err)
        flips += code_tie_flips(net, latent_ref, codes_ref.numpy(), codes)
        frames += t12
    return {"latent_max_abs_diff": worst, "code_frames_checked": frames, "code_frames_tie_flipped": flips}


def check_speaker_encoder(data: bytes, net: EcapaTdnn) -> dict:
    sess = _session(data)
    worst = 0.0
    for sec in CHECK_SECONDS:
        mel = speaker_log_mel(check_signal(sec))[None]
        with torch.no_grad():
            ref = net(torch.from_numpy(mel)).numpy()
        got = sess.run(["embedding"], {"mel": mel})[0]
        if got.shape != ref.shape:
            raise BackendError(f"exported speaker encoder returns {got.shape}, torch gives {ref.shape}")
        err = float(np.max(np.abs(got - ref)))
        if not err <= 1e-4 * max(1.0, float(np.max(np.abs(ref)))):
            raise BackendError(f"exported speaker encoder differs from torch by {err:.3g}")
        worst = max(worst, err)
    return {"embedding_max_abs_diff": worst}


def convert_prompt_side(ckpt_dir: Path, out_dir: Path) -> dict:
    """Write both prompt-side graphs into ``out_dir``; returns the manifest section (files, dims, checks)."""
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    enc, md = build_mimi_encoder(ckpt_dir)
    spk, sd = build_speaker_encoder(ckpt_dir)
    enc_bytes = export_prompt_encoder(enc)
    enc_checks = check_prompt_encoder(enc_bytes, enc)
    spk_bytes = export_speaker_encoder(spk)
    spk_checks = check_speaker_encoder(spk_bytes, spk)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / PROMPT_ENCODER_FILE, enc_bytes)
    atomic_write_bytes(out_dir / SPEAKER_ENCODER_FILE, spk_bytes)
    return {
        "files": {
            PROMPT_ENCODER_FILE: "speech tokenizer encoder: wav (1, N) 24 kHz -> codes (T12, 16) int64",
            SPEAKER_ENCODER_FILE: "ECAPA-TDNN: log-mel (1, T, 128) -> speaker embedding (D,)",
        },
        "prompt_encoder": PROMPT_ENCODER_FILE,
        "speaker_encoder": SPEAKER_ENCODER_FILE,
        "dims": {
            "sample_rate": md.sample_rate,
            "samples_per_frame": md.samples_per_frame,
            "num_codebooks": md.valid_quantizers,
            "codebook_size": md.codebook_size,
            "speaker_dim": sd.enc_dim,
            "mel": {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP, "n_mels": sd.mel_dim,
                    "fmin": FMIN, "fmax": FMAX},
            "min_mel_frames": min_mel_frames(sd),
        },
        "checks": {**enc_checks, **spk_checks},
    }
