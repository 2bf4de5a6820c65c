"""Flow estimator on the Rockchip NPU (rknn-toolkit-lite2 ``RKNNLite``), and the flow backend choice.

The NPU wants fixed shapes, so the converter builds one graph per length bucket (``flow_estimator.s<N>.rknn``,
CFG batch 2, seq N). A call of T mel frames (prompt + generated) runs on the smallest bucket N ≥ T: inputs are
right-padded to N with mask 0 and the output is sliced back to T. In non-streaming mode that leaves the valid
frames unchanged (attention ignores masked keys, the convolutional position embedding is causal; spec §4.4).

Longer calls cannot be split across buckets: attention is global over all frames, so any split changes every
frame. They run on ONNX Runtime CPU instead (``overflow="onnx"``, logged) or are refused (``overflow="error"``).

The graphs take ``t_freq`` = [sin, cos](1000·t·f_k) instead of ``t``: it is computed here in float32 because in
fp16 its argument (up to 1000) would keep only ~0.5 rad of precision.
"""

from __future__ import annotations

import ctypes.util
import importlib
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines.cosyvoice3.flow import Estimator, OrtEstimator, int8_estimator_path, ort_estimator
from pipeline.shared.cpu import DT_COMPATIBLE, rockchip_soc
from pipeline.shared.errors import BackendError, BundleError, InputError

RKNN_INPUTS = ("x", "mask", "mu", "t_freq", "spks", "cond")
NPU_DEVICE = Path("/dev/rknpu")
BACKENDS = ("auto", "rknn", "onnx")
OVERFLOW_POLICIES = ("onnx", "error")
# RKNNLite.NPU_CORE_* values (rknn-toolkit-lite2 2.5.0), so a mask can be parsed without the runtime installed.
CORE_MASKS = {"auto": 0, "0": 1, "1": 2, "2": 4, "0_1": 3, "0_1_2": 7, "all": 0xFFFF}
_RKNNRT_PATHS = ("/usr/lib/librknnrt.so", "/usr/lib64/librknnrt.so", "/usr/lib/aarch64-linux-gnu/librknnrt.so",
                 "/usr/local/lib/librknnrt.so")
_F32 = np.float32
Log = Callable[[str], None]


def time_freq(t: np.ndarray, dim: int = 256, scale: float = 1000.0, max_period: float = 10000.0) -> np.ndarray:
    """The DiT's sinusoidal time embedding (B,) → (B, dim) float32: [sin(scale·t·f_k), cos(scale·t·f_k)] with
    f_k = exp(−k·ln(max_period)/(dim/2 − 1)), in torch's float32 operation order."""
    half = dim // 2
    # float64 exp/sin/cos rounded to float32 reproduce torch's float32 kernels (numpy's float32 exp differs
    # by 1 ulp in half the entries, which the ×1000 scale turns into 6e-5 of the embedding).
    k = np.arange(half, dtype=_F32) * _F32(-(math.log(max_period) / (half - 1)))
    freqs = np.exp(k.astype(np.float64)).astype(_F32)
    arg = (_F32(scale) * np.asarray(t, _F32).reshape(-1, 1)) * freqs.reshape(1, -1)
    a = arg.astype(np.float64)
    return np.concatenate([np.sin(a), np.cos(a)], axis=1).astype(_F32)


def parse_core_mask(spec: str | int | None) -> int:
    """``auto``, ``0``, ``1``, ``2``, ``0_1``, ``0_1_2`` (also ``0,1,2``), ``all``, or the integer mask."""
    if spec is None:
        return CORE_MASKS["auto"]
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec in CORE_MASKS.values():
            return spec
        raise InputError(f"NPU core mask {spec} is not one of {sorted(set(CORE_MASKS.values()))}")
    key = str(spec).strip().lower().replace(",", "_").replace("-", "_")
    if key not in CORE_MASKS:
        raise InputError(f"NPU core mask {spec!r}: choose one of {', '.join(CORE_MASKS)}")
    return CORE_MASKS[key]


def core_mask_name(mask: int) -> str:
    return next((k for k, v in CORE_MASKS.items() if v == mask), str(mask))


