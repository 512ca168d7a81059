"""MoE scaling laws and the dense-vs-MoE analysis: known parameters recovered from synthetic tables drawn from each
law with 0.5% noise, known multipliers recovered, refusals, the command line and the report on a synthetic study.

Tolerances: a fitted parameter must be within 4 bootstrap standard errors of the truth (a normal estimate misses by
more with probability 6e-5), and the standard error must be small enough for that to mean something (stated per
assertion)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from analysis import bootstrap, make_law
from analysis.errors import FitError
from analysis.laws import Law
from analysis.synthetic import clark_runs, krajewski_runs, moe_study_runs

CLARK = {"a": -0.082, "b": -0.108, "c": 0.009, "d": 1.104, "E_start": 1.847, "E_max": 314.478}
KRAJEWSKI = {"a": 18.1, "alpha": 0.115, "b": 30.8, "beta": 0.147, "g": 2.1, "gamma": 0.58, "c": 0.47}
DENSE = {"E": 1.8, "A": 400.0, "B": 900.0, "alpha": 0.34, "beta": 0.30}


def _within_4se(law, truth, rel_se_max):
    iv = law.intervals()
    for k, v in truth.items():
        se = iv[k]["se"]
        assert law.params[k] == pytest.approx(v, abs=4 * se), (k, law.params[k], v, se)
        # identifiable: the bootstrap error is a small fraction of the value (else "within 4 SE" is vacuous)
        assert se <= rel_se_max.get(k, 0.25) * abs(v), (k, se, v)


def test_clark_saturating_law_recovers_known_parameters():
    df = clark_runs(CLARK, sigma=0.005, seed=0)
    law = bootstrap(make_law("moe-clark").fit(df), df, n=100, seed=1)
    # E_max sits where Ê saturates (E >> 100): 512 experts pin it only to ~30%
    _within_4se(law, CLARK, {"E_max": 0.5, "c": 0.2})
    assert law.effective_experts(1.0) == pytest.approx(law.params["E_start"] - 1, rel=1e-9)  # Ê(1) = E_start - 1


def test_clark_bilinear_law_is_exact_on_noiseless_bilinear_data():
    rows = [{"N": N, "E": float(E), "loss": 10 ** (-0.08 * np.log10(N) - 0.1 * np.log10(E) + 0.008 * np.log10(N) * np.log10(E) + 1.1)}
            for N in 10 ** np.linspace(7, 9, 5) for E in (1, 4, 8, 16)]
    law = make_law("moe-clark-bilinear").fit(pd.DataFrame(rows))
    # noiseless: the optimum is the truth to the optimiser's precision (objective ~1e-20 -> params ~1e-9)
    for k, v in {"a": -0.08, "b": -0.1, "c": 0.008, "d": 1.1}.items():
        assert law.params[k] == pytest.approx(v, abs=1e-7), (k, law.params[k])


def test_krajewski_law_recovers_known_parameters():
    df = krajewski_runs(KRAJEWSKI, sigma=0.005, seed=0)
    law = bootstrap(make_law("moe-krajewski").fit(df), df, n=100, seed=1)
    # c and b trade off against beta at 0.5% noise over 2.5 decades of D: their errors reach ~20% of the value
    _within_4se(law, KRAJEWSKI, {"c": 0.3, "b": 0.2, "g": 0.2, "gamma": 0.2})


def test_moe_laws_read_a_sweeps_columns_and_refuse_what_cannot_determine_them():
    df = krajewski_runs(KRAJEWSKI, granularities=(1, 2, 4), sigma=0.0)
    sweep = df.rename(columns={"G": "granularity"}).assign(n_experts=lambda d: 8 * d["granularity"], N_active=lambda d: d["N"], N=lambda d: 3 * d["N"])
    law = make_law("moe-krajewski").fit(sweep)  # N_active and granularity, no mapping
    assert law.params["alpha"] == pytest.approx(KRAJEWSKI["alpha"], abs=1e-6)
    assert any("active parameter count" in n for n in law.notes)
    with pytest.raises(FitError, match="at least 3 granularities"):
        make_law("moe-krajewski").fit(sweep[sweep["granularity"] < 4])
    mixed = sweep.assign(n_experts=np.where(sweep["granularity"] == 4, 64, sweep["n_experts"]))
    with pytest.raises(FitError, match="expansion rate"):
        make_law("moe-krajewski").fit(mixed)
    clark = clark_runs(CLARK, experts=(1, 4, 8, 16), sigma=0.0)
    with pytest.raises(FitError, match="E >= 1"):
        make_law("moe-clark").fit(clark.assign(E=clark["E"] - 1))
    with pytest.raises(FitError, match="underdetermined"):
        make_law("moe-clark").fit(clark.iloc[:4])
    # a sweep table: dense rows have no n_experts (E = 1), MoE rows n_experts
    sw = clark.rename(columns={"E": "n_experts"}).assign(n_experts=lambda d: d["n_experts"].where(d["n_experts"] > 1))
    law = make_law("moe-clark-bilinear").fit(sw)
    assert law.predict(N=1e8, E=1.0)[0] == pytest.approx(make_law("moe-clark-bilinear").fit(clark).predict(N=1e8, E=1.0)[0], rel=1e-9)


def test_effective_params_recover_the_multipliers_a_study_was_drawn_with():
    from analysis import moe
    from analysis.laws import ChinchillaLaw

    mult = {"e4": (4, 2, 2, 1.3), "e8": (8, 2, 2, 1.7), "e16": (16, 2, 2, 2.2)}
    df = moe_study_runs(DENSE, mult, sigma=0.0)
    dense, moe_runs = moe.split_dense(df)
    law = ChinchillaLaw().fit(dense)
    eff = moe.effective_params(law, moe_runs)
    tab = moe.multiplier_table(eff).set_index("variant")
    for v, (*_, m) in mult.items():
        # noiseless: the dense law is recovered to ~1e-8 and N_eff = m N exactly up to that
        assert tab.loc[v, "multiplier"] == pytest.approx(m, rel=1e-5), (v, tab.loc[v, "multiplier"])
    # with 0.5% noise the held-out budget is predicted to the noise level: |error| < 4 x 0.5% per run
    noisy = moe_study_runs(DENSE, mult, sigma=0.005, seed=3)
    ho = moe.heldout_check(noisy, cut=5e17, n_bootstrap=50)
    assert len(ho) == 3 * 7 and (ho["budget"] == 1.6e18).all()
    assert ho["error"].abs().max() < 0.02, ho[["variant", "error"]]
    assert ((ho["loss"] >= ho["lo"] * 0.99) & (ho["loss"] <= ho["hi"] * 1.01)).mean() > 0.8
    # intervals of a table filtered to one budget use that budget's own bootstrap columns (the point lies inside)
    from analysis.uncertainty import bootstrap as boot

    d, m = moe.split_dense(noisy)
    eff = moe.effective_params(boot(ChinchillaLaw().fit(d), d, n=100, seed=0), m)
    for C in (1e17, 1.6e18):
        t = moe.multiplier_table(eff[eff["budget"] == C], ("variant", "budget"))
        assert ((t["lo"] <= t["multiplier"]) & (t["multiplier"] <= t["hi"])).all(), t


def test_expert_load_and_balance_summary_from_metrics(tmp_path):
    from analysis import moe

    run = tmp_path / "r"
    run.mkdir()
    lines = []
    for step in range(20, 220, 20):
        skew = step / 1000  # expert 0 takes a growing share from expert 3
        load = [[0.25 + skew, 0.25, 0.25, 0.25 - skew], [0.25, 0.25, 0.25, 0.25]]
        lines.append(json.dumps({"step": step, "loss": 2.0, "moe": {"load": load, "max_load_ratio": [4 * max(l) for l in load], "dropped_frac": [skew / 2, 0.0]}}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n{\"step\": 2")  # a line cut short by a kill
    s = moe.expert_load(run)
    assert s["load"].shape == (10, 2, 4)
    bal = moe.balance_summary({"r": run}).set_index("layer")
    assert bal.loc[1, "max_load_ratio_end"] == pytest.approx(1.0) and bal.loc[1, "min_load_ratio_end"] == pytest.approx(1.0)
    # "end" is the last 10% of the 10 logged steps: the last one, skew 0.2
    assert bal.loc[0, "max_load_ratio_end"] == pytest.approx(4 * 0.45) and bal.loc[0, "min_load_ratio_end"] == pytest.approx(4 * 0.05)
    assert bal.loc[0, "dropped_frac_end"] == pytest.approx(0.1) and bal.loc[0, "logged_steps"] == 10
    with pytest.raises(FitError, match="does not exist"):
        moe.expert_load(tmp_path / "missing")


def test_report_and_command_line_on_a_synthetic_study(tmp_path):
    mult = {"e4": (4, 2, 2, 1.3), "e8": (8, 2, 2, 1.7), "e16": (16, 2, 2, 2.2), "e4g1": (4, 1, 1, 1.5), "e16g4": (16, 4, 4, 1.9)}
    df = moe_study_runs(DENSE, mult, sigma=0.003, seed=1)
    # one shared token count for the moe-clark fit, as the CPU study has
    fixed = df[df["budget"] == 4e17].assign(budget=np.nan, D=3e9)
    fixed["C"] = 6 * fixed["N_active"] * fixed["D"]
    al, be, A, B, E = (DENSE[k] for k in ("alpha", "beta", "A", "B", "E"))
    m = fixed["variant"].map({"dense": 1.0, **{k: v[3] for k, v in mult.items()}})
    fixed["loss"] = E + A / (m * fixed["N_active"]) ** al + B / fixed["D"] ** be
    table = tmp_path / "runs.csv"
    pd.concat([df, fixed]).to_csv(table, index=False)
    r = subprocess.run([sys.executable, "-m", "scaling", "moe-report", str(tmp_path), "--bootstrap", "40"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "moe_report" / "summary.json").read_text())
    got = {row["variant"]: row["multiplier"] for row in summary["multiplier"]}
    for v, spec in mult.items():
        # 0.3% noise on the loss moves a multiplier by ~0.3% / (alpha * share of the N term) ~ a few percent
        assert got[v] == pytest.approx(spec[3], rel=0.06), (v, got[v])
    assert summary["heldout"]["mean_abs_error"] < 0.01
    for f in ("report.md", "multiplier_vs_experts.png", "multiplier_vs_compute.png", "loss_by_variant.png", "fit_moe-clark-bilinear.json"):
        assert (tmp_path / "moe_report" / f).exists(), f
    # the saved fit predicts from the command line
    fit = tmp_path / "moe_report" / "fit_moe-clark-bilinear.json"
    p = subprocess.run([sys.executable, "-m", "scaling", "predict", str(fit), "--N", "1e8", "--E", "1", "8", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    preds = json.loads(p.stdout)["predictions"]
    assert preds[1]["loss"] < preds[0]["loss"]  # 8 experts beat dense at equal active size in this study
    assert Law.load(fit).predict(N=1e8, E=8.0)[0] == pytest.approx(preds[1]["loss"], rel=1e-12)
    bad = subprocess.run([sys.executable, "-m", "scaling", "fit", "moe-krajewski", str(table), "--query", "granularity <= 2"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "granularities" in bad.stderr, bad.stderr
