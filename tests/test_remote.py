"""Run and sweep directories on object storage (scaling/remote.py), against a fake gs:// store served from a local
directory with an object store's limits (no append, no rename; tests/support/fake_bucket.py): what a bucket holds
is always usable (complete checkpoints or none, whole records, logs cut at a line), a run killed mid-way resumes on
a fresh machine from the bucket bit-identically, and a bucket that cannot be used is one line, exit 2."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from scaling.remote import COMMIT, Mirror, PushFailed, RemoteError

from .conftest import ROOT, run_cli, tiny_overrides
from .support.fake_bucket import register

SITE = str(ROOT / "tests" / "support" / "fake_bucket_site")


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """``gs://bkt`` in this process and in subprocesses started with ``env``."""
    root = tmp_path / "store"
    (root / "bkt").mkdir(parents=True)
    monkeypatch.setenv("FAKE_BUCKET_ROOT", str(root))
    register()
    env = dict(os.environ, FAKE_BUCKET_ROOT=str(root), PYTHONPATH=os.pathsep.join([SITE, os.environ.get("PYTHONPATH", "")]),
               SCALING_SYNC_EVERY="0.3", SCALING_STAGING=str(tmp_path / "staging"))
    return root / "bkt", env


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def test_the_bucket_holds_complete_checkpoints_whole_files_and_lines(bucket, tmp_path):
    store, _ = bucket
    local = tmp_path / "work"
    m = Mirror("gs://bkt/run", local=local)
    m.check()
    m.pull()
    (local / "checkpoints" / "10" / "state").mkdir(parents=True)
    (local / "checkpoints" / "10" / "state" / "data").write_bytes(b"x" * 1000)
    (local / "checkpoints" / "20.orbax-checkpoint-tmp-1").mkdir()
    (local / "checkpoints" / "20.orbax-checkpoint-tmp-1" / "data").write_bytes(b"y")
    (local / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"st')  # a line being appended
    (local / "record.json").write_text("{}")
    (local / "claim.json").write_text("{}")
    (local / ".record.json.tmp1").write_text("{")
    m.push()
    # uncommitted checkpoints, claims and temporaries stay local; the log is cut at its last complete line
    assert _files(store / "run") == {"metrics.jsonl", "record.json"}
    assert (store / "run" / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    (local / "checkpoints" / "10" / COMMIT).write_text("ok")  # orbax committed step 10
    assert m.push()["uploaded"] == 2 and f"checkpoints/10/{COMMIT}" in _files(store / "run")
    assert m.push() == {"uploaded": 0, "deleted": 0}  # nothing changed, nothing sent
    # a fresh machine: the bucket's files, less a checkpoint whose marker never arrived
    (store / "run" / "checkpoints" / "30" / "state").mkdir(parents=True)
    (store / "run" / "checkpoints" / "30" / "state" / "data").write_bytes(b"z")
    m2 = Mirror("gs://bkt/run", local=tmp_path / "fresh")
    got = m2.pull()
    assert got["incomplete_checkpoints"] == ["checkpoints/30"]
    assert _files(tmp_path / "fresh") - {".mirror-state.json"} == {"metrics.jsonl", "record.json", "checkpoints/10/state/data", f"checkpoints/10/{COMMIT}"}
    # a checkpoint pruned locally leaves the bucket, marker first; a file never pushed survives a pull
    import shutil

    shutil.rmtree(local / "checkpoints" / "10")
    assert m.push()["deleted"] == 2 and not _files(store / "run" / "checkpoints" / "10")
    (local / "events.jsonl").write_text('{"e": 1}\n')
    assert m.pull()["removed"] == 0 and (local / "events.jsonl").exists()


def test_a_failed_final_push_keeps_everything_for_the_next_command(bucket, tmp_path, monkeypatch):
    store, _ = bucket
    m = Mirror("gs://bkt/run", local=tmp_path / "work")
    m.check()
    m.pull()
    (tmp_path / "work" / "record.json").write_text('{"status": "completed"}')

    def down(rel):
        raise OSError("network is unreachable")

    monkeypatch.setattr(m, "_upload_if_changed", down)
    with pytest.raises(PushFailed, match="the final push failed .*rerun the command on this machine"):
        m.close()
    again = Mirror("gs://bkt/run", local=tmp_path / "work")  # the next command: the unpushed file survives its pull
    again.pull()
    assert again.push()["uploaded"] == 1 and (store / "run" / "record.json").read_text() == '{"status": "completed"}'


def test_a_pull_that_fails_mid_way_is_one_line(bucket, tmp_path, monkeypatch):
    """The store answers the reachability check, then the connection drops while listing: one line, no traceback."""
    from scaling.remote import local_workdir

    def reset(self):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(Mirror, "_list_remote", reset)
    monkeypatch.setenv("SCALING_STAGING", str(tmp_path / "staging"))
    with pytest.raises(RemoteError, match=r"the pull into .* failed \(ConnectionError: connection reset by peer\)"):
        with local_workdir("gs://bkt/run"):
            pass


def test_a_bucket_that_cannot_be_used_is_one_line(bucket, tmp_path):
    with pytest.raises(RemoteError, match="the bucket gs://nobucket does not exist"):
        Mirror("gs://nobucket/run", local=tmp_path / "w").check()
    with pytest.raises(RemoteError, match="unknown storage scheme 'ftp'"):
        Mirror("ftp://host/run", local=tmp_path / "w")
    _, env = bucket
    args = ["train", *sum((["--set", o] for o in tiny_overrides()), [])]
    p = run_cli(*args, "--out", "gs://nobucket/run", env=env, check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ["error: gs://nobucket/run: the bucket gs://nobucket does not exist or cannot be read"]
    # without the fake (and without gcsfs): the package to install, in one line
    plain = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "FAKE_BUCKET_ROOT")}
    p = run_cli(*args, "--out", "gs://bkt/run", env=plain, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "gcsfs" in lines[0] and "Traceback" not in p.stderr, p.stderr
    # a job of several processes writes checkpoints from each: a shared file system path, not a URL
    multi = dict(env, JAX_COORDINATOR_ADDRESS="localhost:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0")
    p = run_cli(*args, "--out", "gs://bkt/run", env=multi, check=False)
    assert p.returncode == 2 and "several processes" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_run_killed_mid_way_resumes_from_the_bucket_on_a_fresh_machine_bit_identically(bucket, tmp_path):
    """SIGKILL once the bucket holds a complete checkpoint and a later metrics line; the staging directory is then
    deleted (a new node) and the same command resumes from the bucket: the record equals an uninterrupted local
    run's parameters digest and losses, and the bucket ends with the completed record."""
    store, env = bucket
    over = tiny_overrides(**{"train.checkpoint_every": 10, "train.log_every": 1, "train.tokens": 8 * 32 * 60})
    args = ["train", *sum((["--set", o] for o in over), [])]
    ref = run_cli(*args, "--out", str(tmp_path / "ref"))
    ref_rec = json.loads((tmp_path / "ref" / "record.json").read_text())
    p = subprocess.Popen([sys.executable, "-m", "scaling", *args, "--out", "gs://bkt/run"], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, run = time.time() + 180, store / "run"
    while time.time() < deadline and p.poll() is None:
        steps = [int(s.name) for s in (run / "checkpoints").glob("*") if (s / COMMIT).exists()] if (run / "checkpoints").is_dir() else []
        try:
            logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"]
        except (OSError, IndexError, ValueError):
            logged = 0
        if steps and logged > max(steps):
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    p.wait()
    assert p.returncode == -signal.SIGKILL, f"the run ended before the bucket held a checkpoint: {p.stderr.read()[-2000:]}"
    import shutil

    shutil.rmtree(tmp_path / "staging")  # a fresh node: nothing local
    q = run_cli(*args, "--out", "gs://bkt/run", env=env)
    assert "gs://bkt/run: working in" in q.stderr and "gs://bkt/run: pushed" in q.stderr and "-> gs://bkt/run/record.json" in q.stdout
    rec = json.loads((run / "record.json").read_text())
    assert rec["status"] == "completed" and rec["restarts"] == 1 and rec["resumed_from_step"] > 0
    assert rec["params_digest"] == ref_rec["params_digest"] and rec["final_eval_loss"] == ref_rec["final_eval_loss"]
    losses = lambda d: {r["step"]: r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r}  # noqa: E731
    assert losses(run) == losses(tmp_path / "ref")  # every step's loss, the recomputed ones included
    del ref


def test_a_sweep_on_object_storage_runs_and_reports(bucket, tmp_path):
    from .test_storage_faults import _tiny_sweep

    store, env = bucket
    sweep = _tiny_sweep(tmp_path)
    p = run_cli("sweep", "run", str(sweep), "--out", "gs://bkt/sweeps/tiny", "--no-progress", env=env)
    assert "-> gs://bkt/sweeps/tiny/runs.csv" in p.stdout
    table = pd.read_csv(store / "sweeps" / "tiny" / "runs.csv")
    assert len(table) > 0 and (table["status"] == "completed").all()
    st = run_cli("sweep", "status", "gs://bkt/sweeps/tiny", env=dict(env, SCALING_STAGING=str(tmp_path / "other-node")))
    assert f"{len(table)} completed" in st.stdout
    assert not any("checkpoints" in f for f in _files(tmp_path / "other-node"))  # status reads records only
    # a SLURM job on a bucket: its workers get the URL, its submitit files stay local; several hosts are refused
    submit = lambda *a: subprocess.run([sys.executable, "-m", "scaling", "sweep", "submit", str(sweep), "--out", "gs://bkt/sweeps/tiny", *a],  # noqa: E731
                                       cwd=tmp_path, env=dict(env, PYTHONPATH=os.pathsep.join([str(ROOT), env["PYTHONPATH"]])),
                                       capture_output=True, text=True, timeout=120)
    d = submit("--workers", "1", "--dry-run")
    assert d.returncode == 0 and (tmp_path / "runs" / "tiny_isoflop" / "slurm" / "array.sbatch").exists(), d.stderr
    from scaling.sweep.submit import worker_command

    assert worker_command(sweep, "gs://bkt/sweeps/tiny")[6:8] == ["--out", "gs://bkt/sweeps/tiny"]  # the URL, not a local path
    bad = submit("--workers", "2", "--dry-run")
    assert bad.returncode == 2 and "worked from one host" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
