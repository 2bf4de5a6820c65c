"""Qwen3-TTS speech tokenizer decoder (spec §9-§11): torch re-implementation, ONNX export, runtime chunking,
ICL output assembly and streaming, against the tiny fixture's goldens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.engines.qwen3_tts.convert.decoder_config import DecoderDims, decoder_dims
from pipeline.engines.qwen3_tts.convert.decoder_export import (
    DECODER_FILE,
    STREAM_FILE,
    convert_decoder,
    read_speech_tokenizer,
)
from pipeline.engines.qwen3_tts.convert.decoder_random import write_random_speech_tokenizer
from pipeline.engines.qwen3_tts.convert.decoder_torch import SpeechDecoder, build_decoder, chunked_decode
from pipeline.engines.qwen3_tts.decoder import CodeDecoder, chunk_plan, icl_cut, voice_clone_wav
from pipeline.engines.qwen3_tts.decoder_stream import StatefulStreamDecoder, StreamingDecoder
from pipeline.shared.errors import InputError, SourceError

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-qwen3-tts"
WAV_TOL = 1e-3  # fixture README: waveforms max |diff| <= 1e-3
REL_TOL = 1e-4  # intermediates: <= 1e-4 relative to their scale
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The tiny module's ops are microseconds; with 2 threads on a busy 2-core machine they spin for ms."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def goldens():
    return dict(np.load(FIXTURE / "goldens.npz"))


@pytest.fixture(scope="module")
def net() -> SpeechDecoder:
    cfg, state = read_speech_tokenizer(FIXTURE)
    return build_decoder(decoder_dims(cfg["decoder_config"]), state)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("q3dec")
    info = convert_decoder(FIXTURE, out)
    return out, info


@pytest.fixture(scope="module")
def dec(converted) -> CodeDecoder:
    out, info = converted
    return CodeDecoder(out / info["decoder_onnx"], info["dims"], n_threads=1)


def _tcodes(codes: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(codes, np.int64).T[None].copy())


def _maxdiff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


# ---------------------------------------------------------------------------------------------------------
# torch module against upstream's intermediates


@pytest.mark.parametrize("stage,golden,layout", [
    ("quantized", "dec_quantized", "ct"),
    ("pre_conv", "dec_pre_conv_out", "ct"),
    ("transformer", "dec_transformer_out", "tc"),
    ("upsampled", "dec_upsampled", "ct"),
])
def test_torch_intermediates(net, goldens, stage, golden, layout):
    with torch.no_grad():
        got = net.forward_stages(_tcodes(goldens["in_dec_codes"]))[stage][0].numpy()
    ref = goldens[golden]
    assert _maxdiff(got, ref) <= REL_TOL * float(np.max(np.abs(ref)))


def test_torch_wav(net, goldens):
    with torch.no_grad():
        got = net(_tcodes(goldens["in_dec_codes"]))[0, 0].numpy()
    assert _maxdiff(got, goldens["dec_wav"]) <= WAV_TOL


# ---------------------------------------------------------------------------------------------------------
# converter and runtime


def test_convert_result(converted):
    out, info = converted
    assert (out / DECODER_FILE).is_file() and info["decoder_onnx"] == DECODER_FILE
    assert info["dims"]["samples_per_frame"] == 1920 and info["dims"]["num_quantizers"] == 16
    assert info["onnx_check_max_abs_diff"] <= WAV_TOL
    assert (out / STREAM_FILE).is_file() and info["decoder_stream_onnx"] == STREAM_FILE
    assert info["stream_check_max_abs_diff"] <= WAV_TOL
    assert set(info["files"]) == {DECODER_FILE, STREAM_FILE}
    json.dumps(info)  # goes into a manifest


def test_runtime_dec_wav(dec, goldens):
    assert _maxdiff(dec.decode(goldens["in_dec_codes"]), goldens["dec_wav"]) <= WAV_TOL


def test_runtime_icl_output(dec, goldens):
    prompt, gen = goldens["prompt_codes"], goldens["greedy_codes"]
    full = dec.decode(np.concatenate([prompt, gen]))
    assert _maxdiff(full, goldens["greedy_wav_full"]) <= WAV_TOL
    assert _maxdiff(voice_clone_wav(dec, gen, prompt), goldens["greedy_wav"]) <= WAV_TOL


def test_stream_graph_alone_serves_one_shot_decode(converted, goldens):
    """CodeDecoder on q3_decoder_stream.onnx (zero states) reproduces the goldens, so one graph can ship."""
    out, info = converted
    d = CodeDecoder(out / info["decoder_stream_onnx"], info["dims"], n_threads=1)
    assert _maxdiff(d.decode(goldens["in_dec_codes"]), goldens["dec_wav"]) <= WAV_TOL
    prompt, gen = goldens["prompt_codes"], goldens["greedy_codes"]
    assert _maxdiff(voice_clone_wav(d, gen, prompt), goldens["greedy_wav"]) <= WAV_TOL


def test_xvector_mode_has_no_cut(dec, goldens):
    gen = goldens["greedy_codes"]
    wav = voice_clone_wav(dec, gen, None)
    assert len(wav) == len(gen) * 1920
    assert _maxdiff(wav, dec.decode(gen)) == 0.0


def test_icl_cut_is_python_float_arithmetic():
    assert icl_cut(30, 7, 37 * 1920) == 30 * 1920
    # 1/49 * 94080 = 1919.999...: upstream keeps one sample of the prompt part
    assert icl_cut(1, 48, 49 * 1920) == 1919
    assert icl_cut(0, 0, 0) == 0


def test_chunk_plan_matches_upstream_rule():
    assert chunk_plan(40) == [(0, 0, 40)]
    assert chunk_plan(330) == [(0, 0, 300), (275, 300, 330)]
    assert chunk_plan(600) == [(0, 0, 300), (275, 300, 600)]
    assert chunk_plan(0) == []


def test_chunk_boundary_against_torch(dec, net):
    """330 frames cross upstream's 300-frame chunk: the runtime equals the torch module under the same rule,
    and the rule matters (one call over all 330 frames differs after frame 300)."""
    codes = np.random.RandomState(7).randint(0, 2048, size=(330, 16))
    got = dec.decode(codes)
    ref = chunked_decode(net, _tcodes(codes))[0, 0].numpy()
    assert _maxdiff(got, ref) <= WAV_TOL
    single = dec.run(codes)
    assert _maxdiff(got[: 300 * 1920], single[: 300 * 1920]) <= WAV_TOL
    assert _maxdiff(got[300 * 1920:], single[300 * 1920:]) > 10 * WAV_TOL


def test_padding_and_clamp(dec, goldens):
    codes = goldens["in_dec_codes"][:10]
    padded = np.concatenate([codes, -np.ones((3, 16), np.int64)])
    wav = dec.decode(padded)
    assert len(wav) == 10 * 1920  # frames whose code 0 is -1 are not counted
    assert _maxdiff(wav, dec.decode(codes)) <= 1e-5  # causal: the clamped rows do not reach back


def test_bad_codes_are_refused(dec):
    with pytest.raises(InputError):
        dec.decode(np.zeros((4, 15), np.int64))
    with pytest.raises(InputError):
        dec.decode(np.full((4, 16), 2048, np.int64))
    assert dec.decode(np.zeros((0, 16), np.int64)).shape == (0,)


def test_runtime_does_not_import_torch(converted, goldens):
    out, info = converted
    script = (
        "import sys, json, numpy as np\n"
        "sys.modules['torch'] = None\n"
        "from pipeline.engines.qwen3_tts.decoder import CodeDecoder, voice_clone_wav\n"
        "from pipeline.engines.qwen3_tts.decoder_stream import StatefulStreamDecoder, StreamingDecoder\n"
        f"d = CodeDecoder({str(out / info['decoder_onnx'])!r}, json.loads({json.dumps(info['dims'])!r}), 1)\n"
        "w = voice_clone_wav(d, np.ones((3, 16), np.int64), np.ones((2, 16), np.int64))\n"
        "s = StreamingDecoder(d).push(np.ones((2, 16), np.int64))\n"
        f"z = StatefulStreamDecoder({str(out / info['decoder_stream_onnx'])!r}, None, 1)\n"
        "print(len(w), len(s), len(z.push(np.ones((1, 16), np.int64))))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(3 * 1920), str(2 * 1920), "1920"]


# ---------------------------------------------------------------------------------------------------------
# streaming (spec §11)


def test_streaming_upstream_schedule_matches_one_shot(dec):
    codes = np.random.RandomState(8).randint(0, 2048, size=(330, 16))
    one = dec.decode(codes)
    s = StreamingDecoder(dec)
    got = np.concatenate([s.push(codes[i: i + 13]) for i in range(0, 330, 13)])
    # measured 0.0 with ONNX Runtime on this machine; different call lengths could reorder float sums
    assert _maxdiff(got, one) <= 1e-5


def test_streaming_icl_frame_by_frame(dec, goldens):
    prompt, gen = goldens["prompt_codes"], goldens["greedy_codes"]
    s = StreamingDecoder(dec, prompt_codes=prompt)
    got = np.concatenate([s.push(f[None]) for f in gen])
    assert _maxdiff(got, goldens["greedy_wav_full"][len(prompt) * 1920:]) <= WAV_TOL
    assert _maxdiff(got, goldens["greedy_wav"]) <= WAV_TOL  # here the cut is exactly T12 * 1920


@pytest.mark.parametrize("piece", [1, 7, 300])
def test_stateful_stream_matches_one_shot(converted, dec, piece):
    """Each frame decoded once with carried state, upstream's windows (reset + 25 context frames at 300, 600)."""
    out, info = converted
    codes = np.random.RandomState(10).randint(0, 2048, size=(610, 16))
    one = dec.decode(codes)
    s = StatefulStreamDecoder(out / info["decoder_stream_onnx"], info["dims"], n_threads=1)
    got = np.concatenate([s.push(codes[i: i + piece]) for i in range(0, len(codes), piece)])
    assert _maxdiff(got, one) <= WAV_TOL  # float32 reordering only (measured 1.7e-4 .. 3.2e-4)


