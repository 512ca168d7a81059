"""Stacked models: runs of one shape that differ in seed or lr train in one compiled step, each bit-identical to
training it alone, each with its own record, metrics and checkpoints; a member that diverges is recorded and the
others go on; a stopped stack resumes to the same numbers."""

import json

import pytest

from scaling.config import ConfigError, load_config
from scaling.train import StopRequested, train
from scaling.train.loop import stack_key, train_stack

from .conftest import tiny_overrides

STEPS = 30


def _cfg(seed: int, lr: float = 1e-2, **extra):
    return load_config(None, tiny_overrides(**{"train.seed": seed, "train.lr": lr, "train.tokens": 8 * 32 * STEPS,
                                                "train.log_every": 5, "train.checkpoint_every": 10, **extra}))


def _metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same(a: dict, b: dict) -> None:
    """Bit-identical training: the same parameters (digest), the same per-step metrics and the same evaluation."""
    assert a["params_digest"] == b["params_digest"]
    assert a["final_eval_loss"] == b["final_eval_loss"] and a["final_train_loss"] == b["final_train_loss"]


def test_a_stack_equals_each_run_alone_and_keeps_its_own_record(tmp_path):
    cfgs = [_cfg(0), _cfg(1), _cfg(2, lr=3e-3)]
    assert len({stack_key(c) for c in cfgs}) == 1
    stacked = train_stack(cfgs, [tmp_path / f"stack{i}" for i in range(3)])
    for i, c in enumerate(cfgs):
        alone = train(c, tmp_path / f"alone{i}")
        _same(stacked[i], alone)
        assert stacked[i]["stack_size"] == 3 and alone["stack_size"] == 1
        train_rows = [m for m in _metrics(tmp_path / f"stack{i}") if m["kind"] == "train"]
        alone_rows = [m for m in _metrics(tmp_path / f"alone{i}") if m["kind"] == "train"]
        assert [m["lm_loss"] for m in train_rows] == [m["lm_loss"] for m in alone_rows] and len(train_rows) == STEPS // 5
        kept = [sorted(p.name for p in (tmp_path / d / "checkpoints").iterdir() if p.name.isdigit()) for d in (f"stack{i}", f"alone{i}")]
        assert kept[0] == kept[1] == ["20", "30"]  # checkpoint_every 10, the newest train.keep_checkpoints = 2 kept
    assert len({r["params_digest"] for r in stacked}) == 3  # three different models, not one copied
    # a completed stack is not retrained
    again = train_stack(cfgs, [tmp_path / f"stack{i}" for i in range(3)])
    assert [r["updated_at"] for r in again] == [r["updated_at"] for r in stacked]


def test_other_shapes_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="differ only in name, seeds and train.lr"):
        train_stack([_cfg(0), _cfg(1, **{"model.d_model": 48})], ["/nonexistent/a", "/nonexistent/b"])


def test_members_that_diverge_or_fail_are_recorded_and_the_others_go_on(tmp_path):
    cfgs = [_cfg(0), _cfg(1, lr=1e6),  # lr 1e6 overflows within a few steps
            _cfg(2, **{"train.init_from": f"{tmp_path}/nowhere@10"})]  # fails at restore: no such run
    recs = train_stack(cfgs, [tmp_path / "ok", tmp_path / "bad", tmp_path / "lost"])
    assert recs[1]["status"] == "diverged" and recs[1]["diverged_at_step"] is not None
    on_disk = json.loads((tmp_path / "lost" / "record.json").read_text())
    assert recs[2]["status"] == on_disk["status"] == "failed" and "nowhere has no checkpoints" in on_disk["error"]
    _same(recs[0], train(cfgs[0], tmp_path / "alone"))


def test_a_stopped_stack_resumes_to_the_same_numbers(tmp_path):
    import shutil

    cfgs = [_cfg(0), _cfg(1), _cfg(2)]
    dirs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    calls = {"n": 0}

    def stop_at_12():
        calls["n"] += 1
        return calls["n"] == 12

    with pytest.raises(StopRequested):
        train_stack(cfgs, dirs, should_stop=stop_at_12)
    assert all(json.loads((d / "record.json").read_text())["status"] == "stopped" for d in dirs)
    shutil.rmtree(dirs[2])  # c starts again from scratch: it trains first (from step 0), then a and b from step 12
    resumed = train_stack(cfgs, dirs)
    assert [r["resumed_from_step"] for r in resumed] == [12, 12, None]
    assert [r["stack_size"] for r in resumed] == [2, 2, 1]
    for i, c in enumerate(cfgs):
        _same(resumed[i], train(c, tmp_path / f"alone{i}"))


def test_a_sweep_stacks_runs_that_differ_in_seed_and_gets_the_same_numbers(tmp_path):
    import pandas as pd
    import yaml

    from .conftest import ROOT, run_cli

    raw = yaml.safe_load((ROOT / "sweeps" / "tiny_isoflop.yaml").read_text())
    raw["base"]["log"] = {"wandb": "disabled"}
    raw["grid"]["budgets"] = raw["grid"]["budgets"][:1]
    raw["grid"]["sizes"] = raw["grid"]["sizes"][:2]
    raw["seeds"] = [0, 1]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    got = {}
    for stack in (1, 2):
        out = tmp_path / f"stack{stack}"
        run_cli("sweep", "run", str(tmp_path / "s.yaml"), "--out", str(out), "--no-progress", "--stack", str(stack))
        events = [json.loads(l) for l in (out / "events.jsonl").read_text().splitlines()]
        starts = [e for e in events if e["event"] == "start"]
        assert len(starts) == 4 and all(e.get("stack", 1) == stack for e in starts)
        df = pd.read_csv(out / "runs.csv")
        assert (df["status"] == "completed").all()
        got[stack] = {r: json.loads((out / "runs" / r / "record.json").read_text())["params_digest"] for r in df["run_id"]}
    assert got[1] == got[2]  # the same run ids, each with the same trained parameters
    p = run_cli("sweep", "run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "x"), "--stack", "0", check=False)
    assert p.returncode == 2 and p.stderr.strip() == "sweep error: --stack must be >= 1, got 0"


def test_each_stack_member_logs_to_its_own_wandb_run(tmp_path):
    """W&B offline: every member of a stack has its own run (its own lr in its history) and completes. wandb's
    default for a second init in one process returned the first member's run, so all members logged into it and
    the later members failed on the finished run while their records said completed."""
    import glob

    from .wandb_reader import read_records

    cfgs = [_cfg(0, lr=lr, **{"log.wandb": "offline"}) for lr in (5e-3, 2e-2)]
    recs = train_stack(cfgs, [tmp_path / f"m{i}" for i in range(2)])
    assert [r["status"] for r in recs] == ["completed", "completed"]
    logged = []
    for i in range(2):
        files = glob.glob(str(tmp_path / f"m{i}" / "wandb" / "offline-run-*" / "run-*.wandb"))
        assert len(files) == 1
        logged.append([json.loads(it.value_json) for r in read_records(files[0]) if r.WhichOneof("record_type") == "history"
                       for it in r.history.item if (it.key or "/".join(it.nested_key)) == "train/lr"])
    # one schedule, peaks 4x apart: each run holds its own member's lr at every logged step (float32 in the step:
    # the ratio within 1e-6 relative), and each holds one row per logged step, not both members' rows
    assert len(logged[0]) == len(logged[1]) == STEPS // 5
    assert all(b / a == pytest.approx(4.0, rel=1e-6) for a, b in zip(*logged))
