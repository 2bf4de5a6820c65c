"""Flow estimator → fixed-shape RKNN graphs for the Rockchip NPU (host side, ``convert --rknn rk3588``).

For each length bucket N the DiT is exported from ``flow.pt`` with static shapes (CFG batch 2, seq N) by the
project's torch DiT, which matches upstream's export exactly. Static export rather than pinning the shapes of the
shipped dynamic ONNX: the exporter then folds every Shape/Range/Expand (rotary tables, attention mask) into
constants, so the NPU compiler gets a plain static graph and no onnx simplifier is needed.

Each graph is checked twice before it is accepted:

1. padding (ONNX Runtime, FP32): the static graph on inputs right-padded with mask 0 must give, on the valid
   frames, what the bundle's dynamic estimator gives at the exact length (spec §4.4: padded frames with mask 0
   do not affect valid frames) — this is what the runtime backend relies on;
2. conversion (rknn-toolkit2 PC simulator, fp16): the ``.rknn`` on the same fixed inputs against ONNX Runtime on
   the static graph. A graph whose error is out of line (``max_rel_err`` × the largest reference magnitude) or
   not finite is refused.

rknn-toolkit2 pins old numpy/onnx/protobuf/torch and lives in its own venv (``scripts/setup-rknn-env.sh``);
:mod:`pipeline.engines.cosyvoice3.convert.rknn_worker` runs there as a subprocess, one per bucket.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engines.cosyvoice3.flow_rknn import RKNN_INPUTS, time_freq
from pipeline.shared.errors import BackendError, SourceError
from pipeline.shared.fsutil import sha256_file

TARGETS = ("rk3588",)
DEFAULT_BUCKETS = (200, 300, 500, 1000)
TOOLKIT = "2.5.0"
# rknn-toolkit2 2.5.0 crashes in build() (KeyError: 'q_mm') on 3-D single-head attention after this fusion rule.
SDPA_FUSION_RULE = "fuse_exmatmul_add_mul_exsoftmax13_exmatmul_to_sdpa"
# fp16 on the NPU: errors of a few 1e-3 of the output scale are normal (measured 7e-4 on a probe block);
# a broken conversion (wrong op lowering, overflow) is off by O(1). 5 % of the largest |output| separates the two.
DEFAULT_MAX_REL_ERR = 0.05
# FP32 vs FP32 (static torch export vs the shipped dynamic ONNX): only summation order differs.
PAD_MAX_REL_ERR = 1e-3
SIM_VALID_FRACTION = 0.8
SIM_SEED = 0
SIM_T = 0.9  # late in the solver's time grid, where an fp16 time embedding would be worst
RKNN_PYTHON_ENV = "COSYVOICE_RK_RKNN_PYTHON"
RKNN_VENV_ENV = "COSYVOICE_RK_RKNN_VENV"
WORKER = Path(__file__).with_name("rknn_worker.py")
SETUP_SCRIPT = "scripts/setup-rknn-env.sh"
_REPO = Path(__file__).resolve().parents[4]


def rknn_file_name(seq: int) -> str:
    return f"flow_estimator.s{int(seq)}.rknn"


def onnx_file_name(seq: int) -> str:
    return f"flow_estimator.s{int(seq)}.onnx"


def parse_buckets(spec: str | Sequence[int]) -> list[int]:
    """``"200,300,500,1000"`` or a sequence → sorted unique positive frame counts."""
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out = []
    for s in items:
        if s == "":
            continue
        try:
            n = int(s)
        except (TypeError, ValueError):
            raise SourceError(f"flow bucket {s!r} is not a whole number of mel frames") from None
        if n < 8:
            raise SourceError(f"flow bucket {n} is too short; buckets are mel lengths (prompt + speech), e.g. 200")
        out.append(n)
    if not out:
        raise SourceError("no flow buckets given; e.g. --flow-buckets 200,300,500,1000")
    return sorted(set(out))


def find_rknn_python(explicit: Path | str | None = None) -> Path | None:
    """The rknn venv's interpreter: ``explicit``, $COSYVOICE_RK_RKNN_PYTHON, $COSYVOICE_RK_RKNN_VENV/bin/python,
    then ``.venv-rknn/bin/python`` at the repository root or in the working directory."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get(RKNN_PYTHON_ENV):
        return Path(os.environ[RKNN_PYTHON_ENV])
    cands = []
    if os.environ.get(RKNN_VENV_ENV):
        cands.append(Path(os.environ[RKNN_VENV_ENV]) / "bin" / "python")
    cands += [_REPO / ".venv-rknn" / "bin" / "python", Path.cwd() / ".venv-rknn" / "bin" / "python"]
    return next((c for c in cands if c.is_file()), None)


