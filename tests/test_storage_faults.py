"""Storage faults: damaged checkpoints are detected, set aside and never loaded (the newest intact one is resumed,
bit-identically); a size-limited disk stops a run in one line with the last checkpoint kept; damaged records and
sweep files are named and skipped; a sweep directory belongs to one sweep; resumes count exactly what they redo;
and a seeded fuzz of damaged files draws no traceback from the CLI."""

import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd
import pytest
import yaml

from scaling.config import load_config
from scaling.train import StopRequested, train

from .conftest import ROOT, run_cli, tiny_overrides

STEPS = 40


def _cfg(**extra):
    return load_config(None, tiny_overrides(**{"train.checkpoint_every": 10, "train.log_every": 1, **extra}))


def _stop_after(n):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == n

    return stop


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (40 steps) and a copy stopped after step 25 (checkpoints at 20 and 25)."""
    d = tmp_path_factory.mktemp("faults")
    ref = train(_cfg(), d / "ref")
    with pytest.raises(StopRequested):
        train(_cfg(), d / "stopped", should_stop=_stop_after(25))
    assert sorted(p.name for p in (d / "stopped" / "checkpoints").iterdir() if p.name.isdigit()) == ["20", "25"]
    return d, ref


def _copy(reference, tmp_path) -> Path:
    d, _ = reference
    shutil.copytree(d / "stopped", tmp_path / "run")
    return tmp_path / "run"


def _data_files(step_dir: Path) -> list[Path]:
    return sorted((f for f in step_dir.rglob("*") if f.is_file() and "ocdbt" in str(f)), key=lambda f: f.stat().st_size)


def _truncate(f: Path):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _scribble(f: Path, seed=0):
    data = bytearray(f.read_bytes())
    rng = random.Random(seed)
    for i in rng.sample(range(len(data)), min(1000, len(data))):
        data[i] = rng.randrange(256)
    f.write_bytes(bytes(data))


def _swap_state(run: Path):
    """Checkpoint 25's arrays replaced by checkpoint 20's, files intact: only the checksums can tell."""
    shutil.rmtree(run / "checkpoints" / "25" / "state")
    shutil.copytree(run / "checkpoints" / "20" / "state", run / "checkpoints" / "25" / "state")


@pytest.mark.parametrize("shape", [(1,), (4095,), (4096,), (4097,), (40, 4096), (32 * 4096 + 5,), (3, 5, 7)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "float64"])
def test_checkpoint_checksums_equal_their_definition_on_host_and_device(shape, dtype, monkeypatch):
    """The two sums a checkpoint stores (sum of the 32-bit words, sum of word x position, both mod 2^32) against
    their definition in Python integers, for the host path (numpy, chunked rows and columns; chunks of 3 rows here,
    so the larger shapes cross several chunk boundaries and end on a partial chunk) and the device path (one XLA
    program; 64-bit types only under x64); shapes around the 4096-word rows, narrow and wide types. Exact."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from scaling.train import checkpoint
    from scaling.train.checkpoint import _all_checksums, _host_checksum

    monkeypatch.setattr(checkpoint, "CHUNK_ROWS", 3)

    x = (np.random.default_rng(0).standard_normal(shape) * 1e3).astype(jnp.dtype(dtype))
    raw = np.ascontiguousarray(x)
    size = raw.dtype.itemsize
    words = (raw.view(np.uint32) if size in (4, 8) else raw.view({1: np.uint8, 2: np.uint16}[size])).reshape(-1).tolist()
    want = (sum(words) % 2**32, sum((i + 1) * w for i, w in enumerate(words)) % 2**32)
    assert _host_checksum(x) == want
    if size <= 4 or jax.config.jax_enable_x64:  # 64-bit arrays exist on the device only under x64
        assert tuple(int(v) for v in np.asarray(_all_checksums([jnp.asarray(x)]))[0]) == want


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "arrays of another step"])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_bit_identically(damage, reference, tmp_path):
    _, ref = reference
    run = _copy(reference, tmp_path)
    if damage == "arrays of another step":
        _swap_state(run)
    else:
        (_truncate if damage == "truncated" else _scribble)(_data_files(run / "checkpoints" / "25")[-1])
    done = train(_cfg(), run)
    assert done["status"] == "completed" and done["resumed_from_step"] == 20
    assert done["params_digest"] == ref["params_digest"] and done["final_train_loss"] == ref["final_train_loss"]
    (aside,) = done["checkpoints_set_aside"]
    assert aside["step"] == 25 and Path(aside["moved_to"]).is_dir() and "checkpoint 25" in aside["reason"]
    assert any("set aside" in w for w in done["warnings"])


