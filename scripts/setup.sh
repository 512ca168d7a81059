#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its test extras. Idempotent; ~10 s when cached.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check uv
.venv/bin/uv pip install -q --python .venv/bin/python -e '.[test]'
