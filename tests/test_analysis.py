"""Scaling-law fits: published refits reproduced, known laws recovered from synthetic data, clean errors, JSON."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis import (
    ChinchillaLaw, KaplanLaw, Law, PowerLaw, RunsError, bootstrap, chinchilla_runs, compute_frontier,
    isoflop_analysis, leave_largest_out, llama3_isoflop_runs, load_runs, validate_extrapolation,
)

from .conftest import run_cli

TRUE = {"E": 1.8, "A": 400.0, "B": 1500.0, "alpha": 0.33, "beta": 0.37}


def chinchilla_law_data(n=200, sigma=0.01, seed=0, p=TRUE):
    rng = np.random.default_rng(seed)
    N = 10 ** rng.uniform(7, 10, n)
    D = 10 ** rng.uniform(9, 12, n)
    L = (p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]) * np.exp(sigma * rng.standard_normal(n))
    return load_runs(pd.DataFrame({"N": N, "D": D, "loss": L}))


@pytest.fixture(scope="module")
def epoch_fit():
    return ChinchillaLaw().fit(chinchilla_runs())


def test_reproduces_the_published_chinchilla_refit(epoch_fit):
    p = epoch_fit.params
    # Besiroglu et al. 2024: E = 1.81724, A = 477.84, B = 2143.86, alpha = 0.347313, beta = 0.367183
    assert p["E"] == pytest.approx(1.81724, abs=2e-3)
    assert p["alpha"] == pytest.approx(0.347313, abs=2e-3)
    assert p["beta"] == pytest.approx(0.367183, abs=2e-3)
    assert p["A"] == pytest.approx(477.84, rel=0.02) and p["B"] == pytest.approx(2143.86, rel=0.03)
    assert epoch_fit.objective == pytest.approx(0.00101827, rel=1e-4)
    assert epoch_fit.n_points == 240


def test_pruned_start_grid_finds_the_exhaustive_optimum():
    df = chinchilla_runs()
    grid = {"a": [0, 10, 20], "b": [0, 10, 20], "e": [-1, 0, 1], "alpha": [0, 1], "beta": [0, 1]}
    full = ChinchillaLaw(grid=grid, top_starts=None).fit(df)
    pruned = ChinchillaLaw(grid=grid, top_starts=8).fit(df)
    assert pruned.objective == pytest.approx(full.objective, rel=1e-6)
    for k in full.params:
        assert pruned.params[k] == pytest.approx(full.params[k], rel=1e-3)


def test_recovers_a_known_law_within_bootstrap_intervals():
    df = chinchilla_law_data()
    law = bootstrap(ChinchillaLaw().fit(df), df, n=120, seed=1)
    iv = law.intervals()
    for k, v in TRUE.items():
        assert iv[k]["lo"] <= v <= iv[k]["hi"], (k, v, iv[k])
    # prediction intervals cover the noiseless truth far outside the data
    far = law.predict_interval(N=1e11, D=1e13).iloc[0]
    truth = TRUE["E"] + TRUE["A"] / 1e11 ** TRUE["alpha"] + TRUE["B"] / 1e13 ** TRUE["beta"]
    assert far["lo"] <= truth <= far["hi"]


def test_compute_optimal_allocation_minimises_loss_on_the_iso_compute_line(epoch_fit):
    C = 5.76e23
    opt = epoch_fit.compute_optimal([C]).iloc[0]
    Ns = np.logspace(9, 12, 4001)
    L = epoch_fit.predict(N=Ns, D=C / (6 * Ns))
    assert opt["N_opt"] == pytest.approx(Ns[np.argmin(L)], rel=0.01)
    assert opt["loss"] == pytest.approx(L.min(), rel=1e-6)
    assert opt["N_opt"] * opt["D_opt"] * 6 == pytest.approx(C)


def test_isoflop_exponents_recover_the_truth_on_synthetic_isoflop_data():
    a_true = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    ref = ChinchillaLaw()
    ref.theta = np.log([TRUE["A"], TRUE["B"], TRUE["E"]]).tolist() + [TRUE["alpha"], TRUE["beta"]]
    ref.theta = np.array(ref.theta)
    rng = np.random.default_rng(0)
    rows = []
    for C in np.logspace(18, 22, 9):
        n_opt = ref.compute_optimal([C]).iloc[0]["N_opt"]
        for N in n_opt * np.logspace(-0.6, 0.6, 9):
            D = C / (6 * N)
            rows.append({"N": N, "D": D, "C": C, "loss": ref.predict(N=N, D=D)[0] * np.exp(0.002 * rng.standard_normal())})
    res = isoflop_analysis(load_runs(pd.DataFrame(rows)), n_bootstrap=200)
    assert res.a == pytest.approx(a_true, abs=0.02)
    assert res.b == pytest.approx(1 - a_true, abs=0.02)
    iv = res.intervals()
    assert iv["a"]["lo"] - 0.01 <= a_true <= iv["a"]["hi"] + 0.01


def test_reproduces_the_llama3_isoflop_exponent():
    res = isoflop_analysis(llama3_isoflop_runs(), n_bootstrap=100)
    assert res.b == pytest.approx(0.5368, abs=2e-3)  # paper: 0.53
    assert 10**res.b_intercept == pytest.approx(0.2994, rel=0.01)  # paper: 0.29
    assert len(res.minima) == 10


def test_power_law_recovers_exponent_with_and_without_offset():
    rng = np.random.default_rng(0)
    C = np.logspace(15, 21, 60)
    df = pd.DataFrame({"N": 1e6, "D": C / 6e6, "C": C, "loss": (2.0 + 3e3 * C**-0.2) * np.exp(0.003 * rng.standard_normal(60))})
    law = PowerLaw(x="C").fit(df)
    assert law.params["alpha"] == pytest.approx(0.2, abs=0.01) and law.params["E"] == pytest.approx(2.0, abs=0.05)
    df2 = df.assign(loss=50 * C**-0.07)
    law2 = PowerLaw(x="C", offset=False).fit(df2)
    assert law2.params["alpha"] == pytest.approx(0.07, abs=1e-4) and law2.params["A"] == pytest.approx(50, rel=1e-3)


def test_kaplan_law_recovers_known_parameters():
    rng = np.random.default_rng(0)
    N, D = 10 ** rng.uniform(6, 10, 150), 10 ** rng.uniform(8, 12, 150)
    p = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}
    L = ((p["N_c"] / N) ** (p["alpha_N"] / p["alpha_D"]) + p["D_c"] / D) ** p["alpha_D"]
    law = KaplanLaw().fit(pd.DataFrame({"N": N, "D": D, "loss": L}))
    assert law.params["alpha_N"] == pytest.approx(0.076, rel=0.02) and law.params["alpha_D"] == pytest.approx(0.095, rel=0.02)
    np.testing.assert_allclose(law.predict(N=N, D=D), L, rtol=1e-3)


def test_extrapolation_check_and_leave_largest_out():
    df = chinchilla_law_data(n=300, sigma=0.005)
    res = validate_extrapolation(df, "chinchilla", cutoff_flops=np.quantile(df["C"], 0.8), n_bootstrap=40)
    s = res["summary"]
    assert s["n_heldout"] == 60 and s["max_abs_rel_error"] < 0.03 and s["coverage"] > 0.5
    assert {"predicted", "abs_error", "rel_error", "lo", "hi"} <= set(res["predictions"])
    llo = leave_largest_out(chinchilla_runs(), "chinchilla", k=10)
    assert llo["summary"]["n_heldout"] == 10 and llo["summary"]["mae"] < 0.1


def test_compute_frontier_is_the_lower_envelope():
    df = pd.DataFrame({"C": [1, 2, 3, 4, 5], "loss": [5, 6, 4, 4.5, 3]})
    assert compute_frontier(df)["C"].tolist() == [1, 3, 5]


def test_bad_inputs_give_clear_errors(tmp_path):
    df = pd.DataFrame({"N": [1e6, -5, 1e7], "D": [1e9, 1e9, np.nan], "loss": [3.0, 2.9, 2.8]})
    with pytest.raises(RunsError, match=r"2 rows have missing or non-positive N, D, C or loss \(rows 1, 2\)"):
        load_runs(df)
    assert len(load_runs(df, drop_invalid=True)) == 1
    with pytest.raises(RunsError, match="no 'loss' column"):
        load_runs(df.drop(columns="loss"))
    with pytest.raises(RunsError, match=r"--col N='Params': no such column"):
        load_runs(df, col={"N": "Params"})
    with pytest.raises(RunsError, match="does not exist"):
        load_runs(tmp_path / "missing.csv")
    d = load_runs(pd.DataFrame({"Model Size": [1e6], "Training FLOP": [6e15], "loss": [3.0]}), col={"N": "Model Size", "C": "Training FLOP"})
    assert d["D"][0] == pytest.approx(1e9) and "D derived as C / (6N)" in d.attrs["notes"]


def test_fits_round_trip_through_json(tmp_path, epoch_fit):
    df = chinchilla_runs()
    law = ChinchillaLaw().fit(df)
    bootstrap(law, df, n=16, seed=0)
    law.save(tmp_path / "fit.json")
    back = Law.load(tmp_path / "fit.json")
    assert back.params == law.params and back.objective == law.objective
    np.testing.assert_array_equal(back.bootstrap_samples, law.bootstrap_samples)
    pd.testing.assert_frame_equal(back.predict_interval(N=7e10, D=1.4e12), law.predict_interval(N=7e10, D=1.4e12))
    p = PowerLaw(x="N", offset=False).fit(df)
    q = Law.from_dict(json.loads(json.dumps(p.to_dict())))
    assert isinstance(q, PowerLaw) and q.x == "N" and q.params == p.params


def test_cli_json_outputs_one_object(tmp_path):
    from analysis.runs import example_path

    data = str(example_path("chinchilla"))
    p = run_cli("fit", "chinchilla", data, "--json", "--save", str(tmp_path / "fit.json"))
    out = json.loads(p.stdout)  # exactly one JSON object, nothing else on stdout
    assert out["params"]["alpha"] == pytest.approx(0.3478, abs=0.01)  # all 245 points here
    p = run_cli("predict", str(tmp_path / "fit.json"), "--N", "7e10", "--D", "1.4e12", "--json")
    pred = json.loads(p.stdout)["predictions"][0]
    assert pred["loss"] == pytest.approx(Law.load(tmp_path / "fit.json").predict(N=7e10, D=1.4e12)[0])
    p = run_cli("validate", data, "--law", "chinchilla", "--cutoff-flops", "1e21", "--json")
    assert json.loads(p.stdout)["summary"]["n_heldout"] > 0
    p = run_cli("fit", "power", data, "--x", "C", "--json")
    assert json.loads(p.stdout)["law"] == "power"
    p = run_cli("fit", "chinchilla", data, "--col", "N=nope", check=False)
    assert p.returncode == 2 and "no such column" in p.stderr
    p = run_cli("plot", "contours", data, "--out", str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 10_000
