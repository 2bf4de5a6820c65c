"""`download --asr` with huggingface_hub's calls replaced (no network): only the files onnx-asr loads are fetched,
into the layout pipeline/shared/asr.py loads,
asr.json last; a failure keeps what was fetched and the next run resumes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest

from pipeline.shared.asr import MANIFEST, AsrMissing, load_transcriber
from pipeline.shared.asr_download import MODELS, download_asr, select_asr_files
from pipeline.shared.asr_testmodels import make_test_asr
from pipeline.shared.errors import SourceError

# what the repositories list (besides what is needed: other exports, quantizations, READMEs)
EXTRA = {
    "istupakov/gigaam-v3-onnx": [".gitattributes", "README.md", "v3_ctc.onnx", "v3_ctc.int8.onnx", "v3_vocab.txt",
                                 "v3_e2e_ctc.onnx", "v3_rnnt_encoder.onnx", "v3_e2e_ctc.yaml"],
    "onnx-community/whisper-base": [".gitattributes", "README.md", "tokenizer.json", "merges.txt",
                                    "onnx/encoder_model_int8.onnx", "onnx/encoder_model_fp16.onnx",
                                    "onnx/decoder_model.onnx", "onnx/decoder_with_past_model.onnx",
                                    "onnx/decoder_model_merged_q4.onnx", "generation_config.json"],
}


class FakeHub:
    """list_repo_files / hf_hub_download over a local copy of the test models (the 'repositories')."""

    def __init__(self, source: Path, fail_on: str | None = None) -> None:
        self.source = source
        self.fail_on = fail_on
        self.fetched: list[tuple[str, str]] = []
        self.listing = {repo: needed + EXTRA[repo] for repo, needed, _ in MODELS}
        self.folders = {repo: entry["folder"] for repo, _, entry in MODELS}

    def install(self, monkeypatch) -> None:
        hub = self

        class Api:
            def list_repo_files(self, repo_id, **kw):
                return list(hub.listing[repo_id])

        def hf_hub_download(repo_id, filename, *, local_dir, **kw):
            if filename == self.fail_on:
                raise ConnectionError("connection reset by peer")
            assert filename in hub.listing[repo_id]
            hub.fetched.append((repo_id, filename))
            dst = Path(local_dir) / filename
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hub.source / hub.folders[repo_id] / filename, dst)
            return str(dst)

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_test_asr(tmp_path_factory.mktemp("hub") / "models")


def test_fetches_only_what_onnx_asr_loads_and_the_result_loads(source, tmp_path, monkeypatch):
    hub = FakeHub(source)
    hub.install(monkeypatch)
    dest = download_asr(tmp_path / "asr", log=lambda m: None)
    assert sorted(hub.fetched) == sorted((repo, f) for repo, needed, _ in MODELS for f in needed)
    for f in ("v3_ctc.onnx", "onnx/encoder_model_int8.onnx", "onnx/decoder_model.onnx", "tokenizer.json"):
        assert all(f != name for _, name in hub.fetched)
    t = load_transcriber(dest)  # the downloaded layout is the one the loader reads
    assert [m.name for m in t.models] == ["gigaam-v3-e2e-ctc", "whisper-base"]
    assert t.transcribe(np.sin(np.arange(32000) / 7).astype(np.float32) * 0.3, 16000, "ru")


def test_a_failed_download_keeps_its_files_and_the_next_run_resumes(source, tmp_path, monkeypatch):
    FakeHub(source, fail_on="onnx/decoder_model_merged.onnx").install(monkeypatch)
    with pytest.raises(SourceError, match=r"cannot download onnx-community/whisper-base \(ConnectionError.*the next "
                                          r"run resumes"):
        download_asr(tmp_path / "asr", log=lambda m: None)
    assert not (tmp_path / "asr" / MANIFEST).exists()
    assert (tmp_path / "asr" / "gigaam-v3-e2e-ctc" / "v3_e2e_ctc.int8.onnx").is_file()  # kept
    with pytest.raises(AsrMissing, match="incomplete"):
        load_transcriber(tmp_path / "asr")
    FakeHub(source).install(monkeypatch)
    download_asr(tmp_path / "asr", log=lambda m: None)
    assert load_transcriber(tmp_path / "asr").models


def test_a_changed_repository_is_named():
    repo, needed, _ = MODELS[1]
    with pytest.raises(SourceError, match="does not list onnx/decoder_model_merged.onnx"):
        select_asr_files(repo, [f for f in needed if f != "onnx/decoder_model_merged.onnx"], needed)
    # weights kept beside a graph (external data) come with it
    assert "onnx/encoder_model.onnx_data" in select_asr_files(repo, needed + ["onnx/encoder_model.onnx_data"], needed)


def test_cli_offline_error_is_clear(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "download", "--asr", str(tmp_path / "asr")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "cannot download istupakov/gigaam-v3-onnx" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "download"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and "give the folder to download into" in r.stderr
