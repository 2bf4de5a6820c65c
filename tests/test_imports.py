"""The runtime never imports torch; the web-facing modules never import the model runtimes."""

import subprocess
import sys

CV3 = "pipeline.engines.cosyvoice3"
RUNTIME = ["pipeline", "pipeline.cli", "pipeline.engines",
           *(f"{CV3}.{m}" for m in ("engine", "llm", "sampling", "flow", "vocoder", "features", "speaker", "tokenizer",
                                   "tts", "verify", "download", "flow_rknn")),
           *(f"pipeline.shared.{m}" for m in ("audio", "text", "presets", "cpu", "asr", "asr_download", "llama")),
           "onnx_asr"]


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return {m.split(".")[0] for m in out.split()}


def test_runtime_imports_no_torch():
    mods = _loaded_after("\n".join(f"import {m}" for m in RUNTIME))
    assert "torch" not in mods and "onnx" not in mods


def test_importtime_of_pipeline_shows_no_torch():
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pipeline"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "torch" not in r.stderr


def test_light_modules_do_not_load_model_runtimes():
    mods = _loaded_after("import pipeline.shared.presets, pipeline.shared.bundle, pipeline.shared.errors, "
                         "pipeline.shared.text, pipeline.shared.audio, "
                         "pipeline.setup_run")  # the first-run setup runs in the web process
    assert not mods & {"onnxruntime", "llama_cpp", "torch", "rknnlite"}