def test_stateful_stream_icl(converted, goldens):
    out, info = converted
    s = StatefulStreamDecoder(out / info["decoder_stream_onnx"], info["dims"], n_threads=1,
                              prompt_codes=goldens["prompt_codes"])
    assert s.n_prompt == len(goldens["prompt_codes"])
    voice = s.fork()  # a per-voice primed state, reused
    got = np.concatenate([s.push(f[None]) for f in goldens["greedy_codes"]])
    assert _maxdiff(got, goldens["greedy_wav"]) <= WAV_TOL
    again = voice.push(goldens["greedy_codes"])
    assert _maxdiff(again, goldens["greedy_wav"]) <= WAV_TOL
    assert voice.frames == s.frames == len(goldens["prompt_codes"]) + len(goldens["greedy_codes"])


def test_streaming_bounded_context_is_approximate(dec):
    """Bounded left context: not exact. Exact only once the context covers the receptive field
    (layers * (window - 1) plus ~12 frames of convs); the figures are printed for the record."""
    codes = np.random.RandomState(9).randint(0, 2048, size=(300, 16))
    one = dec.decode(codes)
    diffs = {}
    for ctx in (25, 72, 2 * 71 + 16):
        s = StreamingDecoder(dec, left_context=ctx)
        got = np.concatenate([s.push(codes[i: i + 10]) for i in range(0, 300, 10)])
        diffs[ctx] = _maxdiff(got, one)
    print("bounded-context streaming max |diff| vs one-shot:", diffs)
    assert diffs[25] > WAV_TOL  # a shorter history really changes the output (random weights)
    assert diffs[2 * 71 + 16] <= WAV_TOL
    with pytest.raises(InputError):
        StreamingDecoder(dec, left_context=10)


