"""WSD branch sweeps (Hagele et al. 2024): one constant-lr trunk per size, one cooldown branch per budget.

A branch restores its trunk's checkpoint at the branch point and decays the lr over its last steps; since the
trunk's schedule is WSD's stable phase and the data order depends only on the step, a branch must end exactly
where one uninterrupted WSD run of its schedule ends (same program on the same numbers: bit-identical here)."""

import json
from dataclasses import replace

import pandas as pd
import pytest

from scaling.config import ConfigError, load_config
from scaling.sweep.runner import run_sweep
from scaling.sweep.spec import branch_savings, parse_sweep, plan_sweep
from scaling.train import train

from .conftest import run_cli, run_workers, tiny_overrides

SIZES = [{"d_model": 16, "n_layers": 1, "n_heads": 1}, {"d_model": 32, "n_layers": 1, "n_heads": 2}]


def wsd_raw(**grid) -> dict:
    return {
        "name": "wsd",
        "base": {
            "data": {"source": "synthetic"},
            "model": {"seq_len": 32, "vocab_size": 256},
            "train": {"batch_size": 8, "eval_tokens": 4096, "log_every": 10},
            "log": {"wandb": "disabled"},
        },
        "grid": {"kind": "wsd_branches", "sizes": SIZES, "budgets": [3e9, 6e9, 1.2e10], "cooldown_fraction": 0.2, **grid},
        "recipe": {"lr_base": 1e-2, "lr_ref_params": 3e4, "min_steps": 0},
    }


def test_plan_has_one_trunk_per_size_and_a_branch_per_budget():
    spec = parse_sweep(wsd_raw())
    plan = plan_sweep(spec)
    trunks = [r for r in plan if r.role == "trunk"]
    branches = [r for r in plan if r.role == "branch"]
    assert len(trunks) == 2 and len(branches) == 6
    for t in trunks:
        mine = [b for b in branches if b.trunk_id == t.run_id]
        assert len(mine) == 3
        # the trunk checkpoints (and keeps) every branch point and stops at the last one
        assert t.config.train.keep_steps == sorted(b.branch_step for b in mine) and t.steps == max(b.branch_step for b in mine)
        assert t.config.train.schedule == "constant"
        for b in mine:
            tr, br = t.config.train, b.config.train
            assert br.schedule == "wsd" and br.init_from == f"runs/{t.run_id}@{b.branch_step}"
            assert br.warmup_steps == tr.warmup_steps and br.lr == tr.lr and br.batch_size == tr.batch_size and br.seed == tr.seed
            assert b.steps - b.branch_step == br.decay_steps == max(1, round(0.2 * b.steps))
            assert abs(b.flops / b.budget - 1) < 0.01
            # a branch spends only its cooldown
            assert b.spent_flops == pytest.approx(b.flops * br.decay_steps / b.steps, rel=1e-12)
    s = branch_savings(plan)
    # separate runs cost sum(C) = 2 x (3 + 6 + 12)e9; trunks + cooldowns: 0.8 x 12e9 + 0.2 x 21e9 per size
    assert s["separate_flops"] == pytest.approx(2 * 21e9, rel=0.01)
    assert s["spent_flops"] == pytest.approx(2 * (0.8 * 12e9 + 0.2 * 21e9), rel=0.02)
    assert plan_sweep(spec)[0].run_id == plan[0].run_id  # ids are stable


def test_plan_prints_the_compute_saved(tmp_path):
    import yaml

    p = tmp_path / "wsd.yaml"
    p.write_text(yaml.safe_dump(wsd_raw()))
    res = run_cli("sweep", "plan", str(p))
    assert "WSD branches: 2 trunks, 6 branches" in res.stdout and "% saved" in res.stdout and "branch@" in res.stdout
    # 5% of the shortest branches (90 and 259 steps): 4 and 13 warmup steps, under 2 / (1 - beta2) = 40
    assert "trunk warmup: 4-13 steps" in res.stdout
    assert "warning: 2 of 2 trunks warm up in fewer than 2/(1-beta2) steps (as few as 4)" in res.stderr
    raw = wsd_raw()
    raw["base"]["train"]["warmup_steps"] = 40
    p.write_text(yaml.safe_dump(raw))
    res = run_cli("sweep", "plan", str(p))
    assert "trunk warmup: 40-40 steps" in res.stdout and "warm up in fewer" not in res.stderr


