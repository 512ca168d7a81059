"""Sweeps: plan, run, collect; SIGKILL and resume; failures recorded while the sweep goes on; two workers."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from scaling.config import ConfigError
from scaling.sweep.runner import run_sweep
from scaling.sweep.spec import load_sweep, parse_sweep, plan_sweep

from .conftest import ROOT, run_cli, run_workers, xla_env

TINY = ROOT / "sweeps" / "tiny_isoflop.yaml"
DETERMINISTIC = ["run_id", "status", "N", "N_active", "D", "C", "budget", "loss", "eval_loss_stderr", "train_loss", "steps"]


def tiny_sweep(tmp_path, wandb="disabled", **changes) -> Path:
    """The shipped tiny sweep at a third of its budgets. Batch 8 of 16 tokens keeps every run >= 80 steps (so C is
    within 0.5 / 80 < 1% of its budget) and divides over 1 or 8 devices."""
    raw = yaml.safe_load(TINY.read_text())
    raw["base"]["log"] = {"wandb": wandb}
    raw["base"]["train"]["batch_size"] = 8
    raw["base"]["model"]["seq_len"] = 16
    raw["grid"]["budgets"] = [b / 3 for b in raw["grid"]["budgets"]]
    for k, v in changes.items():
        raw[k] = v
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    path = tiny_sweep(d, wandb="offline")
    run_cli("sweep", "run", str(path), "--out", str(d / "out"), "--no-progress")
    return path, d / "out"


def test_plan_lists_runs_within_1pct_of_budget():
    plan = plan_sweep(load_sweep(TINY))
    assert len(plan) == 6 and len({r.run_id for r in plan}) == 6
    for r in plan:
        assert abs(r.flops / r.budget - 1) < 0.01
    p = run_cli("sweep", "plan", str(TINY))
    assert "total compute" in p.stdout and all(r.run_id in p.stdout for r in plan)


def test_sweep_runs_and_collects(finished_sweep):
    path, out = finished_sweep
    df = pd.read_csv(out / "runs.csv")
    assert len(df) == 6 and (df["status"] == "completed").all()
    assert ((df["C"] / df["budget"] - 1).abs() < 0.01).all()
    for col in ("N", "N_active", "N_nonembedding", "D", "C", "loss", "eval_loss", "status", "flops_convention"):
        assert col in df
    assert (out / "runs.parquet").exists()
    status = run_cli("sweep", "status", str(out))
    assert "6 completed" in status.stdout
    # every run logged to one W&B group named after the sweep, tagged with N, D, C
    from .wandb_reader import read_records

    run_dir = out / "runs" / df["run_id"][0]
    for r in read_records(next((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))):
        if r.WhichOneof("record_type") == "run":
            assert r.run.run_group == "tiny_isoflop"
            assert any(t.startswith("N=") for t in r.run.tags) and any(t.startswith("C=") for t in r.run.tags)
            break
    else:
        pytest.fail("no run record in the W&B file")
    # the analysis side reads it without knowing the training code
    from analysis import load_runs

    runs = load_runs(out / "runs.csv")
    assert len(runs) == 6


def test_the_wandb_dashboard_reads_like_a_scaling_study(finished_sweep):
    """Decoded from the offline run files alone: readable names, one group, loss logged against cumulative training
    FLOPs (train/flops), the model size in the config to group by, the code's commit and lock file recorded; the
    points reproduce each run's own loss-against-compute curve (FLOPs = FLOPs per token x tokens)."""
    import re

    from .wandb_reader import read_records

    path, out = finished_sweep
    df = pd.read_csv(out / "runs.csv")
    curves = {}
    for run_id in df["run_id"]:
        run, history = None, []
        for r in read_records(next((out / "runs" / run_id / "wandb").glob("offline-run-*/run-*.wandb"))):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run = r.run
            elif kind == "history":
                history.append({it.key or "/".join(it.nested_key): json.loads(it.value_json) for it in r.history.item})
        assert run.run_group == "tiny_isoflop"
        assert re.fullmatch(r"tiny_isoflop N=[\d.]+k? D=[\d.]+k? s0", run.display_name), run.display_name
        config = {it.key: json.loads(it.value_json) for it in run.config.update}
        assert config["code"]["git_commit"] and len(config["code"]["uv_lock_sha256"]) == 64
        rec = json.loads((out / "runs" / run_id / "record.json").read_text())
        train = [h for h in history if "train/flops" in h and "train/lm_loss" in h]
        assert train and all(h["train/flops"] == rec["flops_per_token"] * h["train/tokens"] for h in train)
        assert train[-1]["train/flops"] == pytest.approx(rec["flops"], rel=1e-12)
        curves.setdefault(config["N"], []).append([(h["train/flops"], h["train/lm_loss"]) for h in train])
    assert sorted(curves) == sorted(df["N"].unique())  # grouped by model size: one curve per budget for each N