# ---------------------------------------------------------------------------------------------------------
# real structure


def test_real_size_structure_matches_spec():
    """The release's dims (spec §1.4) build the module with §1.5's tensor shapes and ~114 M parameters."""
    with torch.device("meta"):
        n = SpeechDecoder(DecoderDims())
    sd = n.state_dict()
    assert tuple(sd["quantizer.rvq_first.vq.layers.0._codebook.embedding_sum"].shape) == (2048, 256)
    assert tuple(sd["quantizer.rvq_rest.output_proj.weight"].shape) == (512, 256, 1)
    assert tuple(sd["pre_conv.conv.weight"].shape) == (1024, 512, 3)
    assert tuple(sd["pre_transformer.layers.7.self_attn.q_proj.weight"].shape) == (1024, 512)
    assert tuple(sd["pre_transformer.layers.7.self_attn.o_proj.weight"].shape) == (512, 1024)
    assert tuple(sd["upsample.1.0.conv.weight"].shape) == (1024, 1024, 2)
    assert tuple(sd["upsample.1.1.pwconv1.weight"].shape) == (4096, 1024)
    assert tuple(sd["decoder.0.conv.weight"].shape) == (1536, 1024, 7)
    assert tuple(sd["decoder.1.block.1.conv.weight"].shape) == (1536, 768, 16)
    assert tuple(sd["decoder.4.block.1.conv.weight"].shape) == (192, 96, 6)
    assert tuple(sd["decoder.6.conv.weight"].shape) == (1, 96, 7)
    n_params = sum(v.numel() for v in sd.values())
    assert 110e6 < n_params < 118e6, n_params