@pytest.mark.parametrize(
    "grid, pattern",
    [
        ({"cooldown_fraction": 1.5}, r"grid\.cooldown_fraction must be in \(0, 1\)"),
        ({"budgets": [], "tokens": []}, r"needs branch points"),
        ({"budgets": [3e9, 1.2e10]}, r"would start the cooldown at step \d+, before the trunk's warmup of 300 steps ends"),
        ({"sizes_per_budget": 2}, r"grid\.sizes_per_budget must be >= 3"),
        ({"ratios": [20]}, r"grid\.ratios is not used by grid\.kind='wsd_branches'"),
    ],
)
def test_bad_wsd_grids_name_the_field(grid, pattern):
    raw = wsd_raw(**grid)
    raw["base"]["train"]["warmup_steps"] = 300  # the 3e9 branches have 114 and 383 steps
    with pytest.raises(ConfigError, match=pattern):
        plan_sweep(parse_sweep(raw))


def test_a_budget_override_is_refused():
    raw = wsd_raw()
    raw["overrides"] = [{"match": {"budget": 3e9}, "set": {"train.lr": 1e-3}}]
    with pytest.raises(ConfigError, match=r"'budget' cannot be matched in a wsd_branches grid"):
        parse_sweep(raw)


def test_sizes_per_budget_branches_the_sizes_nearest_the_prior_optimum():
    sizes = [{"d_model": d, "n_layers": 1, "n_heads": 1} for d in (16, 24, 32, 48, 64)]
    spec = parse_sweep(wsd_raw(sizes=sizes, budgets=[3e9, 3e10], sizes_per_budget=3, prior={"a": 0.5, "k": 0.3}))
    plan = plan_sweep(spec)
    per_budget = {C: sorted(r.size_index for r in plan if r.budget == C) for C in (3e9, 3e10)}
    # N_opt = 0.3 C^0.5: 16k at 3e9 (sizes 0-2 are nearest), 52k at 3e10 (sizes 2-4)
    assert per_budget == {3e9: [0, 1, 2], 3e10: [2, 3, 4]}
    trunks = {r.size_index: r for r in plan if r.role == "trunk"}
    assert sorted(trunks) == [0, 1, 2, 3, 4]
    assert len(trunks[2].config.train.keep_steps) == 2  # size 2 serves both budgets from one trunk


@pytest.fixture(scope="module")
def wsd_sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp("wsd")
    spec = parse_sweep(wsd_raw())
    res = run_sweep(spec, d / "out")
    return spec, d / "out", res


def test_a_branch_equals_the_standalone_wsd_run_of_its_schedule(wsd_sweep, tmp_path):
    spec, out, res = wsd_sweep
    plan = plan_sweep(spec)
    assert len(res.completed) == 8 and not res.failed
    df = pd.read_csv(out / "runs.csv")
    assert (df["status"] == "completed").all() and sorted(df["role"].unique()) == ["branch", "trunk"]
    for b in (r for r in plan if r.role == "branch" and r.size_index == 1):
        rec = json.loads((out / "runs" / b.run_id / "record.json").read_text())
        assert rec["initialized_from"].startswith("init_from ") and rec["initialized_from"].endswith(f"@{b.branch_step}")
        alone = train(replace(b.config, train=replace(b.config.train, init_from=None)), tmp_path / b.run_id)
        # one machine, same program, same inputs: bit-identical parameters and the same eval loss
        assert rec["params_digest"] == alone["params_digest"]
        assert rec["final_eval_loss"] == alone["final_eval_loss"]
        row = df.set_index("run_id").loc[b.run_id]
        assert row["trunk_id"] == b.trunk_id and row["branch_step"] == b.branch_step and row["C_spent"] < row["C"]