def test_no_intact_checkpoint_is_one_line_naming_the_run(reference, tmp_path):
    run = _copy(reference, tmp_path)
    for step in ("20", "25"):
        _truncate(_data_files(run / "checkpoints" / step)[-1])
    p = run_cli("train", *sum((["--set", o] for o in tiny_overrides(**{"train.checkpoint_every": 10, "train.log_every": 1})), []),
                "--out", str(run), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert all(ln.startswith("warning: run ") and "set aside as damaged-" in ln for ln in lines[:-1]), lines  # one line each
    assert lines[-1].startswith("error: no intact checkpoint to resume from") and "checkpoint 20" in lines[-1] and "checkpoint 25" in lines[-1]
    assert len([d for d in (run / "checkpoints").iterdir() if d.name.startswith("damaged-")]) == 2  # kept, not deleted


def test_lost_metrics_and_a_damaged_record_are_named(reference, tmp_path):
    run = _copy(reference, tmp_path)
    (run / "metrics.jsonl").unlink()
    done = train(_cfg(), run)
    assert done["status"] == "completed" and any("metrics.jsonl is missing but the checkpoint is at step 25" in w for w in done["warnings"])
    run2 = _copy(reference, tmp_path / "b")
    for text in ("", '{"status": "runn'):
        (run2 / "record.json").write_text(text)
        p = run_cli("train", *sum((["--set", o] for o in tiny_overrides(**{"train.checkpoint_every": 10})), []), "--out", str(run2), check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and f"{run2}/record.json is damaged" in p.stderr, p.stderr


def _limited(limit_bytes):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return pre


def test_a_size_limited_disk_stops_the_run_in_one_line_and_loses_nothing(reference, tmp_path):
    """Files limited to 40 kB: the first checkpoint's larger files cannot be written. One line naming the path and
    the cause, exit 74, no traceback; rerun without the limit: bit-identical to the uninterrupted run."""
    _, ref = reference
    args = ["train", *sum((["--set", o] for o in tiny_overrides(**{"train.checkpoint_every": 10, "train.log_every": 1})), []), "--out", str(tmp_path / "run")]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR="", SCALING_CACHE=os.environ["SCALING_CACHE"])
    p = subprocess.run([sys.executable, "-m", "scaling", *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
                       preexec_fn=_limited(40_000))
    assert p.returncode == 74, (p.returncode, p.stderr[-3000:])
    err = [ln for ln in p.stderr.splitlines() if ln.strip() and "WARNING" not in ln and not ln.startswith("W1")]
    assert "Traceback" not in p.stderr and err[-1].startswith("storage error:") and "file too large" in err[-1], p.stderr[-2000:]
    done = train(_cfg(), tmp_path / "run")
    assert done["status"] == "completed" and done["params_digest"] == ref["params_digest"]


def test_resumes_count_the_steps_they_redo_and_the_wall_time(tmp_path):
    """SIGKILL once step 15 was logged and the step-10 checkpoint committed: the resume recomputes exactly the steps
    logged past the checkpoint it resumes from, and the wall time across attempts is at least the training time."""
    out = tmp_path / "run"
    args = ["-m", "scaling", "train", *sum((["--set", o] for o in tiny_overrides(**{"train.checkpoint_every": 10, "train.log_every": 1})), []), "--out", str(out)]
    p = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, last = time.time() + 120, 0
    while time.time() < deadline and p.poll() is None:
        try:
            last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
        except (OSError, IndexError, ValueError):
            pass
        if last >= 15 and (out / "checkpoints" / "10").is_dir():  # step 10's checkpoint committed (renamed into place)
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    p.wait()
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert 15 <= logged < STEPS
    rec = train(_cfg(), out)
    assert rec["resumed_from_step"] < logged and rec["steps_recomputed"] == logged - rec["resumed_from_step"] and rec["restarts"] == 1
    assert rec["wall_time_s"] >= rec["train_time_s"]


def _tiny_sweep(tmp_path, name="tiny_isoflop", **changes) -> Path:
    raw = yaml.safe_load((ROOT / "sweeps" / "tiny_isoflop.yaml").read_text())
    raw["name"] = name
    raw["base"]["log"] = {"wandb": "disabled"}
    raw["base"]["train"]["batch_size"] = 8
    raw["base"]["model"]["seq_len"] = 16
    raw["grid"]["budgets"] = [raw["grid"]["budgets"][0] / 3]
    raw.update(changes)
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_sweeps_skip_damaged_records_and_keep_their_directory(tmp_path):
    sweep, out = _tiny_sweep(tmp_path), tmp_path / "out"
    run_cli("sweep", "run", str(sweep), "--out", str(out), "--no-progress")
    before = pd.read_csv(out / "runs.csv")
    bad = out / "runs" / before["run_id"][0] / "record.json"
    bad.write_text("{]")
    st = run_cli("sweep", "status", str(out))
    assert "damaged" in st.stdout and "Traceback" not in st.stderr
    p = run_cli("sweep", "run", str(sweep), "--out", str(out), "--no-progress")
    assert f"skipped: {bad} is damaged" in p.stderr and "Traceback" not in p.stderr
    bad.write_text(json.dumps({"status": "completed"}))  # repaired by hand: the row comes back
    # another sweep into this directory is refused; nothing recorded disappears from the table
    other = _tiny_sweep(tmp_path, name="other")
    p = run_cli("sweep", "run", str(other), "--out", str(out), "--no-progress", check=False)
    assert p.returncode == 2 and "holds the sweep 'tiny_isoflop'" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    edited = _tiny_sweep(tmp_path / "e", grid={**yaml.safe_load(sweep.read_text())["grid"], "sizes": yaml.safe_load(sweep.read_text())["grid"]["sizes"][:1]})
    run_cli("sweep", "run", str(edited), "--out", str(out), "--no-progress")
    after = pd.read_csv(out / "runs.csv")
    assert set(before["run_id"]) <= set(after["run_id"]) and (~after["in_plan"]).sum() == len(before) - 1
    # what a run would refuse at start is refused at plan time
    neg = _tiny_sweep(tmp_path / "n", seeds=[-1])
    p = run_cli("sweep", "plan", str(neg), check=False)
    assert p.returncode == 2 and "seeds must be a non-empty list of integers >= 0" in p.stderr


# -- a seeded fuzz of damaged files ---------------------------------------------------------------------------------


def _damage(path: Path, rng: random.Random) -> str:
    data = path.read_bytes()
    kind = rng.choice(["truncate", "bytes", "json-type", "empty"])
    if kind == "truncate":
        path.write_bytes(data[: rng.randrange(0, max(1, len(data)))])
    elif kind == "bytes":
        b = bytearray(data)
        for _ in range(rng.randrange(1, 20)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        path.write_bytes(bytes(b))
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # a valid JSON / YAML document whose values have the wrong types
        try:
            obj = json.loads(data) if path.suffix == ".json" else yaml.safe_load(data)
        except Exception:
            obj = None
        if isinstance(obj, dict) and obj:
            key = rng.choice(sorted(obj, key=str))
            obj[key] = rng.choice([[1, 2], "abc", None, {"x": 1}, -1, float("nan")])
            path.write_text(json.dumps(obj) if path.suffix == ".json" else yaml.safe_dump(obj))
        else:
            path.write_text(rng.choice(['[1, 2, 3]', '"text"', '3', 'null']))
    return kind


def _cli(argv) -> tuple[int, str]:
    """The CLI in this process; an exception escaping it (a traceback for a user) fails the test."""
    from scaling.cli import main

    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
    return rc, err.getvalue()


def test_fifty_damaged_files_draw_no_traceback(tmp_path, reference):
    """50 seeded damages (truncations, random bytes, wrong JSON/YAML types, empty files) of the files the toolkit
    reads back: a run record (sweep status), a runs table (fit), a fit file (predict), a sweep file (plan), a
    dataset manifest (data inspect), a run config (train). Every command answers with an exit code, never an
    exception."""
    from scaling.data.prepare import PrepareSpec, prepare

    d, _ = reference
    base = tmp_path / "base"
    base.mkdir()
    # the sweep directory of a finished 3-run sweep, made without training: records copied from the reference run
    sweep = _tiny_sweep(base)
    (base / "sweepdir" / "runs").mkdir(parents=True)
    shutil.copy(sweep, base / "sweepdir" / "sweep.yaml")
    from scaling.sweep.spec import load_sweep, plan_sweep

    for r in plan_sweep(load_sweep(sweep)):
        (base / "sweepdir" / "runs" / r.run_id).mkdir()
        shutil.copy(d / "ref" / "record.json", base / "sweepdir" / "runs" / r.run_id / "record.json")
    table = pd.read_csv(ROOT / "analysis" / "data" / "llama3_isoflop_tidy.csv").head(12)
    table.to_csv(base / "runs.csv", index=False)
    run_cli("fit", "chinchilla-tied", str(base / "runs.csv"), "--save", str(base / "fit.json"))
    prepare(PrepareSpec("stdlib", max_chars=200_000), base / "prepared")
    (base / "config.yaml").write_text(yaml.safe_dump({"model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "seq_len": 32},
                                                       "data": {"source": "synthetic"}, "train": {"tokens": 10240, "batch_size": 8}}))
    targets = [
        (lambda b: b / "sweepdir" / "runs" / sorted(os.listdir(b / "sweepdir" / "runs"))[0] / "record.json", lambda b: ["sweep", "status", str(b / "sweepdir")]),
        (lambda b: b / "runs.csv", lambda b: ["fit", "power", str(b / "runs.csv"), "--json"]),
        (lambda b: b / "fit.json", lambda b: ["predict", str(b / "fit.json"), "--N", "1e9", "--D", "2e10"]),
        (lambda b: b / "sweepdir" / "sweep.yaml", lambda b: ["sweep", "plan", str(b / "sweepdir" / "sweep.yaml")]),
        (lambda b: b / "prepared" / "manifest.json", lambda b: ["data", "inspect", str(b / "prepared")]),
        (lambda b: b / "config.yaml", lambda b: ["memory", str(b / "config.yaml")]),
    ]
    rng = random.Random(int(os.environ.get("SCALING_SOAK_SEED", 0)))
    codes = []
    for i in range(50):
        case = tmp_path / f"case{i}"
        shutil.copytree(base, case)
        target, argv = targets[i % len(targets)]
        kind = _damage(target(case), rng)
        rc, err = _cli(argv(case))
        assert rc in (0, 1, 2), (i, kind, argv(case), rc, err[-2000:])
        assert "Traceback" not in err, (i, kind, err[-2000:])
        if rc == 2:
            assert err.strip() and len([ln for ln in err.strip().splitlines() if ln.startswith(("error", "sweep error", "config error"))]) >= 1, (i, kind, err)
        codes.append(rc)
        shutil.rmtree(case)
    assert codes.count(2) >= 20  # most damages are refused, not silently read
