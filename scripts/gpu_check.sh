#!/usr/bin/env bash
# On a GPU host: set up (with the CUDA extra) and measure what needs a GPU (MFU of ~125M / ~350M dense models in
# bfloat16 with XLA and cuDNN attention, MoE / dense step time, the memory planner against XLA, bit-identical resume
# with deterministic ops), appended to benchmarks/RESULTS.md. `--dry-run` runs it on a CPU with tiny shapes.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [[ " $* " != *" --dry-run "* ]]; then
  .venv/bin/uv sync -q --frozen --inexact --extra test --extra cuda --python .venv/bin/python
fi
export WANDB_MODE=offline WANDB_SILENT=true
exec .venv/bin/python benchmarks/gpu_check.py "$@"
