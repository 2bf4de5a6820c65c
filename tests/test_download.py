import os
import subprocess
import sys

import pytest

from pipeline.engines.cosyvoice3.download import NEEDED_FILES, RL_LLM, select_files
from pipeline.shared.errors import SourceError

# The 20 files of HF revision 29e01c4e (docs/release.md)
LISTING = [
    ".gitattributes", "README.md", "configuration.json", "config.json", "asset/dingding.png",
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


# --- the release table and the checked download (a fake hub: no network) ---

import hashlib  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from pipeline.engines.cosyvoice3 import download as dl  # noqa: E402
from pipeline.engines.cosyvoice3 import release  # noqa: E402
from pipeline.engines.cosyvoice3.release import PINNED_REVISION, RELEASE_FILES, Expected  # noqa: E402


def test_table_is_the_20_file_release_and_its_totals():
    assert sorted(RELEASE_FILES) == sorted(LISTING)
    assert sum(e.size for e in RELEASE_FILES.values()) == 9_747_516_745
    assert sum(RELEASE_FILES[n].size for n in NEEDED_FILES) == 5_765_148_212          # README: 5.77 GB
    assert sum(RELEASE_FILES[n].size for n in NEEDED_FILES + [RL_LLM]) == 7_789_830_913  # 7.79 GB with --rl
    # vocab.json's published sha256 is the one of this repository's Qwen2 copy (byte-identical, two sources)
    qwen2 = Path(__file__).parent.parent / "assets" / "qwen2-tokenizer" / "vocab.json"
    assert hashlib.sha256(qwen2.read_bytes()).hexdigest() == RELEASE_FILES["CosyVoice-BlankEN/vocab.json"].sha256
    assert dl.download.__kwdefaults__["revision"] == PINNED_REVISION == "29e01c4e8d000f4bcd70751be16fa94bf3d85a18"


class FakeHub:
    """Serves ``files`` (name -> bytes); ``meta`` overrides what the hub's metadata says."""

    def __init__(self, files: dict[str, bytes], meta: dict[str, Expected] | None = None) -> None:
        self.files, self.fetched = dict(files), []
        self.meta = meta or {n: Expected(len(b), hashlib.sha256(b).hexdigest()) for n, b in files.items()}

    def hub_files(self, repo_id, revision):
        return dict(self.meta)

    def hub_fetch(self, repo_id, name, revision, dest, *, force=False, progress=None):
        self.fetched.append((name, force))
        p = Path(dest) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if force or not p.is_file():
            p.write_bytes(self.files[name])
            if progress:
                progress(name, len(self.files[name]) // 2, len(self.files[name]))
        return p


def _content(names):
    return {n: (n * 3).encode() for n in names}


@pytest.fixture
def hub(monkeypatch):
    files = _content(LISTING)
    h = FakeHub(files)
    monkeypatch.setattr(dl, "hub_files", h.hub_files)
    monkeypatch.setattr(dl, "hub_fetch", h.hub_fetch)
    # the pinned table, scaled down to the fake files: sizes, and a sha256 for two of them
    table = {n: Expected(len(b)) for n, b in files.items()}
    table["flow.pt"] = Expected(len(files["flow.pt"]), hashlib.sha256(files["flow.pt"]).hexdigest())
    table["cosyvoice3.yaml"] = Expected(len(files["cosyvoice3.yaml"]),
                                        sha256_prefix=hashlib.sha256(files["cosyvoice3.yaml"]).hexdigest()[:12])
    monkeypatch.setattr(release, "RELEASE_FILES", table)
    return h


def test_download_checks_and_records_every_file(hub, tmp_path):
    logs, seen = [], []
    dl.download(tmp_path, log=logs.append, progress=lambda *a: seen.append(a))
    m = json.loads((tmp_path / release.DOWNLOAD_MANIFEST).read_text())
    assert (m["revision"], m["checked_against"]) == (PINNED_REVISION, "table")
    assert sorted(m["files"]) == sorted(NEEDED_FILES)
    assert m["files"]["llm.pt"]["sha256"] == hashlib.sha256(hub.files["llm.pt"]).hexdigest()
    assert ("llm.pt", len(hub.files["llm.pt"]), len(hub.files["llm.pt"])) in seen
    assert "checked against the project's table" in logs[0]
    # a second run fetches nothing
    hub.fetched.clear()
    dl.download(tmp_path, log=logs.append)
    assert hub.fetched == []


def test_a_wrong_size_is_named_with_both_sizes_and_the_fix(hub, tmp_path):
    hub.files["hift.pt"] = b"truncated"
    with pytest.raises(SourceError) as e:
        dl.download(tmp_path, log=lambda m: None)
    msg = str(e.value)
    want = release.RELEASE_FILES["hift.pt"].size
    assert "hift.pt: 9 B on disk, the release table" in msg and f"has {want:,} B" in msg
    assert f"delete {tmp_path / 'hift.pt'} and run download again" in msg
    # the good files are kept and recorded; the bad one is not recorded
    m = json.loads((tmp_path / release.DOWNLOAD_MANIFEST).read_text())
    assert "hift.pt" not in m["files"] and "flow.pt" in m["files"]


@pytest.mark.parametrize("name", ["flow.pt", "cosyvoice3.yaml"])
def test_a_wrong_sha256_is_refused_where_it_is_known(hub, tmp_path, name):
    b = bytearray(hub.files[name])
    b[0] ^= 1  # same size, other bytes
    hub.files[name] = bytes(b)
    with pytest.raises(SourceError, match=f"{name}: sha256 .* delete"):
        dl.download(tmp_path, log=lambda m: None)


def test_another_revision_is_checked_against_the_hubs_metadata(hub, tmp_path):
    logs = []
    hub.meta["flow.pt"] = Expected(12345, None)
    with pytest.raises(SourceError, match=r"flow.pt: \d+ B on disk, the hub \(.* @ main\) has 12,345 B"):
        dl.download(tmp_path, revision=None, log=logs.append)
    assert "no size table for this repository/revision; checking against the hub's own metadata" in logs[0]


def test_a_file_changed_after_download_is_fetched_again(hub, tmp_path):
    dl.download(tmp_path, log=lambda m: None)
    p = tmp_path / "campplus.onnx"
    p.write_bytes(b"X" * p.stat().st_size)  # damaged in place: same size, no table sha256 for it
    hub.fetched.clear()
    logs = []
    dl.download(tmp_path, log=logs.append)
    assert hub.fetched == [("campplus.onnx", True)]
    assert any("campplus.onnx changed since it was downloaded" in m for m in logs)
    assert p.read_bytes() == hub.files["campplus.onnx"]


def test_rl_is_opt_in_and_stays_recorded(hub, tmp_path):
    dl.download(tmp_path, rl=True, log=lambda m: None)
    assert (tmp_path / RL_LLM).is_file()
    dl.download(tmp_path, log=lambda m: None)  # without --rl: llm.rl.pt is neither fetched nor forgotten
    m = json.loads((tmp_path / release.DOWNLOAD_MANIFEST).read_text())
    assert RL_LLM in m["files"]
    hub.meta.pop(RL_LLM)
    with pytest.raises(SourceError, match="does not list llm.rl.pt.*leave it out"):
        dl.download(tmp_path / "b", rl=True, log=lambda m: None)


def test_convert_refuses_a_file_changed_since_download(hub, tmp_path):
    dl.download(tmp_path, log=lambda m: None)
    hashes = {n: hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in NEEDED_FILES}
    release.check_downloaded(tmp_path, NEEDED_FILES, hashes)  # unchanged: fine
    hashes["flow.pt"] = "0" * 64
    with pytest.raises(SourceError, match=r"changed or damaged since download: flow.pt .* download"):
        release.check_downloaded(tmp_path, NEEDED_FILES, hashes)


def test_hub_metadata_and_byte_progress(monkeypatch):
    """hub_files reads sizes and LFS sha256 from the hub's model_info; hub_fetch's tqdm class reports bytes."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import ModelInfo

    info = ModelInfo(id="x/y", siblings=[
        {"rfilename": "llm.pt", "size": 10, "lfs": {"size": 10, "sha256": "ab" * 32, "pointerSize": 130}},
        {"rfilename": "cosyvoice3.yaml", "size": 3}])
    monkeypatch.setattr(HfApi, "model_info", lambda self, repo_id, **kw: info if kw.get("files_metadata") else None)
    assert dl.hub_files("x/y", "main") == {"llm.pt": Expected(10, "ab" * 32), "cosyvoice3.yaml": Expected(3, None)}

    seen = []
    bar = dl._tqdm_reporting("llm.pt", lambda *a: seen.append(a))(total=100, disable=True)
    bar.update(40)
    bar.update(60)
    bar.close()
    assert seen == [("llm.pt", 40, 100), ("llm.pt", 100, 100)]


def test_a_mirror_listing_other_sizes_under_the_pinned_revision_is_refused_first(hub, tmp_path):
    hub.meta["flow.pt"] = Expected(5, None)
    with pytest.raises(SourceError, match=r"flow.pt: the hub lists 5 B, the release has \d+ B.*HF_ENDPOINT"):
        dl.download(tmp_path, log=lambda m: None)
    assert hub.fetched == []