def choose_bucket(n_frames: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket ≥ ``n_frames``, or ``None`` when every bucket is shorter."""
    fits = [b for b in buckets if b >= n_frames]
    return min(fits) if fits else None


def find_librknnrt() -> str | None:
    for p in _RKNNRT_PATHS:
        if Path(p).is_file():
            return p
    return ctypes.util.find_library("rknnrt")


def detect_npu(target: str = "rk3588", *, device: Path = NPU_DEVICE, compatible: Path = DT_COMPATIBLE,
               librknnrt: Callable[[], str | None] = find_librknnrt) -> tuple[bool, str]:
    """Whether RKNN graphs built for ``target`` can run here, and why (or why not): an NPU (``/dev/rknpu`` or a
    rockchip,<target> device-tree entry) of that SoC, ``rknnlite.api`` importable and ``librknnrt.so`` present."""
    soc = rockchip_soc(Path(compatible))
    if soc is not None and soc != target:
        return False, f"this board is a {soc}, the RKNN graphs were built for {target}"
    seen = []
    if Path(device).exists():
        seen.append(f"{device} is present")
    if soc == target:
        seen.append(f"the device tree lists rockchip,{target}")
    if not seen:
        return False, (f"no {target.upper()} NPU on this {platform.machine()} machine ({device} is absent and "
                       f"{compatible} lists no rockchip,{target})")
    where = " and ".join(seen)
    try:
        importlib.import_module("rknnlite.api")
    except Exception as e:  # ImportError, or the wheel's .so failing to load
        return False, (f"{where}, but rknn-toolkit-lite2 does not import ({type(e).__name__}: {e}); "
                       "install it on the board with `pip install rknn-toolkit-lite2` (aarch64 only)")
    lib = librknnrt()
    if lib is None:
        return False, (f"{where} and rknn-toolkit-lite2 imports, but librknnrt.so (the RKNPU2 runtime) is not "
                       "installed; see docs/rk3588.md")
    return True, f"{where}, rknn-toolkit-lite2 imports and {lib} is installed"


class RknnEstimator:
    """Flow estimator on RKNN graphs of fixed length (see module doc). ``graphs``: {seq: .rknn path}.

    Graphs load on first use (each holds a full copy of the weights, ~0.7 GB at CosyVoice3 size) and stay
    loaded; ``preload`` loads the given buckets now, which is how a broken runtime is caught at start-up.
    ``fallback`` builds the ONNX Runtime estimator used past the largest bucket (only when it is needed).
    """

    backend = "rknn-npu"

    def __init__(
        self,
        graphs: Mapping[int, Path | str],
        *,
        mel_bins: int,
        core_mask: str | int | None = "auto",
        inputs: Sequence[str] = RKNN_INPUTS,
        time_embedding: Mapping[str, float] | None = None,
        fallback: Callable[[], Estimator] | None = None,
        overflow: str = "onnx",
        preload: Sequence[int] = (),
        target: str = "rk3588",
        log: Log = print,
    ) -> None:
        if not graphs:
            raise BundleError("no RKNN flow graphs given")
        if sorted(inputs) != sorted(RKNN_INPUTS):
            raise BundleError(f"RKNN flow graphs take inputs {list(inputs)}, this runtime feeds {list(RKNN_INPUTS)}")
        if overflow not in OVERFLOW_POLICIES:
            raise InputError(f"overflow policy {overflow!r}: choose {' or '.join(OVERFLOW_POLICIES)}")
        if overflow == "onnx" and fallback is None:
            raise InputError("overflow='onnx' needs a fallback estimator")
        self.graphs = {int(k): Path(v) for k, v in sorted(graphs.items())}
        self.buckets = list(self.graphs)
        self.mel_bins = int(mel_bins)
        self.core_mask = parse_core_mask(core_mask)
        self.inputs = tuple(inputs)
        te = dict(time_embedding or {})
        self._t_dim = int(te.get("dim", 256))
        self._t_scale = float(te.get("scale", 1000.0))
        self._t_period = float(te.get("max_period", 10000.0))
        self._fallback_factory = fallback
        self._fallback: Estimator | None = None
        self.overflow = overflow
        self.target = target
        self.log = log
        self._runtimes: dict[int, Any] = {}
        self._last_frames: int | None = None
        self.last_choice: dict[str, Any] = {}
        try:
            self._rknnlite = importlib.import_module("rknnlite.api").RKNNLite
        except Exception as e:
            raise BackendError(f"rknn-toolkit-lite2 does not import ({type(e).__name__}: {e}); the RKNN flow backend "
                               "runs on the RK3588 board only (pip install rknn-toolkit-lite2 there)") from e
        for seq in preload:
            self._runtime(int(seq))

    @property
    def name(self) -> str:
        return (f"rknn-npu ({self.target}, graphs {'/'.join(f's{b}' for b in self.buckets)}, "
                f"core_mask {core_mask_name(self.core_mask)})")

    def _runtime(self, seq: int) -> Any:
        rt = self._runtimes.get(seq)
        if rt is not None:
            return rt
        path = self.graphs[seq]
        t0 = time.monotonic()
        rt = self._rknnlite(verbose=False)
        if rt.load_rknn(str(path)) != 0:
            rt.release()
            raise BackendError(f"RKNNLite cannot read the flow graph {path} (see the rknnlite log above)")
        ret = rt.init_runtime(core_mask=self.core_mask)
        if ret != 0:
            rt.release()
            raise BackendError(
                f"RKNNLite.init_runtime failed for {path.name} (status {ret}, core_mask "
                f"{core_mask_name(self.core_mask)}): check the NPU driver and librknnrt.so versions (docs/rk3588.md)"
            )
        self._runtimes[seq] = rt
        self.log(f"flow: RKNN graph s{seq} loaded on the NPU (core_mask {core_mask_name(self.core_mask)}) "
                 f"in {time.monotonic() - t0:.1f} s")
        return rt

    def _note(self, n_frames: int, choice: dict[str, Any], msg: str) -> None:
        self.last_choice = {"frames": n_frames, **choice}
        if n_frames != self._last_frames:  # the solver calls 10× per utterance with the same length: say it once
            self._last_frames = n_frames
            self.log(msg)

    def __call__(
        self, x: np.ndarray, mask: np.ndarray, mu: np.ndarray, t: np.ndarray, spks: np.ndarray,
        cond: np.ndarray,
    ) -> np.ndarray:
        n = int(x.shape[-1])
        for name, a in (("mask", mask), ("mu", mu), ("cond", cond)):
            if a.shape[-1] != n:
                raise InputError(f"flow estimator input {name} has {a.shape[-1]} frames, x has {n}")
        seq = choose_bucket(n, self.buckets)
        if seq is None:
            return self._overflow(n, x, mask, mu, t, spks, cond)
        self._note(n, {"backend": self.backend, "graph": seq, "padding": seq - n},
                   f"flow: {n} mel frames → RKNN graph s{seq} ({seq - n} frames right-padded with mask 0)")
        feeds = {
            "x": _pad(x, seq), "mask": _pad(mask, seq), "mu": _pad(mu, seq), "cond": _pad(cond, seq),
            "spks": np.ascontiguousarray(spks, _F32),
            "t_freq": time_freq(t, self._t_dim, self._t_scale, self._t_period),
        }
        outs = self._runtime(seq).inference(inputs=[feeds[k] for k in self.inputs])
        if outs is None:
            raise BackendError(f"RKNN inference failed on graph s{seq} for {n} frames (see the rknnlite log above)")
        y = np.asarray(outs[0], _F32)
        want = (x.shape[0], self.mel_bins, seq)
        if y.shape != want:
            raise BackendError(f"RKNN graph s{seq} returned shape {y.shape}, expected {want}")
        return np.ascontiguousarray(y[:, :, :n])

    def _overflow(self, n: int, *args: np.ndarray) -> np.ndarray:
        largest = self.buckets[-1]
        if self.overflow == "error":
            raise BackendError(
                f"flow: {n} mel frames exceed the largest RKNN graph s{largest}; convert with a larger "
                f"--flow-buckets entry, shorten the prompt or text, or allow the ONNX Runtime fallback"
            )
        if self._fallback is None:
            assert self._fallback_factory is not None
            self._fallback = self._fallback_factory()
        self._note(
            n, {"backend": getattr(self._fallback, "backend", "onnxruntime-cpu"), "graph": None, "padding": 0},
            f"flow: {n} mel frames exceed the largest RKNN graph s{largest}; this call runs on ONNX Runtime CPU "
            "(slower; attention spans all frames, so the call cannot be split across graphs). Convert with a "
            f"--flow-buckets entry ≥ {n} to keep such lengths on the NPU",
        )
        return self._fallback(*args)

    def close(self) -> None:
        for rt in self._runtimes.values():
            rt.release()
        self._runtimes.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _pad(a: np.ndarray, seq: int) -> np.ndarray:
    out = np.zeros((*a.shape[:-1], seq), _F32)
    out[..., : a.shape[-1]] = a
    return out


def rknn_section(bundle: Any) -> dict | None:
    """The manifest's ``flow.estimator.rknn`` section, or None when the bundle has no RKNN graphs."""
    sec = bundle.manifest.get("flow", {}).get("estimator", {}).get("rknn")
    return sec if sec else None


def rknn_estimator_from_bundle(
    bundle: Any, *, core_mask: str | int | None = "auto", n_threads: int | None = None, overflow: str = "onnx",
    preload: str = "smallest", log: Log = print, onnx_factory: Callable[[], Estimator] | None = None,
) -> RknnEstimator:
    """:class:`RknnEstimator` over the bundle's graphs; its fallback is ``onnx_factory()`` (default: the bundle's
    FP32 ONNX estimator). ``preload``: ``"smallest"`` (load one graph now, to fail early), ``"all"``, ``"none"``."""
    sec = rknn_section(bundle)
    if sec is None:
        raise BackendError(f"bundle {bundle.root} has no RKNN flow graphs; convert it with --rknn rk3588")
    flow = bundle.manifest["flow"]
    try:
        graphs = {int(b["seq"]): bundle.path(b["file"]) for b in sec["buckets"]}
        mel_bins = int(sec.get("mel_bins", flow["mel_bins"]))
        inputs = sec["inputs"]
        time_embedding = {k: float(sec["time_embedding"][k]) for k in ("dim", "scale", "max_period")}
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"bundle {bundle.root}: manifest flow.estimator.rknn is malformed ({e!r}); "
                          "convert again") from e
    if preload not in ("smallest", "all", "none"):
        raise InputError(f"preload {preload!r}: choose smallest, all or none")
    pre = {"smallest": [min(graphs)] if graphs else [], "all": list(graphs), "none": []}[preload]
    fallback = onnx_factory or (lambda: ort_estimator(bundle, n_threads))
    return RknnEstimator(
        graphs, mel_bins=mel_bins, core_mask=core_mask, inputs=inputs, time_embedding=time_embedding,
        fallback=fallback, overflow=overflow,
        preload=pre, target=sec.get("target", "rk3588"), log=log,
    )


