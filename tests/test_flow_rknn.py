"""RKNN flow backend (pipeline.engines.cosyvoice3.flow_rknn) and CPU placement (pipeline.shared.cpu), without a board.

rknn-toolkit-lite2 exists for aarch64 only, so ``rknnlite.api.RKNNLite`` is replaced in-process by a stand-in that
keeps its API and return conventions (0/-1 status codes, ``None`` from a failed inference) and executes the
fixed-shape ONNX graph stored in the ".rknn" file with ONNX Runtime. Everything else is the backend's own code:
bucket choice, padding and slicing, the float32 time embedding, lazy loading, overflow, backend selection.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.cosyvoice3.convert.config import load_source_config
from pipeline.engines.cosyvoice3.convert.flow_export import FLOW_PT, convert_flow
from pipeline.engines.cosyvoice3.convert.rknn_export import (
    export_fixed_onnx,
    manifest_section,
    onnx_file_name,
    rknn_file_name,
)
from pipeline.engines.cosyvoice3.flow import ESTIMATOR_INPUTS, Flow, OrtEstimator
from pipeline.engines.cosyvoice3.flow_rknn import (
    RknnEstimator,
    choose_bucket,
    detect_npu,
    make_estimator,
    parse_core_mask,
    rknn_estimator_from_bundle,
    time_freq,
)
from pipeline.shared import cpu
from pipeline.shared.bundle import Bundle, file_entry
from pipeline.shared.errors import BackendError, BundleError, InputError

BUCKETS = (100, 200, 256)
T_EMB = {"dim": 256, "scale": 1000.0, "max_period": 10000.0}
EXACT_TOL = 1e-4  # padded fixed-shape graph vs the dynamic graph at the exact length, both FP32
MEL_TOL = 1e-3  # fixture README: mel 1e-3 abs


def _err(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --- the stand-in for rknnlite.api.RKNNLite -------------------------------------------------------------------


class StandInRKNNLite:
    """rknn-toolkit-lite2 2.5.0's RKNNLite API, running the ONNX bytes of a test ".rknn" file on ONNX Runtime."""

    NPU_CORE_AUTO, NPU_CORE_0, NPU_CORE_1, NPU_CORE_2 = 0, 1, 2, 4
    NPU_CORE_0_1, NPU_CORE_0_1_2, NPU_CORE_ALL = 3, 7, 0xFFFF
    instances: list[StandInRKNNLite] = []

    def __init__(self, verbose: bool = False, verbose_file: str | None = None) -> None:
        self.data: bytes | None = None
        self.sess = None
        self.path: str | None = None
        self.core_mask: int | None = None
        self.calls: list[dict[str, np.ndarray]] = []
        self.released = False
        type(self).instances.append(self)

    def load_rknn(self, path: str, key_path: str | None = None) -> int:
        if not os.path.exists(path):
            return -1
        self.path, self.data = path, Path(path).read_bytes()
        return 0

    def init_runtime(self, target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO) -> int:
        import onnxruntime as ort

        if self.data is None:
            return -1
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        try:
            self.sess = ort.InferenceSession(self.data, opts, providers=["CPUExecutionProvider"])
        except Exception:
            return -1
        self.core_mask = core_mask
        return 0

    def inference(self, inputs, data_type=None, data_format=None, inputs_pass_through=None, get_frame_id=False,
                  reuse_outputs=False):
        if self.sess is None:
            return None
        specs = self.sess.get_inputs()
        if len(inputs) != len(specs):
            return None
        for spec, a in zip(specs, inputs, strict=True):
            if list(a.shape) != list(spec.shape) or a.dtype != np.float32:
                return None  # the NPU runtime refuses inputs of another shape than the graph's
        feeds = {spec.name: a for spec, a in zip(specs, inputs, strict=True)}
        self.calls.append({k: v.copy() for k, v in feeds.items()})
        return self.sess.run(None, feeds)

    def release(self) -> None:
        self.sess = None
        self.released = True


@pytest.fixture
def standin(monkeypatch):
    cls = type("RKNNLite", (StandInRKNNLite,), {"instances": []})
    pkg, api = types.ModuleType("rknnlite"), types.ModuleType("rknnlite.api")
    api.RKNNLite = cls
    pkg.api = api
    monkeypatch.setitem(sys.modules, "rknnlite", pkg)
    monkeypatch.setitem(sys.modules, "rknnlite.api", api)
    return cls