def test_rerun_skips_completed_runs(finished_sweep):
    path, out = finished_sweep
    before = (out / "events.jsonl").read_text()
    p = run_cli("sweep", "run", str(path), "--out", str(out), "--no-progress")
    assert "0 completed now" in p.stdout and "6 skipped" in p.stdout
    assert (out / "events.jsonl").read_text() == before


def test_sigkill_mid_sweep_then_resume_equals_uninterrupted(finished_sweep, tmp_path):
    path, ref = finished_sweep
    out = tmp_path / "out"
    spec = tiny_sweep(tmp_path, wandb="offline")
    cmd = [sys.executable, "-m", "scaling", "sweep", "run", str(spec), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    killed_mid_run = False
    while time.time() < deadline and proc.poll() is None:
        recs = [json.loads(p.read_text()) for p in out.glob("runs/*/record.json") if p.stat().st_size]
        done = sum(r["status"] == "completed" for r in recs)
        mid = [r for r in recs if r["status"] == "running" and (r.get("last_checkpoint_step") or 0) > 0]
        if done >= 2 and mid:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run = True
            break
        time.sleep(0.05)
    proc.wait()
    assert killed_mid_run, "the sweep finished before it could be killed mid-run"
    events_before = [json.loads(l) for l in (out / "events.jsonl").read_text().splitlines()]
    completed_before = {e["run_id"] for e in events_before if e["event"] == "end"}
    run_cli(*cmd[3:])
    events = [json.loads(l) for l in (out / "events.jsonl").read_text().splitlines()]
    restarted = [e["run_id"] for e in events[len(events_before):] if e["event"] == "start"]
    assert not set(restarted) & completed_before  # completed runs are not rerun
    resumed = [json.loads((out / "runs" / r / "record.json").read_text()) for r in restarted]
    assert any(r.get("resumed_from_step") for r in resumed)  # the interrupted run resumed from its checkpoint
    a = pd.read_csv(ref / "runs.csv")[DETERMINISTIC]
    b = pd.read_csv(out / "runs.csv")[DETERMINISTIC]
    pd.testing.assert_frame_equal(a, b)


def test_failed_and_diverged_runs_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    raw = yaml.safe_load(tiny_sweep(tmp_path).read_text())
    first_budget = raw["grid"]["budgets"][0]
    spec = parse_sweep(raw | {
        "overrides": [{"match": {"size": 0, "budget": first_budget}, "set": {"train.lr": 1e30, "train.grad_clip": None}}]
    })
    plan = plan_sweep(spec)
    broken = plan[3].run_id  # an injected exception in another run
    import scaling.train as train_mod

    real = train_mod.train

    def flaky(cfg, run_dir, **kw):
        if kw.get("run_id") == broken:
            from scaling.train import record

            record.write_json_atomic(Path(run_dir) / "record.json", {"run_id": broken, "status": "failed", "error": "RuntimeError: injected"})
            raise RuntimeError("injected")
        return real(cfg, run_dir, **kw)

    monkeypatch.setattr(train_mod, "train", flaky)
    res = run_sweep(spec, tmp_path / "out")
    df = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("run_id")
    assert df.loc[plan[0].run_id, "status"] == "diverged"
    assert df.loc[broken, "status"] == "failed" and "injected" in df.loc[broken, "error"]
    assert (df.drop(index=[plan[0].run_id, broken])["status"] == "completed").all()
    assert len(res.failed) == 2 and len(res.completed) == 4
    # --retry-failed reruns exactly the failed ones
    monkeypatch.setattr(train_mod, "train", real)
    res2 = run_sweep(spec, tmp_path / "out", retry_failed=True)
    assert sorted(res2.completed) == sorted([broken]) and res2.failed == [plan[0].run_id]


def test_two_workers_never_run_the_same_run(tmp_path):
    spec = tiny_sweep(tmp_path)
    out = tmp_path / "out"
    events = run_workers(spec, out, 2)
    starts = [e["run_id"] for e in events if e["event"] == "start"]
    assert sorted(starts) == sorted(set(starts)) and len(starts) == 6
    assert len({e["owner"] for e in events}) == 2  # both workers took part
    assert (pd.read_csv(out / "runs.csv")["status"] == "completed").all()


def test_stale_claim_of_a_dead_worker_is_taken_over(tmp_path):
    import socket

    from scaling.sweep.claims import Claim

    path = tmp_path / "claim.json"
    path.write_text(json.dumps({"owner": "dead", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600}))
    assert Claim(path, "me").try_acquire(stale_after=60)  # old heartbeat
    assert json.loads(path.read_text())["owner"] == "me"
    assert not Claim(path, "other").try_acquire(stale_after=60)  # live claim
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"owner": "killed", "host": socket.gethostname(), "pid": int(dead.stdout), "heartbeat": time.time()}))
    assert Claim(path, "me2").try_acquire(stale_after=60)  # fresh heartbeat, but its process on this host is gone


