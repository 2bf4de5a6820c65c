"""Flow stage: speech tokens + prompt → mel (upstream ``CausalMaskedDiffWithDiT.inference``, non-streaming).

numpy does the frontend (token embedding, pre-lookahead convs, speaker affine) and the CFM Euler solver;
the DiT estimator is a backend behind the narrow :class:`Estimator` interface (ONNX Runtime CPU here).
Arithmetic follows upstream's float32 order so results track PyTorch to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.shared.errors import BackendError, BundleError, Cancelled, InputError

ESTIMATOR_INPUTS = ("x", "mask", "mu", "t", "spks", "cond")
_F32 = np.float32


class Estimator(Protocol):
    """DiT velocity estimator, CFG batch of 2: x, mu, cond (2, M, T); mask (2, 1, T); t (2,); spks (2, S)."""

    name: str

    def __call__(
        self, x: np.ndarray, mask: np.ndarray, mu: np.ndarray, t: np.ndarray, spks: np.ndarray,
        cond: np.ndarray,
    ) -> np.ndarray: ...


class OrtEstimator:
    """The exported estimator ONNX on ONNX Runtime's CPU provider (``variant``: fp32, or int8 for the fast mode)."""

    name = backend = "onnxruntime-cpu"

    def __init__(self, path: Path | str, *, n_threads: int | None = None, variant: str = "fp32",
                 lazy: bool = False) -> None:
        """``lazy``: create the ONNX Runtime session on first use (a streaming-only process never holds this
        graph's prepacked weights beside the streaming graph's)."""
        import threading

        from pipeline.shared.llama import default_threads

        self.path = Path(path)
        self.variant = variant
        self.n_threads = int(n_threads or default_threads())
        self._session = None
        self._lock = threading.Lock()
        if not lazy:
            self._load()

    @property
    def session(self):
        if self._session is None:
            with self._lock:
                if self._session is None:
                    self._load()
        return self._session

    def _load(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = self.n_threads
        opts.inter_op_num_threads = 1
        try:
            session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BackendError(f"ONNX Runtime cannot load the flow estimator {self.path}: {e}") from e
        names = [i.name for i in session.get_inputs()]
        if sorted(names) != sorted(ESTIMATOR_INPUTS):
            raise BundleError(
                f"{self.path.name} has inputs {names}, the flow estimator has {list(ESTIMATOR_INPUTS)}"
            )
        self._out = session.get_outputs()[0].name
        self._session = session

    def __call__(
        self, x: np.ndarray, mask: np.ndarray, mu: np.ndarray, t: np.ndarray, spks: np.ndarray,
        cond: np.ndarray,
    ) -> np.ndarray:
        feeds = dict(zip(ESTIMATOR_INPUTS, (x, mask, mu, t, spks, cond), strict=True))
        feeds = {k: np.ascontiguousarray(v, dtype=_F32) for k, v in feeds.items()}
        try:
            return self.session.run([self._out], feeds)[0]
        except Exception as e:
            raise BackendError(f"flow estimator ({self.name}) failed on {x.shape[-1]} frames: {e}") from e


class FlowFrontend:
    """Speaker projection and token encoder (embedding → PreLookaheadLayer → repeat ×ratio), in numpy."""

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        *,
        token_mel_ratio: int,
        pre_lookahead_len: int,
    ) -> None:
        self.embedding = np.asarray(arrays["input_embedding"], _F32)
        self.spk_w = np.asarray(arrays["spk_affine_weight"], _F32)
        self.spk_b = np.asarray(arrays["spk_affine_bias"], _F32)
        self.conv1_w = np.asarray(arrays["pre_lookahead_conv1_weight"], _F32)
        self.conv1_b = np.asarray(arrays["pre_lookahead_conv1_bias"], _F32)
        self.conv2_w = np.asarray(arrays["pre_lookahead_conv2_weight"], _F32)
        self.conv2_b = np.asarray(arrays["pre_lookahead_conv2_bias"], _F32)
        self.token_mel_ratio = int(token_mel_ratio)
        self.pre_lookahead_len = int(pre_lookahead_len)
        self.vocab_size, self.mel_bins = self.embedding.shape
        self.spk_embed_dim = self.spk_w.shape[1]

    @classmethod
    def load(cls, path: Path | str, *, token_mel_ratio: int, pre_lookahead_len: int) -> FlowFrontend:
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise BundleError(f"flow frontend {path} is unreadable ({e}); convert again") from e
        try:
            return cls(arrays, token_mel_ratio=token_mel_ratio, pre_lookahead_len=pre_lookahead_len)
        except KeyError as e:
            raise BundleError(f"flow frontend {path} lacks array {e}; convert again") from e

    def speaker(self, embedding: np.ndarray) -> np.ndarray:
        """``Linear(F.normalize(embedding))``: (spk_embed_dim,) → (mel_bins,)."""
        e = np.asarray(embedding, _F32).reshape(1, -1)
        if e.shape[1] != self.spk_embed_dim:
            raise InputError(f"speaker embedding has {e.shape[1]} values, expected {self.spk_embed_dim}")
        if not np.isfinite(e).all():
            raise InputError("speaker embedding has non-finite values")
        norm = np.sqrt(np.sum(e * e, axis=1, keepdims=True, dtype=_F32))
        e = e / np.maximum(norm, _F32(1e-12))
        return (e @ self.spk_w.T + self.spk_b)[0]

    def pre_lookahead(self, emb: np.ndarray) -> np.ndarray:
        """PreLookaheadLayer with finalize=True on time-major (L, C) input; returns (L, C)."""
        x = np.concatenate([emb, np.zeros((self.pre_lookahead_len, emb.shape[1]), _F32)])
        y = _conv1d_valid(x, self.conv1_w, self.conv1_b)
        y = np.where(y > 0, y, y * _F32(0.01))
        k2 = self.conv2_w.shape[2]
        y = np.concatenate([np.zeros((k2 - 1, y.shape[1]), _F32), y])
        return _conv1d_valid(y, self.conv2_w, self.conv2_b) + emb

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """All tokens (prompt + generated) → mu (mel_bins, ratio·L)."""
        emb = self.embedding[np.maximum(tokens, 0)]
        h = self.pre_lookahead(emb)
        h = np.repeat(h, self.token_mel_ratio, axis=0)
        return np.ascontiguousarray(h.T)

    def encode_range(self, tokens: np.ndarray, start: int, end: int, *, finalize: bool) -> np.ndarray:
        """mu (mel_bins, ratio·(end − start)) of tokens ``[start, end)`` of the sequence ``tokens`` (prompt +
        generated so far), equal to the same frames of :meth:`encode` on the whole sequence. The pre-lookahead
        conv reads ``pre_lookahead_len`` tokens past ``end``: they must exist unless ``finalize`` (then the
        sequence ends here and is zero-padded, as upstream's final call)."""
        la = self.pre_lookahead_len
        k2 = self.conv2_w.shape[2]
        n = len(tokens)
        if not finalize and end + la > n:
            raise InputError(f"tokens {start}..{end} need {la} look-ahead tokens, only {n - end} exist")
        lo = max(0, start - (k2 - 1))
        hi = min(n, end + la)
        emb = self.embedding[np.maximum(np.asarray(tokens[lo:hi]), 0)]
        x = np.concatenate([emb, np.zeros((end + la - hi, emb.shape[1]), _F32)])
        y = _conv1d_valid(x, self.conv1_w, self.conv1_b)  # conv1 outputs for tokens lo..end-1
        y = np.where(y > 0, y, y * _F32(0.01))
        y = np.concatenate([np.zeros((k2 - 1 - (start - lo), y.shape[1]), _F32), y])
        h = _conv1d_valid(y, self.conv2_w, self.conv2_b) + emb[start - lo : end - lo]
        return np.ascontiguousarray(np.repeat(h, self.token_mel_ratio, axis=0).T)


