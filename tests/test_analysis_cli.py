"""`scaling fit | predict | validate | plot` as a user runs them: one JSON object with --json, and every input error
as one line on stderr with exit status 2 (never a traceback). Commands run as subprocesses, several at a time."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from analysis import Law
from analysis.runs import example_path
from analysis.synthetic import chinchilla_law_runs

from .conftest import run_cli

DATA = str(example_path("chinchilla"))


def run_all(cases):
    """Run CLI invocations concurrently (each is mostly interpreter start-up); results in order."""
    with ThreadPoolExecutor(max_workers=4) as ex:
        return list(ex.map(lambda args: run_cli(*args, check=False), cases))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "empty.csv").write_text("")
    (d / "blank.csv").write_text("\n\n")
    (d / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (d / "notes.txt").write_text("these are notes\nnot a table of runs\n")
    (d / "bad.json").write_text("{not json")
    (d / "empty.json").write_text("{}")
    (d / "short.json").write_text(json.dumps({"law": "chinchilla", "theta": [1, 2]}))
    (d / "iso.json").write_text(json.dumps({"law": "isoflop", "a": 0.5}))
    pd.DataFrame({"N": [1e8], "D": [1e10], "loss": [3.0]}).to_csv(d / "one.csv", index=False)
    pd.DataFrame({"N": [1e8] * 6, "D": [1e10] * 6, "loss": [3.0] * 6}).to_csv(d / "six.csv", index=False)
    pd.DataFrame({"N": np.logspace(7, 9, 6), "D": 1e10, "loss": np.linspace(3, 2.6, 6)}).to_csv(d / "nospread.csv", index=False)
    pd.DataFrame({"N": [1e7, 2e7, 4e7], "D": [1e9, 5e8, 2.5e8], "C": 6e16, "loss": [3.1, 3.0, 3.05]}).to_csv(d / "onebudget.csv", index=False)
    return d


def test_input_errors_are_one_line_and_exit_2(files, tmp_path):
    d = files
    cases = [
        (("fit", "chinchilla", str(d / "missing.csv")), "does not exist"),
        (("fit", "chinchilla", str(d / "empty.csv")), "is empty"),
        (("fit", "chinchilla", str(d / "blank.csv")), "has no columns"),
        (("fit", "chinchilla", str(d / "binary.csv")), "binary file"),
        (("fit", "chinchilla", str(d / "notes.txt")), "no 'loss' column"),
        (("fit", "chinchilla", str(d)), "is a directory"),
        (("fit", "chinchilla", str(d / "one.csv")), "5 parameters but the table has 1 distinct (N, D) point"),
        (("fit", "chinchilla", str(d / "six.csv")), "underdetermined"),
        (("fit", "chinchilla", str(d / "nospread.csv")), "no spread in D"),
        (("fit", "kaplan", str(d / "nospread.csv"), "--tie-exponents"), "applies to the chinchilla law only"),
        (("fit", "isoflop", str(d / "onebudget.csv")), "needs at least 2 budgets with a minimum; got 1"),
        (("fit", "frontier", str(d / "onebudget.csv")), "the frontier law has 3 parameters"),
        (("fit", "nosuchlaw", DATA), "invalid choice: 'nosuchlaw'"),
        (("fit", "chinchilla", DATA, "--col", "N=nope"), "no such column"),
        (("fit", "chinchilla", DATA, "--col", "N"), "--col expects CANONICAL=COLUMN"),
        (("fit", "chinchilla", DATA, "--by", "variant"), "--by variant: no such column"),
        (("fit", "chinchilla", DATA, "--bootstrap", "many"), "invalid int value"),
        (("predict", str(d / "missing.json"), "--N", "1e9", "--D", "1e10"), "does not exist"),
        (("predict", str(d / "bad.json")), "is not valid JSON"),
        (("predict", str(d / "empty.json"), "--N", "1e9"), "no 'law' field"),
        (("predict", str(d / "short.json"), "--N", "1e9", "--D", "1e10"), "theta must hold 5 numbers"),
        (("predict", str(d / "iso.json"), "--C", "1e21"), "not a loss law"),
        (("predict", str(d / "binary.csv")), "not a text file"),
        (("validate", DATA, "--law", "nosuchlaw"), "invalid choice"),
        (("validate", DATA, "--cutoff-flops", "1e30"), "no runs above the cut-off"),
        (("validate", DATA, "--law", "frontier"), "the frontier law has 3 parameters"),
        (("validate", DATA, "--cutoff-flops", "1e20", "--cutoff-params", "1e9"), "not allowed with argument"),
        (("plot", "contours", DATA, "--fit", str(d / "bad.json"), "--out", str(tmp_path / "x.png")), "is not valid JSON"),
    ]
    results = run_all([c for c, _ in cases])
    for (args, expected), p in zip(cases, results):
        err = p.stderr.strip()
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert "Traceback" not in p.stderr and len(err.splitlines()) == 1, (args, p.stderr)
        assert err.startswith("error:") and expected in err, (args, err)
        assert p.stdout == "", (args, p.stdout)


def test_json_outputs_are_one_object_and_predictions_round_trip(tmp_path):
    fit = tmp_path / "fit.json"
    p = run_cli("fit", "chinchilla", DATA, "--json", "--save", str(fit))
    out = json.loads(p.stdout)  # exactly one JSON object, nothing else on stdout
    assert out["search"]["optimised_starts"] == 4500 and out["law"] == "chinchilla"
    # all 245 points: alpha = 0.3493129 (measured). The fit stops at 1e-13 relative in the objective; along the
    # flattest direction of this objective (Hessian eigenvalue ~1e-4) that moves the parameters by < 2e-6.
    assert out["params"]["alpha"] == pytest.approx(0.3493129, abs=1e-5)
    assert out["objective"] == pytest.approx(0.00182601052307, rel=1e-11)
    assert len(out["compute_optimal"]) == 5
    p, v = run_all([
        ("predict", str(fit), "--N", "7e10", "--D", "1.4e12", "--json"),
        ("validate", str(example_path("gadre_rpj")), "--law", "all", "--cutoff-params", "5e8", "--bootstrap", "50", "--json"),
    ])
    pred = json.loads(p.stdout)["predictions"][0]
    # the same float64 arithmetic on the saved parameters (JSON keeps 17 significant digits)
    assert pred["loss"] == pytest.approx(Law.load(fit).predict(N=7e10, D=1.4e12)[0], rel=1e-12)
    val = json.loads(v.stdout)
    assert set(val["laws"]) == {"chinchilla", "chinchilla-tied", "kaplan", "frontier", "surface"}
    for name in ("chinchilla", "chinchilla-tied", "kaplan"):
        s = val["laws"][name]["summary"]
        assert {"mean_abs_rel_error", "max_abs_rel_error", "bias", "coverage"} <= set(s) and s["n_heldout"] > 0
        assert len(val["laws"][name]["predictions"]) == s["n_heldout"]
    assert "FLOPs cut-off" in val["laws"]["frontier"]["skipped"]  # the frontier law extrapolates in compute


def test_fit_by_variant_fits_dense_and_moe_separately(tmp_path):
    dense = chinchilla_law_runs({"E": 1.8, "A": 400.0, "B": 1500.0, "alpha": 0.33, "beta": 0.37}, n=60, sigma=0.003, seed=1).assign(variant="dense")
    moe = chinchilla_law_runs({"E": 1.8, "A": 250.0, "B": 1500.0, "alpha": 0.30, "beta": 0.37}, n=60, sigma=0.003, seed=2).assign(variant="moe")
    runs = pd.concat([dense, moe])
    runs["N_active"] = np.where(runs["variant"] == "moe", runs["N"] / 4, runs["N"])
    runs.to_csv(tmp_path / "runs.csv", index=False)
    p = run_cli("fit", "chinchilla", str(tmp_path / "runs.csv"), "--by", "variant", "--json", "--save", str(tmp_path / "fit.json"))
    out = json.loads(p.stdout)
    assert out["by"] == "variant" and set(out["fits"]) == {"dense", "moe"}
    # 0.3% noise on 60 runs: bootstrap SE of alpha 0.0046 on this design; 4 SE = 0.018 (the two differ by 0.03)
    assert out["fits"]["dense"]["params"]["alpha"] == pytest.approx(0.33, abs=0.018)
    assert out["fits"]["moe"]["params"]["alpha"] == pytest.approx(0.30, abs=0.018)
    assert (tmp_path / "fit.dense.json").exists() and (tmp_path / "fit.moe.json").exists()


def test_frontier_isoflop_tied_and_plots_from_the_command_line(tmp_path):
    marin = str(example_path("marin_nemotron"))
    llama = str(example_path("llama3_isoflop"))
    deg = tmp_path / "noD.csv"
    rng = np.random.default_rng(5)
    N, D = 10 ** rng.uniform(7, 10, 60), 10 ** rng.uniform(9, 12, 60)
    pd.DataFrame({"N": N, "D": D, "loss": (2.0 + 300 / N**0.3) * np.exp(0.001 * rng.standard_normal(60))}).to_csv(deg, index=False)
    fr, iso, tied, degen, plot1, plot2 = run_all([
        ("fit", "frontier", marin, "--bootstrap", "100", "--json", "--save", str(tmp_path / "fr.json")),
        ("fit", "isoflop", llama, "--method", "parabola", "--bootstrap", "100", "--json"),
        ("fit", "chinchilla", str(example_path("gadre_rpj")), "--tie-exponents", "--json"),
        ("fit", "chinchilla", str(deg)),
        ("plot", "isoflop", marin, "--out", str(tmp_path / "iso.png")),
        ("plot", "frontier", marin, "--target-C", "1e21", "--out", str(tmp_path / "fr.png")),
    ])
    f = json.loads(fr.stdout)
    assert f["law"] == "frontier" and len(f["minima"]) == 7 and any("left out" in n for n in f["notes"])
    assert json.loads(iso.stdout)["b"] == pytest.approx(0.5368, abs=5e-5)  # the paper's parabolas (see isoflop tests)
    t = json.loads(tied.stdout)
    assert t["params"]["alpha"] == t["params"]["beta"] and t["config"]["tie_exponents"] is True
    assert degen.returncode == 0 and "degenerate fit:" in degen.stdout and "at its lower bound" in degen.stdout
    assert (tmp_path / "iso.png").stat().st_size > 10_000 and (tmp_path / "fr.png").stat().st_size > 10_000
    p = run_cli("predict", str(tmp_path / "fr.json"), "--C", "1e21", "--single-run", "--json")
    row = json.loads(p.stdout)["predictions"][0]
    assert row["lo"] < row["loss"] < row["hi"] and row["C"] == 1e21
