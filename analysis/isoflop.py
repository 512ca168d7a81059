"""IsoFLOP analysis (Hoffmann et al. 2022, approach 2).

Runs are grouped by compute budget (a ``budget`` column when present, else by clustering log10 C: a gap wider
than ``gap_dex`` starts a new budget). For each budget a parabola of loss in log10 N gives N_opt at its minimum,
and D_opt = C / (6 N_opt). Then log N_opt = a log C + const and log D_opt = b log C + const, with bootstrap
intervals from resampling runs within each budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


def assign_budgets(df: pd.DataFrame, gap_dex: float = 0.1) -> pd.Series:
    if "budget" in df.columns:
        return df["budget"].astype(float)
    lc = np.log10(df["C"].to_numpy(float))
    order = np.argsort(lc)
    group = np.zeros(len(lc), int)
    g = 0
    for prev, cur in zip(order[:-1], order[1:]):
        if lc[cur] - lc[prev] > gap_dex:
            g += 1
        group[cur] = g
    # Label each group by its geometric-mean compute.
    labels = pd.Series(lc).groupby(group).transform("mean")
    return pd.Series(10 ** labels.to_numpy(), index=df.index)


def parabola_minimum(logN: np.ndarray, loss: np.ndarray) -> tuple[float, float, np.ndarray] | None:
    """(log10 N_opt, loss at the minimum, coefficients) or None without a convex minimum."""
    if len(np.unique(logN)) < 3:
        return None
    coef = np.polyfit(logN, loss, 2)
    if coef[0] <= 0:
        return None
    x = -coef[1] / (2 * coef[0])
    return float(x), float(np.polyval(coef, x)), coef


def _fit_exponent(logC: np.ndarray, logY: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(logC, logY, 1)
    return float(slope), float(intercept)


@dataclass
class IsoFLOPResult:
    minima: pd.DataFrame  # budget, N_opt, D_opt, loss_opt, n_runs, coefficients, in_range
    a: float  # N_opt ∝ C^a
    b: float  # D_opt ∝ C^b
    a_intercept: float
    b_intercept: float
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)  # bootstrap (a, b)
    level: float = 0.95
    notes: list[str] = field(default_factory=list)

    def intervals(self) -> dict:
        if self.samples.empty:
            return {}
        q = (1 - self.level) / 2
        return {
            k: {"se": float(self.samples[k].std(ddof=1)), "lo": float(self.samples[k].quantile(q)), "hi": float(self.samples[k].quantile(1 - q))}
            for k in ("a", "b")
        }

    def N_opt(self, C) -> np.ndarray:
        return 10 ** (self.a_intercept + self.a * np.log10(np.asarray(C, float)))

    def D_opt(self, C) -> np.ndarray:
        return 10 ** (self.b_intercept + self.b * np.log10(np.asarray(C, float)))

    def to_dict(self) -> dict:
        m = self.minima.drop(columns=["coef"], errors="ignore")
        return {
            "law": "isoflop",
            "a": self.a,
            "b": self.b,
            "a_intercept": self.a_intercept,
            "b_intercept": self.b_intercept,
            "intervals": self.intervals(),
            "interval_level": self.level,
            "minima": m.to_dict(orient="records"),
            "notes": self.notes,
        }


def _minima(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for budget, g in df.groupby("budget"):
        logN = np.log10(g["N"].to_numpy(float))
        m = parabola_minimum(logN, g["loss"].to_numpy(float))
        if m is None:
            continue
        x, lopt, coef = m
        rows.append(
            {
                "budget": float(budget),
                "N_opt": 10**x,
                "D_opt": float(budget) / (6 * 10**x),
                "loss_opt": lopt,
                "n_runs": len(g),
                "in_range": bool(logN.min() <= x <= logN.max()),
                "coef": coef,
            }
        )
    return pd.DataFrame(rows)


def isoflop_analysis(
    df: pd.DataFrame, gap_dex: float = 0.1, n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95
) -> IsoFLOPResult:
    df = df.copy()
    df["budget"] = assign_budgets(df, gap_dex)
    minima = _minima(df)
    notes = []
    skipped = df["budget"].nunique() - len(minima)
    if skipped:
        notes.append(f"{skipped} budgets without a convex parabola (fewer than 3 sizes or no minimum) left out")
    if len(minima) < 2:
        raise ValueError(f"IsoFLOP analysis needs at least 2 budgets with >= 3 model sizes each; got {len(minima)}")
    if not minima["in_range"].all():
        notes.append("some minima lie outside the sizes trained at their budget (extrapolated parabola)")
    lc = np.log10(minima["budget"].to_numpy())
    a, ai = _fit_exponent(lc, np.log10(minima["N_opt"].to_numpy()))
    b, bi = _fit_exponent(lc, np.log10(minima["D_opt"].to_numpy()))

    rng = np.random.default_rng(seed)
    groups = [g for _, g in df.groupby("budget")]
    samples = []
    for _ in range(n_bootstrap):
        res = pd.concat([g.iloc[rng.integers(0, len(g), len(g))] for g in groups])
        mm = _minima(res)
        if len(mm) < 2:
            continue
        lcb = np.log10(mm["budget"].to_numpy())
        samples.append(
            {
                "a": _fit_exponent(lcb, np.log10(mm["N_opt"].to_numpy()))[0],
                "b": _fit_exponent(lcb, np.log10(mm["D_opt"].to_numpy()))[0],
            }
        )
    return IsoFLOPResult(minima, a, b, ai, bi, pd.DataFrame(samples), level, notes)