@pytest.fixture
def no_rknnlite(monkeypatch):
    monkeypatch.setitem(sys.modules, "rknnlite", None)  # `import rknnlite.api` raises ImportError
    monkeypatch.setitem(sys.modules, "rknnlite.api", None)


# --- a converted tiny flow with fixed-shape graphs -------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tiny_src: Path, tmp_path_factory) -> tuple[Path, dict]:
    import torch

    from pipeline.engines.cosyvoice3.convert.dit_torch import load_dit

    out = tmp_path_factory.mktemp("rknnflow")
    sec = convert_flow(tiny_src, out, load_source_config(tiny_src))
    dims = {k: v for k, v in sec["dims"].items() if k not in ("static_chunk_size", "num_decoding_left_chunks")}
    model = load_dit(torch.load(tiny_src / FLOW_PT, map_location="cpu", weights_only=True), dims)
    for n in BUCKETS:
        export_fixed_onnx(model, out / onnx_file_name(n), n)
        shutil.copyfile(out / onnx_file_name(n), out / rknn_file_name(n))  # the stand-in's ".rknn" is ONNX
    (out / "flow_estimator.s999.rknn").write_bytes(b"not a graph")
    return out, sec


def make_bundle(converted, buckets=BUCKETS, *, rknn: bool = True, files: dict | None = None) -> Bundle:
    out, section = converted
    sec = copy.deepcopy(section)
    names = sec.pop("files")
    if rknn:
        files = files or {n: rknn_file_name(n) for n in buckets}
        sec["estimator"]["rknn"] = manifest_section(
            target="rk3588", toolkit="2.5.0", mel_bins=80, spk_dim=80, time_embedding=T_EMB,
            buckets=[{"seq": n, "file": files[n]} for n in buckets])
        names = [*names, *files.values()]
    return Bundle(out, {"flow": sec, "files": {n: file_entry(out / n) for n in names}})


@pytest.fixture(scope="module")
def ort(converted) -> OrtEstimator:
    out, sec = converted
    return OrtEstimator(out / sec["estimator"]["onnx"], n_threads=1)


@pytest.fixture(scope="module")
def est_inputs(goldens) -> tuple[np.ndarray, ...]:
    return tuple(goldens[f"flow_est0_{k}"] for k in ESTIMATOR_INPUTS)


def rknn_est(converted, buckets=BUCKETS, log=None, **kw) -> RknnEstimator:
    out, sec = converted
    kw.setdefault("fallback", lambda: OrtEstimator(out / sec["estimator"]["onnx"], n_threads=1))
    return RknnEstimator({n: out / rknn_file_name(n) for n in buckets}, mel_bins=80, time_embedding=T_EMB,
                         log=log if log is not None else (lambda m: None), **kw)


# --- bucket choice, padding, slicing ----------------------------------------------------------------------------


def test_choose_bucket():
    assert choose_bucket(1, [200, 300]) == 200
    assert choose_bucket(200, [200, 300]) == 200
    assert choose_bucket(201, [300, 200, 1000]) == 300
    assert choose_bucket(1000, [200, 1000]) == 1000
    assert choose_bucket(1001, [200, 1000]) is None


def test_time_freq_is_the_dit_embedding():
    import torch

    from pipeline.engines.cosyvoice3.convert.dit_torch import TimestepEmbedding

    t = np.array([0.0, 0.0123116374, 0.5, 0.843565524, 0.9, 1.0], np.float32)
    with torch.no_grad():
        want = TimestepEmbedding(8).time_embed(torch.from_numpy(t)).numpy()
    got = time_freq(t, **T_EMB)
    assert got.dtype == np.float32 and got.shape == (6, 256)
    assert _err(got, want) < 1e-4  # torch's float32 exp is off by 1 ulp in one frequency; ×1000 → 6e-5