def test_a_taker_that_loses_the_race_puts_the_winners_claim_back(tmp_path, monkeypatch):
    """Two workers judge the same dead claim stale; A takes it over first. B's rename then moves A's fresh claim:
    B must see that what it moved is not what it judged stale, put it back and leave the run to A."""
    import scaling.sweep.claims as claims

    path = tmp_path / "claim.json"
    path.write_text(json.dumps({"owner": "dead", "host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600}))
    fresh = json.dumps({"owner": "A", "host": "elsewhere", "pid": 2, "heartbeat": time.time()})
    real, calls = claims._read_text, []

    def racing(p):
        out = real(p)
        calls.append(p)
        if len(calls) == 1:  # A's takeover lands right after B looked at the stale claim
            path.write_text(fresh)
        return out

    monkeypatch.setattr(claims, "_read_text", racing)
    assert not claims.Claim(path, "B").try_acquire(stale_after=60)
    assert json.loads(path.read_text())["owner"] == "A" and not list(tmp_path.glob(".claim.stale-*"))


def test_shard_partitions_runs(tmp_path):
    from scaling.sweep.runner import parse_shard

    assert parse_shard("1/3") == (1, 3)
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("x")


def test_run_ids_are_stable_when_the_sweep_is_edited():
    raw = yaml.safe_load(TINY.read_text())
    ids = {r.run_id for r in plan_sweep(parse_sweep(raw))}
    raw["grid"]["budgets"].append(1e11)
    ids2 = {r.run_id for r in plan_sweep(parse_sweep(raw))}
    assert ids < ids2 and len(ids2) == 9


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"grdi": {}}, r"unknown field grdi; allowed fields: .*grid"),
        ({"grid": {"kind": "isoflop", "sizes": [1e4], "budgets": []}}, r"grid\.budgets is empty"),
        ({"grid": {"kind": "isoflop", "sizes": [], "budgets": [1e10]}}, r"grid\.sizes is empty"),
        ({"grid": {"kind": "isoflop", "sizes": [1e4], "budgets": [-1e10]}}, r"grid\.budgets\[0\] must be a positive number"),
        ({"grid": {"kind": "isoflops", "sizes": [1e4], "budgets": [1e10]}}, r"grid\.kind: 'isoflops' is not allowed"),
        ({"base": {"train": {"lrr": 1}}}, r"base: unknown field train\.lrr"),
        ({"grid": {"kind": "isoflop", "sizes": [1e4], "budgets": [10.0]}}, r"budget is smaller than one step"),
        ({"grid": {"kind": "isoflop", "sizes": [1e4], "sizes_per_budget": 5, "budgets": [1e11]}}, r"grid\.sizes and grid\.sizes_per_budget: give one"),
        ({"grid": {"kind": "isoflop", "sizes_per_budget": 2, "budgets": [1e11]}}, r"sizes_per_budget must be >= 3"),
        ({"grid": {"kind": "isoflop", "sizes_per_budget": 5, "budgets": [1e11], "prior": "kaplan"}}, r"grid\.prior: 'kaplan' is not allowed; allowed values: chinchilla"),
        ({"grid": {"kind": "isoflop", "sizes_per_budget": 5, "budgets": [1e11], "prior": {"a": 0.5}}}, r"grid\.prior: expected a named prior"),
        ({"grid": {"kind": "explicit", "sizes_per_budget": 5, "tokens": [1e6]}}, r"sizes_per_budget is only used by grid\.kind='isoflop'"),
    ],
)
def test_bad_sweep_files_name_the_key(change, pattern):
    raw = yaml.safe_load(TINY.read_text()) | change
    with pytest.raises(ConfigError, match=pattern):
        plan_sweep(parse_sweep(raw))