def test_scaled_down_real_structure_exports(tmp_path):
    """Every structural quirk of the release at small widths: heads*head_dim != hidden, codebook tables of
    codebook_dim/2, 8 layers, rates [8, 5, 4, 3] and [2, 2], a call longer than the 72-frame window."""
    d = DecoderDims(codebook_dim=32, latent_dim=32, hidden_size=24, num_hidden_layers=8, num_attention_heads=4,
                    num_key_value_heads=4, head_dim=10, intermediate_size=40, decoder_dim=32)
    write_random_speech_tokenizer(tmp_path / "ckpt" / "speech_tokenizer", d, seed=4)
    info = convert_decoder(tmp_path / "ckpt", tmp_path / "out")
    assert info["decoder_config"]["head_dim"] * info["decoder_config"]["num_attention_heads"] == 40
    rt = CodeDecoder(tmp_path / "out" / info["decoder_onnx"], info["dims"], n_threads=1)
    cfg, state = read_speech_tokenizer(tmp_path / "ckpt")
    ref_net = build_decoder(decoder_dims(cfg["decoder_config"]), state)
    codes = np.random.RandomState(3).randint(0, 2048, size=(80, 16))
    ref = chunked_decode(ref_net, _tcodes(codes))[0, 0].numpy()
    got = rt.decode(codes)
    assert float(np.std(ref)) > 1e-3  # not a degenerate all-zero / all-clamped signal
    assert _maxdiff(got, ref) <= WAV_TOL
    s = StatefulStreamDecoder(tmp_path / "out" / STREAM_FILE, info["dims"], n_threads=1)
    streamed = np.concatenate([s.push(codes[i: i + 9]) for i in range(0, len(codes), 9)])
    assert _maxdiff(streamed, ref) <= WAV_TOL


SMALL = DecoderDims(codebook_dim=8, latent_dim=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2, head_dim=8, intermediate_size=32, decoder_dim=32)


def test_stream_graph_only_bundle(tmp_path):
    write_random_speech_tokenizer(tmp_path / "speech_tokenizer", SMALL, seed=6)
    info = convert_decoder(tmp_path, tmp_path / "out", one_shot=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [STREAM_FILE]
    assert info["decoder_onnx"] == STREAM_FILE and list(info["files"]) == [STREAM_FILE]
    assert len(CodeDecoder(tmp_path / "out" / STREAM_FILE, info["dims"], 1).decode(np.ones((5, 16), int))) == 5 * 1920
    with pytest.raises(ValueError):
        convert_decoder(tmp_path, tmp_path / "out", one_shot=False, stream=False)


def test_bad_checkpoint_is_refused(tmp_path):
    st = write_random_speech_tokenizer(tmp_path / "speech_tokenizer", SMALL)
    cfg = json.loads((st / "config.json").read_text())
    cfg["decoder_config"]["num_hidden_layers"] = 2
    (st / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SourceError, match="missing key"):
        convert_decoder(tmp_path, tmp_path / "out")
    with pytest.raises(SourceError, match="missing"):
        convert_decoder(tmp_path / "nowhere", tmp_path / "out")
