import os
import subprocess
import sys

import pytest

from pipeline.download import NEEDED_FILES, RL_LLM, select_files
from pipeline.errors import SourceError

LISTING = [
    ".gitattributes", "README.md", "configuration.json", "config.json", "asset/zero_shot_prompt.wav",
    "llm.pt", "llm.rl.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v3.onnx",
    "speech_tokenizer_v3.batch.onnx", "flow.decoder.estimator.fp32.onnx", "cosyvoice3.yaml",
    "CosyVoice-BlankEN/config.json", "CosyVoice-BlankEN/generation_config.json",
    "CosyVoice-BlankEN/merges.txt", "CosyVoice-BlankEN/model.safetensors",
    "CosyVoice-BlankEN/tokenizer_config.json", "CosyVoice-BlankEN/vocab.json",
]


def test_selects_only_what_the_converter_needs():
    files = select_files(LISTING)
    assert set(files) == set(NEEDED_FILES)
    # the 988 MB BlankEN safetensors and the batch tokenizer are never fetched
    assert "CosyVoice-BlankEN/model.safetensors" not in files
    assert "speech_tokenizer_v3.batch.onnx" not in files
    assert RL_LLM not in files
    assert RL_LLM in select_files(LISTING, rl=True)


def test_missing_file_in_listing_is_named():
    with pytest.raises(SourceError, match="hift.pt"):
        select_files([f for f in LISTING if f != "hift.pt"])


def test_offline_error_is_clear(tmp_path):
    env = dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2")
    env.pop("HF_HUB_OFFLINE", None)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "download", str(tmp_path / "ckpt")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "cannot download FunAudioLLM/Fun-CosyVoice3-0.5B-2512" in r.stderr
    assert "Traceback" not in r.stderr


def test_offline_mode_error_is_clear(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "download", str(tmp_path / "ckpt")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "cannot download" in r.stderr and "HF_HUB_OFFLINE" in r.stderr
