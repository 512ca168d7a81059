#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite (CPU; ~14 min on 2 cores: 818 s from a fresh clone, 2026-12-07).
# Two pytest-xdist workers, one test file each at a time (--dist loadfile keeps a file's module fixtures in one
# process): most tests wait on subprocesses or compile, so two workers use both cores (~28% less wall time than
# one). The slowest files are handed out first (tests/conftest.py: SLOW_FIRST; --no-loadscope-reorder keeps that
# order). Pass -n 0 to run serially. The soak tests (marked soak) are outside the default suite: -m soak runs them,
# -m "soak or not soak" everything. The suite compiles with XLA:CPU's LLVM optimisation level 1 (tests/conftest.py:
# faster compiles, the same programs); SCALING_TEST_XLA_OPT=xla keeps XLA's default.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export WANDB_MODE=offline WANDB_SILENT=true
exec .venv/bin/python -m pytest -p no:logging -n 2 --dist loadfile --no-loadscope-reorder -m "not soak" "$@"
