"""HiFT vocoder runtime (upstream ``CausalHiFTGenerator.inference``): numpy + ONNX Runtime, no torch.

mel → f0 (numpy float64 convs, as upstream runs its f0 predictor in float64) → source (SineGen2 in
float32, fixed uniform noise table) → STFT (numpy) → decode network (ONNX, conv_pre … conv_post) →
exp/sin → iSTFT (numpy) → clamp. Every dimension comes from the bundle manifest's ``hift`` section.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import BackendError, BundleError, InputError
from pipeline.shared.onnx import ort_session

# conv0 of the f0 predictor is 'right'-padded (look-ahead), the other four 'left'.
_N_F0_CONVS = 5
_PARAMS = ("sample_rate", "samples_per_frame", "n_fft", "hop_len", "nb_harmonics", "nsf_alpha", "nsf_sigma",
           "voiced_threshold", "audio_limit", "conv_pre_look_right")


def causal_padding(kernel_size: int, dilation: int = 1) -> int:
    """Upstream ``CausalConv1d.causal_padding``."""
    return int((kernel_size * dilation - dilation) / 2) * 2 + (kernel_size + 1) % 2


def hann_window(n: int) -> np.ndarray:
    """Periodic hann (scipy ``get_window('hann', n, fftbins=True)``), float32."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(x: np.ndarray, n_fft: int, hop: int, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``torch.stft(center=True, pad_mode='reflect', onesided)``: (real, imag), each (n_fft//2+1, F)."""
    x = np.asarray(x, np.float32)
    pad = n_fft // 2
    xp = np.pad(x, (pad, pad), mode="reflect")
    n_frames = 1 + (xp.shape[0] - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(xp, n_fft)[::hop][:n_frames]
    spec = np.fft.rfft(frames.astype(np.float64) * window.astype(np.float64), axis=-1)
    return spec.real.T.astype(np.float32), spec.imag.T.astype(np.float32)


def istft(real: np.ndarray, imag: np.ndarray, n_fft: int, hop: int, window: np.ndarray) -> np.ndarray:
    """``torch.istft(center=True)`` of (n_fft//2+1, F) spectra: irfft, window, overlap-add, divide by
    the summed squared window of the frames present, drop n_fft//2 samples each side → hop·(F−1)."""
    spec = np.asarray(real, np.float64) + 1j * np.asarray(imag, np.float64)
    frames = np.fft.irfft(spec.T, n=n_fft, axis=-1)  # (F, n_fft); DC/Nyquist imag parts ignored
    n_frames = frames.shape[0]
    w = window.astype(np.float64)
    frames *= w
    total = n_fft + hop * (n_frames - 1)
    y = np.zeros(total)
    env = np.zeros(total)
    for k in range(n_fft):
        y[k : k + hop * n_frames : hop] += frames[:, k]
        env[k : k + hop * n_frames : hop] += w[k] * w[k]
    pad = n_fft // 2
    y, env = y[pad : total - pad], env[pad : total - pad]
    if env.size and env.min() < 1e-11:
        raise ValueError("istft: window overlap-add is zero somewhere (NOLA violated)")
    return (y / env).astype(np.float32)


def _conv1d_f64(x: np.ndarray, w: np.ndarray, b: np.ndarray, left: int, right: int) -> np.ndarray:
    """(C_in, T) float64 conv, stride 1, zero pads (left, right)."""
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (left, right)))
    t_out = xp.shape[1] - k + 1
    y = np.empty((w.shape[0], t_out))
    y[:] = b[:, None]
    for j in range(k):
        y += w[:, :, j] @ xp[:, j : j + t_out]
    return y


def _elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