def test_slurm_submission_script_without_a_cluster(tmp_path):
    p = run_cli("sweep", "submit", str(TINY), "--out", str(tmp_path / "s"), "--workers", "3", "--partition", "gpu", "--gpus", "8", "--dry-run")
    script = (tmp_path / "s" / "slurm" / "array.sbatch").read_text()
    for line in ("--array=0-2%3", "--partition=gpu", "--cpus-per-task=8", "--gpus-per-node=8", "--job-name=scaling-tiny_isoflop",
                 "--requeue", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in script, line
    assert "-m submitit.core._submit" in script and script in p.stdout
    assert sorted(f.name for f in (tmp_path / "s" / "slurm").iterdir()) == ["array.sbatch"]  # nothing of the dry run left
    # several hosts per worker: one task per node under srun, which JAX joins into one job from slurm's environment
    run_cli("sweep", "submit", str(TINY), "--out", str(tmp_path / "m"), "--workers", "2", "--nodes", "4", "--gpus", "8", "--dry-run")
    script = (tmp_path / "m" / "slurm" / "array.sbatch").read_text()
    assert "#SBATCH --nodes=4" in script and "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --gpus-per-node=8" in script
    assert "\nsrun " in script
    p = run_cli("sweep", "submit", str(TINY), "--out", str(tmp_path / "x"), check=False)
    assert p.returncode == 2 and "no slurm on this machine" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_the_dry_run_prints_the_script_a_cluster_receives(tmp_path):
    """A fake cluster (sbatch that keeps what it is handed, srun present): the real submission and the dry run go
    through one code path, and the script the cluster received equals the dry run's byte for byte; the worker
    command carries --set and --devices-per-worker."""
    import os
    import pickle

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/received.sbatch\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    args = ["sweep", "submit", str(TINY), "--out", str(tmp_path / "s"), "--workers", "2", "--gpus", "8", "--devices-per-worker", "2",
            "--set", "train.lr=0.002", "--slurm", "account=abc"]
    dry = run_cli(*args, "--dry-run").stdout
    real = run_cli(*args, env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}).stdout
    assert "submitted 2 array tasks: 4242" in real
    received = (tmp_path / "received.sbatch").read_text()
    assert received == (tmp_path / "s" / "slurm" / "array.sbatch").read_text() and received in dry and "#SBATCH --account=abc" in received
    worker = pickle.loads((tmp_path / "s" / "slurm" / "4242_0" / "4242_0_submitted.pkl").read_bytes())
    cmd = worker.args[0]
    assert cmd[cmd.index("--set") + 1] == "train.lr=0.002" and cmd[cmd.index("--devices-per-worker") + 1] == "2"


