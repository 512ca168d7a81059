"""The IsoFLOP surface law: derivatives, known answers (its own form and the Chinchilla law's frontier), the
bootstrap's strata, refusals and serialisation."""

import numpy as np
import pandas as pd
import pytest

from analysis import bootstrap
from analysis.errors import FitError
from analysis.laws import Law, SurfaceLaw

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28  # Hoffmann et al. (2022)


def chinchilla_isoflop(budgets=np.geomspace(1e18, 1e21, 7), half_dex=0.3, n=7) -> pd.DataFrame:
    G = ((ALPHA * A) / (BETA * B)) ** (1 / (ALPHA + BETA))
    rows = []
    for C in budgets:
        n_opt = G * (C / 6) ** (BETA / (ALPHA + BETA))
        for N in n_opt * np.geomspace(10**-half_dex, 10**half_dex, n):
            D = C / (6 * N)
            rows.append({"N": N, "C": C, "D": D, "budget": C, "loss": E + A / N**ALPHA + B / D**BETA})
    return pd.DataFrame(rows)


def test_jacobian_and_hessian_match_finite_differences():
    law = SurfaceLaw(c_ref=3e11, n_ref=6e4)
    rng = np.random.default_rng(0)
    X = np.column_stack([np.exp(rng.uniform(9, 12, 20)), np.exp(rng.uniform(25, 28, 20))])
    m = law.model(X)
    th = rng.normal(size=(3, 6)) * 0.3 + np.array([0, -1, 0.2, 0.5, 0, -2])
    _, J, hess = m._jac(th)
    h = 1e-6
    eye = np.eye(6)
    Jn = np.stack([(m.value(th + h * eye[j]) - m.value(th - h * eye[j])) / (2 * h) for j in range(6)], -1)
    v = rng.normal(size=(3, 20))
    Hn = np.stack([(np.einsum("sn,snp->sp", v, m._jac(th + h * eye[j])[1]) - np.einsum("sn,snp->sp", v, m._jac(th - h * eye[j])[1])) / (2 * h)
                   for j in range(6)], -1)
    # central differences: truncation ~h^2 * third derivative (O(1) here) = 1e-12, rounding ~eps/h = 2e-10
    assert np.abs(Jn - J).max() < 1e-8
    assert np.abs(Hn - hess(v)).max() < 1e-8


def test_recovers_its_own_parameters_exactly():
    th = np.array([np.log(1.2), np.log(0.8), 0.2, 0.5, 0.1, np.log(0.12)])
    truth = SurfaceLaw(c_ref=1e11, n_ref=5e4)
    rng = np.random.default_rng(0)
    X = np.column_stack([np.exp(rng.uniform(np.log(1e4), np.log(3e5), 40)), np.repeat(np.geomspace(1e11, 1e12, 5), 8)])
    df = pd.DataFrame({"N": X[:, 0], "C": X[:, 1], "loss": np.exp(truth.model(X).value(th[None])[0])})
    law = SurfaceLaw(c_ref=1e11, n_ref=5e4).fit(df)
    assert np.abs(law.theta - th).max() < 1e-8  # noise-free: the optimiser's tolerance, not a statistical one


def test_chinchilla_frontier_is_recovered():
    """The Chinchilla law's compute frontier is exactly E + A' C^-gamma with gamma = alpha beta / (alpha + beta) and
    N_opt ~ C^(beta / (alpha + beta)); the surface law recovers both from IsoFLOP profiles, and its curvature is the
    Chinchilla law's relative curvature at the optimum, alpha beta / 2."""
    df = chinchilla_isoflop()
    law = SurfaceLaw().fit(df)
    p = law.params
    a, gamma = BETA / (ALPHA + BETA), ALPHA * BETA / (ALPHA + BETA)
    # The profiles are not exact parabolas in ln N: the cubic term (beta - alpha) delta^3 / 6 against the quadratic
    # delta^2 / 2 is 0.06 * 0.69 / 3 = 1.4% at the window's edge (0.3 dex); a and gamma come from the minima, which
    # the symmetric window keeps to second order: 1e-3. k absorbs the cubic and quartic terms: 2%.
    assert p["a"] == pytest.approx(a, rel=1e-3) and p["gamma"] == pytest.approx(gamma, rel=1e-3)
    assert p["E"] == pytest.approx(E, rel=1e-3)
    assert p["k"] == pytest.approx(ALPHA * BETA / 2, rel=0.02)
    G = ((ALPHA * A) / (BETA * B)) ** (1 / (ALPHA + BETA))
    C = 1e22  # 10x beyond the largest budget
    n_opt = G * (C / 6) ** a
    l_opt = E + A / n_opt**ALPHA + B / (C / 6 / n_opt) ** BETA
    assert law.frontier([C])[0] == pytest.approx(l_opt, rel=1e-4)
    assert law.N_opt([C])[0, 0] == pytest.approx(n_opt, rel=0.01)  # the cubic term shifts the parabola's minimum


