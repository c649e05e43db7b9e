#!/usr/bin/env bash
# Create .venv and install the project with everything its tests need.
# torch is installed first and pinned to the CPU build, so the project's torch range installs nothing more.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev]"
# vLLM without its dependencies (CUDA kernels, its own torch pin): the tests use only its LoRA resolver
# interface (vllm.lora.resolver, vllm.lora.request), which imports nothing more than msgspec (in dev).
.venv/bin/python -m pip install -q --no-deps "vllm==${VLLM_VERSION:-0.33.0}"
echo "ready: . .venv/bin/activate"