def test_one_worker_per_group_of_devices_trains_each_run_once(tmp_path):
    """4 CPU devices, 2 per worker: two workers, each seeing only its own 2 devices, share the sweep's claims."""
    spec = tiny_sweep(tmp_path)
    out = tmp_path / "out"
    p = run_cli("sweep", "run", str(spec), "--out", str(out), "--devices-per-worker", "2",
                env=xla_env(4))
    assert "2 workers of 2 cpu devices each on this host's 4" in p.stderr
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    starts = [e["run_id"] for e in events if e["event"] == "start"]
    assert sorted(starts) == sorted(set(starts)) and len(starts) == 6 and len({e["owner"] for e in events}) == 2
    df = pd.read_csv(out / "runs.csv")
    assert (df["status"] == "completed").all()
    assert {json.loads((out / "runs" / r / "record.json").read_text())["device_count"] for r in df["run_id"]} == {2}
    p = run_cli("sweep", "run", str(spec), "--out", str(out), "--devices-per-worker", "3", check=False,
                env=xla_env(2))
    assert p.returncode == 2 and "--devices-per-worker 3: this host has 2 cpu devices" in p.stderr and "Traceback" not in p.stderr


def test_shards_partition_the_runs(tmp_path):
    spec = parse_sweep(yaml.safe_load(tiny_sweep(tmp_path).read_text()))
    plan = plan_sweep(spec)
    a = run_sweep(spec, tmp_path / "out", shard="0/2")
    b = run_sweep(spec, tmp_path / "out", shard="1/2")
    assert a.completed == [r.run_id for k, r in enumerate(plan) if k % 2 == 0]
    assert b.completed == [r.run_id for k, r in enumerate(plan) if k % 2 == 1] and not b.skipped


def test_example_sweeps_plan():
    for f in sorted((ROOT / "sweeps").glob("*.yaml")):
        raw = yaml.safe_load(f.read_text())
        if "grid" in raw:
            assert plan_sweep(parse_sweep(raw)), f


def test_optimum_centred_grid_brackets_the_prior_optimum_at_every_budget():
    """The GPU example: 7 sizes per budget over ~10x in N around Chinchilla's N_opt = (C/120)^0.5, distinct models,
    every run's C within 1% of its budget (checked by the planner), and the plan prints where the optimum falls."""
    from scaling.sweep.schema import centred_targets, prior_optimum
    from scaling.sweep.spec import budget_summary

    spec = load_sweep(ROOT / "sweeps" / "chinchilla_isoflop_gpu.yaml")
    plan = plan_sweep(spec, n_devices=1)
    summary = budget_summary(spec, plan)
    assert [b["budget"] for b in summary] == spec.grid.budgets
    for b in summary:
        assert b["n_sizes"] == 7 and b["prior_inside"], b
        assert b["prior_N_opt"] == pytest.approx((b["budget"] / 120) ** 0.5, rel=1e-12)
        # snapped to the size rule's widths: the span stays near 10x, and the optimum near the middle in log N
        assert 8 < b["N_max"] / b["N_min"] < 16
        assert abs(np.log(b["prior_N_opt"] ** 2 / (b["N_min"] * b["N_max"]))) < np.log(1.6)
    targets = centred_targets(spec.grid, 1e17)
    assert targets[3] == pytest.approx(prior_optimum(spec.grid, 1e17)) and targets[-1] / targets[0] == pytest.approx(10)
    for C in spec.grid.budgets:  # distinct models at each budget
        models = [r.config.model for r in plan if r.budget == C]
        assert len(models) == len({repr(m) for m in models}) == 7
    p = run_cli("sweep", "plan", str(ROOT / "sweeps" / "chinchilla_isoflop_gpu.yaml"), check=False)
    # the stdlib corpus is far too small for these budgets: the plan refuses them on epochs, after printing nothing
    # misleading; the per-budget lines come from the same function on a corpus-free check
    assert p.returncode == 2 and "data.max_epochs" in p.stderr


