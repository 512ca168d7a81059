"""A real multi-process JAX job on CPU: 2 processes x 4 devices (gloo collectives, coordinator on 127.0.0.1) train
exactly like 1 process with 8 devices, only process 0 writes, a SIGKILL of both resumes to the same numbers, and a
sweep worker spanning both processes trains each run once (process 0 claims, the others follow)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from .conftest import ROOT, read_record, run_cli, tiny_overrides, xla_env

STEPS = 40
OVERRIDES = tiny_overrides(**{"train.batch_size": 16, "train.tokens": 16 * 32 * STEPS, "train.checkpoint_every": 5,
                              "log.wandb": "offline"})
TRAIN = ["train", "--no-progress", *sum((["--set", o] for o in OVERRIDES), [])]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], processes: int, devices: int, logdir) -> list[subprocess.Popen]:
    port = _port()
    procs = []
    for i in range(processes):
        env = xla_env(devices)
        if processes > 1:
            env |= {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(i)}
        log = open(logdir / f"p{i}-{time.time_ns()}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "-m", "scaling", *args], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs, timeout=600):
    for p in procs:
        assert p.wait(timeout=timeout) == 0, f"a process exited {p.returncode}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("mp")
    _wait(_launch([*TRAIN, "--out", str(d / "one")], 1, 8, d))
    _wait(_launch([*TRAIN, "--out", str(d / "two")], 2, 4, d))
    return d


def test_two_processes_train_like_one_process_with_eight_devices(runs):
    one, two = read_record(runs / "one"), read_record(runs / "two")
    assert (one["process_count"], one["device_count"]) == (1, 8) and (two["process_count"], two["device_count"]) == (2, 8)
    # Same global batch, same mesh layout: only the all-reduce changes (gloo between processes, in-process
    # otherwise), i.e. the summation order of float32 gradients; 1e-4 leaves 3 orders of magnitude (see
    # test_parallel).
    assert two["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-4)
    assert two["final_eval_loss"] == pytest.approx(one["final_eval_loss"], rel=1e-4)
    # only process 0 logs: one W&B run, each step once in metrics.jsonl
    assert len(list((runs / "two" / "wandb").glob("offline-run-*"))) == 1
    steps = [json.loads(l)["step"] for l in (runs / "two" / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS


def test_both_processes_killed_mid_run_resume_to_the_same_numbers(runs):
    out = runs / "killed"
    procs = _launch([*TRAIN, "--out", str(out)], 2, 4, runs)
    deadline = time.time() + 300
    while time.time() < deadline:
        rec = out / "record.json"
        if rec.exists() and (json.loads(rec.read_text()).get("last_checkpoint_step") or 0) >= 10:
            break
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    killed = read_record(out)
    assert killed["status"] == "running" and 10 <= killed["last_checkpoint_step"] < STEPS
    _wait(_launch([*TRAIN, "--out", str(out)], 2, 4, runs))
    done, ref = read_record(out), read_record(runs / "two")
    assert done["resumed_from_step"] >= killed["last_checkpoint_step"]
    assert done["params_digest"] == ref["params_digest"]  # bit-identical resume
    assert done["final_train_loss"] == ref["final_train_loss"] and done["final_eval_loss"] == ref["final_eval_loss"]


# soak: two-process training and resume are tested above; this adds the sweep's claims over gloo (200 s)
@pytest.mark.soak
def test_a_sweep_worker_spanning_two_processes_trains_each_run_once(tmp_path):
    raw = yaml.safe_load((ROOT / "sweeps" / "tiny_isoflop.yaml").read_text())
    raw["base"]["log"] = {"wandb": "disabled"}
    raw["base"]["model"]["seq_len"] = 16
    raw["base"]["train"]["batch_size"] = 8
    raw["grid"]["budgets"] = [raw["grid"]["budgets"][0] / 3]  # >= 80 steps per run: C within 1% of the budget
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    _wait(_launch(["sweep", "run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--no-progress"], 2, 2, tmp_path))
    events = [json.loads(l) for l in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    starts = [e["run_id"] for e in events if e["event"] == "start"]
    assert len(starts) == len(set(starts)) == 3 and len({e["owner"] for e in events}) == 1  # process 0 claims
    df = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert (df["status"] == "completed").all()
    assert all(read_record(tmp_path / "out" / "runs" / r)["process_count"] == 2 for r in df["run_id"])


DIGEST_SCRIPT = r"""
import sys
from pathlib import Path
from scaling.config import load_config
from scaling.parallel import Parallel
from scaling.train.checkpoint import Checkpointer
from scaling.train.record import params_digest
from scaling.train.state import build, restore_state
run = Path(sys.argv[1])
cfg = load_config(run / "config.yaml")
graphdef, target, shardings = build(cfg, Parallel.create(cfg.parallel))
ck = Checkpointer(run / "checkpoints", cfg.train.keep_checkpoints, read_only=True)
state, _ = restore_state(ck, ck.latest_step(), target)
print(params_digest(state.params))
"""

SHARDED = {
    "fsdp": ["parallel.data=1", "parallel.fsdp=8"],
    "expert": ["parallel.data=1", "parallel.expert=8", "model.moe.n_experts=8", "model.moe.top_k=2"],
}


def _kill_after_checkpoint(procs, out, step=10):
    deadline = time.time() + 300
    while time.time() < deadline:
        rec = out / "record.json"
        if rec.exists() and (json.loads(rec.read_text()).get("last_checkpoint_step") or 0) >= step:
            break
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()


@pytest.mark.parametrize("layout", sorted(SHARDED))
def test_parameters_sharded_across_processes_finalize_and_resume_bit_identically(layout, tmp_path):
    """fsdp (or expert) over all 8 devices of 2 processes: every parameter (every expert) is split between the
    processes. The run finalizes with a digest gathered from each process's shards, equal to the digest one process
    computes from the final checkpoint; both processes SIGKILLed mid-run resume to the same losses and digest, and
    one record is written."""
    train = [*TRAIN, *sum((["--set", o] for o in SHARDED[layout]), [])]
    _wait(_launch([*train, "--out", str(tmp_path / "ref")], 2, 4, tmp_path))
    ref = read_record(tmp_path / "ref")
    assert ref["status"] == "completed" and ref["process_count"] == 2 and ref["mesh"][layout] == 8
    env = xla_env(8)
    one = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT, str(tmp_path / "ref")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    assert one.stdout.strip().splitlines()[-1] == ref["params_digest"]
    out = tmp_path / "killed"
    _kill_after_checkpoint(_launch([*train, "--out", str(out)], 2, 4, tmp_path), out)
    assert read_record(out)["status"] == "running"
    _wait(_launch([*train, "--out", str(out)], 2, 4, tmp_path))
    done = read_record(out)
    assert done["resumed_from_step"] >= 10 and done["params_digest"] == ref["params_digest"]
    assert done["final_train_loss"] == ref["final_train_loss"] and done["final_eval_loss"] == ref["final_eval_loss"]
    assert [p.name for p in out.iterdir() if p.name.startswith("record")] == ["record.json"]


@pytest.mark.parametrize("env, tpu_vm, want", [
    ({}, False, None),                                                         # one process
    ({}, True, {}),                                                            # a Cloud TPU VM: JAX finds the slice
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False, None),                 # slurm, one task
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, False, {}),                   # slurm, a task per node
    ({"OMPI_COMM_WORLD_SIZE": "2"}, False, {}),
    ({"JAX_COORDINATOR_ADDRESS": "h0:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}, False,
     {"coordinator_address": "h0:1234", "num_processes": 2, "process_id": 1}),
    ({"JAX_COORDINATOR_ADDRESS": "h0:1234"}, True, {"coordinator_address": "h0:1234"}),  # the rest from the TPU runtime
    ({"SCALING_NO_DISTRIBUTED": "1", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, True, None),
])
def test_how_a_process_joins_a_job(env, tpu_vm, want):
    from scaling.parallel import distributed_args

    assert distributed_args(env, tpu_vm) == want


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "h0:1234"}, "JAX_NUM_PROCESSES and JAX_PROCESS_ID is not"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "without JAX_COORDINATOR_ADDRESS"),
    ({"JAX_COORDINATOR_ADDRESS": "h0", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "is not host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "h0:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, "must be below JAX_NUM_PROCESSES=2"),
    ({"JAX_COORDINATOR_ADDRESS": "h0:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "is not a non-negative integer"),
])
def test_a_half_set_distributed_environment_is_refused_in_one_line(env, message, tmp_path):
    from scaling.config import ConfigError
    from scaling.parallel import distributed_args

    with pytest.raises(ConfigError, match=message):
        distributed_args(env)
    p = subprocess.run([sys.executable, "-m", "scaling", *TRAIN, "--out", str(tmp_path / "r")], env={**os.environ, **env},
                       cwd=ROOT, capture_output=True, text=True, timeout=120) if "two" in str(env) else None
    if p is not None:  # once end to end: one line, exit 2, before any JAX call
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and message in p.stderr, p.stderr


def test_train_starts_under_a_coordinator_environment(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}
    run_cli("train", "--out", str(tmp_path / "r"), *sum((["--set", o] for o in tiny_overrides(**{"train.tokens": 8 * 32 * 5})), []), env=env)
    assert read_record(tmp_path / "r")["status"] == "completed"