def time_freq_dim(model: Any) -> int:
    return int(model.time_embed.time_mlp[0].in_features)


# Padded keys get this additive bias instead of -inf: exp(-1e4) is exactly 0 in fp16 and fp32 alike, and a finite
# bias needs no NaN guard for fully masked rows (none occur: every call has valid frames).
MASK_BIAS = -10000.0


@contextlib.contextmanager
def _npu_friendly_attention() -> Iterator[None]:
    """Export the DiT's attention as plain MatMul → Add(bias) → Softmax → MatMul with a (B, 1, 1, T) additive key
    bias. Through ``F.scaled_dot_product_attention`` with a boolean (B, 1, T, T) mask the exporter adds a
    Where(IsNaN(softmax)) guard, which rknn-toolkit2 runs on the CPU at (2, heads, T, T) per block, plus a T×T mask
    tensor. The math on valid rows is unchanged; the padding check in :func:`convert_rknn` verifies it."""
    import torch

    from pipeline.engines.cosyvoice3.convert import dit_torch

    def attention_bias(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ((1.0 - mask) * MASK_BIAS).unsqueeze(1), mask[:, 0, :] > 0.5  # (B, 1, 1, T), (B, T)

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        scale = 1.0 / math.sqrt(q.shape[-1])  # a power of two for head dim 64: scaling q first is exact
        return torch.softmax((q * scale) @ k.transpose(-1, -2) + attn_mask, dim=-1) @ v

    class _F:
        scaled_dot_product_attention = staticmethod(sdpa)

        def __getattr__(self, name: str) -> Any:
            return getattr(torch.nn.functional, name)

    saved = dit_torch.F, dit_torch._attention_mask
    dit_torch.F, dit_torch._attention_mask = _F(), attention_bias
    try:
        yield
    finally:
        dit_torch.F, dit_torch._attention_mask = saved


def export_fixed_onnx(model: Any, path: Path | str, seq: int) -> Path:
    """Export a :class:`~.convert.dit_torch.DiT` with all shapes static for the NPU: x/mu/cond
    (2, mel, seq), mask (2, 1, seq), t_freq (2, F), spks (2, spk) → (2, mel, seq), upstream's opset.

    Attention is exported NPU-friendly (:func:`_npu_friendly_attention`). ``t_freq`` replaces ``t``: the
    sinusoidal embedding sin/cos(1000·t·f_k) is computed by the runtime in float32
    (:func:`.flow_rknn.time_freq`). In fp16 on the NPU its argument (up to 1000) keeps only ~0.5 rad of
    precision, which measured 0.30 max abs error on the output at t = 0.9 against 0.005 at t = 0.
    """
    import torch

    from pipeline.engines.cosyvoice3.convert.dit_torch import EXPORT_BATCH, OPSET, OUTPUT_NAME

    model = model.eval()
    mel = model.proj_out.out_features
    spk = model.input_embed.proj.in_features - 3 * mel
    n_freq = time_freq_dim(model)
    g = torch.Generator().manual_seed(0)
    b = EXPORT_BATCH
    args = (
        torch.rand(b, mel, seq, generator=g), torch.ones(b, 1, seq), torch.rand(b, mel, seq, generator=g),
        torch.rand(b, n_freq, generator=g), torch.rand(b, spk, generator=g), torch.rand(b, mel, seq, generator=g),
    )
    path = Path(path)
    sinus = model.time_embed.time_embed
    model.time_embed.time_embed = torch.nn.Identity()
    try:
        with torch.no_grad(), warnings.catch_warnings(), _npu_friendly_attention():
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)  # the TorchScript exporter, on purpose
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # static shapes are the point
            torch.onnx.export(model, args, str(path), export_params=True, opset_version=OPSET,
                              do_constant_folding=True, input_names=list(RKNN_INPUTS), output_names=[OUTPUT_NAME],
                              dynamo=False)
    finally:
        model.time_embed.time_embed = sinus
    return path