def test_padded_bucket_equals_onnx_at_exact_length(standin, converted, ort, est_inputs, goldens):
    logs: list[str] = []
    est = rknn_est(converted, log=logs.append)
    out = est(*est_inputs)
    ref = ort(*est_inputs)
    assert out.shape == (2, 80, 180)
    assert _err(out, ref) < EXACT_TOL
    assert _err(out, goldens["flow_est0_out"]) < EXACT_TOL
    (rt,) = standin.instances
    assert Path(rt.path).name == "flow_estimator.s200.rknn"  # 180 frames: s200, not the larger s256
    fed = rt.calls[-1]
    assert fed["x"].shape == (2, 80, 200) and fed["t_freq"].shape == (2, 256)
    assert (fed["mask"][..., :180] == 1).all() and (fed["mask"][..., 180:] == 0).all()
    assert not fed["x"][..., 180:].any() and not fed["mu"][..., 180:].any() and not fed["cond"][..., 180:].any()
    assert any("180 mel frames → RKNN graph s200 (20 frames right-padded with mask 0)" in m for m in logs)
    assert est.last_choice == {"frames": 180, "backend": "rknn-npu", "graph": 200, "padding": 20}


def test_exact_bucket_length_needs_no_padding(standin, converted, ort, est_inputs):
    cut = tuple(a[..., :100] if a.ndim == 3 else a for a in est_inputs)
    est = rknn_est(converted)
    assert _err(est(*cut), ort(*cut)) < EXACT_TOL
    assert est.last_choice["graph"] == 100 and est.last_choice["padding"] == 0


def test_flow_mel_on_rknn_equals_onnx(standin, converted, goldens):
    logs: list[str] = []
    bundle = make_bundle(converted)
    p = len(goldens["in_prompt_speech_token"])
    args = (goldens["in_flow_token"].astype(np.int64), goldens["in_prompt_speech_token"].astype(np.int64),
            goldens["in_prompt_feat"][0][: 2 * p], goldens["in_embedding"])
    noise = goldens["flow_noise"][0]
    rk = Flow.from_bundle(bundle, estimator=rknn_estimator_from_bundle(bundle, log=logs.append, n_threads=1))
    mel_rk = rk(*args, noise=noise)
    mel_ort = Flow.from_bundle(bundle, n_threads=1)(*args, noise=noise)
    assert mel_rk.shape == (80, 80)
    assert _err(mel_rk, mel_ort) < EXACT_TOL
    assert _err(mel_rk, goldens["flow_mel"][0]) < MEL_TOL
    # preload "smallest" loaded s100 at start; the 10 solver steps ran on s200 and said so once
    assert [Path(r.path).name for r in standin.instances] == ["flow_estimator.s100.rknn", "flow_estimator.s200.rknn"]
    assert len(standin.instances[1].calls) == 10 and not standin.instances[0].calls
    assert sum("→ RKNN graph s200" in m for m in logs) == 1
    assert sum("loaded on the NPU" in m for m in logs) == 2


# --- overflow ---------------------------------------------------------------------------------------------------


def test_overflow_runs_on_onnx_and_says_so(standin, converted, ort, est_inputs):
    logs: list[str] = []
    est = rknn_est(converted, buckets=(100,), log=logs.append)
    out = est(*est_inputs)
    assert _err(out, ort(*est_inputs)) < 1e-6  # it is the ONNX Runtime result
    assert not standin.instances  # nothing loaded on the "NPU"
    assert est.last_choice == {"frames": 180, "backend": "onnxruntime-cpu", "graph": None, "padding": 0}
    (msg,) = logs
    assert "180 mel frames exceed the largest RKNN graph s100" in msg and "ONNX Runtime CPU" in msg
    assert "--flow-buckets entry ≥ 180" in msg


def test_overflow_error_policy(standin, converted, est_inputs):
    est = rknn_est(converted, buckets=(100,), overflow="error", fallback=None)
    with pytest.raises(BackendError, match="180 mel frames exceed the largest RKNN graph s100"):
        est(*est_inputs)
    with pytest.raises(InputError, match="needs a fallback"):
        rknn_est(converted, fallback=None)


# --- core mask, loading, runtime failures -----------------------------------------------------------------------


def test_core_mask(standin, converted, est_inputs):
    assert parse_core_mask("auto") == 0 and parse_core_mask(None) == 0
    assert parse_core_mask("0_1_2") == parse_core_mask("0,1,2") == 7
    assert parse_core_mask("1") == 2 and parse_core_mask("ALL") == 0xFFFF and parse_core_mask(3) == 3
    for bad in ("3", "npu", 5):
        with pytest.raises(InputError):
            parse_core_mask(bad)
    est = rknn_est(converted, core_mask="0_1_2", preload=(200,))
    assert standin.instances[0].core_mask == standin.NPU_CORE_0_1_2
    assert "core_mask 0_1_2" in est.name and "graphs s100/s200/s256" in est.name


