"""Learning-rate tuning: an lr_scan sweep plans every point at several lrs, ``sweep fit-lr`` fits the best lr as a
law of N and D and writes a recipe, and a sweep naming it (``recipe: {from: DIR}``) plans with that law; a recipe
tuned under another corpus, tokenizer or parametrization is refused.

Known answers: losses generated from a known best-lr law (a parabola in log lr around lr*(N, D)) are recovered
exactly through the whole path (plan, records, runs table, fit, file, the next sweep's plan)."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.errors import AnalysisError
from analysis.lr_law import best_lr, fit_lr_law
from scaling.config import ConfigError
from scaling.sweep.recipe import PROVENANCE, RECIPE_FILE, Recipe, provenance
from scaling.sweep.spec import parse_sweep, plan_sweep

from .conftest import run_cli

SIZES = [{"d_model": 16, "n_layers": 1, "n_heads": 1}, {"d_model": 32, "n_layers": 1, "n_heads": 2},
         {"d_model": 64, "n_layers": 1, "n_heads": 4}]
TOKENS = [32768, 65536, 131072]
SCAN = [0.25, 0.354, 0.5, 0.707, 1.0, 1.414, 2.0, 2.83, 4.0]
TRUE = {"c": 0.02, "N_ref": 3e4, "a": 0.15, "D_ref": 6e4, "b": -0.35}  # the law the synthetic losses follow


def true_lr(N, D):
    return TRUE["c"] * (N / TRUE["N_ref"]) ** TRUE["a"] * (D / TRUE["D_ref"]) ** TRUE["b"]


def loss_at(N, D, lr):
    """A loss with its minimum at lr*(N, D): quadratic in log lr (so the parabola through 5 points is exact)."""
    return 3.0 - 0.1 * math.log(N) + 0.05 * (math.log(lr) - math.log(true_lr(N, D))) ** 2


def tune_raw(**extra) -> dict:
    return {
        "name": "tune",
        "base": {"data": {"source": "synthetic"}, "model": {"seq_len": 32, "vocab_size": 256},
                 "train": {"batch_size": 8, "warmup_steps": 10, "eval_tokens": 4096}, "log": {"wandb": "disabled"}},
        "grid": {"kind": "explicit", "sizes": SIZES, "tokens": TOKENS},
        "recipe": {"lr_base": 0.01, "lr_exponent": 0, "lr_max": 1.0},
        "lr_scan": SCAN,
        **extra,
    }


def test_recipe_lr_law_in_N_and_D():
    r = Recipe(lr_base=0.02, lr_ref_params=3e4, lr_exponent=0.15, lr_ref_tokens=6e4, lr_tokens_exponent=-0.35, lr_max=1.0)
    for N, D in ((1e4, 1e5), (3e5, 2e6)):
        assert r.lr(N, D) == pytest.approx(true_lr(N, D), rel=1e-12)
    with pytest.raises(ValueError, match="token horizon"):
        r.lr(1e4)
    assert "(D / 6e+04)^-0.35" in r.describe()
    for bad, msg in (({"lr_base": -1.0}, "lr_base"), ({"lr_tokens_exponent": math.nan}, "lr_tokens_exponent"),
                     ({"lr_min": 0.1, "lr_max": 0.01}, "lr_min")):
        with pytest.raises(ConfigError, match=msg):
            Recipe(**bad).validate()


def test_lr_scan_plans_every_point_at_every_multiplier():
    plan = plan_sweep(parse_sweep(tune_raw()), n_devices=1)
    assert len(plan) == len(SIZES) * len(TOKENS) * len(SCAN)
    base = {(r.size_index, r.tokens): r.config.train.lr for r in plan if r.lr_multiplier == 1.0}
    for r in plan:
        assert r.config.train.lr == pytest.approx(0.01 * r.lr_multiplier, rel=1e-12)
        assert r.config.train.lr == pytest.approx(base[(r.size_index, r.tokens)] * r.lr_multiplier, rel=1e-12)
        assert r.row()["lr_multiplier"] == r.lr_multiplier
    for bad, msg in (([0.5, 0.5, 1], "twice"), ([0.5, -1], r"lr_scan\[1\]")):
        with pytest.raises(ConfigError, match=msg):
            parse_sweep(tune_raw(lr_scan=bad))
    with pytest.raises(ConfigError, match="recipe.enabled"):
        parse_sweep(tune_raw(recipe={"enabled": False}))


def test_wsd_trunk_takes_the_lr_of_its_branches_geometric_mean_horizon():
    raw = tune_raw(grid={"kind": "wsd_branches", "sizes": SIZES[:1], "tokens": TOKENS}, lr_scan=[])
    raw["recipe"] = {"lr_base": 0.02, "lr_ref_params": 3e4, "lr_exponent": 0.15, "lr_ref_tokens": 6e4,
                     "lr_tokens_exponent": -0.35, "lr_max": 1.0}
    plan = plan_sweep(parse_sweep(raw), n_devices=1)
    trunk = next(r for r in plan if r.role == "trunk")
    D_mean = math.exp(np.mean(np.log(TOKENS)))
    assert trunk.config.train.lr == pytest.approx(true_lr(trunk.n_params_active, D_mean), rel=1e-12)
    assert all(r.config.train.lr == trunk.config.train.lr for r in plan)  # one lr for the trunk and its branches


def test_best_lr_parabola_and_edges():
    lrs = [0.01 * 2 ** (k / 2) for k in range(7)]
    star = 0.023
    losses = [(math.log(x) - math.log(star)) ** 2 for x in lrs]
    got, located = best_lr(lrs, losses)
    assert located and got == pytest.approx(star, rel=1e-9)  # an exact parabola: exact minimum
    lo, located = best_lr(lrs, [float(i) for i in range(7)])  # increasing loss: the optimum is below the scan
    assert lo == lrs[0] and not located
    hi, located = best_lr(lrs, [math.inf if i == 6 else -float(i) for i in range(7)])  # diverged at the top: best at 5
    assert located and hi == pytest.approx(lrs[5], rel=1e-12)  # an interior best point (the diverged run marks the end): the grid lr


def synthetic_table(noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for N in (1.5e4, 4e4, 1.2e5):
        for D in TOKENS:
            for m in SCAN:
                lr = 0.01 * m * (D / 6e4) ** -0.35 * (N / 3e4) ** 0.15  # a scan centred near the optimum
                rows.append({"N": N, "D": D, "lr": lr, "loss": loss_at(N, D, lr) + noise * rng.standard_normal()})
    return pd.DataFrame(rows)


def test_fit_recovers_a_known_law_exactly():
    law = fit_lr_law(synthetic_table())
    # exact parabolas and an exact power law: float64 round-off only
    assert law.a == pytest.approx(TRUE["a"], abs=1e-9) and law.b == pytest.approx(TRUE["b"], abs=1e-9)
    assert float(law.lr(7e4, 9e4)) == pytest.approx(true_lr(7e4, 9e4), rel=1e-9)
    assert law.residual_sd < 1e-9 and law.points["located"].all()


def test_fit_under_noise_stays_within_its_standard_errors():
    """Loss noise of sd 0.003 (the scatter of two seeds on the quickstart's runs is ~0.5% of ~2): over 20 noisy
    tables the exponents' errors divided by their reported standard errors have |z| < 4 (a t-statistic with 5
    degrees of freedom exceeds 4 with probability 1%, so 20 tables miss it about 0.2 times)."""
    for seed in range(20):
        law = fit_lr_law(synthetic_table(noise=0.003, seed=seed))
        for name in ("a", "b"):
            z = (getattr(law, name) - TRUE[name]) / law.se[name]
            assert abs(z) < 4, (seed, name, getattr(law, name), law.se[name])


def test_fit_refuses_what_it_cannot_determine_and_notes_edges():
    df = synthetic_table()
    one = df[df["N"] == 1.5e4]
    law = fit_lr_law(one)  # one width: the N exponent is not fitted
    assert law.a == 0 and any("one value of N" in n for n in law.notes)
    assert law.b == pytest.approx(TRUE["b"], abs=1e-9)
    shifted = df.assign(lr=df["lr"] * np.where(df["D"] == TOKENS[0], 8.0, 1.0))  # that horizon's scan far above its optimum
    shifted["loss"] = [loss_at(N, D, lr) for N, D, lr in zip(shifted["N"], shifted["D"], shifted["lr"])]
    law = fit_lr_law(shifted)
    assert (~law.points["located"]).sum() == 3 and any("at the lowest" in n for n in law.notes)
    with pytest.raises(AnalysisError, match="cannot determine"):
        fit_lr_law(one[one["D"] <= TOKENS[1]])
    with pytest.raises(AnalysisError, match="3 or more learning rates"):
        fit_lr_law(df[df["lr"] < df["lr"].groupby([df["N"], df["D"]]).transform("min") * 1.5])
    with pytest.raises(AnalysisError, match="lacks the column 'lr'"):
        fit_lr_law(df.drop(columns=["lr"]))


def write_records(sweep_dir, plan):
    """Each planned run's record as a completed run at the known law's loss (what `sweep run` would record)."""
    for r in plan:
        d = sweep_dir / "runs" / r.run_id
        d.mkdir(parents=True)
        rec = {"status": "completed", "final_eval_loss": loss_at(r.n_params_active, r.tokens, r.config.train.lr),
               "n_params": r.n_params, "n_params_active": r.n_params_active, "tokens": r.tokens, "flops": r.flops}
        (d / "record.json").write_text(json.dumps(rec))


def test_fit_lr_command_writes_a_recipe_that_a_sweep_names(tmp_path):
    import yaml

    raw = tune_raw()
    raw["recipe"] = {"lr_base": true_lr(3e4, 6e4), "lr_exponent": 0.15, "lr_ref_params": 3e4, "lr_tokens_exponent": -0.35,
                     "lr_ref_tokens": 6e4, "lr_max": 1.0}  # the scan centred on the optimum: every point located
    tune = tmp_path / "tune"
    tune.mkdir()
    (tune / "sweep.yaml").write_text(yaml.safe_dump(raw))
    write_records(tune, plan_sweep(parse_sweep(raw), n_devices=1))
    p = run_cli("sweep", "fit-lr", str(tune))
    assert "9 of 9 points located" in p.stdout, p.stdout
    doc = json.loads((tune / RECIPE_FILE).read_text())
    law = doc["recipe"]
    assert law["lr_exponent"] == pytest.approx(TRUE["a"], abs=1e-6) and law["lr_tokens_exponent"] == pytest.approx(TRUE["b"], abs=1e-6)
    assert (tune / "lr_scan.png").stat().st_size > 10_000
    assert set(doc["provenance"]) == set(PROVENANCE)

    # a sweep naming it plans every run at the law's lr (clipped to [lowest scanned / 4, highest scanned])
    use = {**tune_raw(), "lr_scan": [], "recipe": {"from": str(tune)}}
    plan = plan_sweep(parse_sweep(use), n_devices=1)
    for r in plan:
        want = min(max(true_lr(r.n_params_active, r.tokens), law["lr_min"]), law["lr_max"])
        assert r.config.train.lr == pytest.approx(want, rel=1e-5)
    (tmp_path / "use.yaml").write_text(yaml.safe_dump(use))
    p = run_cli("sweep", "plan", str(tmp_path / "use.yaml"))
    assert f"(fitted: {tune / RECIPE_FILE})" in p.stdout

    # bad input: one line naming the file or field, exit 2
    cases = {
        "tokenizer": ({**use, "base": {**use["base"], "data": {"source": "synthetic", "tokenizer": "bpe"}}}, "data.tokenizer"),
        "parametrization": ({**use, "base": {**use["base"], "model": {**use["base"]["model"], "parametrization": "mup",
                             "mup_base_width": 16, "tie_embeddings": False}}}, "model.parametrization"),
        "corpus": ({**use, "base": {**use["base"], "data": {"source": "stdlib"}}}, "data.source"),
        "clash": ({**use, "recipe": {"from": str(tune), "lr_base": 0.1}}, "recipe.lr_base is set by recipe.from"),
        "missing": ({**use, "recipe": {"from": str(tmp_path / "nowhere")}}, "does not exist"),
    }
    for name, (bad, msg) in cases.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(bad))
        p = run_cli("sweep", "plan", str(tmp_path / f"{name}.yaml"), check=False)
        assert p.returncode == 2 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, (name, p.stderr)
    broken = dict(doc)
    broken["recipe"] = {k: v for k, v in doc["recipe"].items() if k != "lr_tokens_exponent"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ConfigError, match="lacks the field 'lr_tokens_exponent'"):
        parse_sweep({**use, "recipe": {"from": str(tmp_path / "broken.json")}})
    (tmp_path / "not.json").write_text("{")
    with pytest.raises(ConfigError, match="not a recipe file"):
        parse_sweep({**use, "recipe": {"from": str(tmp_path / "not.json")}})


def test_fit_lr_refuses_a_sweep_without_a_scan(tmp_path):
    import yaml

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**tune_raw(), "lr_scan": []}))
    p = run_cli("sweep", "fit-lr", str(tmp_path), check=False)
    assert p.returncode == 2 and "not an lr tuning sweep" in p.stderr


def test_provenance_names_every_setting_it_checks(tmp_path, monkeypatch):
    from scaling.config import load_config

    cfg = load_config(base={"model": {"parametrization": "mup", "mup_base_width": 16, "tie_embeddings": False}})
    prov = provenance(cfg)
    assert set(prov) == set(PROVENANCE)
    d = cfg.to_dict()
    for key in PROVENANCE:  # each value is the config's own (sections as canonical JSON)
        section, field = key.split(".")
        want = d[section][field]
        assert prov[key] == (json.dumps(want, sort_keys=True) if isinstance(want, (dict, list)) else want), key
    # a corpus path compares as an absolute path: the same corpus named from two working directories is one corpus
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("def f():\n    return 1\n" * 100)
    rel = load_config(base={"data": {"source": "corpus.txt"}})
    assert provenance(rel)["data.source"] == str(tmp_path / "corpus.txt")


def test_fit_lr_on_wsd_branches_with_diverged_runs(tmp_path):
    """The tuning grid the quickstart uses (WSD branches, one trunk per size and lr): trunks are not points; a
    diverged trunk's branches count as diverged (+inf loss) and only bound the scan, and the recipe's lr_max is
    the largest lr that trained."""
    import yaml

    from scaling.sweep.tune import fit_recipe

    raw = tune_raw(grid={"kind": "wsd_branches", "sizes": SIZES, "tokens": TOKENS})
    raw["recipe"] = {"lr_base": true_lr(3e4, 6e4), "lr_exponent": 0.15, "lr_ref_params": 3e4, "lr_tokens_exponent": -0.35,
                     "lr_ref_tokens": 6e4, "lr_max": 1.0}
    raw["lr_scan"] = SCAN + [8.0]  # the top multiplier diverges
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(raw))
    plan = plan_sweep(parse_sweep(raw), n_devices=1)
    write_records(tmp_path, [r for r in plan if r.lr_multiplier != 8.0])
    for r in plan:
        if r.lr_multiplier == 8.0:
            d = tmp_path / "runs" / r.run_id
            d.mkdir(parents=True)
            status = "diverged" if r.role == "trunk" else "failed"  # its branches fail: no checkpoint to start from
            (d / "record.json").write_text(json.dumps({"status": status}))
    doc = fit_recipe(tmp_path, say=lambda *a: None)
    # a trunk trains at the lr of its branches' geometric-mean horizon, so the scan's centre moves with N only: the
    # D exponent is still recovered from the branches' parabolas
    assert doc["recipe"]["lr_tokens_exponent"] == pytest.approx(TRUE["b"], abs=1e-6)
    assert doc["recipe"]["lr_exponent"] == pytest.approx(TRUE["a"], abs=1e-6)
    assert doc["sweep"]["runs_diverged"] == len(SIZES) * len(TOKENS)
    top = max(r.config.train.lr for r in plan if r.lr_multiplier == 4.0)
    assert doc["recipe"]["lr_max"] == pytest.approx(top, rel=1e-12)
    assert len(doc["provenance"]["model.n_layers"]) == 1 and doc["basis"] == "N_active"


def test_a_sweep_directory_records_the_law_not_the_path(tmp_path, monkeypatch):
    """`recipe: {from: DIR}` with a relative path is recorded in SWEEP_DIR/sweep.yaml as the law itself: refitting
    DIR or running from another directory cannot change the sweep's lrs and run ids."""
    import yaml

    from scaling.sweep.cli import _recorded_yaml

    tune = tmp_path / "tune"
    tune.mkdir()
    law = {"lr_base": 0.02, "lr_ref_params": 3e4, "lr_exponent": 0.0, "lr_ref_tokens": 6e4, "lr_tokens_exponent": -0.3,
           "lr_min": 1e-3, "lr_max": 0.5}
    from scaling.config import load_config

    cfg = load_config(base=tune_raw()["base"], overrides=["train.tokens=1000000", "model.d_model=16", "model.n_layers=1", "model.n_heads=1"])
    prov = {k: [v] for k, v in provenance(cfg).items()}
    prov["model.n_layers"] = [1]
    (tune / RECIPE_FILE).write_text(json.dumps({"kind": "lr_recipe", "version": 1, "recipe": law, "provenance": prov, "basis": "N_active"}))
    monkeypatch.chdir(tmp_path)
    use = {**tune_raw(), "lr_scan": [], "recipe": {"from": "tune"}}
    (tmp_path / "use.yaml").write_text(yaml.safe_dump(use))
    recorded = yaml.safe_load(_recorded_yaml(str(tmp_path / "use.yaml"), None))
    assert "from" not in recorded["recipe"] and recorded["recipe"]["source"] == str(tune / RECIPE_FILE)
    before = [r.run_id for r in plan_sweep(parse_sweep(recorded), n_devices=1)]
    assert before == [r.run_id for r in plan_sweep(parse_sweep(use), n_devices=1)]  # the same runs as the file names
    with_set = yaml.safe_load(_recorded_yaml(str(tmp_path / "use.yaml"), ["train.eval_tokens=2048"]))
    assert with_set["recipe"] == recorded["recipe"] and with_set["base"]["train"]["eval_tokens"] == 2048
    (tune / RECIPE_FILE).unlink()  # the tuning directory gone: the recorded sweep plans the same runs
    assert [r.run_id for r in plan_sweep(parse_sweep(recorded), n_devices=1)] == before


@pytest.mark.parametrize("change, msg", [
    ({"lr_scan": ["0.5", 1, 2]}, "expected numbers"),
    ({"lr_scan": [True, 1, 2]}, "expected numbers"),
    ({"overrides": [{"match": {"size": 0}, "set": {"train.lr": 0.1}}]}, "sets train.lr"),
    ({"grid": {"kind": "explicit", "sizes": SIZES, "tokens": TOKENS, "params": "total"}, "lr_scan": [],
      "recipe": {"lr_base": 0.01, "basis": "N_active", "source": "x"}}, "a law in N_active"),
])
def test_bad_scans_and_recipes_are_refused_in_one_line(change, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_sweep(tune_raw(**change))
