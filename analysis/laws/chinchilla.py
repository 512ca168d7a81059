"""The Chinchilla law L(N, D) = E + A / N^alpha + B / D^beta (``tie_exponents``: beta = alpha) and its
compute-optimal allocation."""

from __future__ import annotations

import numpy as np

from analysis.laws.base import Law, table_flops_per_param_token
from analysis.laws.registry import Option, register
from analysis.optim import LSEAffineModel, lse_design


@register(aliases={"chinchilla-tied": {"tie_exponents": True}})
class ChinchillaLaw(Law):
    """L(N, D) = E + A / N^alpha + B / D^beta, fitted as log L = LSE(a - alpha log N, b - beta log D, e).

    ``tie_exponents=True``: beta = alpha (Gadre et al. 2024), 4 parameters."""

    name = "chinchilla"
    inputs = ("N", "D")
    validate_in_all = True
    options = (Option("--tie-exponents", "tie_exponents", "chinchilla: beta = alpha (Gadre et al. 2024; same as law chinchilla-tied)",
                      store_true=True, only=True),)

    def fit_summary(self, df: pd.DataFrame) -> tuple[dict, str]:
        """The compute-optimal allocation over four decades above the table's largest budget."""
        Cs = np.logspace(np.log10(df["C"].max()), np.log10(df["C"].max()) + 4, 5)
        opt = self.compute_optimal_interval(Cs)
        text = (f"\ncompute-optimal allocation (C = {self.flops_per_param_token:.3g} N D, the table's median FLOPs per parameter-token):\n"
                + opt.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        return {"compute_optimal": opt.to_dict(orient="records")}, text

    def __init__(self, tie_exponents: bool = False, flops_per_param_token: float | None = None, **kw):
        super().__init__(**kw)
        self.tie_exponents = bool(tie_exponents)
        self.theta_names = ("a", "b", "e", "alpha") if self.tie_exponents else ("a", "b", "e", "alpha", "beta")
        self.form = "E + A/N^alpha + B/D^alpha" if self.tie_exponents else "E + A/N^alpha + B/D^beta"
        # C = k N D for the compute-optimal allocation; set from the training table's own C at fit time.
        self.flops_per_param_token = flops_per_param_token

    def config(self):
        return {**super().config(), "tie_exponents": self.tie_exponents, "flops_per_param_token": self.flops_per_param_token}

    def default_grid(self):
        g = {
            "a": [0, 5, 10, 15, 20, 25],
            "b": [0, 5, 10, 15, 20, 25],
            "e": [-1, -0.5, 0, 0.5, 1],
            "alpha": [0, 0.5, 1, 1.5, 2],
            "beta": [0, 0.5, 1, 1.5, 2],
        }
        return {k: g[k] for k in self.theta_names}

    def bounds(self):
        lo = {"a": -20.0, "b": -20.0, "e": -20.0, "alpha": 0.0, "beta": 0.0}
        hi = {"a": 100.0, "b": 100.0, "e": 10.0, "alpha": 5.0, "beta": 5.0}
        return np.array([lo[k] for k in self.theta_names]), np.array([hi[k] for k in self.theta_names])

    def model(self, X):
        lN, lD = np.log(X[:, 0]), np.log(X[:, 1])
        beta = 3 if self.tie_exponents else 4
        G = lse_design(len(X), [[(0, 1.0), (3, -lN)], [(1, 1.0), (beta, -lD)], [(2, 1.0)]], self.n_params)
        return LSEAffineModel(G)

    def full_theta(self, thetas: np.ndarray) -> np.ndarray:
        """(S, 5) parameter vectors (a, b, e, alpha, beta), beta = alpha when tied."""
        t = np.atleast_2d(thetas)
        return np.column_stack([t, t[:, 3]]) if self.tie_exponents else t

    def params_from_theta(self, theta):
        a, b, e, alpha, beta = self.full_theta(theta)[0]
        return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": float(alpha), "beta": float(beta)}

    def _after_fit(self, df):
        self.flops_per_param_token = table_flops_per_param_token(df)

    def _k(self, k: float | None) -> float:
        return float(k if k is not None else (self.flops_per_param_token or 6.0))

    def compute_optimal(self, C, flops_per_param_token: float | None = None) -> pd.DataFrame:
        """N_opt(C), D_opt(C) and the loss there, with C = k N D: k is the fitted table's own FLOPs per
        parameter-token (median C / ND; 6 for tables that count 6ND) unless given.
        N_opt = G (C/k)^(beta/(alpha+beta)), D_opt = (C/k) / N_opt, G = (alpha A / (beta B))^(1/(alpha+beta))."""
        return compute_optimal_from_theta(self.full_theta(self._require_fit()), C, self._k(flops_per_param_token))

    def compute_optimal_interval(self, C, level: float = 0.95, k: float | None = None) -> pd.DataFrame:
        out = compute_optimal_from_theta(self.full_theta(self._require_fit()), C, self._k(k))
        if self.bootstrap_samples is not None:
            q = (1 - level) / 2
            ok = np.isfinite(self.bootstrap_samples).all(axis=1)
            s = compute_optimal_from_theta(self.full_theta(self.bootstrap_samples[ok]), C, self._k(k), stacked=True)
            for col in ("N_opt", "D_opt", "loss", "tokens_per_param"):
                with np.errstate(all="ignore"):
                    out[f"{col}_lo"] = np.nanquantile(s[col], q, axis=0)
                    out[f"{col}_hi"] = np.nanquantile(s[col], 1 - q, axis=0)
        return out


def compute_optimal_from_theta(thetas: np.ndarray, C, k: float = 6.0, stacked: bool = False):
    """Compute-optimal allocation under C = k N D for (S, 5) Chinchilla parameter vectors (a, b, e, alpha, beta)."""
    C = np.atleast_1d(np.asarray(C, float))
    thetas = np.atleast_2d(thetas)
    a, b, e, al, be = (thetas[:, i : i + 1] for i in range(5))
    A, B, E = np.exp(a), np.exp(b), np.exp(e)
    with np.errstate(all="ignore"):
        G = (al * A / (be * B)) ** (1 / (al + be))
        N = G * (C[None] / k) ** (be / (al + be))
        D = (C[None] / k) / N
        L = E + A / N**al + B / D**be
    if stacked:
        return {"N_opt": N, "D_opt": D, "loss": L, "tokens_per_param": D / N}
    import pandas as pd

    return pd.DataFrame({"C": C, "N_opt": N[0], "D_opt": D[0], "tokens_per_param": D[0] / N[0], "loss": L[0]})