def test_runtime_failures_are_errors(standin, converted, est_inputs, monkeypatch):
    out, _ = converted
    with pytest.raises(BackendError, match="cannot read the flow graph"):
        RknnEstimator({200: out / "missing.rknn"}, mel_bins=80, overflow="error", preload=(200,))
    with pytest.raises(BackendError, match="init_runtime failed for flow_estimator.s999.rknn"):
        RknnEstimator({999: out / "flow_estimator.s999.rknn"}, mel_bins=80, overflow="error", preload=(999,))
    assert standin.instances[-1].released
    est = rknn_est(converted)
    monkeypatch.setattr(standin, "inference", lambda self, inputs, **kw: None)
    with pytest.raises(BackendError, match="RKNN inference failed on graph s200 for 180 frames"):
        est(*est_inputs)
    est.close()
    assert all(r.released for r in standin.instances)


def test_rknnlite_missing_is_an_error(no_rknnlite, converted):
    with pytest.raises(BackendError, match="rknn-toolkit-lite2 does not import"):
        rknn_est(converted)


def test_malformed_manifest_section(standin, converted):
    b = make_bundle(converted)
    del b.manifest["flow"]["estimator"]["rknn"]["buckets"]
    with pytest.raises(BundleError, match="flow.estimator.rknn is malformed"):
        rknn_estimator_from_bundle(b)
    b = make_bundle(converted)
    del b.manifest["flow"]["estimator"]["rknn"]["time_embedding"]["scale"]
    with pytest.raises(BundleError, match="malformed"):
        rknn_estimator_from_bundle(b)
    b = make_bundle(converted)
    b.manifest["flow"]["estimator"]["rknn"]["inputs"] = list(ESTIMATOR_INPUTS)  # a graph taking t, not t_freq
    with pytest.raises(BundleError, match="this runtime feeds"):
        rknn_estimator_from_bundle(b)


# --- NPU detection and backend selection ------------------------------------------------------------------------


def _dt(tmp_path: Path, *compat: str) -> Path:
    p = tmp_path / f"compatible-{len(list(tmp_path.glob('compatible-*')))}"
    p.write_bytes(b"".join(c.encode() + b"\0" for c in compat))
    return p


def test_detect_npu(standin, tmp_path):
    dev, nodt = tmp_path / "rknpu", tmp_path / "no-compatible"
    lib = lambda: "/usr/lib/librknnrt.so"  # noqa: E731
    ok, why = detect_npu(device=dev, compatible=nodt, librknnrt=lib)
    assert not ok and f"{dev} is absent" in why and "rockchip,rk3588" in why
    ok, why = detect_npu(device=dev, compatible=_dt(tmp_path, "radxa,rock-5b", "rockchip,rk3588"), librknnrt=lib)
    assert ok and "the device tree lists rockchip,rk3588" in why and "/usr/lib/librknnrt.so" in why
    ok, why = detect_npu(device=dev, compatible=_dt(tmp_path, "xunlong,orangepi-5", "rockchip,rk3588s"),
                         librknnrt=lib)
    assert ok  # RK3588S: same NPU
    ok, why = detect_npu(device=dev, compatible=_dt(tmp_path, "rockchip,rk3576"), librknnrt=lib)
    assert not ok and "this board is a rk3576" in why
    dev.touch()
    ok, why = detect_npu(device=dev, compatible=nodt, librknnrt=lambda: None)
    assert not ok and "librknnrt.so" in why and f"{dev} is present" in why
    assert detect_npu(device=dev, compatible=nodt, librknnrt=lib)[0]


def test_detect_npu_without_runtime(no_rknnlite, tmp_path):
    (tmp_path / "rknpu").touch()
    ok, why = detect_npu(device=tmp_path / "rknpu", compatible=tmp_path / "x", librknnrt=lambda: "lib")
    assert not ok and "rknn-toolkit-lite2 does not import" in why and "pip install rknn-toolkit-lite2" in why


def test_detect_npu_here():
    ok, why = detect_npu()
    if not Path("/dev/rknpu").exists() and not Path("/proc/device-tree/compatible").exists():
        assert not ok and "/dev/rknpu is absent" in why


def _absent(tmp_path: Path):
    return lambda target: detect_npu(target, device=tmp_path / "rknpu", compatible=tmp_path / "none")


