import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    os.environ["SCALING_CACHE"] = str(d)
    return d


def tiny_overrides(**extra):
    """A tiny synthetic-source run: seconds on a CPU core."""
    base = {
        "data.source": "synthetic",
        "model.d_model": 32,
        "model.n_layers": 1,
        "model.n_heads": 2,
        "model.seq_len": 32,
        "train.batch_size": 8,
        "train.tokens": 8 * 32 * 40,
        "train.lr": 1e-2,
        "log.wandb": "disabled",
        "log.progress": False,
    }
    base.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in base.items()]


def run_cli(*args, env=None, timeout=600, check=True):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "scaling", *args], capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"scaling {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p