def test_noisy_sweep_prediction_inside_its_interval():
    """A sweep shaped like the quickstart's (7 budgets x 7 sizes, 1% log-normal scatter): the 10x extrapolation's
    95% bootstrap interval holds the noise-free truth, and the fit's error is a few times the per-point scatter."""
    df = chinchilla_isoflop(budgets=np.geomspace(1.25e11, 1e12, 7) * 1e7)
    rng = np.random.default_rng(1)
    truth = df["loss"].to_numpy()
    df["loss"] = truth * np.exp(0.01 * rng.standard_normal(len(df)))
    law = bootstrap(SurfaceLaw(delta=1.345 * 0.01, top_starts=128).fit(df), df, n=200, seed=0)  # the grid is tested above
    C = 1e20
    G = ((ALPHA * A) / (BETA * B)) ** (1 / (ALPHA + BETA))
    n_opt = G * (C / 6) ** (BETA / (ALPHA + BETA))
    l_opt = E + A / n_opt**ALPHA + B / (C / 6 / n_opt) ** BETA
    iv = law.predict_interval(N=[n_opt], C=[C]).iloc[0]
    assert iv["lo"] < l_opt < iv["hi"]
    # 49 points at 1% scatter, six parameters, 10x out: the interval is a few percent wide, not tens of percent
    assert (iv["hi"] - iv["lo"]) / 2 / iv["loss"] < 0.05


def test_bootstrap_resamples_within_budgets():
    df = chinchilla_isoflop(budgets=np.geomspace(1e18, 1e20, 3), n=5)
    law = SurfaceLaw()
    _, _, W = law.bootstrap_problems(df, 50, np.random.default_rng(0))
    per_budget = pd.DataFrame(W.T).groupby(df["C"].to_numpy()).sum()
    assert (per_budget == 5).all().all()  # every resample keeps each budget's number of runs


def test_refuses_a_table_without_two_profiles():
    df = chinchilla_isoflop(budgets=[1e19, 1e20], n=7)
    with pytest.raises(FitError, match="at least 2 compute budgets with 3 or more sizes"):
        SurfaceLaw().fit(df[(df["C"] == 1e19) | (df.index % 7 < 2)])


def test_save_and_load_keep_the_reference_scales(tmp_path):
    df = chinchilla_isoflop(budgets=np.geomspace(1e18, 1e20, 3), n=5)
    law = bootstrap(SurfaceLaw().fit(df), df, n=5, seed=0)
    law.save(tmp_path / "fit.json")
    back = Law.load(tmp_path / "fit.json")
    assert isinstance(back, SurfaceLaw) and back.c_ref == law.c_ref and back.n_ref == law.n_ref
    np.testing.assert_array_equal(back.predict(N=[1e9], C=[1e21]), law.predict(N=[1e9], C=[1e21]))


def test_grouped_fit_measures_trunk_and_run_scatter():
    """WSD branches share their trunk's luck: data from a known surface with a random offset per trunk (sigma_u 1%)
    and independent scatter per run (sigma_e 0.3%). The grouped fit recovers both scales, whitens the residuals
    (feasible GLS, Huber delta 1.345 sigma_e) and its wild-cluster-bootstrap interval holds the truth."""
    th = np.array([np.log(1.0), np.log(0.6), 0.2, 0.5, 0.0, np.log(0.15)])
    truth = SurfaceLaw(c_ref=3e11, n_ref=6e4)
    rng = np.random.default_rng(3)
    sizes = np.geomspace(1.5e4, 3e5, 10)
    budgets = 1.25e11 * 2 ** (np.arange(7) / 2)
    rows = []
    for t, N in enumerate(sizes):
        u = 0.01 * rng.standard_normal()
        for C in budgets:
            n_opt = 6e4 * (C / 3e11) ** 0.5
            if abs(np.log(N / n_opt)) < np.log(3.2):  # each budget branches the sizes near its optimum
                rows.append({"N": N, "C": C, "trunk_id": f"t{t}", "offset": u})
    df = pd.DataFrame(rows)
    X = df[["N", "C"]].to_numpy(float)
    df["loss"] = np.exp(truth.model(X).value(th[None])[0] + df["offset"] + 0.003 * rng.standard_normal(len(df)))
    law = SurfaceLaw(c_ref=3e11, n_ref=6e4, groups="trunk_id", top_starts=128).fit(df)
    v = law.variance
    assert v["n_groups"] == 10
    # ANOVA estimates: sigma_e from ~40 within-trunk degrees of freedom (relative sd ~1/sqrt(80) = 11%, bound 3 sd);
    # sigma_u from 10 trunks (relative sd ~1/sqrt(18) = 24%) and this draw's own offsets: a factor-2 bound.
    assert 0.003 * 0.65 < v["sigma_e"] < 0.003 * 1.35
    assert 0.5 * np.std([g["offset"].iloc[0] for _, g in df.groupby("trunk_id")], ddof=1) < v["sigma_u"] < 2 * 0.01
    assert law.delta == pytest.approx(1.345 * v["sigma_e"])
    bootstrap(law, df, n=200, seed=0)
    C, N = 1e13, 2e5
    exact = float(np.exp(truth.model(np.array([[N, C]])).value(th[None])[0, 0]))
    iv = law.predict_interval(N=[N], C=[C]).iloc[0]
    assert iv["lo"] < exact < iv["hi"]  # a 95% interval: this fixed draw is inside
    # a new run scatters about the law by its trunk's luck and its own: the single-run interval uses both
    assert law.resid_scale == pytest.approx(np.hypot(v["sigma_u"], v["sigma_e"]))
    plain = SurfaceLaw(c_ref=3e11, n_ref=6e4, top_starts=128).fit(df)  # without groups: the ordinary fit, no variance components
    assert plain.variance is None and plain.delta == 1e-3
    law.fit(df.drop(columns="trunk_id"))  # refitting the grouped object on a table without groups starts afresh
    assert law.variance is None and law.delta == 1e-3 and law._T is None