def _present(target: str) -> tuple[bool, str]:
    return True, "test: NPU present"


def test_make_estimator_onnx_and_auto_without_npu(standin, converted, tmp_path):
    logs: list[str] = []
    est, why = make_estimator(make_bundle(converted), "onnx", n_threads=1, log=logs.append)
    assert isinstance(est, OrtEstimator) and "asked for it" in why
    est, why = make_estimator(make_bundle(converted, rknn=False), "auto", n_threads=1, log=logs.append)
    assert isinstance(est, OrtEstimator) and "the bundle has no RKNN graphs" in why
    est, why = make_estimator(make_bundle(converted), "auto", n_threads=1, log=logs.append,
                              detect=_absent(tmp_path))
    assert isinstance(est, OrtEstimator) and why.startswith("flow on ONNX Runtime CPU: no RK3588 NPU")
    assert "rknpu is absent" in why
    assert logs == [m for m in logs if m.startswith("flow on ONNX Runtime CPU: ")] and len(logs) == 3
    assert not standin.instances


def test_make_estimator_rknn_refuses_instead_of_falling_back(standin, converted, tmp_path):
    with pytest.raises(BackendError, match="--flow-backend rknn: no RK3588 NPU"):
        make_estimator(make_bundle(converted), "rknn", detect=_absent(tmp_path), log=lambda m: None)
    with pytest.raises(BackendError, match="--flow-backend rknn: the bundle has no RKNN graphs"):
        make_estimator(make_bundle(converted, rknn=False), "rknn", detect=_present, log=lambda m: None)
    bad = make_bundle(converted, buckets=(999,), files={999: "flow_estimator.s999.rknn"})
    with pytest.raises(BackendError, match="init_runtime failed"):
        make_estimator(bad, "rknn", detect=_present, log=lambda m: None)
    with pytest.raises(InputError, match="choose auto, rknn, onnx"):
        make_estimator(make_bundle(converted), "npu", log=lambda m: None)


def test_make_estimator_auto_picks_rknn_when_present(standin, converted):
    logs: list[str] = []
    est, why = make_estimator(make_bundle(converted), "auto", core_mask="0_1", log=logs.append, detect=_present)
    assert isinstance(est, RknnEstimator)
    assert why == ("flow on the RKNN NPU (auto: test: NPU present); graphs s100/s200/s256 (mel frames), "
                   "core_mask 0_1; longer calls run on ONNX Runtime CPU, logged")
    assert why in logs
    assert [Path(r.path).name for r in standin.instances] == ["flow_estimator.s100.rknn"]  # checked at start
    bad = make_bundle(converted, buckets=(999,), files={999: "flow_estimator.s999.rknn"})
    est, why = make_estimator(bad, "auto", n_threads=1, log=logs.append, detect=_present)
    assert isinstance(est, OrtEstimator)
    assert "the NPU was detected (test: NPU present) but the RKNN runtime failed" in why and why == logs[-1]


def test_onnx_factory_serves_choice_and_overflow(standin, converted, est_inputs, tmp_path):
    made: list[str] = []

    def factory() -> OrtEstimator:
        made.append("ort")
        out, sec = converted
        return OrtEstimator(out / sec["estimator"]["onnx"], n_threads=1)

    est, _ = make_estimator(make_bundle(converted), "auto", detect=_absent(tmp_path), onnx_factory=factory,
                            log=lambda m: None)
    assert isinstance(est, OrtEstimator) and made == ["ort"]
    est, _ = make_estimator(make_bundle(converted, buckets=(100,)), "auto", detect=_present, onnx_factory=factory,
                            log=lambda m: None)
    assert isinstance(est, RknnEstimator) and made == ["ort"]  # built only when a call overflows
    est(*est_inputs)
    assert made == ["ort", "ort"] and est.last_choice["graph"] is None


# --- CPU placement ----------------------------------------------------------------------------------------------


def _sysfs(tmp_path: Path, values: dict[int, int], rel: str = "cpu_capacity") -> Path:
    root = tmp_path / "cpu"
    for i, v in values.items():
        f = root / f"cpu{i}" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"{v}\n")
    (root / "cpufreq").mkdir(parents=True, exist_ok=True)  # not a cpuN folder: ignored
    return root


RK3588_CAPACITY = {0: 414, 1: 414, 2: 414, 3: 414, 4: 1024, 5: 1024, 6: 1024, 7: 1024}