def _conv1d_valid(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Conv1d without padding on time-major x (L, Cin); w (Cout, Cin, K) → (L−K+1, Cout)."""
    k = w.shape[2]
    n = x.shape[0] - k + 1
    cols = np.stack([x[i : i + n] for i in range(k)], axis=2)  # (n, Cin, K)
    return cols.reshape(n, -1) @ w.reshape(w.shape[0], -1).T + b


def euler(
    x: np.ndarray, ts: np.ndarray, cfg_rate: float,
    velocity: Callable[[int, np.ndarray, np.ndarray], np.ndarray], *,
    on_step: Callable[[int, int], None] | None = None, should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Upstream ``solve_euler`` with classifier-free guidance, in its float32 op order.

    ``velocity(step, x, t)`` returns the estimator output (2, M, T) for the CFG pair (row 0 conditional,
    row 1 unconditional) at 1-based ``step``; ``x`` is the state before the step, ``t`` (1,) its time."""
    # Upstream scales by python floats, i.e. by their float32 roundings.
    a, r = _F32(1.0 + cfg_rate), _F32(cfg_rate)
    t, dt = ts[0:1].copy(), ts[1] - ts[0]
    n_steps = len(ts) - 1
    for step in range(1, n_steps + 1):
        if should_stop is not None and should_stop():
            raise Cancelled(f"flow stopped before step {step} of {n_steps}")
        out = velocity(step, x, t)
        v = a * out[0] - r * out[1]
        x = x + dt * v
        t = t + dt
        if step < n_steps:
            dt = ts[step + 1] - t
        if on_step is not None:
            on_step(step, n_steps)
    return x


def t_span(n_timesteps: int, scheduler: str = "cosine") -> np.ndarray:
    """The solver's time grid as upstream builds it in float32 (``torch.linspace``, then the cosine map)."""
    n = int(n_timesteps)
    step = _F32(1.0) / _F32(n)
    idx = np.arange(n + 1)
    # torch.linspace fills the first half as start + step·i and the second half as end − step·(n − i)
    lin = np.where(idx < (n + 1) // 2, step * idx.astype(_F32), _F32(1.0) - step * (n - idx).astype(_F32))
    lin = lin.astype(_F32)
    if scheduler != "cosine":
        return lin
    arg = (lin * _F32(0.5)) * _F32(np.pi)
    # float64 cos rounded to float32 reproduces torch's float32 cos here; numpy's float32 cos is 1 ulp off.
    return (_F32(1.0) - np.cos(arg.astype(np.float64)).astype(_F32)).astype(_F32)


class Flow:
    """Non-streaming flow: tokens → mel (mel_bins, ratio·N); the solver keeps upstream's float32 op order."""

    def __init__(
        self,
        frontend: FlowFrontend,
        estimator: Estimator,
        noise: np.ndarray,
        *,
        n_timesteps: int,
        inference_cfg_rate: float,
        t_scheduler: str,
    ) -> None:
        self.frontend = frontend
        self.estimator = estimator
        self.noise = noise
        self.n_timesteps = int(n_timesteps)
        self.cfg_rate = float(inference_cfg_rate)
        self.t_scheduler = str(t_scheduler)
        self.mel_bins = frontend.mel_bins
        self.token_mel_ratio = frontend.token_mel_ratio
        if noise.ndim != 3 or noise.shape[:2] != (1, self.mel_bins):
            raise BundleError(f"flow noise table has shape {noise.shape}, want (1, {self.mel_bins}, frames)")

    @classmethod
    def from_bundle(
        cls, bundle: Any, estimator: Estimator | None = None, n_threads: int | None = None, *,
        fast: bool = False, n_timesteps: int | None = None, log: Callable[[str], None] | None = None,
    ) -> Flow:
        """The bundle's flow. ``fast`` runs the INT8 estimator (the bundle's, or one built once into the
        cache, see :func:`int8_estimator_path`); ``n_timesteps`` overrides the bundle's Euler step count
        (upstream: 10). Both change the mel: they are the opt-in fast mode, not full fidelity."""
        sec = bundle.manifest["flow"]
        try:
            frontend = FlowFrontend.load(
                bundle.path(sec["frontend"]),
                token_mel_ratio=sec["token_mel_ratio"],
                pre_lookahead_len=sec["pre_lookahead_len"],
            )
            noise_path = bundle.path(sec["noise"])
            if estimator is None and fast:
                estimator = OrtEstimator(int8_estimator_path(bundle, log=log), n_threads=n_threads, variant="int8")
            elif estimator is None:
                estimator = ort_estimator(bundle, n_threads)
            kw = {k: sec[k] for k in ("n_timesteps", "inference_cfg_rate", "t_scheduler")}
        except KeyError as e:
            raise BundleError(f"bundle {bundle.root}: manifest flow section lacks {e}; convert again") from e
        if n_timesteps is not None:
            if int(n_timesteps) < 1:
                raise InputError(f"the flow needs at least 1 Euler step, not {n_timesteps}")
            kw["n_timesteps"] = int(n_timesteps)
        try:
            noise = np.load(noise_path)
        except (OSError, ValueError) as e:
            raise BundleError(f"flow noise table {noise_path} is unreadable ({e}); convert again") from e
        return cls(frontend, estimator, np.asarray(noise, _F32), **kw)

    @property
    def noise_frames(self) -> int:
        """Longest mel (prompt + generated frames) the fixed noise table covers."""
        return int(self.noise.shape[2])

    def t_span(self) -> np.ndarray:
        return t_span(self.n_timesteps, self.t_scheduler)

    def prepare(
        self, tokens: np.ndarray, prompt_tokens: np.ndarray, prompt_mel: np.ndarray, embedding: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Decoder inputs mu (M, T), spks (M,), cond (M, T), mask (1, T), with T = ratio·(P + N).

        ``prompt_mel`` is time-major (ratio·P, M) as :func:`.features.flow_prompt_mel` returns it.
        """
        tokens = _token_array(tokens, "speech tokens", self.frontend.vocab_size)
        prompt_tokens = _token_array(prompt_tokens, "prompt speech tokens", self.frontend.vocab_size)
        if tokens.size == 0:
            raise InputError("no speech tokens to turn into mel")
        prompt_mel = np.asarray(prompt_mel, _F32)
        want = (self.token_mel_ratio * prompt_tokens.size, self.mel_bins)
        if prompt_mel.shape != want:
            raise InputError(
                f"prompt mel has shape {prompt_mel.shape}, expected {want} "
                f"({self.token_mel_ratio} frames per prompt token, {self.mel_bins} bins)"
            )
        spks = self.frontend.speaker(embedding)
        mu = self.frontend.encode(np.concatenate([prompt_tokens, tokens]))
        n_frames = mu.shape[1]
        cond = np.zeros((self.mel_bins, n_frames), _F32)
        cond[:, : want[0]] = prompt_mel.T
        mask = np.ones((1, n_frames), _F32)
        return mu, spks, cond, mask

    def noise_for(self, n_frames: int) -> np.ndarray:
        """The bundle's fixed noise (M, T): its first ``n_frames`` columns, as upstream slices it."""
        if n_frames > self.noise_frames:
            raise InputError(
                f"prompt + speech need {n_frames} mel frames but the flow noise table holds "
                f"{self.noise_frames}; use a shorter prompt or split the text"
            )
        return self.noise[0, :, :n_frames]

    def solve(
        self,
        mu: np.ndarray,
        mask: np.ndarray,
        spks: np.ndarray,
        cond: np.ndarray,
        z: np.ndarray,
        trace: list | None = None,
        *,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Euler solve with classifier-free guidance (upstream ``solve_euler``); returns x (M, T).

        Shapes as :meth:`prepare` returns them (a leading batch axis of 1 is accepted too); ``z`` is the
        initial noise (M, T). ``trace`` receives one dict per step: ``x`` before the step (M, T), the
        estimator's ``t`` (2,) and its output ``out`` (2, M, T).
        """
        m = self.mel_bins
        mu = np.asarray(mu, _F32).reshape(m, -1)
        n_frames = mu.shape[1]
        x = np.array(z, _F32).reshape(m, n_frames)
        # Row 0 conditional; row 1 unconditional: mu, spks and cond stay zero, x and mask are shared.
        x_in = np.zeros((2, m, n_frames), _F32)
        mask_in = np.zeros((2, 1, n_frames), _F32)
        mu_in = np.zeros((2, m, n_frames), _F32)
        t_in = np.zeros((2,), _F32)
        spks_in = np.zeros((2, np.size(spks)), _F32)
        cond_in = np.zeros((2, m, n_frames), _F32)
        mask_in[:] = np.asarray(mask, _F32).reshape(1, n_frames)
        mu_in[0] = mu
        spks_in[0] = np.asarray(spks, _F32).reshape(-1)
        cond_in[0] = np.asarray(cond, _F32).reshape(m, n_frames)

        def velocity(step: int, x_cur: np.ndarray, t_cur: np.ndarray) -> np.ndarray:
            x_in[:] = x_cur
            t_in[:] = t_cur
            out = np.asarray(self.estimator(x_in, mask_in, mu_in, t_in, spks_in, cond_in), _F32)
            if out.shape != x_in.shape:
                raise BackendError(f"flow estimator returned shape {out.shape}, expected {x_in.shape}")
            if trace is not None:
                trace.append({"x": x_cur.copy(), "t": t_in.copy(), "out": out.copy()})
            return out

        return euler(x, self.t_span(), self.cfg_rate, velocity, on_step=on_step, should_stop=should_stop)

    def __call__(
        self,
        tokens: np.ndarray,
        prompt_tokens: np.ndarray,
        prompt_mel: np.ndarray,
        embedding: np.ndarray,
        *,
        noise: np.ndarray | None = None,
        on_step: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Generated mel (M, ratio·N) float32, natural-log scale; the prompt frames are cut off.

        ``noise`` replaces the bundle's fixed noise: (M, T) or (1, M, T), T = ratio·(P + N).
        """
        mu, spks, cond, mask = self.prepare(tokens, prompt_tokens, prompt_mel, embedding)
        n_frames = mu.shape[1]
        if noise is None:
            z = self.noise_for(n_frames)
        else:
            z = np.asarray(noise, _F32)
            if z.size != self.mel_bins * n_frames:
                raise InputError(f"noise has shape {z.shape}, expected ({self.mel_bins}, {n_frames})")
        x = self.solve(mu, mask, spks, cond, z, on_step=on_step, should_stop=should_stop)
        n_prompt = self.token_mel_ratio * np.asarray(prompt_tokens).size
        return np.ascontiguousarray(x[:, n_prompt:])


def ort_estimator(bundle: Any, n_threads: int | None = None, *, lazy: bool = False) -> OrtEstimator:
    """The full-fidelity estimator on ONNX Runtime: the graph with fused attention when the bundle has it
    (``flow.estimator.onnx_fused``, same weights, rounding-level differences, ~5-10 % faster per step), else
    the exported graph. Use it wherever an ONNX Runtime estimator of a bundle is built. ``lazy``: the session
    is created on first use (then an ONNX Runtime without fused attention is not detected ahead)."""
    est = bundle.manifest["flow"]["estimator"]
    if lazy:
        return OrtEstimator(bundle.path(est.get("onnx_fused") or est["onnx"]), n_threads=n_threads, lazy=True)
    if est.get("onnx_fused"):
        try:
            return OrtEstimator(bundle.path(est["onnx_fused"]), n_threads=n_threads)
        except BackendError:  # an ONNX Runtime without com.microsoft.MultiHeadAttention: the plain graph
            pass
    return OrtEstimator(bundle.path(est["onnx"]), n_threads=n_threads)


def cache_dir() -> Path:
    """Where derived model files are cached: ``$COSYVOICE_RK_CACHE``, else ``$XDG_CACHE_HOME/cosyvoice-rk``."""
    import os

    env = os.environ.get("COSYVOICE_RK_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cosyvoice-rk"


def int8_estimator_path(bundle: Any, *, log: Callable[[str], None] | None = None) -> Path:
    """The INT8 estimator of the fast mode: the bundle's (``flow.estimator.onnx_int8``, written by the
    converter) or, for bundles without one, a copy quantized once into :func:`cache_dir` (needs ``onnx``),
    keyed by the fp32 estimator's sha256."""
    est = bundle.manifest["flow"]["estimator"]
    if est.get("onnx_int8"):
        return bundle.path(est["onnx_int8"])
    import hashlib

    src = bundle.path(est["onnx"])
    files = bundle.manifest["files"]
    # the graph file and, when its weights are external, their data file identify the weights
    parts = [str(files[n].get("sha256") or "") for n in (est["onnx"], est["onnx"] + ".data") if n in files]
    if not parts[0]:
        raise BundleError(f"bundle {bundle.root}: no sha256 for {est['onnx']}; convert again")
    key = hashlib.sha256("".join([*parts, "fused-attention"]).encode()).hexdigest()[:16]
    dst = cache_dir() / "flow-int8" / f"{key}.onnx"
    if not dst.is_file():
        from pipeline.engines.cosyvoice3.convert.flow_fast import attention_dims, quantize_estimator

        if log:
            log(f"building the INT8 flow estimator once into {dst} (the bundle has none)")
        heads, dim_head = attention_dims(bundle.manifest["flow"])
        quantize_estimator(src, dst, num_heads=heads, dim_head=dim_head)
    return dst


def _token_array(tokens: Any, what: str, vocab: int) -> np.ndarray:
    t = np.asarray(tokens)
    if t.ndim != 1 or (t.size and not np.issubdtype(t.dtype, np.integer)):
        raise InputError(f"{what} must be a 1-D integer sequence, got shape {t.shape} dtype {t.dtype}")
    t = t.astype(np.int64)
    if t.size and t.max() >= vocab:
        raise InputError(f"{what} contain id {int(t.max())}, the flow vocabulary has {vocab} ids")
    return t
