#!/usr/bin/env bash
# Create .venv (if missing) and install exactly the versions in uv.lock: the project (editable), its test extras
# and uv itself. Idempotent; a few seconds when the package cache is warm.
#   Upgrade the lock (one command):  .venv/bin/uv lock --upgrade   (then ./scripts/test.sh and commit uv.lock)
#   Accelerators:                    .venv/bin/uv sync --frozen --extra test --extra cuda   (or --extra tpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
UV_VERSION=$(sed -n 's/^dev = \["uv==\([0-9.]*\)"\]$/\1/p' pyproject.toml)
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if [ "$(.venv/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
# --frozen: install the lock as written, never re-resolve; extras beyond `test` are kept if already installed
# (--inexact), so a GPU machine keeps its jax plugin. --compile-bytecode writes every .pyc at install (12 s once,
# 0.4 s when nothing changed): where PYTHONDONTWRITEBYTECODE is set (most container images) Python would otherwise
# compile jax, flax, orbax and wandb from source in every process, 3.3 s of each command's start-up (a tiny
# `scaling train` measured 7.8 s without, 4.7 s with).
.venv/bin/uv sync -q --frozen --inexact --extra test --python .venv/bin/python --compile-bytecode
.venv/bin/python -m compileall -q scaling analysis >/dev/null  # the project's own modules, for the same reason
