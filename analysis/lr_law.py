"""The best learning rate as a law of model size and token horizon, from an lr tuning sweep's runs table.

An ``lr_scan`` sweep trains every (N, D) point at several learning rates (multipliers of one recipe, sqrt(2) apart
for example). Per point the best lr is the minimum of a parabola in log lr through the best run and up to two
neighbours on each side (the loss is flat near the optimum, so one run's noise would pick the grid point); a point
whose best lr is at an end of its scan is not located and left out, noted. Then

    log lr*(N, D) = log lr_base + a log(N / N_ref) + b log(D / D_ref)

is fitted by least squares over the located points, with N_ref and D_ref the geometric means of the points (where
lr_base is best determined). A dimension with one value (one width, one horizon) is not fitted: its exponent is 0,
noted. Fewer located points than free parameters + 1 is refused. Under muP (Yang et al. 2022) ``a`` should be near
0; the horizon exponent ``b`` is negative (Bjorck et al. 2024: longer runs take smaller steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError

NEEDED = ("N", "D", "lr", "loss")


def best_lr(lrs, losses) -> tuple[float, bool]:
    """(best lr, located): the minimum of a parabola in log lr through the best finite point and up to two
    neighbours each side, clipped to their range. ``located`` is False when the best point is at an end of the scan
    (the optimum may lie outside it). An interior best point is located (a higher loss, or a diverged run, on each
    side brackets it); where fewer than 3 finite points surround it or the parabola opens downwards (noise), its
    grid lr is returned."""
    lrs, losses = np.asarray(lrs, float), np.asarray(losses, float)
    order = np.argsort(lrs)
    lrs, losses = lrs[order], losses[order]
    finite = np.isfinite(losses)
    if not finite.any():
        return math.nan, False
    i = int(np.nanargmin(np.where(finite, losses, np.nan)))
    if i == 0 or i == len(lrs) - 1:
        return float(lrs[i]), False
    idx = [j for j in range(max(0, i - 2), min(len(lrs), i + 3)) if finite[j]]
    if len(idx) < 3:
        return float(lrs[i]), True
    x = np.log(lrs[idx])
    a, b, _ = np.polyfit(x, losses[idx], 2)
    if a <= 0:
        return float(lrs[i]), True
    return float(np.exp(np.clip(-b / (2 * a), x[0], x[-1]))), True


@dataclass
class LRLaw:
    lr_base: float
    N_ref: float
    a: float  # exponent in N
    D_ref: float
    b: float  # exponent in D
    se: dict  # standard errors of log lr_base, a, b (0 where not fitted)
    residual_sd: float  # of log lr* about the law (natural log)
    points: pd.DataFrame  # one row per (N, D): lrs scanned, best lr, located
    lr_range: tuple[float, float]  # the smallest and largest lr any point scanned
    notes: list[str] = field(default_factory=list)

    def lr(self, N, D):
        return self.lr_base * (np.asarray(N, float) / self.N_ref) ** self.a * (np.asarray(D, float) / self.D_ref) ** self.b

    def summary(self) -> str:
        steps = self.residual_sd / math.log(math.sqrt(2))
        located = int(self.points["located"].sum())
        return (
            f"lr*(N, D) = {self.lr_base:.4g} x (N / {self.N_ref:.3g})^{self.a:+.3f} (se {self.se['a']:.3f})"
            f" x (D / {self.D_ref:.3g})^{self.b:+.3f} (se {self.se['b']:.3f}); "
            f"{located} of {len(self.points)} points located, residual sd {self.residual_sd:.3f} in log lr ({steps:.2f} sqrt(2) steps)"
        )


def fit_lr_law(runs: pd.DataFrame) -> LRLaw:
    """Fit the best-lr law to a runs table with columns N, D, lr and loss (one row per completed run; several seeds
    of one (N, D, lr) are averaged). ``AnalysisError`` (one line) on a table that cannot determine it."""
    missing = [c for c in NEEDED if c not in runs.columns]
    if missing:
        raise AnalysisError(f"the runs table lacks the column {missing[0]!r} an lr fit needs ({', '.join(NEEDED)})")
    df = runs[list(NEEDED)].apply(pd.to_numeric, errors="coerce")
    inputs = df[["N", "D", "lr"]]
    bad = df[~(np.isfinite(inputs).all(axis=1) & (inputs > 0).all(axis=1))]
    if len(bad):
        raise AnalysisError(f"row {bad.index[0]} of the runs table has a non-positive or missing N, D or lr")
    notes: list[str] = []
    rows = []
    for (N, D), g in df.groupby(["N", "D"], sort=True):
        per_lr = g.groupby("lr")["loss"].mean()  # seeds averaged; a diverged run (NaN, inf) is not finite
        if len(per_lr) < 3:
            continue
        lr_star, located = best_lr(per_lr.index.values, per_lr.values)
        rows.append({"N": N, "D": D, "n_lrs": len(per_lr), "lr_lo": float(per_lr.index.min()),
                     "lr_hi": float(per_lr.index.max()), "lr_best": lr_star, "located": located,
                     "loss_best": float(np.nanmin(per_lr.values))})
    if not rows:
        raise AnalysisError("no (N, D) point of the table was trained at 3 or more learning rates: run an lr_scan sweep")
    points = pd.DataFrame(rows)
    n_edge = int((~points["located"]).sum())
    if n_edge:
        ends = points[~points["located"]]
        low = int((np.isclose(ends["lr_best"], ends["lr_lo"])).sum())
        notes.append(f"{n_edge} of {len(points)} points have their best lr at an end of the scan ({low} at the lowest, "
                     f"{n_edge - low} at the highest) and are left out; widen lr_scan there")
    fit = points[points["located"]]
    logN, logD, y = np.log(fit["N"].values), np.log(fit["D"].values), np.log(fit["lr_best"].values)
    N_ref = float(np.exp(logN.mean())) if len(fit) else math.nan
    D_ref = float(np.exp(logD.mean())) if len(fit) else math.nan
    cols, names = [np.ones(len(fit))], ["c"]
    for name, v, what in (("a", logN, "N (one width)"), ("b", logD, "D (one horizon)")):
        if len(fit) and np.ptp(v) > 1e-9:
            cols.append(v - v.mean())
            names.append(name)
        else:
            notes.append(f"the located points have one value of {what}: its exponent is not fitted (0)")
    X = np.column_stack(cols)
    if len(fit) < X.shape[1] + 1:
        raise AnalysisError(
            f"{len(fit)} located points cannot determine {X.shape[1]} coefficients with a residual (need at least "
            f"{X.shape[1] + 1}); {n_edge} points had their best lr at an end of the scan: widen lr_scan or add points"
        )
    if X.shape[1] == 3 and abs(np.corrcoef(X[:, 1], X[:, 2])[0, 1]) > 0.95:
        raise AnalysisError("N and D of the located points move together (correlation above 0.95): the two exponents "
                            "cannot be told apart; train every width at every horizon (grid.tokens)")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    dof = len(y) - X.shape[1]
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.inv(X.T @ X)
    est = dict(zip(names, coef))
    se = {n: float(math.sqrt(cov[i, i])) for i, n in enumerate(names)}
    return LRLaw(
        lr_base=float(math.exp(est["c"])), N_ref=N_ref, a=float(est.get("a", 0.0)), D_ref=D_ref, b=float(est.get("b", 0.0)),
        se={"log_lr_base": se["c"], "a": se.get("a", 0.0), "b": se.get("b", 0.0)}, residual_sd=math.sqrt(s2),
        points=points, lr_range=(float(points["lr_lo"].min()), float(points["lr_hi"].max())), notes=notes,
    )


__all__ = ["LRLaw", "best_lr", "fit_lr_law"]
