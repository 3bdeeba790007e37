#!/usr/bin/env bash
# Set up ./.venv and run the whole test suite offline (no Hub access is ever needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh 2>&1 | { grep -v "^WARNING: Location" || true; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
