#!/usr/bin/env bash
# Train a tiny LoRA with PEFT, push it to the registry, pull it back, and load it with PEFT.
# Uses the embedded registry (SQLite + a blob folder under ADAPTERS_HOME, default ~/.adapters)
# unless ADAPTERS_DATABASE_URL / ADAPTERS_STORAGE_URL point elsewhere, or ADAPTERS_URL (+ ADAPTERS_TOKEN)
# at a registry server.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && PATH="$PWD/.venv/bin:$PATH"
OUT=examples/out
export PYTHONWARNINGS=ignore TRANSFORMERS_VERBOSITY=error

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "registry: ${ADAPTERS_URL:-${ADAPTERS_DATABASE_URL:-embedded, under ${ADAPTERS_HOME:-~/.adapters}}}"
step "1. train a tiny LoRA adapter with PEFT"
python examples/build_adapter.py --out "$OUT"

step "2. push it"
adapters push "$OUT/tiny-lora" --name demo/tiny-lora --task demo --base-model tiny-llama \
  --tag example --alias stable --wait

step "3. look it up"
adapters ls --task demo
adapters show demo/tiny-lora@stable

step "4. pull it back"
rm -rf "$OUT/pulled"
adapters pull demo/tiny-lora@stable -o "$OUT/pulled"

step "5. load the pulled adapter with PEFT"
python examples/check_pulled.py --base "$OUT/base-model" --original "$OUT/tiny-lora" --pulled "$OUT/pulled"
