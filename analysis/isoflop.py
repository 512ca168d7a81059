"""IsoFLOP analysis (Hoffmann et al. 2022, approach 2), made to hold on real sweeps.

Runs are grouped by compute budget (a ``budget`` column when present, else by clustering log10 C: a gap wider
than ``gap_dex`` starts a new budget). For each budget:

1. **bracket check**: the size with the lowest (mean) loss must not be the smallest or the largest trained size;
   otherwise the minimum is not bracketed and the budget is left out with a note (``keep_unbracketed=True`` keeps
   it, the minimum then sits at or beyond the edge of the sizes);
2. **minimum** of loss against x = log10 N (``analysis.minima``), by one of
   * ``local`` (default): a quadratic fitted with Gaussian weights in x centred on its own vertex (iterated from
     the empirical minimum), of the width over which that quadratic rises by 2% of the minimum loss (0.2-1 dex).
     Loss curves are not symmetric in log N, so a quadratic through all sizes puts its vertex where the sampling
     pattern pushes it; a window centred on the minimum and scaled to the curve's own depth has about the same
     shape bias at every budget, which then cancels in the exponent;
   * ``parabola``: one quadratic through every size (the original procedure);
   * ``akima``: scipy's Akima interpolant through the mean loss per size, minimised between the sizes;
3. **N_opt** at the minimum and **D_opt** from the runs' own tokens: log D interpolated against log N inside the
   budget (never C / 6N when the table has D); **loss_opt** the fitted curve's value there.

Then log N_opt = a log C + const and log D_opt = b log C + const (least squares over budgets), with bootstrap
intervals from resampling runs within each budget and recomputing every minimum. Every budget either contributes
a minimum or is named in ``notes`` with the reason it was left out; nothing in a table raises anything but
``FitError`` (too few budgets left).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.errors import FitError
from analysis.fmt import interval
from analysis.minima import DEFAULT_METHOD, METHODS, budget_minima_batch, empirical_argmin, interp_logD


def assign_budgets(df: pd.DataFrame, gap_dex: float = 0.1) -> pd.Series:
    """The budget of each run: the ``budget`` column when present, else clusters of log10 C separated by gaps
    wider than ``gap_dex``, labelled by their geometric-mean C."""
    if "budget" in df.columns and pd.to_numeric(df["budget"], errors="coerce").notna().all():
        return pd.to_numeric(df["budget"], errors="coerce").astype(float)
    lc = np.log10(df["C"].to_numpy(float))
    order = np.argsort(lc, kind="stable")
    group = np.zeros(len(lc), int)
    g = 0
    for prev, cur in zip(order[:-1], order[1:]):
        if lc[cur] - lc[prev] > gap_dex:
            g += 1
        group[cur] = g
    labels = pd.Series(lc).groupby(group).transform("mean")
    return pd.Series(10 ** labels.to_numpy(), index=df.index)


# -- per-budget minimum, batched over resamples ------------------------------------------------------------------
#
# Every method takes the budget's points (x = log10 N, y = loss) and a weight matrix W (S, m): row s says how many
# times each point is drawn in resample s (row of ones = the data as given). It returns, per row, the minimum's
# position and loss (NaN where the resample gives no minimum) and the curve it fitted.


# -- the analysis ------------------------------------------------------------------------------------------------


def _prepare(df: pd.DataFrame, gap_dex: float) -> tuple[pd.DataFrame, list[str]]:
    notes: list[str] = []
    missing = [c for c in ("N", "loss") if c not in df.columns]
    if missing or not ({"C", "budget"} & set(df.columns)):
        need = missing + ([] if {"C", "budget"} & set(df.columns) else ["C (or budget)"])
        raise FitError(f"IsoFLOP analysis needs columns N, C (or budget) and loss; the table lacks {', '.join(need)}")
    d = df.copy()
    for c in ("N", "D", "C", "loss", "budget"):
        if c in d.columns:
            d[c] = pd.to_numeric(d[c], errors="coerce")
    if "C" not in d.columns:
        d["C"] = d["budget"]
    if "D" not in d.columns:
        d["D"] = d["C"] / (6 * d["N"])
        notes.append("D derived as C / (6N) (the table has no D)")
    bad = ~(np.isfinite(d[["N", "D", "C", "loss"]]).all(axis=1) & (d[["N", "D", "C", "loss"]] > 0).all(axis=1))
    if bad.any():
        notes.append(f"{int(bad.sum())} runs with missing or non-positive N, D, C or loss left out")
        d = d[~bad]
    if len(d) == 0:
        raise FitError("IsoFLOP analysis: no usable runs")
    d = d.reset_index(drop=True)
    d["budget"] = assign_budgets(d, gap_dex)
    return d, notes


def budget_minima(
    df: pd.DataFrame, method: str = DEFAULT_METHOD, gap_dex: float = 0.1, keep_unbracketed: bool = False
) -> tuple[pd.DataFrame, list[str]]:
    """One row per budget that gives a minimum (budget, N_opt, D_opt, loss_opt, n_runs, n_sizes, bracketed,
    in_range, curvature, spread, curve_x, curve_y) and a note for every budget left out, with its reason."""
    if method not in METHODS:
        raise FitError(f"unknown IsoFLOP method {method!r}; choose one of {', '.join(METHODS)}")
    d, notes = _prepare(df, gap_dex)
    rows = []
    for budget, g in d.groupby("budget", sort=True):
        x, y, lD = np.log10(g["N"].to_numpy(float)), g["loss"].to_numpy(float), np.log10(g["D"].to_numpy(float))
        ux, i0, _ = empirical_argmin(x, y, np.ones((1, len(x))))
        label = f"budget {budget:.3g}"
        if len(ux) < 3:
            notes.append(f"{label} left out: {len(ux)} distinct size{'s' if len(ux) != 1 else ''} (a minimum needs 3)")
            continue
        bracketed = 0 < i0[0] < len(ux) - 1
        if not bracketed and not keep_unbracketed:
            side = "smallest" if i0[0] == 0 else "largest"
            notes.append(f"{label} left out: lowest loss at the {side} size (minimum not bracketed; add sizes beyond it or pass keep_unbracketed)")
            continue
        m = budget_minima_batch(x, y, np.ones((1, len(x))), method)
        if not np.isfinite(m.x_opt[0]):
            notes.append(f"{label} left out: the {method} fit has no minimum (loss does not curve upwards around the lowest point)")
            continue
        xo = float(m.x_opt[0])
        curve = m.curve[0]
        if not bracketed:
            notes.append(f"{label} kept although its lowest loss is at the {'smallest' if i0[0] == 0 else 'largest'} size (minimum not bracketed)")
        rows.append(
            {
                "budget": float(budget),
                "N_opt": 10**xo,
                "D_opt": float(10 ** interp_logD(np.array([xo]), x, lD)[0]),
                "loss_opt": float(m.loss_opt[0]),
                "n_runs": int(len(g)),
                "n_sizes": int(len(ux)),
                "bracketed": bool(bracketed),
                "in_range": bool(ux[0] - 1e-12 <= xo <= ux[-1] + 1e-12),
                "curvature": float(m.curvature[0]),
                "spread": float(m.spread[0]),
                "curve_x": curve[0] if curve else None,
                "curve_y": curve[1] if curve else None,
            }
        )
    if not keep_unbracketed and rows and not all(r["in_range"] for r in rows):
        notes.append("some minima lie outside the sizes trained at their budget (extrapolated)")
    return pd.DataFrame(rows), notes


def bootstrap_minima(
    df: pd.DataFrame, minima: pd.DataFrame, method: str = DEFAULT_METHOD, gap_dex: float = 0.1, n: int = 1000, rng: np.random.Generator | None = None
) -> dict[str, np.ndarray]:
    """Resample runs with replacement within each budget of ``minima`` and recompute each minimum: arrays
    x_opt (log10 N_opt), logD_opt, loss_opt of shape (n, n_budgets), NaN where a resample gives none."""
    rng = rng or np.random.default_rng(0)
    d, _ = _prepare(df, gap_dex)
    B = len(minima)
    out = {k: np.full((n, B), np.nan) for k in ("x_opt", "logD_opt", "loss_opt")}
    for j, budget in enumerate(minima["budget"].to_numpy(float)):
        g = d[np.isclose(d["budget"].to_numpy(float), budget, rtol=1e-9)]
        x, y, lD = np.log10(g["N"].to_numpy(float)), g["loss"].to_numpy(float), np.log10(g["D"].to_numpy(float))
        m = len(x)
        W = np.zeros((n, m))
        np.add.at(W, (np.repeat(np.arange(n), m), rng.integers(0, m, (n, m)).ravel()), 1.0)
        r = budget_minima_batch(x, y, W, method)
        out["x_opt"][:, j] = r.x_opt
        out["loss_opt"][:, j] = r.loss_opt
        out["logD_opt"][:, j] = np.where(np.isfinite(r.x_opt), interp_logD(np.nan_to_num(r.x_opt), x, lD), np.nan)
    return out


def summarize_left_out(notes: list[str]) -> str:
    """' (k budgets left out: reasons...)' from the notes of ``budget_minima``, short enough for one line."""
    left = [n.split(" left out: ", 1)[1] for n in notes if " left out: " in n]
    if not left:
        return ""
    kinds: dict[str, int] = {}
    for r in left:
        key = r.split(" (")[0]
        key = "fewer than 3 distinct sizes" if "distinct size" in key else key
        kinds[key] = kinds.get(key, 0) + 1
    return f" ({len(left)} budget{'s' if len(left) != 1 else ''} left out: " + "; ".join(f"{v} x {k}" for k, v in kinds.items()) + ")"


def exponent_weights(minima: pd.DataFrame, method: str) -> np.ndarray:
    """Weights of the budgets in the power-law fits of N_opt and D_opt against C.

    ``local``: inverse variance of each vertex, 4 c^2 S / L_opt^2 (c the quadratic's curvature, S the weighted
    spread of log N it saw, L_opt^2 the scale of multiplicative loss noise), with the curvature smoothed across
    budgets as a power law of C (c is itself noisy where a budget's curve is flat, and would over-weight it).
    Other methods: equal weights (their original procedures)."""
    B = len(minima)
    if method != "local" or B < 2:
        return np.ones(B)
    lc = np.log10(minima["budget"].to_numpy(float))
    c2 = minima["curvature"].to_numpy(float)
    if B >= 3 and np.ptp(lc) > 0:
        s, k = np.polyfit(lc, np.log(c2), 1)
        c2 = np.exp(k + s * lc)
    w = 4 * c2**2 * minima["spread"].to_numpy(float) / minima["loss_opt"].to_numpy(float) ** 2
    return w / w.max()


def _wls_slope(lc: np.ndarray, ly: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares lines ly = slope lc + intercept, per row ((S, B) arrays; NaN entries ignored)."""
    ok = np.isfinite(ly) & np.isfinite(lc)
    W = np.where(ok, w, 0.0)
    ly0, lc0 = np.where(ok, ly, 0.0), np.where(ok, lc, 0.0)
    sw = W.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = (W * lc0).sum(-1) / sw, (W * ly0).sum(-1) / sw
        dx = np.where(ok, lc0 - mx[..., None], 0.0)
        slope = (W * dx * (ly0 - my[..., None])).sum(-1) / (W * dx * dx).sum(-1)
    slope = np.where((ok.sum(-1) >= 2), slope, np.nan)
    return slope, my - slope * mx


@dataclass
class IsoFLOPResult:
    minima: pd.DataFrame  # one row per budget used: budget, N_opt, D_opt, loss_opt, n_runs, ..., weight
    a: float  # N_opt ∝ C^a
    b: float  # D_opt ∝ C^b
    a_intercept: float
    b_intercept: float
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)  # bootstrap (a, b, a_intercept, b_intercept)
    level: float = 0.95
    notes: list[str] = field(default_factory=list)
    method: str = DEFAULT_METHOD

    def intervals(self) -> dict:
        if self.samples.empty:
            return {}
        q = (1 - self.level) / 2
        s = self.samples.dropna()
        return {
            k: {"se": float(s[k].std(ddof=1)), "lo": float(s[k].quantile(q)), "hi": float(s[k].quantile(1 - q))}
            for k in ("a", "b")
        }

    def N_opt(self, C) -> np.ndarray:
        return 10 ** (self.a_intercept + self.a * np.log10(np.asarray(C, float)))

    def D_opt(self, C) -> np.ndarray:
        return 10 ** (self.b_intercept + self.b * np.log10(np.asarray(C, float)))

    def minima_table(self) -> pd.DataFrame:
        """The per-budget minima without the fitted curves (for tables, reports and JSON)."""
        return self.minima.drop(columns=["curve_x", "curve_y", "coef"], errors="ignore")

    def to_dict(self) -> dict:
        m = self.minima_table()
        return {
            "law": "isoflop",
            "method": self.method,
            "a": self.a,
            "b": self.b,
            "a_intercept": self.a_intercept,
            "b_intercept": self.b_intercept,
            "intervals": self.intervals(),
            "interval_level": self.level,
            "n_bootstrap": int(len(self.samples)),
            "minima": m.to_dict(orient="records"),
            "notes": self.notes,
        }


