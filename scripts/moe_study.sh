#!/usr/bin/env bash
# The dense-vs-MoE study on 2 CPU cores, end to end: the study sweep and the balance sweep (two workers each, so
# both cores stay busy on small models), then `scaling moe-report`. Resumable: rerun to finish a killed study.
#   ./scripts/moe_study.sh [OUT]        (default moe_study_out/)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
out=${1:-moe_study_out}
mkdir -p "$out"
export WANDB_MODE=${WANDB_MODE:-offline}
sweep() {  # two workers on one sweep; both claim runs until none is left
  .venv/bin/scaling sweep run "$1" --out "$2" --no-progress > "$2.worker2.log" 2>&1 &
  local helper=$!
  trap 'kill $helper 2>/dev/null || true' EXIT
  .venv/bin/scaling sweep run "$1" --out "$2"
  wait $helper
  trap - EXIT
}
start=$(date +%s)
sweep sweeps/moe_study_cpu.yaml "$out/study"
sweep sweeps/moe_balance_cpu.yaml "$out/balance"
.venv/bin/scaling moe-report "$out/study" --balance "$out/balance"
echo "MoE study: $(( $(date +%s) - start )) s of wall time"
