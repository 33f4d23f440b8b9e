#!/usr/bin/env bash
# Create .venv and install vggt-bench with its test tools.
# TORCH_SPEC picks the PyTorch build: the default pin is the CPU build CI uses (an unpinned
# torch would pull a multi-GB CUDA build). On a GPU workstation, TORCH_SPEC=torch (or your
# CUDA build) before running this, or install into an environment that already has torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -c "import torch, hydra, pandas; print(f'vggt-bench ready: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
