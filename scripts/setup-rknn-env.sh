#!/usr/bin/env bash
# Creates the rknn-toolkit2 environment that `cosyvoice-rk convert --rknn rk3588` runs its worker in.
#
#   scripts/setup-rknn-env.sh [VENV_DIR]        (default: .venv-rknn at the repository root)
#
# rknn-toolkit2 2.5.0 pins torch<=2.4, numpy<=1.26.4, onnx<=1.18, protobuf<=4.25.4, which clash with the main
# environment, so it gets its own venv. Plain dependency resolution would pull torch 2.4 plus ~2.5 GB of CUDA
# wheels; instead the toolkit goes in with --no-deps and its dependencies are pinned here by hand (recipe measured
# in the project's feasibility study). Idempotent: a stamp records the recipe; an up-to-date venv is left alone.
#
# Environment: PYTHON (interpreter to build the venv from; rknn-toolkit2 2.5.0 has wheels for CPython 3.8-3.12 on
# x86_64 and aarch64 Linux), TORCH_VERSION (default 2.13.0, as ./cv uses; on an ordinary host pass a CPU index with
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu to avoid CUDA wheels).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-${COSYVOICE_RK_RKNN_VENV:-$here/.venv-rknn}}"
py="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"

toolkit="rknn-toolkit2==2.5.0"
# torch: rknn.api imports torch.nn at import time, so it is required even for ONNX input. The toolkit pins
# torch<=2.4.0; 2.13 converts and simulates correctly (pip prints a conflict warning about the pin, expected).
# setuptools<81: rknn.api imports pkg_resources, which setuptools 81 removed.
deps=(numpy==1.26.4 onnx==1.18.0 onnxruntime==1.26.0 opencv-python-headless==4.11.0.86 protobuf==4.25.4
      scipy psutil ruamel.yaml tqdm fast-histogram "torch==$torch_version" "setuptools<81")
recipe="$toolkit ${deps[*]}"
stamp="$venv/.cosyvoice-rk-rknn-recipe"

case "$(uname -m)" in
  x86_64|aarch64) ;;
  *) echo "rknn-toolkit2 has wheels for x86_64 and aarch64 Linux only, not $(uname -m)" >&2; exit 1 ;;
esac
pyver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$pyver" in
  3.8|3.9|3.10|3.11|3.12) ;;
  *) echo "rknn-toolkit2 2.5.0 has wheels for CPython 3.8-3.12; $py is $pyver (set PYTHON=python3.11 or similar)" >&2
     exit 1 ;;
esac

check() {
  "$venv/bin/python" - <<'EOF'
import importlib.metadata as md
from rknn.api import RKNN  # noqa: F401  (imports torch, pkg_resources: the two usual failures)
print("rknn-toolkit2", md.version("rknn-toolkit2"), "ready")
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
"$venv/bin/pip" install -q --no-deps "$toolkit"
# Versions measured to work together with the toolkit. opencv-python-headless rather than opencv-python: same cv2
# module (the toolkit uses it for image inputs only) without the X/GL libraries a server may lack.
"$venv/bin/pip" install -q "${deps[@]}"
check
echo "$recipe" > "$stamp"
echo "rknn environment ready: $venv"
