"""HiFT: converter (hift.pt → npz + ONNX + noise tables) and numpy/ORT runtime against upstream goldens."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.engines.cosyvoice3.convert import upstream
from pipeline.engines.cosyvoice3.convert.config import load_source_config
from pipeline.engines.cosyvoice3.convert.hift_export import (
    HIFT_PT,
    UPSTREAM_NOISE_RATE,
    convert_hift,
    fold_weight_norm,
    replay_noise_tables,
)
from pipeline.engines.cosyvoice3.vocoder import HiFT, hann_window, istft, stft
from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import InputError, SourceError

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-cosyvoice3"
NOISE = FIXTURES / "cosyvoice3-noise"
TOL = 1e-3
NOISE_SECONDS = 2.0


def _open(out: Path, sec: dict) -> HiFT:
    return HiFT.from_bundle(Bundle(out, {"hift": sec, "files": {n: {} for n in sec["files"]}}))


@pytest.fixture(scope="session")
def tiny_cfg() -> dict:
    return load_source_config(TINY)


@pytest.fixture(scope="session")
def converted(tmp_path_factory, tiny_cfg) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("hift")
    return out, convert_hift(TINY, out, tiny_cfg, noise_seconds=NOISE_SECONDS)


@pytest.fixture(scope="session")
def hift(converted) -> HiFT:
    return _open(*converted)


def _maxerr(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# -- converter output ---------------------------------------------------------------------------------


def test_manifest_section(converted):
    out, sec = converted
    assert sec["files"] == ["hift_f0.npz", "hift_decoder.onnx", "hift_noise.npz"]
    for name in sec["files"]:
        assert (out / name).is_file()
    assert sec["samples_per_frame"] == 480
    assert sec["noise_samples"] == int(NOISE_SECONDS * 24000)
    assert (sec["n_fft"], sec["hop_len"], sec["nb_harmonics"], sec["sample_rate"]) == (16, 4, 8, 24000)
    assert sec["upsample_rates"] == [8, 5, 3] and sec["upsample_kernel_sizes"] == [16, 11, 7]
    assert (sec["nsf_alpha"], sec["nsf_sigma"], sec["voiced_threshold"]) == (0.1, 0.003, 10.0)
    assert (sec["audio_limit"], sec["conv_pre_look_right"]) == (0.99, 4)
    with np.load(out / sec["f0"]) as z:
        assert z["conv0_weight"].dtype == np.float64 and z["conv0_weight"].shape == (32, 80, 4)
        assert z["conv4_weight"].shape == (32, 32, 3) and z["classifier_weight"].dtype == np.float64
    with np.load(out / sec["noise"]) as z:
        assert z["sine_waves"].shape == (1, sec["noise_samples"], 9) and z["sine_waves"].dtype == np.float32


def test_noise_replay_equals_tiny_goldens(converted, goldens):
    out, sec = converted
    with np.load(out / sec["noise"]) as z:
        rand_ini, table = z["rand_ini"], z["sine_waves"]
    assert np.array_equal(rand_ini, goldens["hift_rand_ini"])
    n = goldens["hift_sine_noise_buffer"].shape[1]
    assert np.array_equal(table[:, :n], goldens["hift_sine_noise_buffer"])


def _real_f0_cfg(tiny_cfg: dict) -> dict:
    cfg = copy.deepcopy(tiny_cfg["yaml"])
    cfg["hift"]["f0_predictor"]["cond_channels"] = 512
    cfg["hift"]["base_channels"] = 512
    return cfg


def test_noise_replay_equals_real_config(tiny_cfg):
    with np.load(NOISE / "hift_real_config_noise.npz") as z:
        ref_ini, ref_prefix = z["rand_ini"], z["sine_waves_prefix"]
    rand_ini, table = replay_noise_tables(_real_f0_cfg(tiny_cfg), ref_prefix.shape[1])
    assert np.array_equal(rand_ini, ref_ini)
    assert np.array_equal(table, ref_prefix)


def test_noise_prefix_does_not_depend_on_draw_length(tiny_cfg):
    # The bundle stores a prefix drawn on its own; upstream draws all 300 s. CPU uniform_ is serial.
    cfg = _real_f0_cfg(tiny_cfg)
    n = 60 * UPSTREAM_NOISE_RATE
    _, short = replay_noise_tables(cfg, n)
    _, full = replay_noise_tables(cfg, upstream.HIFT_NOISE_TABLE_SECONDS * UPSTREAM_NOISE_RATE)
    assert np.array_equal(short[:, :n], full[:, :n])


def test_replay_leaves_global_rng_alone(tiny_cfg):
    torch.manual_seed(123)
    a = torch.rand(4)
    torch.manual_seed(123)
    replay_noise_tables(tiny_cfg["yaml"], 10)
    assert torch.equal(torch.rand(4), a)


# -- runtime stages vs goldens ------------------------------------------------------------------------


def test_f0_matches_goldens(hift, goldens):
    f0 = hift.f0(goldens["flow_mel"][0])
    assert f0.dtype == np.float64
    assert _maxerr(f0, goldens["hift_f0_f64"][0]) <= TOL
    assert _maxerr(f0.astype(np.float32), goldens["hift_f0"][0]) <= TOL
    # the voiced/unvoiced decision is the fragile part downstream
    uv = np.repeat(f0.astype(np.float32) > 10, 480)
    assert np.array_equal(uv, goldens["hift_uv"][0, :, 0] > 0)


def test_source_matches_goldens(hift, goldens):
    s = hift.source(goldens["hift_f0"][0], noise=goldens["hift_sine_noise_buffer"])
    assert s.dtype == np.float32
    assert _maxerr(s, goldens["hift_source"][0, 0]) <= TOL


def test_conv_post_matches_goldens(hift, goldens):
    x = hift.decoder_net(goldens["flow_mel"][0], hift.stft(goldens["hift_source"][0, 0]))
    assert _maxerr(x, goldens["hift_conv_post_out"][0]) <= TOL


def test_causal_convs_pad_one_side_without_slices(converted):
    import onnx

    out, sec = converted
    g = onnx.load(str(out / sec["decoder_onnx"])).graph
    convs = [n for n in g.node if n.op_type == "Conv"]
    pads = [list(next(a for a in n.attribute if a.name == "pads").ints) for n in convs]
    slices = [n for n in g.node if n.op_type == "Slice"]
    assert len(slices) == 1 and slices[0].input[0].startswith("/ups."), "only the reflection pad's x[:, :, 1:2]"
    assert sum(p[0] > 0 and p[1] == 0 for p in pads) >= len(convs) - 4, pads  # left-causal convs
    assert [0, 4] in pads or any(p[0] == 0 and p[1] > 0 for p in pads), "conv_pre looks right"


@pytest.mark.parametrize("inject", [False, True])
def test_speech_matches_goldens(hift, goldens, inject):
    noise = goldens["hift_sine_noise_buffer"] if inject else None
    audio = hift(goldens["flow_mel"][0], noise=noise)
    assert audio.dtype == np.float32
    assert _maxerr(audio, goldens["hift_speech"][0]) <= TOL


def test_streaming_trim_is_a_prefix_of_the_full_output(hift, goldens):
    mel = goldens["flow_mel"][0]
    full = hift(mel)
    for t in (12, 45):
        part = hift(mel[:, :t], finalize=False)
        assert part.shape == ((t - 8) * 480,)
        assert _maxerr(part, full[: part.shape[0]]) <= 1e-5


def test_noise_table_too_short(hift, goldens):
    mel = np.zeros((80, int(NOISE_SECONDS * 50) + 1), np.float32)
    with pytest.raises(InputError, match="noise table"):
        hift(mel)
    with pytest.raises(InputError, match="noise table"):
        hift.source(goldens["hift_f0"][0], noise=goldens["hift_sine_noise_buffer"][:, :-1])


# -- independent references for the numpy DSP --------------------------------------------------------


def test_hann_window():
    w = hann_window(16)
    assert np.allclose(w, torch.hann_window(16, periodic=True).numpy(), atol=1e-7)
    signal = pytest.importorskip("scipy.signal")
    assert np.array_equal(w, signal.get_window("hann", 16, fftbins=True).astype(np.float32))


def test_stft_matches_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4 * 301).astype(np.float32)
    win = hann_window(16)
    re, im = stft(x, 16, 4, win)
    ref = torch.stft(torch.from_numpy(x), 16, 4, 16, window=torch.from_numpy(win), center=True,
                     pad_mode="reflect", return_complex=True).numpy()
    assert re.shape == (9, 302)
    assert _maxerr(re, ref.real) <= 1e-5 and _maxerr(im, ref.imag) <= 1e-5


def test_istft_matches_torch():
    rng = np.random.default_rng(1)
    re = rng.standard_normal((9, 241)).astype(np.float32)
    im = rng.standard_normal((9, 241)).astype(np.float32)  # DC/Nyquist imag included: both ignore it
    win = hann_window(16)
    y = istft(re, im, 16, 4, win)
    ref = torch.istft(torch.complex(torch.from_numpy(re), torch.from_numpy(im)), 16, 4, 16,
                      window=torch.from_numpy(win), center=True).numpy()
    assert y.shape == ref.shape == (4 * 240,)
    assert _maxerr(y, ref) <= 1e-5


def test_fold_weight_norm_matches_torch_parametrization():
    torch.manual_seed(7)
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(6, 5, 3)).double()
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(torch.rand(5, 1, 1, dtype=torch.float64) + 0.5)
    g = conv.parametrizations.weight.original0.detach().numpy()
    v = conv.parametrizations.weight.original1.detach().numpy()
    w = fold_weight_norm(g, v)
    assert w.dtype == np.float64
    assert _maxerr(w, conv.weight.detach().numpy()) <= 1e-14
    assert not np.allclose(w, v)


# -- checkpoint spellings and errors -----------------------------------------------------------------


def _state() -> dict[str, torch.Tensor]:
    return torch.load(TINY / HIFT_PT, map_location="cpu", weights_only=True)


def test_legacy_weight_norm_keys_convert_identically(tmp_path, converted, tiny_cfg, goldens):
    legacy = {}
    for k, t in _state().items():
        k = k.replace("parametrizations.weight.original0", "weight_g")
        k = k.replace("parametrizations.weight.original1", "weight_v")
        legacy["generator." + k] = t
    assert any(k.endswith("weight_g") for k in legacy)
    src = tmp_path / "src"
    src.mkdir()
    torch.save(legacy, src / HIFT_PT)
    sec = convert_hift(src, tmp_path / "out", tiny_cfg, noise_seconds=NOISE_SECONDS)
    out0, sec0 = converted
    for key in ("f0", "noise"):
        with np.load(out0 / sec0[key]) as a, np.load(tmp_path / "out" / sec[key]) as b:
            assert a.files == b.files
            for name in a.files:
                assert np.array_equal(a[name], b[name]), name
    mel = goldens["flow_mel"][0]
    s_stft = _open(out0, sec0).stft(goldens["hift_source"][0, 0])
    assert np.array_equal(_open(tmp_path / "out", sec).decoder_net(mel, s_stft),
                          _open(out0, sec0).decoder_net(mel, s_stft))


def test_missing_hift_pt(tmp_path, tiny_cfg):
    with pytest.raises(SourceError, match="hift.pt"):
        convert_hift(tmp_path, tmp_path / "out", tiny_cfg)


def test_corrupt_hift_pt(tmp_path, tiny_cfg):
    (tmp_path / HIFT_PT).write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(SourceError, match="hift.pt"):
        convert_hift(tmp_path, tmp_path / "out", tiny_cfg)


@pytest.mark.parametrize("drop", ["conv_post.bias", "f0_predictor.condnet.4.parametrizations.weight.original0",
                                  "m_source.l_linear.weight"])
def test_missing_key(tmp_path, tiny_cfg, drop):
    sd = _state()
    del sd[drop]
    torch.save(sd, tmp_path / HIFT_PT)
    with pytest.raises(SourceError, match="hift.pt") as e:
        convert_hift(tmp_path, tmp_path / "out", tiny_cfg)
    assert drop in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_shape_mismatch_names_key(tmp_path, tiny_cfg):
    sd = _state()
    torch.save(sd, tmp_path / HIFT_PT)
    cfg = copy.deepcopy(tiny_cfg)
    cfg["yaml"]["hift"]["base_channels"] = 64
    with pytest.raises(SourceError, match="conv_pre"):
        convert_hift(tmp_path, tmp_path / "out", cfg)
