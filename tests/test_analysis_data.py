"""Every shipped public table runs through `scaling validate --law all`, and published numbers from those tables are
reproduced: exponents, a held-out compute-optimal run, the sources list."""

import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from analysis import FrontierLaw, bootstrap, example_runs, isoflop_analysis, load_runs
from analysis.runs import DATA_DIR, EXAMPLES

from .conftest import run_cli

TABLES = sorted(p.name for p in DATA_DIR.glob("*.csv"))


def test_every_shipped_table_is_listed_with_its_source():
    sources = (DATA_DIR / "SOURCES.md").read_text()
    listed = set(re.findall(r"`([\w{},]+\.csv)`", sources))
    expanded = set()
    for name in listed:  # marin2026_isoflop_{comma,dclm,nemotron}.csv
        m = re.match(r"(.*)\{(.*)\}(.*)", name)
        expanded |= {m.group(1) + part + m.group(3) for part in m.group(2).split(",")} if m else {name}
    assert set(TABLES) <= expanded, set(TABLES) - expanded
    assert {f for f, _ in EXAMPLES.values()} <= set(TABLES)


def test_validate_all_laws_runs_on_every_shipped_table():
    """End to end on each table: --top-starts 128 keeps it fast (the exhaustive default is tested elsewhere);
    the Marin validation runs mix datasets and are validated per dataset."""
    cases = []
    for name in TABLES:
        args = ["validate", str(DATA_DIR / name), "--law", "all", "--bootstrap", "10", "--top-starts", "128", "--json"]
        if name == "marin2026_validation_optimal.csv":
            args += ["--by", "dataset"]
        cases.append(args)
    with ThreadPoolExecutor(max_workers=3) as ex:
        results = list(ex.map(lambda a: run_cli(*a, check=False), cases))
    for name, p in zip(TABLES, results):
        assert p.returncode == 0 and "Traceback" not in p.stderr, (name, p.stderr)
        out = json.loads(p.stdout)
        blocks = out["groups"].values() if "groups" in out else [out]
        for block in blocks:
            assert set(block["laws"]) == {"chinchilla", "chinchilla-tied", "kaplan", "frontier", "surface"}
            for law, r in block["laws"].items():
                if "skipped" in r:
                    # the IsoFLOP laws need several runs per budget; a table of other shape is refused with a reason
                    assert "underdetermined" in r["skipped"] or (law == "frontier") or (
                        law == "surface" and "compute budgets with 3 or more sizes" in r["skipped"]), (name, law, r)
                    continue
                s = r["summary"]
                assert s["n_heldout"] > 0 and np.isfinite([s["mean_abs_rel_error"], s["max_abs_rel_error"], s["bias"]]).all()
                assert 0 <= s["coverage"] <= 1
            assert "summary" in block["laws"]["chinchilla"] or "groups" in out, name


@pytest.mark.parametrize("name, published, lo, hi", [("porian_kaplan", 0.835, 0.82, 0.85), ("porian_tuned", 0.497, 0.49, 0.50)])
def test_akima_reproduces_porian_et_al_exponents(name, published, lo, hi):
    """Porian et al. find each budget's optimum by interpolation; the Akima method on their points gives their N_opt
    exponent, inside their published 95% bootstrap interval."""
    res = isoflop_analysis(example_runs(name), n_bootstrap=0, method="akima")
    assert lo <= res.a <= hi, res.a


def test_frontier_law_predicts_marins_held_out_compute_optimal_run():
    """Fit L_opt(C) on the nemotron ladder (budgets 3e18-3e20 FLOPs) and predict the 1e21-FLOP run Marin trained at
    its predicted optimal size, 3x beyond the largest budget. Measured: 2.751 [2.730, 2.771] vs 2.7655 (-0.52%)."""
    grid = example_runs("marin_nemotron")
    law = bootstrap(FrontierLaw().fit(grid), grid, n=300, seed=0)
    held = load_runs(DATA_DIR / "marin2026_validation_optimal.csv")
    run = held[(held["dataset"] == "nemotron") & (held["C"] > 5e20)].iloc[0]
    pred = law.predict_interval(C=run["C"], include_noise=True).iloc[0]
    # the 95% single-run interval: bootstrap over the ladder's runs plus the frontier's scatter
    assert pred["lo"] <= run["loss"] <= pred["hi"]


def test_isoflop_methods_on_every_shipped_isoflop_sweep():
    """Every method runs on every shipped sweep and accounts for every budget; on Porian et al.'s sweeps the local
    and Akima minima are closer to the authors' exponents than one parabola through all sizes (which is the
    failure the issue measured: 1.2 against 0.83). (On the tuned configuration all three are within 0.021 of 0.497;
    the parabola is not worse there: its budgets are well centred.)"""
    from analysis.isoflop import assign_budgets

    published = {"porian_kaplan": 0.835}
    for name in ("llama3_isoflop", "marin_comma", "marin_dclm", "marin_nemotron", "porian_kaplan", "porian_tuned"):
        df = example_runs(name)
        budgets = set(np.round(assign_budgets(df), 6))
        errors = {}
        for m in ("local", "parabola", "akima"):
            res = isoflop_analysis(df, n_bootstrap=20, method=m)
            named = {b for b in budgets if any(f"budget {b:.3g} " in n for n in res.notes)}
            assert set(np.round(res.minima["budget"], 6)) | named == budgets, (name, m)
            errors[m] = abs(res.a - published.get(name, np.nan))
        if name in published:
            assert max(errors["local"], errors["akima"]) < errors["parabola"], (name, errors)