def _check_time_freq(sinus: Any, t_emb: Mapping[str, float]) -> None:
    """The runtime's numpy time embedding must be the torch model's (scale and period are constants there)."""
    import torch

    t = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    with torch.no_grad():
        want = sinus(torch.from_numpy(t)).numpy()
    got = time_freq(t, **t_emb)
    if want.shape != got.shape or float(np.max(np.abs(want - got))) > 1e-3:
        raise BackendError("the runtime's sinusoidal time embedding does not reproduce the DiT's; fix time_freq")


def sim_inputs(seq: int, mel_bins: int, spk_dim: int, *, valid: int | None = None,
               seed: int = SIM_SEED) -> dict[str, np.ndarray]:
    """Fixed estimator inputs shaped like a CFG solver step (x shared by both rows, mu/spks/cond zero in the
    unconditional row, a prompt mel in the first 30 % of cond, t = 0.9 where the fp16 time embedding would be
    worst), frames past ``valid`` right-padded with mask 0. Inputs of upstream's estimator (with ``t``)."""
    valid = int(math.ceil(SIM_VALID_FRACTION * seq)) if valid is None else int(valid)
    rng = np.random.default_rng(seed)
    f32 = np.float32
    x = np.zeros((2, mel_bins, seq), f32)
    x[:, :, :valid] = rng.standard_normal((mel_bins, valid), dtype=f32)
    mask = np.zeros((2, 1, seq), f32)
    mask[:, :, :valid] = 1.0
    mu = np.zeros((2, mel_bins, seq), f32)
    mu[0, :, :valid] = rng.standard_normal((mel_bins, valid), dtype=f32)
    spks = np.zeros((2, spk_dim), f32)
    spks[0] = rng.standard_normal(spk_dim, dtype=f32)
    cond = np.zeros((2, mel_bins, seq), f32)
    n_prompt = max(1, int(0.3 * valid))
    cond[0, :, :n_prompt] = rng.standard_normal((mel_bins, n_prompt), dtype=f32)
    t = np.full((2,), SIM_T, f32)
    return {"x": x, "mask": mask, "mu": mu, "t": t, "spks": spks, "cond": cond}


def manifest_section(*, target: str, toolkit: str, mel_bins: int, spk_dim: int, time_embedding: Mapping[str, float],
                     buckets: list[dict], max_rel_err: float = DEFAULT_MAX_REL_ERR) -> dict:
    """The ``flow.estimator.rknn`` manifest section that :mod:`pipeline.engines.cosyvoice3.flow_rknn` reads."""
    from pipeline.engines.cosyvoice3.convert.dit_torch import OUTPUT_NAME

    return {
        "target": target,
        "toolkit": toolkit,
        "dtype": "float16",
        "inputs": list(RKNN_INPUTS),
        "output": OUTPUT_NAME,
        "time_embedding": dict(time_embedding),
        "mel_bins": int(mel_bins),
        "spk_dim": int(spk_dim),
        "max_rel_err": max_rel_err,
        "sim_inputs": {"seed": SIM_SEED, "valid_fraction": SIM_VALID_FRACTION, "t": SIM_T},
        "host": platform.machine(),
        "buckets": list(buckets),
    }


def _ort_run(path: Path, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the host is often busy converting; one thread keeps the check polite
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()})[0]


def check_sim_error(sim: np.ndarray, ref: np.ndarray, valid: int, *, max_rel_err: float) -> tuple[float, float]:
    """(max abs error, max |ref|) over the valid frames; raises :class:`BackendError` when out of line."""
    if sim.shape != ref.shape:
        raise BackendError(f"the simulator returned shape {sim.shape}, ONNX Runtime {ref.shape}")
    s, r = sim[..., :valid].astype(np.float64), ref[..., :valid].astype(np.float64)
    if not np.isfinite(s).all():
        raise BackendError("the simulator returned non-finite values on the valid frames")
    err, scale = float(np.max(np.abs(s - r))), float(np.max(np.abs(r)))
    if err > max_rel_err * max(scale, 1e-6):
        raise BackendError(
            f"simulator max abs error {err:.3g} exceeds {max_rel_err:g} × max|ONNX Runtime output| {scale:.3g}; "
            "the graph does not convert faithfully"
        )
    return err, scale


