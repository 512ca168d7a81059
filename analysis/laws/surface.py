"""The IsoFLOP surface L(N, C) = E + A (C/C0)^-gamma (1 + k ln^2(N / N_opt(C))), fitted by GLS on every run."""

from __future__ import annotations

import numpy as np

from analysis.errors import FitError
from analysis.laws.base import Law
from analysis.laws.registry import register
from analysis.optim import JacobianModel


HUBER_K = 1.345  # Huber's constant: delta = 1.345 sigma is 95% efficient for Gaussian scatter


@register
class SurfaceLaw(Law):
    """The IsoFLOP surface: every run of a sweep on one law of N and C,

        L(N, C) = E + A (C/C0)^-gamma * (1 + k ln^2(N / N_opt(C))),   N_opt(C) = N0 (C/C0)^a,

    i.e. at each compute budget a parabola in log N (relative to the frontier's excess loss A C^-gamma) whose
    minimum is the compute frontier L_opt(C) = E + A C^-gamma and whose position follows N_opt ~ C^a. It is the
    frontier law (the GPT-4 form) and the IsoFLOP exponent fitted together on all runs instead of on per-budget
    minima: six parameters from every run rather than three from a handful of noisy minima, one curvature shared
    by all budgets (the Chinchilla law's second derivative in ln N at its optimum, relative to its excess loss, is
    the constant alpha * beta: k = alpha * beta / 2 on its profiles), and
    a prediction for a run of any size, not only a compute-optimal one.

    theta = (ln E, ln A, gamma, a, ln(N0 / N_ref), ln k); C0 and N_ref are the geometric means of the table's C
    and N (fixed at the first fit and saved in the config), so the start grid is the same for any table's scale.
    Its bootstrap resamples runs within each compute budget (a budget keeps its number of runs).

    ``groups`` names a column of runs that share their training (WSD branches of one trunk: ``trunk_id``). Such
    runs share the trunk's luck (init and data order), so their residuals are correlated: a random intercept per
    group, u ~ N(0, sigma_u^2), on top of independent scatter e ~ N(0, sigma_e^2). The fit is then feasible GLS:
    a first fit's residuals give sigma_u and sigma_e (one-way ANOVA, method of moments), the residuals are
    whitened within each group (Fuller & Battese 1973: r - theta_g mean_g(r), theta_g = 1 - sigma_e /
    sqrt(sigma_e^2 + n_g sigma_u^2)) and the law is refitted on them, with Huber's delta at 1.345 sigma_e (95%
    efficient for Gaussian scatter). The C dependence is then measured within trunks, where their luck cancels:
    in simulations from that noise model, shaped like the quickstart's sweeps, it halves the prediction's sampling
    spread; on the real sweeps the trunks' residuals also drift with C, and it did not pay (benchmarks/RESULTS.md). The
    bootstrap is then a wild cluster bootstrap: each resample adds the fitted residuals of each group times one
    draw of Webb's six-point distribution (Webb 2013; few clusters), scaled by sqrt(n / (n - 6))."""

    name = "surface"
    inputs = ("N", "C")
    validate_in_all = True
    theta_names = ("e", "a_log", "gamma", "a", "n0", "k_log")
    form = "E + A (C/C0)^-gamma (1 + k ln^2(N / (N0 (C/C0)^a)))"

    def __init__(self, c_ref: float | None = None, n_ref: float | None = None, gap_dex: float = 0.1, groups: str | None = None, **kw):
        # Its 1728-start grid is scored on the data and the 256 best starts optimised: on the three quickstart sweeps
        # the same optimum as all 1728 (objective within 1e-12 relative, prediction within 1e-9), 8x faster.
        kw.setdefault("top_starts", 256)
        super().__init__(**kw)
        self._delta0 = self.delta  # a grouped fit sets delta from its sigma_e; every fit starts from this one
        self.c_ref = None if c_ref is None else float(c_ref)
        self.n_ref = None if n_ref is None else float(n_ref)
        self.gap_dex = gap_dex
        self.groups = groups
        self._T: np.ndarray | None = None  # the whitening transform of the fitted runs (grouped fits)
        self._group_index: np.ndarray | None = None
        self.variance: dict | None = None  # grouped fits: sigma_u, sigma_e, n_groups

    def config(self):
        return {**super().config(), "c_ref": self.c_ref, "n_ref": self.n_ref, "gap_dex": self.gap_dex, "groups": self.groups}

    def _group_codes(self, df) -> np.ndarray | None:
        """Integer group per run, or None when the table has no usable groups (column absent, or every run alone)."""
        if not self.groups or self.groups not in df.columns:
            return None
        codes = np.unique(df[self.groups].astype(str).to_numpy(), return_inverse=True)[1]
        return codes if np.bincount(codes).max() > 1 else None

    def fit(self, df, starts=None, progress: bool = False):
        self._T, self._group_index, self.delta = None, None, self._delta0
        g = self._group_codes(df)
        super().fit(df, starts=starts, progress=progress)
        if g is None:
            self.variance = None
            return self
        # Feasible GLS: variance components from the first fit's residuals, then a refit on whitened residuals.
        X, y = self.fit_data(df)
        r = self.model(X).value(self.theta[None])[0] - y
        n_g = np.bincount(g)
        k, n = len(n_g), len(r)
        mean_g = np.bincount(g, weights=r) / n_g
        ss_within = float(((r - mean_g[g]) ** 2).sum())
        var_e = ss_within / max(n - k, 1)
        ms_between = float((n_g * (mean_g - r.mean()) ** 2).sum()) / max(k - 1, 1)
        n0 = (n - (n_g**2).sum() / n) / max(k - 1, 1)
        var_u = max((ms_between - var_e) / n0, 0.0) if n0 > 0 else 0.0
        theta_g = 1.0 - np.sqrt(var_e / (var_e + n_g * var_u)) if var_e > 0 else np.zeros(k)
        T = np.eye(n)
        for j in range(k):
            idx = np.flatnonzero(g == j)
            T[np.ix_(idx, idx)] -= theta_g[j] / n_g[j]
        self._T, self._group_index = T, g
        self.variance = {"sigma_u": float(np.sqrt(var_u)), "sigma_e": float(np.sqrt(var_e)), "n_groups": int(k),
                         "groups": self.groups, "method": "one-way ANOVA on the first fit's log residuals; Fuller-Battese whitening"}
        if var_e > 0:
            self.delta = HUBER_K * float(np.sqrt(var_e))
        first = self.theta
        super().fit(df, starts=first[None], progress=progress)
        # a new run's scatter about the law is its trunk's luck plus its own: not the whitened residuals' sigma_e
        self.resid_scale = float(np.sqrt(var_u + var_e))
        self.notes.append(
            f"runs grouped by {self.groups} ({k} groups): trunk scatter sigma_u {100 * np.sqrt(var_u):.2f}%, run scatter "
            f"sigma_e {100 * np.sqrt(var_e):.2f}% of the loss; fitted on whitened residuals (feasible GLS)"
        )
        return self

    def requirements(self) -> str:
        return (
            "surface law (E + A C^-gamma (1 + k ln^2(N/N_opt(C))), N_opt ~ C^a): columns N, C and loss; runs at "
            "several sizes in each of at least 2 compute budgets, at least 6 distinct (N, C) points"
        )

    def check_table(self, df):
        super().check_table(df)
        from analysis.isoflop import assign_budgets

        b = assign_budgets(df, self.gap_dex)
        sizes = df.groupby(b.to_numpy())["N"].nunique()
        if int((sizes >= 3).sum()) < 2:
            raise FitError(
                f"the surface law needs at least 2 compute budgets with 3 or more sizes each (a parabola in log N per "
                f"budget); the table has {int((sizes >= 3).sum())}"
            )

    def fit_data(self, df):
        X, y = super().fit_data(df)
        if self.c_ref is None:
            self.c_ref = float(np.exp(np.mean(np.log(X[:, 1]))))
        if self.n_ref is None:
            self.n_ref = float(np.exp(np.mean(np.log(X[:, 0]))))
        if self._T is not None and len(y) == len(self._T):
            y = self._T @ y
        return X, y

    def default_grid(self):
        return {
            "e": [-1.5, -0.5, 0.0, 0.4],
            "a_log": [-3.0, -1.5, -0.5, 0.5],
            "gamma": [0.05, 0.15, 0.3, 0.5],
            "a": [0.3, 0.5, 0.7],
            "n0": [-1.0, 0.0, 1.0],
            "k_log": [-3.5, -2.3, -1.0],
        }

    def bounds(self):
        return np.array([-20.0, -20.0, 0.0, 0.0, -10.0, -12.0]), np.array([5.0, 10.0, 5.0, 2.0, 10.0, 5.0])

    def model(self, X):
        if self.c_ref is None or self.n_ref is None:
            raise RuntimeError("surface law: c_ref / n_ref unset (fit first)")
        x = (np.log(X[:, 0]) - np.log(self.n_ref))[None]
        c = (np.log(X[:, 1]) - np.log(self.c_ref))[None]

        def parts(theta):
            e, la, g, a, n0, lk = (theta[:, i : i + 1] for i in range(6))
            K = np.exp(lk)
            u = x - n0 - a * c
            q = 1.0 + K * u * u
            T2 = la - g * c + np.log(q)
            m = np.maximum(e, T2)
            w1, w2 = np.exp(e - m), np.exp(T2 - m)
            s = w1 + w2
            return K, u, q, m + np.log(s), w1 / s, w2 / s

        def value(theta):
            return parts(theta)[3]

        def jac(theta):
            K, u, q, pred, w1, w2 = parts(theta)
            S, n = pred.shape
            one = np.ones((S, n))
            cc = c * one
            du = np.stack([0 * one, 0 * one, 0 * one, -cc, -one, 0 * one], axis=-1)  # du/dtheta
            sk = K * u * u / q  # d ln q / d ln k
            fu = 2 * K * u / q  # d ln q / du
            g2 = np.stack([0 * one, one, -cc, 0 * one, 0 * one, sk], axis=-1) + fu[..., None] * du  # dT2/dtheta
            g1 = np.zeros_like(g2)
            g1[..., 0] = 1.0
            J = w1[..., None] * g1 + w2[..., None] * g2

            def hess(v, rows=None):
                sl = slice(None) if rows is None else rows
                w1r, w2r, g1r, g2r, dur = w1[sl], w2[sl], g1[sl], g2[sl], du[sl]
                Kr, ur, qr, skr = K[sl] * one[sl], u[sl], q[sl], sk[sl]
                dd = g1r - g2r
                H = np.einsum("sn,snp,snq->spq", v * w1r * w2r, dd, dd)
                vw = v * w2r  # w2 * d^2 T2: the ln q term only
                fuu = 2 * Kr * (1 - Kr * ur * ur) / qr**2
                fku = 2 * Kr * ur / qr**2
                H += np.einsum("sn,snp,snq->spq", vw * fuu, dur, dur)
                cross = np.einsum("sn,snp->sp", vw * fku, dur)
                H[:, 5, :] += cross
                H[:, :, 5] += cross
                H[:, 5, 5] += (vw * skr * (1 - skr)).sum(1)
                return H

            return pred, J, hess

        return JacobianModel(6, value, jac)

    def fit_model(self, X):
        """With trunk groups: the model whitened by the trunks' random-intercept covariance (Fuller-Battese
        transform m -> T m), so the objective is over uncorrelated residuals; else the plain model."""
        m = self.model(X)
        T = self._T
        if T is None or len(X) != len(T):
            return m

        def value(theta):
            return m.value(theta) @ T.T

        def jac(theta):
            pred, J, hess = m._jac(theta)
            return pred @ T.T, np.einsum("ij,sjp->sip", T, J), lambda v, rows=None: hess(v @ T, rows)

        return JacobianModel(6, value, jac)

    def params_from_theta(self, theta):
        theta = np.asarray(theta, float).ravel()
        return {
            "E": float(np.exp(theta[0])),
            "A": float(np.exp(theta[1])),
            "gamma": float(theta[2]),
            "a": float(theta[3]),
            "N0": float(np.exp(theta[4]) * (self.n_ref or 1.0)),
            "k": float(np.exp(theta[5])),
        }

    def bootstrap_problems(self, df, n, rng):
        from analysis.isoflop import assign_budgets

        g = self._group_codes(df)
        if g is not None and (self._T is None or len(g) != len(self._T) or not np.array_equal(g, self._group_index)):
            self.fit(df)  # a loaded fit, or another table: rebuild the whitening on this one first
        if self._T is not None:  # wild cluster bootstrap on the whitened fit
            X, _ = self.fit_data(df)
            y = np.log(self.prepare(df)["loss"].to_numpy(float))
            fitted = self.model(X).value(self.theta[None])[0]
            r = (y - fitted) * np.sqrt(len(y) / max(len(y) - self.n_params, 1))
            webb = np.sqrt(np.array([0.5, 1.0, 1.5]))
            v = rng.choice(np.concatenate([-webb, webb]), size=(n, int(self._group_index.max()) + 1))
            Y = (fitted[None] + v[:, self._group_index] * r[None]) @ self._T.T
            return X, Y, np.ones((n, len(y)))
        X, y = self.fit_data(df)
        groups = assign_budgets(self.prepare(df), self.gap_dex).to_numpy()
        W = np.zeros((n, len(y)))
        for b in np.unique(groups):
            idx = np.flatnonzero(groups == b)
            draw = idx[rng.integers(0, len(idx), (n, len(idx)))]
            np.add.at(W, (np.repeat(np.arange(n), len(idx)), draw.ravel()), 1.0)
        return X, y, W

    def _after_fit(self, df):
        self.notes.append(f"C0 = {self.c_ref:.4g} FLOPs and N_ref = {self.n_ref:.4g} (geometric means of the fitted table): A is the excess loss at C0")

    def to_dict(self, level: float = 0.95) -> dict:
        return {**super().to_dict(level), "variance": self.variance}

    def _restore(self, d):
        self.variance = d.get("variance")

    def frontier(self, C) -> np.ndarray:
        """L_opt(C) = E + A (C/C0)^-gamma: the loss of a compute-optimal run."""
        p = self.params
        return p["E"] + p["A"] * (np.asarray(C, float) / self.c_ref) ** -p["gamma"]

    def N_opt(self, C, theta: np.ndarray | None = None) -> np.ndarray:
        """N_opt(C) = N0 (C/C0)^a (the sizes' parabola minima); ``theta`` (S, 6) gives one row per sample."""
        t = np.atleast_2d(self._require_fit() if theta is None else theta)
        C = np.atleast_1d(np.asarray(C, float))
        return (np.exp(t[:, 4:5]) * self.n_ref) * (C[None] / self.c_ref) ** t[:, 3:4]

    def frontier_interval(self, C, level: float = 0.95) -> "pd.DataFrame":
        """L_opt(C) with the bootstrap's percentile band (lo, hi) where samples are attached."""
        import pandas as pd

        C = np.atleast_1d(np.asarray(C, float))
        out = pd.DataFrame({"loss": self.frontier(C)})
        if self.bootstrap_samples is not None:
            t = self.bootstrap_samples[np.isfinite(self.bootstrap_samples).all(axis=1)]
            s = np.exp(t[:, 0:1]) + np.exp(t[:, 1:2]) * (C[None] / self.c_ref) ** -t[:, 2:3]
            q = (1 - level) / 2
            out["lo"], out["hi"] = np.quantile(s, q, axis=0), np.quantile(s, 1 - q, axis=0)
        return out
