#!/usr/bin/env bash
# Creates the opt-in environment of upstream's PyTorch Qwen3-TTS, the reference that
# `cosyvoice-rk bench --engine qwen3-tts --reference` times in the same run as the torch-free engine.
#
#   scripts/setup-qwen-tts-ref-env.sh [VENV_DIR]        (default: .venv-qwen-ref at the repository root)
#
# Upstream's `qwen-tts` 0.1.1 pins transformers==4.57.3 and accelerate==1.12.0 and pulls gradio, torchaudio, librosa:
# none of that may enter the project's runtime or its main venv, so it gets its own venv (like .venv-rknn). torch is
# installed first, pinned as ./cv pins it (TORCH_VERSION, default 2.13.0; on an ordinary host pass
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu so that pip takes the CPU build, not CUDA wheels), then
# qwen-tts with its own dependency pins. The bench runs pipeline/engines/qwen3_tts/bench_ref_worker.py with this
# venv's python (standard library + this venv only). Idempotent: a stamp records the recipe.
#
# Environment: PYTHON (interpreter to build the venv from; default python3), TORCH_VERSION, TORCHAUDIO_VERSION.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-${COSYVOICE_RK_QWEN_REF_VENV:-$here/.venv-qwen-ref}}"
py="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"
torchaudio_version="${TORCHAUDIO_VERSION:-2.11.1}"
package="qwen-tts==0.1.1"
recipe="$package torch==$torch_version torchaudio==$torchaudio_version"
stamp="$venv/.cosyvoice-rk-qwen-ref-recipe"

check() {
  "$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import warnings
warnings.filterwarnings("ignore")
import torch
import torchaudio.compliance.kaldi  # noqa: F401
from qwen_tts import Qwen3TTSModel  # noqa: F401  (imports torchaudio, transformers: the usual failures)
print("qwen-tts", md.version("qwen-tts"), "transformers", md.version("transformers"), "torch", torch.__version__,
      "ready")
EOF
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$recipe" ]] && check; then
  echo "$venv is up to date"
  exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "torch==$torch_version"
# qwen-tts's own pins and dependencies, minus two: gradio (its demo web page only) and torchaudio. torchaudio
# wheels pin torch to their own version and PyPI has none for torch 2.13 (the newest is 2.11.1), so it goes in
# with --no-deps beside torch 2.13: qwen_tts imports only its pure-Python `compliance.kaldi` (25 Hz tokenizer,
# unused by the 12 Hz models; spec §14 item 13). The check below imports it, so a broken pairing fails here.
"$venv/bin/pip" install -q --no-deps "$package" "torchaudio==$torchaudio_version"
# PyPI's torchaudio wheel is a CUDA build for its own torch (its _torchaudio.so needs libc10_cuda.so); without
# its compiled libraries torchaudio runs as pure Python (torchaudio/_extension/utils.py `_load_lib` returns False
# when the file is absent, its supported "no extension" case), which is all compliance.kaldi needs. Remove them.
rm -f "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"/torchaudio/lib/*.so
"$venv/bin/pip" install -q transformers==4.57.3 accelerate==1.12.0 librosa soundfile sox onnxruntime einops \
  huggingface_hub
check
echo "$recipe" > "$stamp"
echo "Qwen3-TTS reference environment ready: $venv"