def isoflop_analysis(
    df: pd.DataFrame,
    gap_dex: float = 0.1,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    method: str = DEFAULT_METHOD,
    keep_unbracketed: bool = False,
) -> IsoFLOPResult:
    """Minima per budget (see the module docstring), exponents a and b with bootstrap intervals.

    Raises FitError when fewer than 2 budgets give a minimum (the notes of the others say why)."""
    minima, notes = budget_minima(df, method=method, gap_dex=gap_dex, keep_unbracketed=keep_unbracketed)
    if len(minima) < 2:
        raise FitError(f"IsoFLOP analysis needs at least 2 budgets with a minimum; got {len(minima)}{summarize_left_out(notes)}")
    w = exponent_weights(minima, method)
    minima["weight"] = w
    lc = np.log10(minima["budget"].to_numpy(float))
    a, ai = _wls_slope(lc, np.log10(minima["N_opt"].to_numpy(float)), w)
    b, bi = _wls_slope(lc, np.log10(minima["D_opt"].to_numpy(float)), w)
    samples = pd.DataFrame()
    if n_bootstrap:
        boot = bootstrap_minima(df, minima, method=method, gap_dex=gap_dex, n=n_bootstrap, rng=np.random.default_rng(seed))
        LC = np.broadcast_to(lc, boot["x_opt"].shape)
        sa, sai = _wls_slope(LC, boot["x_opt"], w)
        sb, sbi = _wls_slope(LC, boot["logD_opt"], w)
        samples = pd.DataFrame({"a": sa, "b": sb, "a_intercept": sai, "b_intercept": sbi})
        failed = int(samples["a"].isna().sum())
        if failed:
            notes.append(f"{failed} of {n_bootstrap} bootstrap resamples gave fewer than 2 minima and were left out")
    res = IsoFLOPResult(minima, float(a), float(b), float(ai), float(bi), samples, level, notes, method)
    iv = res.intervals()
    for k in ("a", "b"):
        if k in iv and iv[k]["hi"] - iv[k]["lo"] > 0.5:
            notes.append(f"degenerate fit: the {100 * level:.0f}% interval of {k} is wider than 0.5 ({interval(iv[k]['lo'], iv[k]['hi'], '.3g')})")
    return res


def frontier_targets(df: pd.DataFrame, law, cutoff_flops: float) -> pd.DataFrame:
    """IsoFLOP minima of the budgets above the cut-off (the frontier law's held-out targets)."""
    d = df.copy()
    d["budget"] = assign_budgets(d, law.gap_dex)
    held = d[d["budget"] > cutoff_flops]
    if len(held) == 0:
        raise FitError(f"no compute budget above the cut-off {cutoff_flops:.3g} FLOPs to validate the frontier law on")
    minima, notes = budget_minima(held, method=law.method, gap_dex=law.gap_dex, keep_unbracketed=law.keep_unbracketed)
    if len(minima) == 0:
        raise FitError(f"no budget above the cut-off has a minimum to compare with{summarize_left_out(notes)}")
    return pd.DataFrame({"budget": minima["budget"], "N": minima["N_opt"], "D": minima["D_opt"], "C": minima["budget"], "loss": minima["loss_opt"]})
