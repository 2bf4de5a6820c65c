"""The engine seam: the registry, bundles and voices that name their engine, and the one interface every caller uses."""

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import PROMPTS, ZH_PROMPT_TEXT

from pipeline.engines import ENGINES, engine_name, open_tts
from pipeline.engines.base import TTSEngine
from pipeline.shared.bundle import Bundle
from pipeline.shared.errors import BundleError
from pipeline.shared.presets import SpeakerStore

ROOT = Path(__file__).resolve().parents[1]
PROMPT = PROMPTS / "zero_shot_prompt.wav"


def _copy_with_manifest(bundle: Bundle, dst: Path, **changes) -> Path:
    shutil.copytree(bundle.root, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for k, v in changes.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_every_engine_has_its_own_package():
    for info in ENGINES.values():
        assert (ROOT / info.package.replace(".", "/") / "convert").is_dir(), info
        assert (ROOT / info.package.replace(".", "/") / "tts.py").is_file(), info
    assert (ROOT / "pipeline/shared").is_dir()


def _imports(f: Path) -> list[str]:
    """Every module ``f`` imports, relative imports resolved against its package."""
    pkg = list(f.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            out += [mod] + [f"{mod}.{a.name}" for a in node.names]
    return out


def test_engines_do_not_import_each_other():
    """An engine package may use pipeline.shared and the seam (pipeline.engines, .base), never another engine."""
    for info in ENGINES.values():
        others = [o.package for o in ENGINES.values() if o is not info]
        for f in (ROOT / info.package.replace(".", "/")).rglob("*.py"):
            for mod in _imports(f):
                assert not any(mod == o or mod.startswith(o + ".") for o in others), f"{f} imports {mod}"


def test_the_import_check_sees_relative_and_plain_imports(tmp_path):
    pkg = ROOT / "pipeline/engines/qwen3_tts"
    f = pkg / "_probe_for_test.py"
    try:
        f.write_text("from ..cosyvoice3 import tts\nimport pipeline.engines.cosyvoice3.flow\n")
        mods = _imports(f)
    finally:
        f.unlink()
    assert "pipeline.engines.cosyvoice3.tts" in mods and "pipeline.engines.cosyvoice3.flow" in mods


def test_the_manifest_names_the_engine(tiny_bundle):
    assert tiny_bundle.manifest["engine"] == "cosyvoice3" and tiny_bundle.engine == "cosyvoice3"


def test_a_bundle_from_before_engines_were_named_is_cosyvoice3(tiny_bundle, tmp_path):
    b = Bundle.load(_copy_with_manifest(tiny_bundle, tmp_path / "old", engine=None), check="size")
    assert b.engine == "cosyvoice3" and engine_name({}) == "cosyvoice3"


def test_an_unknown_engine_is_refused_by_name(tiny_bundle, tmp_path):
    root = _copy_with_manifest(tiny_bundle, tmp_path / "future", engine="vall-e-9")
    with pytest.raises(BundleError, match=r"'vall-e-9'.*does not know.*cosyvoice3.*update cosyvoice-rk"):
        Bundle.load(root, check="size")


def test_each_engine_requires_its_own_sections(tiny_bundle, tmp_path):
    # a CosyVoice3 manifest claiming to be Qwen3-TTS lacks its talker and code predictor: refused, not half-loaded
    root = _copy_with_manifest(tiny_bundle, tmp_path / "q3", engine="qwen3-tts")
    with pytest.raises(BundleError, match="section 'lm' is missing"):
        Bundle.load(root, check="size")


def test_open_tts_gives_the_engine_interface_and_voices_record_their_engine(random_bundle, tmp_path):
    spk = tmp_path / "spk"
    with open_tts(random_bundle, speakers_dir=spk, n_threads=1) as tts:
        assert isinstance(tts, TTSEngine)
        caps = tts.capabilities
        assert caps.engine == "cosyvoice3" and "zero_shot" in caps.modes and "ru" in caps.languages
        assert set(tts.backends) >= {"llm", "flow"} and tts.quant in random_bundle.manifest["llm"]["gguf"]
        p, _ = tts.add_voice("Anna", PROMPT, ZH_PROMPT_TEXT, language="zh")
        assert p.meta["engine"] == "cosyvoice3" and p.engine == "cosyvoice3"
        assert json.loads((p.path / "preset.json").read_text())["engine"] == "cosyvoice3"
        good = tts.load_voice("Anna").features

        # the same voice as another engine saved it: other features, another bundle; recomputed from its audio,
        # without calling that damage, and from then on it is this engine's voice
        meta = json.loads((p.path / "preset.json").read_text())
        meta.update(engine="qwen3-tts", bundle_fingerprint="q3-bundle")
        (p.path / "preset.json").write_text(json.dumps(meta))
        np.savez(p.path / "features.npz", codes=np.zeros((30, 16), np.int64), spk=np.ones(16, np.float32))
        v = tts.load_voice("Anna")
        assert v.warnings == []
        np.testing.assert_array_equal(v.features.speech_tokens, good.speech_tokens)
        assert SpeakerStore(spk).load("Anna").engine == "cosyvoice3"


def test_a_store_without_an_engine_reads_features_as_arrays(random_bundle, tmp_path):
    spk = tmp_path / "spk"
    with open_tts(random_bundle, speakers_dir=spk, n_threads=1) as tts:
        tts.add_voice("Bo", PROMPT, ZH_PROMPT_TEXT, language="zh")
    p = SpeakerStore(spk).load("Bo")  # the web process lists and exports voices without loading an engine
    assert set(p.features) == {"speech_tokens", "mel", "embedding"} and not p.damaged