def run_worker(python: Path, job: dict, *, heartbeat: Callable[[float], None] | None = None,
               every_s: float = 60.0) -> dict:
    """Run :mod:`rknn_worker` with ``job`` in the toolkit's interpreter; its JSON answer plus ``log_tail``.
    ``heartbeat(elapsed_s)`` is called every ``every_s`` while it runs (a full-size build takes minutes)."""
    cmd = [str(python), str(WORKER), json.dumps(job)]
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
        try:
            proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, text=True)
        except OSError as e:
            raise BackendError(f"cannot start the rknn environment's python {python}: {e}") from e
        try:
            while True:
                try:
                    proc.wait(timeout=every_s)
                    break
                except subprocess.TimeoutExpired:
                    if heartbeat is not None:
                        heartbeat(time.monotonic() - t0)
        except BaseException:  # Ctrl-C or a failing heartbeat: do not leave a build running
            proc.kill()
            proc.wait()
            raise
        fout.seek(0)
        ferr.seek(0)
        stdout, stderr = fout.read(), ferr.read()
    answer = None
    for line in reversed(stdout.strip().splitlines()):
        try:
            answer = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    tail = "\n".join(stderr.strip().splitlines()[-25:])
    if answer is None:
        raise BackendError(f"the rknn worker exited with status {proc.returncode} without an answer; "
                           f"its log ends with:\n{tail}")
    if not answer.get("ok") and "error" in answer:
        hint = f" (run {SETUP_SCRIPT})" if "import" in answer["error"] else ""
        raise BackendError(f"rknn worker: {answer['error']}{hint}")
    answer["log_tail"] = tail
    return answer


def preflight(target: str, buckets: str | Sequence[int],
              rknn_python: Path | str | None = None) -> tuple[str, list[int], Path]:
    """Validate the options and find the toolkit's interpreter: (target, buckets, python). Cheap; the converter
    calls it before minutes of other work so that a missing ``.venv-rknn`` is reported at once."""
    target = str(target).lower()
    if target not in TARGETS:
        raise SourceError(f"RKNN target {target!r} is not supported; this project targets {', '.join(TARGETS)}")
    parsed = parse_buckets(buckets)
    python = find_rknn_python(rknn_python)
    if python is None or not python.is_file():
        raise BackendError(
            f"no rknn-toolkit2 environment ({'not found: ' + str(python) if python else '.venv-rknn not found'}); "
            f"create it with {SETUP_SCRIPT} (about a minute) or point ${RKNN_PYTHON_ENV} at its python"
        )
    return target, parsed, python


