#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite (CPU; ~12 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export WANDB_MODE=offline WANDB_SILENT=true
exec .venv/bin/python -m pytest -p no:logging "$@"
