#!/usr/bin/env bash
# Set up the environment if needed, then run the end-to-end quickstart (11-13 min on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export WANDB_MODE=${WANDB_MODE:-offline}
exec .venv/bin/scaling quickstart "$@"