def test_rockchip_soc(tmp_path):
    assert cpu.rockchip_soc(_dt(tmp_path, "radxa,rock-5b", "rockchip,rk3588")) == "rk3588"
    assert cpu.is_rk3588(_dt(tmp_path, "friendlyelec,cm3588", "rockchip,rk3588s"))
    assert cpu.rockchip_soc(_dt(tmp_path, "rockchip,rk3568-evb", "rockchip,rk3568")) == "rk3568"
    assert cpu.rockchip_soc(_dt(tmp_path, "raspberrypi,5-model-b", "brcm,bcm2712")) is None
    assert cpu.rockchip_soc(tmp_path / "absent") is None and cpu.read_compatible(tmp_path / "absent") == []


def test_big_cores(tmp_path):
    assert cpu.big_cores(_sysfs(tmp_path / "a", RK3588_CAPACITY)) == [4, 5, 6, 7]
    freqs = {i: (1800000 if i < 4 else 2352000) for i in range(8)}
    assert cpu.big_cores(_sysfs(tmp_path / "b", freqs, "cpufreq/cpuinfo_max_freq")) == [4, 5, 6, 7]
    assert cpu.big_cores(_sysfs(tmp_path / "c", {0: 1024, 1: 1024})) == []
    assert cpu.big_cores(tmp_path / "nothing") == []


def test_plan_cpus(tmp_path, monkeypatch):
    monkeypatch.delenv(cpu.CPUS_ENV, raising=False)
    rk, other = _dt(tmp_path, "rockchip,rk3588"), _dt(tmp_path, "brcm,bcm2712")
    sysfs = _sysfs(tmp_path, RK3588_CAPACITY)
    every = range(8)
    cores, why = cpu.plan_cpus(compatible=rk, sys_cpu=sysfs, allowed=every)
    assert cores == [4, 5, 6, 7] and "Cortex-A76 cores 4-7" in why and "capacity" in why
    cores, why = cpu.plan_cpus(compatible=rk, sys_cpu=tmp_path / "empty", allowed=every)
    assert cores == [4, 5, 6, 7] and "RK3588 layout" in why
    cores, why = cpu.plan_cpus(compatible=rk, sys_cpu=sysfs, allowed=[0, 1, 4, 5])
    assert cores == [4, 5]
    cores, why = cpu.plan_cpus(compatible=rk, sys_cpu=sysfs, allowed=[0, 1])
    assert cores is None and "outside this process's allowed CPUs" in why
    cores, why = cpu.plan_cpus(compatible=other, sys_cpu=sysfs, allowed=every)
    assert cores is None and "not an RK3588" in why
    assert cpu.plan_cpus("all", compatible=rk, sys_cpu=sysfs, allowed=every)[0] is None
    assert cpu.plan_cpus("0-1,6", compatible=other, allowed=every) == ([0, 1, 6], "pinned to CPUs 0,1,6 as asked")
    monkeypatch.setenv(cpu.CPUS_ENV, "2-3")
    assert cpu.plan_cpus(compatible=rk, sys_cpu=sysfs, allowed=every)[0] == [2, 3]
    with pytest.raises(InputError, match="not available to this process"):
        cpu.plan_cpus("4-9", compatible=rk, allowed=every)
    for bad in ("4-2", "a76", ","):
        with pytest.raises(InputError, match="--cpus"):
            cpu.plan_cpus(bad, compatible=rk, allowed=every)


def test_pin_threads_moves_existing_threads():
    original = sorted(os.sched_getaffinity(0))
    target = original[:1]
    started, stop, seen = threading.Event(), threading.Event(), {}

    def worker() -> None:
        seen["tid"] = threading.get_native_id()
        started.set()
        stop.wait(10)

    th = threading.Thread(target=worker)
    th.start()
    started.wait(10)
    try:
        assert cpu.pin_threads(target) == target
        assert sorted(os.sched_getaffinity(seen["tid"])) == target  # a thread that existed before pinning
    finally:
        cpu.pin_threads(original)
        stop.set()
        th.join()
    assert sorted(os.sched_getaffinity(0)) == original


def test_place_process_logs_its_reason(tmp_path):
    logs: list[str] = []
    cores, why = cpu.place_process("all", log=logs.append)
    assert cores is None and logs == [why] and "pinning off" in why
