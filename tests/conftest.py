import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
# One cache (tokenized corpora, compiled programs) for the whole test session, shared with subprocesses.
if "SCALING_CACHE" not in os.environ:
    import tempfile

    os.environ["SCALING_CACHE"] = tempfile.mkdtemp(prefix="scaling-test-cache-")
os.environ.setdefault("WANDB_SILENT", "true")
ROOT = Path(__file__).resolve().parents[1]
# The suite compiles hundreds of small programs, and on 2 cores compiling is much of its time. XLA:CPU's LLVM backend
# at optimisation level 1 (XLA's default: 2 or more) compiles them faster and runs them as fast at these sizes
# (measured on the 1m preset: step 0.39 s at level 1, 0.41 s at the default; level 0 doubles it). The HLO programs
# are the same; float results differ in the last bits (~1e-8 relative), inside every stated tolerance, and every
# bit-identity test compares programs built with the same flags. Measured side by side on six training-heavy test
# files (52 tests, -n 2): 316 s at the default, 282 s at level 1, 276 s at level 0.
# SCALING_TEST_XLA_OPT=xla runs the suite with XLA's default level.
_OPT = os.environ.get("SCALING_TEST_XLA_OPT", "1")
TEST_XLA_FLAGS = "" if _OPT == "xla" else f"--xla_backend_optimization_level={_OPT}"
if TEST_XLA_FLAGS and TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()


def xla_env(devices: int) -> dict:
    """This environment (with the suite's XLA flags) for a subprocess on ``devices`` fake CPU devices."""
    from scaling.devices import with_cpu_devices

    return with_cpu_devices(os.environ, devices)


@pytest.fixture(scope="session")
def cache_dir():
    return Path(os.environ["SCALING_CACHE"])


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
        "train.eval_tokens": 8192,
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


def run_workers(sweep_yaml, out, n=2, timeout=600) -> list[dict]:
    """``n`` concurrent ``scaling sweep run`` processes on one sweep directory (each must exit 0); the events."""
    import json

    cmd = [sys.executable, "-m", "scaling", "sweep", "run", str(sweep_yaml), "--out", str(out), "--no-progress"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        p.wait(timeout=timeout)
        assert p.returncode == 0, p.stderr.read()
    return [json.loads(line) for line in (Path(out) / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> dict:
    """60 documents of 2 KB of Python source: ~96k training and ~24k held-out byte tokens (20% held out)."""
    from itertools import islice

    from scaling.data.sources import iter_pieces

    d = tmp_path_factory.mktemp("corpus")
    text = "".join(p.text for p in islice(iter_pieces("stdlib"), 40))
    for i in range(60):
        (d / f"doc{i:02d}.py").write_text(text[i * 2000 : (i + 1) * 2000])
    return {"data.source": str(d), "data.eval_fraction": 0.2}


def read_record(run_dir) -> dict:
    """A run's record.json."""
    import json

    return json.loads((Path(run_dir) / "record.json").read_text())


# The files that take a minute or more (pytest --durations on a fresh clone, 2 cores), slowest first. Two workers
# take whole files (--dist loadfile); scheduled in this order (scripts/test.sh passes --no-loadscope-reorder), the
# long files start early and the short ones fill in at the end, so both workers finish together. pytest-xdist's own
# order (most tests first) left the single-test files of 2-3 minutes (the notebook, the tiny quickstart) to the
# end. A stale list costs only time, never a test.
SLOW_FIRST = ("test_multiprocess.py", "test_sweep.py", "test_quickstart.py", "test_parallel.py", "test_notebooks.py",
              "test_train.py", "test_stack.py", "test_wsd_sweep.py", "test_analysis_data.py", "test_gpu_check.py",
              "test_analysis_cli.py", "test_memory.py", "test_mup.py", "test_calibration.py", "test_preemption.py",
              "test_adaptive.py", "test_data_prepare.py", "test_storage_faults.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