def make_estimator(
    bundle: Any,
    backend: str = "auto",
    *,
    n_threads: int | None = None,
    core_mask: str | int | None = "auto",
    overflow: str = "onnx",
    log: Log = print,
    detect: Callable[[str], tuple[bool, str]] = detect_npu,
    onnx_factory: Callable[[], Estimator] | None = None,
    fast: bool = False,
) -> tuple[Estimator, str]:
    """The flow estimator for ``--flow-backend auto|rknn|onnx`` and the reason for the choice (also logged).
    ``fast`` (``--flow-fast``): the INT8 estimator on ONNX Runtime, the opt-in fast mode; refused with ``rknn``.

    ``auto`` takes RKNN only when the bundle has RKNN graphs and ``detect(target)`` (:func:`detect_npu`) finds
    that SoC's NPU and its runtime; otherwise ONNX Runtime CPU, saying why. ``rknn`` raises :class:`BackendError`
    instead of falling back. When the NPU is detected but the first graph fails to load, ``auto`` falls back to
    ONNX Runtime stating the failure and ``rknn`` raises.
    ``onnx_factory`` builds the ONNX Runtime estimator (chosen, or the RKNN overflow fallback); default: the
    bundle's FP32 estimator with ``n_threads``.
    """
    backend = (backend or "auto").strip().lower()
    if backend not in BACKENDS:
        raise InputError(f"flow backend {backend!r}: choose {', '.join(BACKENDS)}")
    core_mask = parse_core_mask(core_mask)
    if overflow not in OVERFLOW_POLICIES:
        raise InputError(f"overflow policy {overflow!r}: choose {' or '.join(OVERFLOW_POLICIES)}")
    if fast:
        if backend == "rknn":
            raise InputError("--flow-fast runs the INT8 flow estimator on ONNX Runtime CPU; it cannot be "
                             "combined with --flow-backend rknn (--flow-steps also shortens the NPU flow)")
        est = OrtEstimator(int8_estimator_path(bundle, log=log), n_threads=n_threads, variant="int8")
        reason = "flow on ONNX Runtime CPU: fast mode asked for (INT8 estimator; not upstream's mel)"
        log(reason)
        return est, reason

    if onnx_factory is None:
        def onnx_factory() -> Estimator:
            return ort_estimator(bundle, n_threads)

    def onnx(why: str) -> tuple[Estimator, str]:
        est = onnx_factory()
        reason = f"flow on ONNX Runtime CPU: {why}"
        log(reason)
        return est, reason

    if backend == "onnx":
        return onnx("--flow-backend onnx asked for it")
    sec = rknn_section(bundle)
    if sec is None:
        why = "the bundle has no RKNN graphs (convert with --rknn rk3588 --flow-buckets ...)"
        if backend == "rknn":
            raise BackendError(f"--flow-backend rknn: {why}")
        return onnx(why)
    ok, why = detect(str(sec.get("target", "rk3588")))
    if not ok:
        if backend == "rknn":
            raise BackendError(f"--flow-backend rknn: {why}")
        return onnx(why)
    try:
        est = rknn_estimator_from_bundle(bundle, core_mask=core_mask, n_threads=n_threads, overflow=overflow,
                                         log=log, onnx_factory=onnx_factory)
    except BackendError as e:
        if backend == "rknn":
            raise
        return onnx(f"the NPU was detected ({why}) but the RKNN runtime failed: {e}")
    over = "longer calls run on ONNX Runtime CPU, logged" if overflow == "onnx" else "longer calls are refused"
    reason = (f"flow on the RKNN NPU ({'asked for' if backend == 'rknn' else 'auto'}: {why}); graphs "
              f"{'/'.join(f's{b}' for b in est.buckets)} (mel frames), core_mask {core_mask_name(est.core_mask)}; "
              f"{over}")
    log(reason)
    return est, reason