class HiFT:
    """CosyVoice3 causal HiFT. ``hift(mel (80, T)) -> (samples_per_frame·T,) float32`` at ``sample_rate``."""

    backend = "onnxruntime-cpu"

    def __init__(self, params: dict[str, Any], f0_weights: dict[str, np.ndarray], session: Any,
                 noise: np.ndarray) -> None:
        self.params = params
        self.sample_rate = int(params["sample_rate"])
        self.samples_per_frame = int(params["samples_per_frame"])
        self.n_fft = int(params["n_fft"])
        self.hop = int(params["hop_len"])
        self.n_harmonics = int(params["nb_harmonics"]) + 1
        self.nsf_alpha = float(params["nsf_alpha"])
        self.nsf_sigma = float(params["nsf_sigma"])
        self.voiced_threshold = float(params["voiced_threshold"])
        self.audio_limit = float(params["audio_limit"])
        self.conv_pre_look_right = int(params["conv_pre_look_right"])
        self.window = hann_window(self.n_fft)
        self._f0w = f0_weights
        self.f0_look_ahead = causal_padding(f0_weights["conv0_weight"].shape[2])
        self._session = session
        self.noise = self._as_table(noise)
        self.n_threads: int | None = None  # ONNX Runtime intra-op threads, when known

    @classmethod
    def from_bundle(cls, bundle: Bundle, n_threads: int | None = None) -> HiFT:
        sec = bundle.manifest.get("hift")
        if not isinstance(sec, dict):
            raise BundleError(f"bundle {bundle.root}: manifest has no 'hift' section")
        try:
            f0_path, onnx_path, noise_path = (bundle.path(sec[k]) for k in ("f0", "decoder_onnx", "noise"))
        except KeyError as e:
            raise BundleError(f"bundle {bundle.root}: manifest 'hift' lacks {e}; convert again") from e
        try:
            with np.load(f0_path) as z:
                f0w = {k: z[k] for k in z.files}
            with np.load(noise_path) as z:
                noise = z["sine_waves"]
        except (OSError, ValueError, KeyError) as e:
            raise BundleError(f"bundle {bundle.root}: cannot read HiFT arrays ({e}); convert again") from e
        need = [f"conv{i}_{p}" for i in range(_N_F0_CONVS) for p in ("weight", "bias")]
        need += ["classifier_weight", "classifier_bias", "source_linear_weight", "source_linear_bias"]
        missing = [k for k in need if k not in f0w]
        if missing:
            raise BundleError(f"{f0_path} lacks {', '.join(missing)}; convert again")
        missing = [k for k in _PARAMS if k not in sec]
        if missing:
            raise BundleError(f"bundle {bundle.root}: manifest 'hift' lacks {', '.join(missing)}; convert again")
        if noise.ndim != 3 or noise.shape[0] != 1 or noise.shape[2] != int(sec["nb_harmonics"]) + 1:
            raise BundleError(f"{noise_path}: sine_waves has shape {noise.shape}; convert again")
        from pipeline.shared.llama import default_threads

        n_threads = int(n_threads or default_threads())
        h = cls(sec, f0w, ort_session(onnx_path, n_threads, "HiFT decoder"), noise)
        h.n_threads = n_threads
        return h

    @property
    def noise_samples(self) -> int:
        """Length of the fixed source-noise table: the longest audio this vocoder can produce."""
        return int(self.noise.shape[0])

    def _as_table(self, noise: np.ndarray) -> np.ndarray:
        t = np.asarray(noise, np.float32)
        if t.ndim == 3 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 2 or t.shape[1] != self.n_harmonics:
            raise InputError(f"HiFT noise table must be (N, {self.n_harmonics}), got {np.shape(noise)}")
        return t

    @staticmethod
    def _mel(mel: np.ndarray) -> np.ndarray:
        m = np.asarray(mel, np.float32)
        if m.ndim == 3 and m.shape[0] == 1:
            m = m[0]
        if m.ndim != 2:
            raise InputError(f"mel must be (80, T), got shape {np.shape(mel)}")
        return m

    # -- stages ---------------------------------------------------------------------------------------

    def f0(self, mel: np.ndarray, *, finalize: bool = True) -> np.ndarray:
        """f0 in Hz, float64: (T,) frames, or (T − 3,) with finalize=False (last frames as look-ahead)."""
        x = self._mel(mel).astype(np.float64)
        w = self._f0w
        x = _conv1d_f64(x, w["conv0_weight"], w["conv0_bias"], 0, self.f0_look_ahead if finalize else 0)
        x = _elu(x)
        for i in range(1, _N_F0_CONVS):
            wi = w[f"conv{i}_weight"]
            x = _elu(_conv1d_f64(x, wi, w[f"conv{i}_bias"], causal_padding(wi.shape[2]), 0))
        return np.abs(w["classifier_weight"][0] @ x + w["classifier_bias"][0])

    def phase_cumsum(self, f0: np.ndarray, phase0: np.ndarray | None = None) -> np.ndarray:
        """Running phase (frames, harmonics) in float64 cycles: upstream's float32 cumsum of the per-frame
        ``(f0·h / sr) % 1``, which accumulates in double. ``phase0``: the running value before the first frame
        (continuing a stream gives the same sums as one cumsum over everything)."""
        f32 = np.float32
        f0 = np.asarray(f0, f32).reshape(-1)
        harm = np.arange(1, self.n_harmonics + 1, dtype=f32)
        rad = np.mod(f0[:, None] * harm / f32(self.sample_rate), f32(1))
        if phase0 is None:
            return np.cumsum(rad, axis=0, dtype=np.float64)
        return np.cumsum(np.concatenate([np.asarray(phase0, np.float64)[None], rad]), axis=0)[1:]

    def source(self, f0: np.ndarray, noise: np.ndarray | None = None, *, phase: np.ndarray | None = None,
               start_frame: int = 0) -> np.ndarray:
        """SineGen2 + Linear + tanh for float32 frame f0: (samples_per_frame·T,) float32.

        The phase is per frame: upstream's linear ×1/480 downsample reads samples 480k+239 and 480k+240,
        both f0[k]; its float32 cumsum accumulates in double; the ×480 nearest upsample repeats it.
        A stream passes the frames' running ``phase`` (:meth:`phase_cumsum`) and the absolute ``start_frame``
        of ``f0[0]`` (the noise table is indexed from the first sample of the utterance).
        """
        f0 = np.asarray(f0, np.float32).reshape(-1)
        table = self.noise if noise is None else self._as_table(noise)
        spf = self.samples_per_frame
        n = f0.shape[0] * spf
        s0 = start_frame * spf
        if s0 + n > table.shape[0]:
            raise InputError(
                f"audio of {(s0 + n) / self.sample_rate:.1f} s ({start_frame + f0.shape[0]} mel frames) is longer "
                f"than the HiFT noise table ({table.shape[0] / self.sample_rate:.1f} s); synthesise shorter "
                "segments or convert with a longer table"
            )
        f32 = np.float32
        cum = self.phase_cumsum(f0) if phase is None else np.asarray(phase, np.float64)
        phase = cum.astype(f32) * f32(2) * f32(np.pi) * f32(spf)
        sine = np.sin(phase) * f32(self.nsf_alpha)
        uv = (f0 > self.voiced_threshold).astype(f32)
        noise_amp = uv * f32(self.nsf_sigma) + ((f32(1) - uv) * f32(self.nsf_alpha)) / f32(3)
        sw = np.repeat(sine * uv[:, None], spf, axis=0)
        sw += np.repeat(noise_amp, spf)[:, None] * table[s0 : s0 + n]
        lw = self._f0w["source_linear_weight"].astype(f32)
        lb = self._f0w["source_linear_bias"].astype(f32)
        return np.tanh(sw @ lw[0] + lb[0]).astype(f32)

    def stft(self, source: np.ndarray) -> np.ndarray:
        """Source STFT as the decoder takes it: [real; imag], (n_fft + 2, L/hop + 1) float32."""
        re, im = stft(source, self.n_fft, self.hop, self.window)
        return np.concatenate([re, im], axis=0)

    def decoder_net(self, mel: np.ndarray, s_stft: np.ndarray) -> np.ndarray:
        """The ONNX network: conv_pre … conv_post, (n_fft + 2, F) float32."""
        m = self._mel(mel)[None]
        s = np.asarray(s_stft, np.float32)[None]
        try:
            return self._session.run(["conv_post"], {"mel": m, "s_stft": s})[0][0]
        except Exception as e:  # ORT raises its own exception types
            raise BackendError(f"HiFT decoder (ONNX Runtime) failed: {e}") from e

    def decode(self, mel: np.ndarray, source: np.ndarray, *, finalize: bool = True) -> np.ndarray:
        """mel (80, T) + source (samples_per_frame·T,) → audio. finalize=False holds back the frames
        that depend on conv_pre's zero look-ahead padding (upstream's streaming trim)."""
        x = self.decoder_net(mel, self.stft(source))
        nb = self.n_fft // 2 + 1
        if not finalize:
            # Everything after conv_pre is causal, so the first F' frames equal upstream's run on
            # conv_pre with real look-ahead and the trimmed source STFT.
            trim = (self.samples_per_frame // self.hop) * self.conv_pre_look_right
            x = x[:, : x.shape[1] - trim]
        mag = np.minimum(np.exp(x[:nb]), np.float32(100.0))
        phase = np.sin(x[nb:])
        audio = istft(mag * np.cos(phase), mag * np.sin(phase), self.n_fft, self.hop, self.window)
        if not finalize:
            audio = audio[: audio.shape[0] - self.samples_per_frame]
        return np.clip(audio, -self.audio_limit, self.audio_limit).astype(np.float32)

    def __call__(self, mel: np.ndarray, *, finalize: bool = True, noise: np.ndarray | None = None) -> np.ndarray:
        """Waveform for mel (80, T): samples_per_frame·T samples, or ·(T − 8) with finalize=False
        (3 f0 + 4 conv_pre look-ahead frames and one held-back frame, as upstream streaming emits)."""
        m = self._mel(mel)
        hold = self.f0_look_ahead + self.conv_pre_look_right + 1
        if m.shape[1] < (1 if finalize else hold + 1):
            raise InputError(f"HiFT needs at least {1 if finalize else hold + 1} mel frames, got {m.shape[1]}")
        f0 = self.f0(m, finalize=finalize).astype(np.float32)
        s = self.source(f0, noise)
        if not finalize:
            m = m[:, : m.shape[1] - self.f0_look_ahead]
        return self.decode(m, s, finalize=finalize)
