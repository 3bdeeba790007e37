#!/usr/bin/env bash
# Create ./.venv (if missing) and install dc_zoo with its test extras. Idempotent.
# torch/torchvision are pinned to the releases this kind of machine provides from its disk
# (a CUDA build that also runs on the CPU); any torch >= 2.1 works for the library itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.14.1}" "torchvision==${TORCHVISION_VERSION:-0.29.1}"
fi
.venv/bin/python -m pip install -q -e '.[test]'
# Editable installs do not carry the .pth that teaches the stock clip_benchmark command about
# Diffusion Classifier; place it (idempotent).
.venv/bin/python -m dc_zoo.clip_benchmark install-hook
