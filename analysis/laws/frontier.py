"""The compute frontier L_opt(C) = E + A C^-gamma, fitted to the IsoFLOP minima."""

from __future__ import annotations

import numpy as np

from analysis.errors import DEFAULT_ISOFLOP_METHOD, ISOFLOP_METHODS, FitError
from analysis.laws.registry import Option, register
from analysis.laws.power import PowerLaw


@register
class FrontierLaw(PowerLaw):
    """The compute frontier L_opt(C) = E + A C^-gamma, fitted to the IsoFLOP minima of a table of runs.

    Each budget's minimum loss comes from ``analysis.isoflop`` (same method options); the law predicts the loss of a
    compute-optimal run at budget C. Its bootstrap resamples runs within each budget and refits the minima."""

    name = "frontier"
    validate_in_all = True
    # the same three as `scaling fit isoflop` (analysis.isoflop), which reads them too
    options = (Option("--method", "method", "isoflop/frontier: minimum per budget (default local)", choices=tuple(ISOFLOP_METHODS)),
               Option("--keep-unbracketed", "keep_unbracketed", "isoflop/frontier: keep budgets whose lowest loss is at an end of the sizes", store_true=True),
               Option("--gap-dex", "gap_dex", "isoflop/frontier: log10 C gap that separates budgets (without a budget column)", type=float, default=0.1))

    def fit_summary(self, df) -> tuple[dict, str]:
        if self.minima is None:
            return {}, ""
        return {}, "\nIsoFLOP minima fitted:\n" + self.minima[["budget", "N_opt", "loss_opt"]].to_string(index=False, float_format=lambda v: f"{v:.4g}")

    def __init__(self, method: str | None = None, gap_dex: float = 0.1, keep_unbracketed: bool = False, **kw):
        kw.pop("x", None)
        kw.pop("offset", None)
        super().__init__(x="C", offset=True, **kw)
        self.theta_names = ("a", "gamma", "e")
        self.form = "E + A C^-gamma (IsoFLOP minima)"
        self.method = method or DEFAULT_ISOFLOP_METHOD
        self.gap_dex, self.keep_unbracketed = gap_dex, bool(keep_unbracketed)
        self.minima: pd.DataFrame | None = None

    def config(self):
        c = super().config()
        c.pop("x"), c.pop("offset")
        return {**c, "method": self.method, "gap_dex": self.gap_dex, "keep_unbracketed": self.keep_unbracketed}

    def default_grid(self):
        return {"a": [0, 2.5, 5, 10, 15, 20, 25], "gamma": [0, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0], "e": [-1, -0.5, 0, 0.5, 1, 1.5]}

    def bounds(self):
        return np.array([-50.0, 0.0, -20.0]), np.array([300.0, 5.0, 10.0])

    def requirements(self) -> str:
        return (
            "frontier law (E + A C^-gamma on IsoFLOP minima): columns N, C and loss (D optional), runs grouped into "
            "compute budgets (a budget column, or C values that cluster), at least 3 budgets with a bracketed minimum"
        )

    def _minima(self, df: pd.DataFrame):
        from analysis.isoflop import budget_minima

        missing = [c for c in ("N", "C", "loss") if c not in df.columns]
        if missing:
            raise FitError(f"the frontier law needs columns N, C and loss (runs at several sizes per compute budget); the table lacks {', '.join(missing)}")
        return budget_minima(df, method=self.method, gap_dex=self.gap_dex, keep_unbracketed=self.keep_unbracketed)

    def fit_data(self, df):
        minima, notes = self._minima(df)
        if len(minima) < self.n_params:
            from analysis.isoflop import summarize_left_out

            raise FitError(
                f"the frontier law has {self.n_params} parameters but the table gives IsoFLOP minima at {len(minima)} "
                f"budget{'s' if len(minima) != 1 else ''}{summarize_left_out(notes)}"
            )
        self._fit_minima, self._fit_minima_notes = minima, notes
        return minima[["budget"]].to_numpy(float), np.log(minima["loss_opt"].to_numpy(float))

    def _after_fit(self, df):
        self.minima = self._fit_minima.drop(columns=["curve_x", "curve_y"], errors="ignore")
        self.notes += self._fit_minima_notes

    def bootstrap_problems(self, df, n, rng):
        from analysis.isoflop import bootstrap_minima

        if getattr(self, "_fit_minima", None) is None:
            self.fit_data(df)
        minima = self._fit_minima
        boot = bootstrap_minima(df, minima, method=self.method, gap_dex=self.gap_dex, n=n, rng=rng)
        L = boot["loss_opt"]  # (n, B) with NaN where a resample has no minimum at that budget
        W = np.isfinite(L).astype(float)
        Y = np.log(np.where(np.isfinite(L), L, 1.0))
        W[W.sum(axis=1) < self.n_params] = 0.0  # too few minima: the resample is left out
        return minima[["budget"]].to_numpy(float), Y, W

    target_kind = "IsoFLOP minima of the held-out budgets"

    def holdout(self, df, train, test, cutoff_flops):
        """Fitted on every budget at or below the cut-off; its targets are the minima of the budgets above it."""
        from analysis.isoflop import assign_budgets, frontier_targets

        if cutoff_flops is None:
            raise FitError("the frontier law extrapolates in compute: validate it with a FLOPs cut-off")
        d = df.copy()
        d["budget"] = assign_budgets(d, self.gap_dex)
        train = d[d["budget"] <= cutoff_flops].reset_index(drop=True)
        train.attrs["notes"] = list(df.attrs.get("notes", []))
        return train, frontier_targets(df, self, cutoff_flops)

    def targets_above(self, df, above, cut):
        from analysis.isoflop import frontier_targets

        return frontier_targets(df, self, cut)

    def to_dict(self, level: float = 0.95) -> dict:
        d = super().to_dict(level)
        if self.minima is not None:
            d["minima"] = self.minima.to_dict(orient="records")
        return d

    def _restore(self, d):
        if d.get("minima"):
            import pandas as pd

            self.minima = pd.DataFrame(d["minima"])

    def params_from_theta(self, theta):
        theta = np.asarray(theta, float).ravel()
        return {"A": float(np.exp(theta[0])), "gamma": float(theta[1]), "E": float(np.exp(theta[2]))}

LN10 = float(np.log(10.0))
