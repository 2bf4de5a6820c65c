import json
import shutil

import pytest

from pipeline.engines.cosyvoice3.convert.bundle_writer import check_source, parse_quants
from pipeline.shared.bundle import FORMAT, FORMAT_VERSION, Bundle, file_entry
from pipeline.shared.errors import BundleError, SourceError


def _mini_bundle(root):
    root.mkdir()
    (root / "a.bin").write_bytes(b"abc" * 100)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "constants": {}, "llm": {}, "flow": {},
                "hift": {}, "files": {"a.bin": file_entry(root / "a.bin")}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_loads_and_caches_hash(tmp_path):
    b = Bundle.load(_mini_bundle(tmp_path / "b"))
    assert b.path("a.bin").is_file()
    assert (tmp_path / "b" / ".verified.json").is_file()
    with pytest.raises(BundleError, match="no file 'nope'"):
        b.path("nope")


def test_missing_folder_says_how_to_get_one(tmp_path):
    with pytest.raises(BundleError, match="does not exist.*cosyvoice-rk convert"):
        Bundle.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a model bundle"):
        Bundle.load(tmp_path / "empty")


def test_corrupt_manifest(tmp_path):
    root = _mini_bundle(tmp_path / "b")
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is corrupt"):
        Bundle.load(root)


def test_format_version_mismatch(tmp_path):
    root = _mini_bundle(tmp_path / "b")
    m = json.loads((root / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=f"format version {FORMAT_VERSION + 1}"):
        Bundle.load(root)


def test_missing_truncated_and_corrupt_files(tmp_path):
    root = _mini_bundle(tmp_path / "b")
    Bundle.load(root)
    data = (root / "a.bin").read_bytes()
    (root / "a.bin").write_bytes(data[:-1])
    with pytest.raises(BundleError, match="a.bin has 299 bytes"):
        Bundle.load(root)
    (root / "a.bin").write_bytes(b"x" + data[1:])  # same size, different content: the cache must not hide it
    with pytest.raises(BundleError, match="a.bin is damaged"):
        Bundle.load(root)
    (root / "a.bin").unlink()
    with pytest.raises(BundleError, match="a.bin is missing"):
        Bundle.load(root)


def test_source_checks(tmp_path, tiny_src):
    with pytest.raises(SourceError, match="does not exist"):
        check_source(tmp_path / "nope")
    (tmp_path / "cv2").mkdir()
    (tmp_path / "cv2" / "cosyvoice2.yaml").write_text("a: 1")
    with pytest.raises(SourceError, match="not a CosyVoice3 checkpoint.*cosyvoice2.yaml"):
        check_source(tmp_path / "cv2")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_src, partial)
    (partial / "hift.pt").unlink()
    with pytest.raises(SourceError, match="missing hift.pt"):
        check_source(partial)
    assert check_source(tiny_src)["yaml"]["llm"]["speech_token_size"] == 6561


def test_quant_parsing():
    assert parse_quants("f32, Q4_K_M") == ["f32", "q4_k_m"]
    with pytest.raises(SourceError, match="unknown quantization q3"):
        parse_quants("f32,q3")


def test_changed_byte_with_restored_mtime_is_caught(tmp_path):
    """Issue 11: the hash cache trusted size + mtime, so a byte changed with the mtime put back passed."""
    import os

    root = _mini_bundle(tmp_path / "b")
    Bundle.load(root)  # first load: full hash, cached
    p = root / "a.bin"
    st = p.stat()
    with open(p, "r+b") as f:
        f.seek(150)
        f.write(b"X")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_mtime_ns == st.st_mtime_ns and p.stat().st_size == st.st_size
    with pytest.raises(BundleError, match="a.bin is damaged.*copy the bundle again"):
        Bundle.load(root)


def test_check_command_hashes_everything_regardless_of_the_cache(tmp_path):
    from pipeline.cli import main

    root = _mini_bundle(tmp_path / "b")
    assert main(["check", "--bundle", str(root)]) == 0
    b = Bundle.load(root, check="none")
    # rot the cache cannot see: rewrite the cache so that it matches the damaged file's stat
    (root / "a.bin").write_bytes(b"x" + (root / "a.bin").read_bytes()[1:])
    st = (root / "a.bin").stat()
    from pipeline.shared.bundle import _stamp

    (root / ".verified.json").write_text(json.dumps({"a.bin": _stamp(st, b.manifest["files"]["a.bin"]["sha256"])}))
    Bundle.load(root)  # the cached policy trusts the stamp ...
    assert b.scan() == ["a.bin"]  # ... the full scan does not
    assert main(["check", "--bundle", str(root)]) == 1
