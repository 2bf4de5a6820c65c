"""The real release's variations on the tiny fixture: upstream's RL-tuned LLM (llm.rl.pt), the yaml's fmax for the
prompt mel, and get_tokenizer.version (CosyVoice3Tokenizer or CosyVoice2Tokenizer)."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_features import _matcha_mel_torch

from pipeline.engines.cosyvoice3.bundle_info import describe_source
from pipeline.engines.cosyvoice3.convert import convert_checkpoint
from pipeline.engines.cosyvoice3.convert.config import load_source_config, tokenizer_version
from pipeline.engines.cosyvoice3.convert.llm_gguf import build_text_tokenizer, convert_llm
from pipeline.engines.cosyvoice3.verify import run_verify
from pipeline.shared.errors import InputError, SourceError

QWEN2 = Path(__file__).parent.parent / "assets" / "qwen2-tokenizer"
QUIET = {"log": lambda m: None}


def _copy_ckpt(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """The fixture as symlinks (cheap), except the files named in ``skip``."""
    for p in src.rglob("*"):
        rel = p.relative_to(src)
        if p.is_file() and str(rel) not in skip:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).symlink_to(p)
    return dst


@pytest.fixture(scope="module")
def rl_ckpt(tiny_src, tmp_path_factory) -> tuple[Path, dict]:
    """The fixture plus an llm.rl.pt: the same state dict with every weight perturbed."""
    d = _copy_ckpt(tiny_src, tmp_path_factory.mktemp("rl") / "ckpt")
    sd = torch.load(tiny_src / "llm.pt", map_location="cpu", weights_only=True)
    g = torch.Generator().manual_seed(7)
    rl = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in sd.items()}
    torch.save(rl, d / "llm.rl.pt")
    return d, rl


def _gguf_tensor(path: Path, name: str) -> np.ndarray:
    import gguf

    t = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == name)
    return np.asarray(t.data, np.float32).reshape(tuple(reversed([int(x) for x in t.shape])))


def test_convert_defaults_to_the_rl_llm_and_records_it(rl_ckpt, tmp_path, goldens):
    src, rl = rl_ckpt
    b = convert_checkpoint(src, tmp_path / "rl", quants=["f32"], hift_noise_seconds=4.0, flow_int8=False, **QUIET)
    llm = b.manifest["source"]["llm"]
    raw = (src / "llm.rl.pt").read_bytes()
    assert llm == {"choice": "rl", "file": "llm.rl.pt", "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    assert b.manifest["llm"]["checkpoint"] == "llm.rl.pt"
    # the GGUF really holds llm.rl.pt's weights, not llm.pt's
    out = _gguf_tensor(b.path(b.manifest["llm"]["gguf"]["f32"]), "output.weight")
    np.testing.assert_array_equal(out, rl["llm_decoder.weight"].numpy())
    np.testing.assert_array_equal(np.load(b.path("text_embedding.npy")),
                                  rl["llm.model.model.embed_tokens.weight"].numpy())
    # the goldens are upstream's llm.pt: the LLM stages miss, the other stages still pass
    by = {r.stage: r for r in run_verify(b, goldens, **QUIET)}
    assert not by["llm_prefill"].passed and not by["llm_tf_logp"].passed
    assert by["flow_mel"].passed and by["hift_speech"].passed
    assert "LLM checkpoint: llm.rl.pt (upstream's RL-tuned LLM)" in describe_source(b.manifest)[0]


def test_convert_llm_base_and_verify_with_it(rl_ckpt, tmp_path):
    src, _ = rl_ckpt
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", "--checkpoint", str(src), "--llm", "base",
                        "--goldens", str(src / "goldens.npz"), "--hift-noise-seconds", "4"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "LLM llm.pt (base)" in r.stderr and "PASS" in r.stdout


def test_rl_asked_for_but_missing(tiny_src, tmp_path):
    with pytest.raises(SourceError, match=r"llm.rl.pt is missing \(--llm rl\); `cosyvoice-rk download DIR --rl`"):
        convert_checkpoint(tiny_src, tmp_path / "b", llm="rl", **QUIET)
    assert not (tmp_path / "b").exists()


def test_check_and_status_show_the_llm(tiny_bundle):
    from webui.views import _source_rows

    src = {"llm": tiny_bundle.manifest["source"]["llm"], "tokenizer": None}
    item = lambda k, v: f"{k}={v}"  # noqa: E731
    assert _source_rows(src, "en", item) == ["s_llm_ckpt=`llm.pt`: upstream's base LLM"]
    assert _source_rows(src, "ru", item) == ["s_llm_ckpt=`llm.pt`: базовая LLM upstream"]
    assert _source_rows({}, "en", item)[0].startswith("s_llm_ckpt=not recorded")
    # the whole Status tab, from what Studio.status() puts there
    from pipeline.engines.cosyvoice3.bundle_info import source_info
    from webui.views import status_md

    st = {"bundle": {"location": "/b", "found": True, "fingerprint": "f", "quants": ["f32"],
                     "source": source_info(tiny_bundle.manifest)},
          "worker": {"state": "stopped"}, "speakers_dir": "s", "results_dir": "r", "voices": 0}
    assert "- **LLM checkpoint:** `llm.pt`: upstream's base LLM" in status_md(st, "en")
    assert "- **Чекпойнт LLM:** `llm.pt`: базовая LLM upstream" in status_md(st, "ru")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "check", "--bundle", str(tiny_bundle.root)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "LLM checkpoint: llm.pt (upstream's base LLM)" in r.stderr, r.stderr


# --- fmax -----------------------------------------------------------------------------------------

def test_verify_uses_the_checkpoints_fmax(tiny_src, tmp_path, goldens, tiny_bundle):
    src = _copy_ckpt(tiny_src, tmp_path / "ckpt", skip=("cosyvoice3.yaml",))
    yml = (tiny_src / "cosyvoice3.yaml").read_text(encoding="utf-8")
    assert yml.count("fmax: null") == 2  # mel_spec_transform1 and feat_extractor
    (src / "cosyvoice3.yaml").write_text(yml.replace("fmax: null", "fmax: 8000"), encoding="utf-8")
    b = convert_checkpoint(src, tmp_path / "b", quants=["f32"], hift_noise_seconds=4.0, flow_int8=False, **QUIET)
    assert b.manifest["flow"]["prompt_mel"]["fmax"] == 8000
    # goldens for that checkpoint: upstream's matcha mel_spectrogram (torch reference) with fmax 8000
    g = dict(goldens)
    g["in_prompt_feat"] = _matcha_mel_torch(goldens["in_prompt_wav"], fmax=8000.0)[None]
    assert np.max(np.abs(_matcha_mel_torch(goldens["in_prompt_wav"]) - goldens["in_prompt_feat"][0])) < 1e-6
    by = {r.stage: r for r in run_verify(b, g, **QUIET)}
    assert by["prompt_mel"].passed, by["prompt_mel"]
    # the default fmax (what verify used before) misses these goldens by far: the old verify failed here
    default = {r.stage: r for r in run_verify(tiny_bundle, g, **QUIET)}["prompt_mel"]
    assert not default.passed and default.max_abs_err > 0.1, default


# --- get_tokenizer.version ------------------------------------------------------------------------

def _cfg_without_version(tiny_src: Path) -> dict:
    cfg = copy.deepcopy(load_source_config(tiny_src))
    del cfg["yaml"]["get_tokenizer"]["version"]
    return cfg


def test_tokenizer_version_is_read_like_upstream(tiny_src):
    cfg = load_source_config(tiny_src)
    assert tokenizer_version(cfg["yaml"])[0] == "cosyvoice3"
    assert tokenizer_version(_cfg_without_version(tiny_src)["yaml"]) == (
        "cosyvoice2", "cosyvoice3.yaml's get_tokenizer has no version: upstream's default, cosyvoice2")
    with pytest.raises(SourceError, match="get_tokenizer.version is 'cosyvoice4'"):
        tokenizer_version({"get_tokenizer": {"version": "cosyvoice4"}})
    with pytest.raises(SourceError, match="get_tokenizer is missing"):
        tokenizer_version({})


@pytest.fixture(scope="module")
def blank_src(tiny_src, tmp_path_factory) -> Path:
    """The fixture with CosyVoice-BlankEN tokenizer files (this repository's Qwen2 copies)."""
    src = _copy_ckpt(tiny_src, tmp_path_factory.mktemp("blank") / "ckpt")
    for n in ("vocab.json", "merges.txt"):
        shutil.copy(QWEN2 / n, src / "CosyVoice-BlankEN" / n)
    return src


def test_without_version_the_converter_builds_cosyvoice2_tokenizer(blank_src, tiny_src, tmp_path):
    from pipeline.engines.cosyvoice3.tokenizer import TextTokenizer
    from pipeline.shared.text import TextFrontend

    s = convert_llm(blank_src, tmp_path / "o2", _cfg_without_version(tiny_src), ["f32"])
    assert s["tokenizer_version"]["upstream_class"] == "CosyVoice2Tokenizer"
    tok2 = TextTokenizer.from_file(tmp_path / "o2" / "tokenizer.json")
    assert tok2.version == "cosyvoice2" and len(tok2) == 151663  # 151643 + 3 Qwen2 + 17 new
    assert [tok2.encode(t) for t in ("<|endofprompt|>", "[breath]", "[mn]")] == [[151646], [151647], [151662]]
    assert tok2.token_to_id("<|endofsystem|>") is None and len(tok2.encode("<|endofsystem|>")) > 1
    assert len(tok2.encode("[AA1]")) > 1  # upstream's CosyVoice2Tokenizer reads it as characters

    s3 = convert_llm(blank_src, tmp_path / "o3", load_source_config(tiny_src), ["f32"])
    assert s3["tokenizer_version"]["upstream_class"] == "CosyVoice3Tokenizer"
    tok3 = TextTokenizer.from_file(tmp_path / "o3" / "tokenizer.json")
    assert tok3.version == "cosyvoice3" and tok3.encode("[AA1]") == [151666]
    # ordinary text is the same with both
    assert tok2.encode("Привет, мир! [breath] Hello") == tok3.encode("Привет, мир! [breath] Hello")

    # the runtime: a pronunciation tag the bundle's tokenizer lacks is refused, never read as characters
    with pytest.raises(InputError, match=r"\[AA1\] is not a token of this model's text tokenizer"):
        TextFrontend(tok2).segments("Say [AA1] now.", "en")
    assert TextFrontend(tok2).segments("Say [breath] now.", "en")
    assert 151666 in TextFrontend(tok3).segments("Say [AA1] now.", "en")[0]


def test_the_converter_uses_the_checkpoints_own_merges(blank_src, tmp_path):
    """The release's merges.txt is trimmed (134,935 of Qwen2's 151,387 merges): the tokenizer must come from the
    checkpoint's file, not from assets/qwen2-tokenizer."""
    blank = tmp_path / "CosyVoice-BlankEN"
    blank.mkdir()
    shutil.copy(QWEN2 / "vocab.json", blank / "vocab.json")
    lines = (QWEN2 / "merges.txt").read_text(encoding="utf-8").splitlines()
    (blank / "merges.txt").write_text("\n".join(lines[:-20000]) + "\n", encoding="utf-8")  # a trimmed list
    full = build_text_tokenizer(blank_src / "CosyVoice-BlankEN")
    trimmed = build_text_tokenizer(blank)
    words = "Привет, мир! Как дела? Съешь же ещё этих мягких французских булок"
    assert trimmed.encode(words).ids != full.encode(words).ids
    assert trimmed.decode(trimmed.encode(words).ids) == words
    assert trimmed.encode("<|endofprompt|>[AA1]").ids == [151646, 151666]  # special ids do not depend on merges


def test_manifest_records_the_tokenizer(blank_src, tmp_path):
    b = convert_checkpoint(blank_src, tmp_path / "b", quants=["f32"], hift_noise_seconds=4.0, flow_int8=False,
                           **QUIET)
    tv = b.manifest["frontend"]["tokenizer_version"]
    assert tv == {"version": "cosyvoice3", "upstream_class": "CosyVoice3Tokenizer",
                  "why": "cosyvoice3.yaml's get_tokenizer.version: cosyvoice3"}
    assert any("CosyVoice3Tokenizer" in line for line in describe_source(b.manifest))
    assert json.loads((b.root / "manifest.json").read_text())["source"]["download"] is None


def test_convert_refuses_a_checkpoint_file_changed_since_download(tiny_src, tmp_path):
    from pipeline.engines.cosyvoice3.release import DOWNLOAD_MANIFEST, file_record
    from pipeline.shared.fsutil import sha256_file

    src = _copy_ckpt(tiny_src, tmp_path / "ckpt")
    names = ["cosyvoice3.yaml", "llm.pt", "flow.pt", "hift.pt"]
    files = {n: file_record(src / n) for n in names}
    files["hift.pt"]["sha256"] = "0" * 64  # what download fetched was other bytes than what is there now
    (src / DOWNLOAD_MANIFEST).write_text(json.dumps({"repo_id": "r", "revision": "v", "files": files}))
    with pytest.raises(SourceError, match=r"changed or damaged since download: hift.pt \(sha256 "
                                          + sha256_file(src / "hift.pt")[:16]):
        convert_checkpoint(src, tmp_path / "b", **QUIET)
    assert not (tmp_path / "b").exists()