def test_centred_grid_plan_prints_the_prior_optimum_per_budget(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["grid"] = {"kind": "isoflop", "budgets": [2e10, 6e10], "sizes_per_budget": 4, "span": 6, "prior": {"a": 0.5, "k": 0.3}}
    path = tmp_path / "centred.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = run_cli("sweep", "plan", str(path)).stdout
    assert out.count("inside the sizes") == 2 and "prior N_opt" in out


def test_dense_and_moe_twins_get_the_same_tokens_and_lr():
    plan = plan_sweep(parse_sweep(yaml.safe_load((ROOT / "sweeps" / "dense_vs_moe_gpu.yaml").read_text())))
    dense = {(r.size_index, round(r.tokens / r.n_params_active)): r for r in plan if r.variant == "dense"}
    moe = [r for r in plan if r.variant == "moe"]
    assert len(moe) == len(dense) == 9
    for r in moe:
        twin = dense[(r.size_index, round(r.tokens / r.n_params_active))]
        # Active counts differ only by the router (d_model x 8 per layer, < 0.2%); D = ratio x N_active is
        # rounded to whole steps (< 1 step = 32k tokens of >= 44M).
        assert r.n_params_active == pytest.approx(twin.n_params_active, rel=2e-3)
        assert r.tokens == pytest.approx(twin.tokens, rel=3e-3)
        assert r.flops == pytest.approx(twin.flops, rel=5e-3)
        assert r.config.train.lr == pytest.approx(twin.config.train.lr, rel=1e-3)
        assert r.n_params > 1.5 * twin.n_params  # while the MoE stores far more parameters


def test_recipe_uses_the_resolved_seq_len_and_keeps_batches_divisible_by_devices():
    raw = {
        "name": "r",
        "base": {"model": {"preset": "100m"}, "train": {"batch_size": 64}, "data": {"source": "synthetic"}},
        "grid": {"kind": "explicit", "sizes": [{"n_layers": 14}], "tokens": [16 * 1024 * 226]},
        "recipe": {"min_steps": 200, "min_batch_size": 8, "min_warmup_steps": 100},
    }
    (run,) = plan_sweep(parse_sweep(raw), n_devices=1)
    assert run.config.model.seq_len == 1024  # from the preset, not a default of 128
    assert (run.config.train.batch_size, run.steps) == (16, 226)
    assert run.config.train.warmup_fraction == pytest.approx(100 / 226)
    raw = yaml.safe_load((ROOT / "sweeps" / "tiny_isoflop.yaml").read_text())
    raw["recipe"] |= {"min_steps": 10**6, "min_batch_size": 1}  # halve as far as allowed
    for n in (1, 8):
        assert all(r.config.train.batch_size % n == 0 for r in plan_sweep(parse_sweep(raw), n_devices=n))
    assert {r.config.train.batch_size for r in plan_sweep(parse_sweep(raw), n_devices=8)} == {8}


def test_overrides_that_change_the_model_are_applied_before_the_budget():
    raw = yaml.safe_load((ROOT / "sweeps" / "tiny_isoflop.yaml").read_text())
    raw["overrides"] = [{"match": {"size": 0}, "set": {"model.n_layers": 3}}]
    plan = plan_sweep(parse_sweep(raw), n_devices=1)
    assert {r.config.model.n_layers for r in plan if r.size_index == 0} == {3}
    for r in plan:  # whole steps of 256 tokens: |C / budget - 1| <= 0.5 / steps < 1% for >= 50 steps
        assert abs(r.flops / r.budget - 1) <= 0.5 / r.steps + 1e-12