def convert_rknn(
    src: Path | str,
    out: Path | str,
    cfg: dict,
    flow_section: Mapping[str, Any],
    *,
    target: str = "rk3588",
    buckets: str | Sequence[int] = DEFAULT_BUCKETS,
    log: Callable[[str], None] = print,
    rknn_python: Path | str | None = None,
    simulate: bool = True,
    max_rel_err: float = DEFAULT_MAX_REL_ERR,
    keep_onnx: bool = False,
) -> dict:
    """Build ``flow_estimator.s<N>.rknn`` for each bucket into bundle folder ``out``.

    ``flow_section`` is what :func:`~.convert.flow_export.convert_flow` returned (its estimator ONNX
    must already be in ``out``). Returns ``{"rknn": <manifest section>, "files": [names written]}``; the
    section belongs at ``manifest["flow"]["estimator"]["rknn"]``. ``keep_onnx`` also keeps the static ONNX
    graphs (≈ the dynamic ONNX's size each; host-side checks only, the board does not need them).
    """
    del cfg  # flow_section already carries the parsed hyperparameters; kept for the converter's call shape
    from pipeline.engines.cosyvoice3.convert.dit_torch import load_dit
    from pipeline.engines.cosyvoice3.convert.flow_export import FLOW_PT, _load_state_dict

    src, out = Path(src), Path(out)
    target, buckets, python = preflight(target, buckets, rknn_python)
    if not max_rel_err > 0:
        raise SourceError(f"max_rel_err must be > 0, got {max_rel_err}")
    mel = int(flow_section["mel_bins"])
    dims = {k: v for k, v in flow_section["dims"].items()
            if k in ("dim", "depth", "heads", "dim_head", "ff_mult", "mel_dim", "mu_dim", "spk_dim", "out_channels")}
    spk = int(dims["spk_dim"])
    dyn_onnx = out / flow_section["estimator"]["onnx"]
    model = load_dit(_load_state_dict(src / FLOW_PT), dims)
    sinus = model.time_embed.time_embed
    t_emb = {"dim": int(sinus.dim), "scale": 1000.0, "max_period": 10000.0}
    _check_time_freq(sinus, t_emb)

    work = out / ".rknn-build"
    work.mkdir(parents=True, exist_ok=True)
    entries, files, toolkit = [], [], None
    try:
        for n in buckets:
            log(f"flow → RKNN {target} s{n}: static ONNX export")
            onnx_path = export_fixed_onnx(model, work / onnx_file_name(n), n)
            feeds = sim_inputs(n, mel, spk)
            valid = int(feeds["mask"][0, 0].sum())
            rknn_feeds = {k: v for k, v in feeds.items() if k != "t"}
            rknn_feeds["t_freq"] = time_freq(feeds["t"], **t_emb)
            ref = _ort_run(onnx_path, rknn_feeds)
            exact = _ort_run(dyn_onnx, {k: (v[..., :valid] if v.ndim == 3 else v) for k, v in feeds.items()})
            pad_err = float(np.max(np.abs(ref[..., :valid].astype(np.float64) - exact)))
            scale = float(np.max(np.abs(exact)))
            if not pad_err <= PAD_MAX_REL_ERR * max(scale, 1.0):
                raise BackendError(
                    f"s{n}: the static graph on right-padded inputs differs from {dyn_onnx.name} at the exact "
                    f"length by {pad_err:.3g} (max |out| {scale:.3g}); padding would change the mel"
                )
            inputs_path = work / f"s{n}.inputs.npz"
            np.savez(inputs_path, **rknn_feeds)
            job = {"target": target, "simulate": bool(simulate), "disable_rules_fallback": [SDPA_FUSION_RULE],
                   "graphs": [{"seq": n, "onnx": str(onnx_path), "rknn": str(work / rknn_file_name(n)),
                               "inputs": str(inputs_path), "sim_out": str(work / f"s{n}.sim.npy")}]}
            log(f"flow → RKNN {target} s{n}: rknn-toolkit2 build" + (" + simulator check" if simulate else ""))
            t0 = time.monotonic()
            answer = run_worker(python, job, heartbeat=lambda s, n=n: log(f"  s{n}: rknn-toolkit2 still working "
                                                                           f"({s / 60:.0f} min)"))
            res = answer["graphs"][0]
            toolkit = answer.get("toolkit")
            for a in res["attempts"]:
                if a["error"]:
                    log(f"  s{n}: build with disable_rules={a['disable_rules']} failed: {a['error']}")
            if not res["ok"]:
                raise BackendError(f"rknn-toolkit2 could not convert s{n}: "
                                   f"{res['attempts'][-1]['error']}\n{answer['log_tail']}")
            if res["disable_rules"]:
                log(f"  s{n}: converted with disable_rules={res['disable_rules']} (toolkit fusion bug workaround)")
            entry: dict[str, Any] = {
                "seq": n, "file": rknn_file_name(n), "onnx_sha256": sha256_file(onnx_path),
                "disable_rules": res["disable_rules"], "pad_max_abs_err": pad_err,
                "sim_valid_frames": valid, "build_s": res["build_s"],
            }
            if simulate:
                sim = np.load(res["sim_out"])
                try:
                    err, ref_scale = check_sim_error(sim, ref, valid, max_rel_err=max_rel_err)
                except BackendError as e:
                    raise BackendError(f"RKNN graph s{n} refused: {e}") from None
                entry.update(sim_max_abs_err=err, sim_ref_max_abs=ref_scale, sim_s=res["sim_s"])
                log(f"  s{n}: simulator max abs err {err:.3g} (max |ref| {ref_scale:.3g}), "
                    f"padding err {pad_err:.2g}, {time.monotonic() - t0:.1f} s")
            else:
                entry.update(sim_max_abs_err=None, sim_ref_max_abs=None)
                log(f"  s{n}: simulator check skipped on request; padding err {pad_err:.2g}")
            shutil.move(str(work / rknn_file_name(n)), str(out / rknn_file_name(n)))
            files.append(rknn_file_name(n))
            if keep_onnx:
                shutil.move(str(onnx_path), str(out / onnx_file_name(n)))
                entry["onnx"] = onnx_file_name(n)
                files.append(onnx_file_name(n))
            else:
                onnx_path.unlink()
            entries.append(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    section = manifest_section(target=target, toolkit=toolkit or TOOLKIT, mel_bins=mel, spk_dim=spk,
                               time_embedding=t_emb, buckets=entries, max_rel_err=max_rel_err)
    return {"rknn": section, "files": files}