def test_the_analysis_reads_branches_and_leaves_trunks_out(wsd_sweep):
    from analysis import load_runs

    _, out, _ = wsd_sweep
    runs = load_runs(out / "runs.csv")
    assert len(runs) == 6 and (runs["role"] == "branch").all()
    assert any("WSD trunk runs left out" in n for n in runs.attrs["notes"])


def test_a_lost_branch_retrains_alone_and_two_workers_share_trunks(wsd_sweep, tmp_path):
    import shutil

    spec, out, _ = wsd_sweep
    plan = plan_sweep(spec)
    lost = next(r for r in plan if r.role == "branch")
    before = json.loads((out / "runs" / lost.run_id / "record.json").read_text())
    shutil.rmtree(out / "runs" / lost.run_id)
    res = run_sweep(spec, out)
    assert res.completed == [lost.run_id]  # the completed trunk is not retrained
    assert json.loads((out / "runs" / lost.run_id / "record.json").read_text())["params_digest"] == before["params_digest"]

    # Two workers from scratch: a worker that reaches a branch before its trunk's branch point waits or trains the
    # trunk itself; every run is trained once, and the results equal the one-worker sweep's.
    import yaml

    p = tmp_path / "wsd.yaml"
    p.write_text(yaml.safe_dump(wsd_raw()))
    out2 = tmp_path / "out2"
    events = run_workers(p, out2, 2)
    starts = [e["run_id"] for e in events if e["event"] == "start"]
    assert sorted(starts) == sorted({r.run_id for r in plan}) and len({e["owner"] for e in events}) == 2
    a = pd.read_csv(out / "runs.csv").set_index("run_id")["loss"]
    b = pd.read_csv(out2 / "runs.csv").set_index("run_id")["loss"]
    assert (a.sort_index() == b.sort_index()).all()


def test_branch_from_a_kept_checkpoint_equals_the_standalone_wsd_run(tmp_path):
    """A WSD branch: a trunk at constant lr keeps its step-S checkpoint; a run starting there (init_from) that
    decays the lr over its last steps ends exactly where one uninterrupted WSD run of the same schedule ends."""
    S, decay, W = 40, 10, 5
    common = {"train.warmup_steps": W, "train.checkpoint_every": 1000, "train.keep_checkpoints": 1}
    trunk = load_config(None, tiny_overrides(**common, **{"train.schedule": "constant", "train.tokens": 8 * 32 * 60,
                                                           "train.keep_steps": f"[{S}]"}))
    train(trunk, tmp_path / "trunk")
    ckpts = sorted(int(p.name) for p in (tmp_path / "trunk" / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == [S, 60]  # the kept branch point survives keep_checkpoints=1
    wsd = {**common, "train.schedule": "wsd", "train.decay_steps": decay, "train.tokens": 8 * 32 * (S + decay)}
    branch = train(load_config(None, tiny_overrides(**wsd, **{"train.init_from": f"{tmp_path / 'trunk'}@{S}"})), tmp_path / "branch")
    alone = train(load_config(None, tiny_overrides(**wsd)), tmp_path / "alone")
    assert branch["initialized_from"].startswith("init_from") and alone["initialized_from"] == "init"
    # Same lr at every step (the constant schedule is WSD's stable phase), same batches, same Adam state: the same
    # program on the same numbers, so bit-identical on one machine.
    assert branch["params_digest"] == alone["params_digest"]
    assert branch["final_eval_loss"] == alone["final_eval_loss"]
    with pytest.raises(Exception, match="no checkpoint at step 30"):
        train(load_config(None, tiny_overrides(**wsd, **{"train.init_from": f"{tmp_path / 'trunk'}@30"})), tmp_path / "bad")
