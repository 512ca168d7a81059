"""Extrapolation intervals calibrated on the data's own backtests.

A bootstrap interval measures how much the fitted parameters move when the runs are resampled. It leaves out the
error of carrying a law beyond the compute it was fitted on (model-form error: curvature the law does not have, a
recipe that drifts with scale), which grows with the distance. On the public tables the bootstrap's nominal 95%
single-run intervals covered 25-67% of the held-out runs.

``analysis.backtest.calibrate`` measures that error inside the fitted data. It refits the same law (same form and settings) on the
runs below each of several internal compute cut-offs and predicts the runs above them. Each held-out run gives a
log residual ``r`` and a distance ``d``: decades of compute beyond the largest compute that inner fit saw.
The residuals are modelled as

    r ~ Normal(0, sigma0^2 + s_inner^2 + kappa^2 d^2)

where ``sigma0`` is the run-to-run scatter (the full fit's robust residual scale), ``s_inner`` the inner fit's own
parameter scatter at that point (a small bootstrap of it: an inner fit sees fewer runs than the full one, and its
extra parameter error is not the full fit's), and ``kappa`` (the extrapolation error per decade, fitted by maximum
likelihood) takes up what remains and grows with the distance: model-form error. A prediction at distance ``d*`` beyond the full fit's largest compute
then gets the interval

    loss * exp(+- m * sqrt(s_boot^2 + kappa^2 d*^2 [+ sigma0^2 for one new run]))

with ``s_boot`` the bootstrap's log standard deviation at that point (0 without a bootstrap) and ``m`` the
backtests' own quantile of their studentised errors |r| / scale at the level (split conformal's finite-sample
rank; the normal quantile with fewer than 20 backtest predictions): heavy tails widen the 95% interval (a
well-described table would narrow the 68% one, but the per-backtest read below keeps the normal quantile on the
fit's and the run's scatter as a floor). Interpolation (``d* = 0``) keeps the fit-only width.

That is the per-prediction read. It counts every backtest prediction as one piece of evidence, but the predictions
of one backtest share one fitted law, so their errors move together: a table with four backtests has measured its
extrapolation error four times, not sixty. The per-backtest read takes each backtest's error per decade ``b_j`` (the
weighted least-squares slope, through the origin, of its log residuals on their distances) as one draw of the error
a new extrapolation makes, with no model of how much of it is noise: ``kappa_J = sqrt(mean(b_j^2))`` over the
J backtests, and a Student t with J degrees of freedom for the error of the next one (a scale estimated from J
draws of mean 0; the backtests reuse the high-compute runs, so the b_j are correlated and t_J is, if anything,
optimistic):

    loss * exp(+- sqrt(z^2 (s_boot^2 [+ sigma0^2]) + t_J^2 kappa_J^2 d*^2))

with ``z`` the normal quantile and ``t_J`` Student's at the level. The calibrated interval is the wider of the two
reads, point by point. On the public tables the per-backtest read covers where the per-prediction one found no
growth (kappa 0) but the next budgets still missed; the per-prediction read covers where single runs have heavy
tails. Because ``b_j`` keeps the backtests' own noise, the per-backtest read over-covers an exact law (95% -> 100%
on synthetic tables); it is not used for the floor's verdict, which asks whether the noise-modelled kappa is 0.
``kappa`` and ``kappa_J`` describe this table's extrapolation error, not a law of nature, and coverage is measured,
not assumed (``benchmarks/calibration.py``).

This module holds what a saved fit needs to give its calibrated interval (``Calibration``, ``calibrated_interval``)
and nothing that fits: the laws import it; the backtests that measure it are ``analysis.backtest``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError

MAX_CUTOFFS = 6
MIN_EMPIRICAL = 20  # backtest predictions needed before their own quantiles set the interval's width
INNER_BOOTSTRAP = 40  # resamples of each inner fit: its own parameter scatter at the points it predicts
MIN_FIT_FRACTION = 0.4  # an inner fit sees at least this share of the runs
GAP_DEX = 0.05  # compute values closer than this (in log10) are one budget: cut-offs fall between budgets
MIN_BACKTESTS_T = 2  # the per-backtest read needs at least this many backtests (Student's t with 1 dof has no variance)


@dataclass
class Calibration:
    """What the backtests measured: ``sigma0`` (run scatter, log), ``kappa`` (extrapolation error per decade of
    compute, log), ``c_max`` (the largest compute of the full fit: distances start there)."""

    sigma0: float
    kappa: float
    c_max: float
    n_backtests: int
    n_residuals: int
    cutoffs: list[float] = field(default_factory=list)
    max_distance: float = 0.0  # the farthest a backtest extrapolated (decades)
    residuals: list[dict] = field(default_factory=list)  # (cutoff, C, d, r) of every backtest prediction
    refits: list[dict] = field(default_factory=list)  # each backtest fit's cutoff, params and their bootstrap se

    def distance(self, C) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.maximum(0.0, np.log10(np.asarray(C, float) / self.c_max))

    def scale(self, C, s_boot=0.0, include_noise: bool = False, noise: float | None = None) -> np.ndarray:
        """The log standard deviation of a prediction at compute ``C`` (``noise``: one new run's scatter, instead of
        ``sigma0``, with ``include_noise``)."""
        d = self.distance(C)
        run = self.sigma0 if noise is None else float(noise)
        var = np.asarray(s_boot, float) ** 2 + (self.kappa * d) ** 2 + (run**2 if include_noise else 0.0)
        return np.sqrt(var)

    def multiplier(self, level: float) -> float:
        """How many scales the ``level`` interval spans each side: the backtests' own quantile of |r| / scale (their
        errors, studentised by the model; the finite-sample rank of split conformal prediction), or the normal
        quantile when there are fewer than ``MIN_EMPIRICAL`` backtest predictions."""
        from scipy.stats import norm

        z = [abs(x["r"]) / np.sqrt(self.sigma0**2 + x.get("s_inner", 0.0) ** 2 + (self.kappa * x["d"]) ** 2)
             for x in self.residuals if "r" in x and "d" in x]
        z = np.sort([v for v in z if np.isfinite(v)])
        if len(z) < MIN_EMPIRICAL:
            return float(norm.ppf(0.5 + level / 2))
        k = min(len(z) - 1, int(np.ceil((len(z) + 1) * level)) - 1)
        return float(z[k])

    def backtest_slopes(self) -> np.ndarray:
        """Each backtest's extrapolation error per decade: the slope through the origin of its log residuals on their
        distances, each weighted by 1 / (sigma0^2 + s_inner^2) (a missing or non-finite s_inner counts as 0). One
        value per cut-off, in cut-off order."""
        by_cut: dict[float, list[dict]] = {}
        for x in self.residuals:
            if "r" in x and "d" in x and np.isfinite(x["r"]) and np.isfinite(x["d"]) and x["d"] > 0:
                by_cut.setdefault(float(x.get("cutoff", 0.0)), []).append(x)
        out = []
        for cut in sorted(by_cut):
            d = np.array([x["d"] for x in by_cut[cut]], float)
            r = np.array([x["r"] for x in by_cut[cut]], float)
            s_in = np.nan_to_num(np.array([x.get("s_inner") or 0.0 for x in by_cut[cut]], float), nan=0.0, posinf=0.0, neginf=0.0)
            w = 1.0 / np.maximum(self.sigma0**2 + s_in**2, 1e-12)
            out.append(float(np.sum(w * d * r) / np.sum(w * d * d)))
        return np.array(out)

    def _per_backtest(self) -> tuple[float, int] | None:
        """(kappa_J, J): the root mean square of the J backtests' errors per decade; None with fewer than
        ``MIN_BACKTESTS_T`` backtests (or no residuals saved)."""
        b = self.backtest_slopes()
        return (float(np.sqrt(np.mean(b**2))), len(b)) if len(b) >= MIN_BACKTESTS_T else None

    @property
    def kappa_backtests(self) -> float | None:
        """The per-backtest read's error per decade, sqrt(mean(b_j^2)) over the backtests; None with fewer than
        ``MIN_BACKTESTS_T`` of them (or no residuals saved)."""
        pb = self._per_backtest()
        return None if pb is None else pb[0]

    def half_width(self, C, s_boot=0.0, include_noise: bool = False, level: float = 0.95,
                   noise: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated interval's half-width in log loss at compute ``C`` and which read set it: the wider of the
        per-prediction read (``multiplier(level) * scale(...)``) and the per-backtest read (normal quantile on the
        fit's and the run's scatter, Student's t with J dof on ``kappa_backtests * d``), point by point. ``noise``:
        one new run's scatter (e.g. measured on repeated seeds) in place of ``sigma0`` for the run's own term; what
        the backtests measured (kappa, the multiplier, the slopes) keeps the fit's ``sigma0``, the scatter its
        residuals carry. The read is "backtest" only where the per-backtest read is wider beyond rounding and d > 0."""
        from scipy.stats import norm, t as student_t

        per_pred = self.multiplier(level) * self.scale(C, s_boot, include_noise, noise)
        pb = self._per_backtest()
        if pb is None:
            return per_pred, np.full(np.shape(per_pred), "prediction")
        kJ, J = pb
        z, t = float(norm.ppf(0.5 + level / 2)), float(student_t.ppf(0.5 + level / 2, J))
        run = self.sigma0 if noise is None else float(noise)
        fit2 = np.asarray(s_boot, float) ** 2 + (run**2 if include_noise else 0.0)
        d = self.distance(C)
        per_backtest = np.sqrt(z**2 * fit2 + (t * kJ * d) ** 2)
        wider = (per_backtest > per_pred * (1 + 1e-9)) & (d > 0)
        return np.maximum(per_pred, per_backtest), np.where(wider, "backtest", "prediction")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        try:
            c = cls(**{k: d[k] for k in ("sigma0", "kappa", "c_max", "n_backtests", "n_residuals")},
                    cutoffs=list(d.get("cutoffs") or []), max_distance=float(d.get("max_distance") or 0.0),
                    residuals=list(d.get("residuals") or []), refits=list(d.get("refits") or []))
        except (KeyError, TypeError) as e:
            raise AnalysisError(f"the fit's calibration is incomplete ({e})") from None
        for x in c.refits:
            if not (isinstance(x, dict) and isinstance(x.get("cutoff"), (int, float))
                    and all(isinstance(x.get(k), dict) and all(v is None or isinstance(v, (int, float)) for v in x[k].values()) for k in ("params", "se"))):
                raise AnalysisError(f"the fit's calibration has an invalid refit: {str(x)[:80]}")
        for k in ("sigma0", "kappa", "c_max"):
            v = getattr(c, k)
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0 or (k == "c_max" and v <= 0):
                raise AnalysisError(f"the fit's calibration has an invalid {k}: {v!r}")
        return c


DRIFT_LEVEL = 0.95  # a parameter that moves further across the backtest refits than this test allows is not determined


def parameter_drift(cal: Calibration, name: str, value: float, level: float = DRIFT_LEVEL) -> dict | None:
    """Whether parameter ``name`` (fitted ``value`` on every run) held still when the law was refitted on the runs below
    each internal cut-off. Each refit j gives p_j with its own bootstrap standard error s_j; under a law that holds,
    p_j - value is sampling scatter of about s_j or less (the refit's runs are a subset of the full fit's: for an
    efficient fit with constant scatter the difference has sd sqrt(s_j^2 - s^2) <= s_j), so |z_j| = |p_j - value| / s_j
    exceeds the normal quantile at 1 - (1 - level) / (2 J) for some j with probability about 1 - level or less
    (Bonferroni over the J refits; approximate: s_j comes from a small bootstrap of each refit, so the tails are
    somewhat heavier). A parameter that moves further than that as budgets are added moves with the fit range: its
    bootstrap interval describes the fit only. None when no refit has the parameter with a usable standard error."""
    from scipy.stats import norm

    pts = [(float(x["cutoff"]), float(x["params"][name]), float(x["se"][name])) for x in cal.refits  # None: NaN in a saved fit
           if (x.get("params") or {}).get(name) is not None and (x.get("se") or {}).get(name) is not None]
    pts = [p for p in pts if np.isfinite(p[1]) and np.isfinite(p[2]) and p[2] > 0]
    if not pts or not np.isfinite(value):
        return None
    pts.sort()
    z = np.array([(v - value) / s for _, v, s in pts])
    crit = float(norm.ppf(1 - (1 - level) / (2 * len(pts))))
    k = int(np.argmax(np.abs(z)))
    return {"param": name, "value": float(value), "determined": bool(abs(z[k]) <= crit), "z_max": float(z[k]), "z_crit": crit,
            "cutoffs": [p[0] for p in pts], "values": [p[1] for p in pts], "se": [p[2] for p in pts]}


def drift_note(drift: dict) -> str:
    """One sentence on a parameter the backtest refits did not hold still (``parameter_drift``)."""
    vals = drift["values"]
    trend = ("fell" if vals[-1] < vals[0] else "rose") + f" from {vals[0]:.4g} to {vals[-1]:.4g}"
    return (f"{drift['param']} not determined: refitted on the runs below {len(vals)} internal compute cut-offs it {trend} "
            f"(up to {abs(drift['z_max']):.1f} of a refit's standard errors from the full fit's {drift['value']:.4g}; a law "
            f"that holds moves it at most {drift['z_crit']:.1f}): it moves with the fitted range, and its bootstrap interval "
            f"measures the fit's scatter, not where it lies")


def floor_verdict(law, name: str = "E") -> dict | None:
    """Whether the loss floor ``name`` of a calibrated law is determined by the data: ``{"param", "determined",
    "note"}`` (note: why not), None without a calibration or such a parameter.

    The floor is the law's prediction at infinite compute (infinite N or D for a law in one of them): infinitely
    many decades beyond the fitted runs. The verdict asks the noise-modelled kappa (the per-prediction read: a
    prediction d decades out carries kappa * d), so a table whose backtests measured any (kappa > 0, noise
    included: kappa is a maximum-likelihood estimate bounded at 0) leaves the floor unbounded, and its bootstrap
    interval holds only if the law's form is exactly right. It does not ask kappa_J, the per-backtest read's: that
    keeps the backtests' noise and is never 0, so under it every floor is unbounded (the calibrated interval at
    infinite compute is); the verdict says whether the backtests found anything beyond their noise. Conservative by design: on exact synthetic laws kappa is
    often a little above 0 by chance, and E is then called not determined. With kappa = 0 the floor's bootstrap interval (when
    there is one) must also stay within 10x and off 0, and the floor hold still across the backtest refits
    (``parameter_drift``). On synthetic grids from an exact Chinchilla law the verdict is
    "determined" on most draws and the bootstrap interval then covers the true floor at about its level; a slow term
    the law lacks is absorbed into E and is not always visible inside the data (benchmarks/RESULTS.md, "The loss floor E")."""
    cal = getattr(law, "calibration", None)
    if cal is None or law.theta is None or name not in law.params:
        return None
    if cal.kappa > 0:
        return {"param": name, "determined": False,
                "note": (f"{name} not determined: it is the law's loss at infinite compute, and the backtests inside these "
                         f"runs measured an extrapolation error of {cal.kappa:.2g} (log) per decade of compute beyond the fitted "
                         f"range, without bound there; its bootstrap interval holds only for a law of exactly this form")}
    if law.bootstrap_samples is not None:
        iv = law.intervals().get(name)
        if iv is None:
            return {"param": name, "determined": False, "note": f"{name} not determined: no bootstrap resample was fitted"}
        if law.spans_a_decade(iv["lo"], iv["hi"]):  # the interval_notes' test for a degenerate interval
            return {"param": name, "determined": False,
                    "note": f"{name} not determined: its bootstrap interval [{iv['lo']:.4g}, {iv['hi']:.4g}] reaches 0 or spans more than 10x"}
    drift = parameter_drift(cal, name, law.params[name])
    if drift is not None and not drift["determined"]:
        return {"param": name, "determined": False, "note": drift_note(drift)}
    return {"param": name, "determined": True, "note": ""}


def compute_of(df: pd.DataFrame) -> np.ndarray:
    if "C" in df.columns:
        return df["C"].to_numpy(float)
    if {"N", "D"} <= set(df.columns):
        return 6.0 * df["N"].to_numpy(float) * df["D"].to_numpy(float)
    raise AnalysisError("calibration needs each run's compute (a C column, or N and D)")


def internal_cutoffs(C: np.ndarray, min_fit: int, max_cutoffs: int = MAX_CUTOFFS) -> list[float]:
    """Compute cut-offs between budgets (gaps wider than ``GAP_DEX``) that leave at least ``min_fit`` runs below and
    one above, at most ``max_cutoffs`` of them spread evenly over the candidates."""
    logc = np.sort(np.log10(C))
    cands = []
    for i in range(1, len(logc)):
        if logc[i] - logc[i - 1] > GAP_DEX and i >= min_fit:
            cands.append(10 ** ((logc[i] + logc[i - 1]) / 2))
    if len(cands) > max_cutoffs:
        cands = [cands[int(round(j))] for j in np.linspace(0, len(cands) - 1, max_cutoffs)]
    return cands


def fit_kappa(r: np.ndarray, d: np.ndarray, sigma0: float, s_inner: np.ndarray | None = None) -> float:
    """Maximum likelihood of r ~ N(0, sigma0^2 + s_inner^2 + kappa^2 d^2) over kappa >= 0 (``s_inner``: each
    backtest fit's own parameter scatter at the point, which the full fit, on more runs, has less of)."""
    from scipy.optimize import minimize_scalar

    s0 = max(sigma0, 1e-6)
    si2 = 0.0 if s_inner is None else np.asarray(s_inner, float) ** 2

    def nll(k: float) -> float:
        v = s0**2 + si2 + (k * d) ** 2
        return float(np.sum(np.log(v) + r**2 / v))

    hi = max(1.0, 10 * float(np.max(np.abs(r) / np.maximum(d, 1e-3))))
    res = minimize_scalar(nll, bounds=(0.0, hi), method="bounded", options={"xatol": 1e-6})
    return float(res.x) if nll(res.x) <= nll(0.0) else 0.0


def calibrated_interval(law, df: pd.DataFrame | None = None, level: float = 0.95, include_noise: bool = True,
                        noise_scale: float | None = None, **cols) -> pd.DataFrame:
    """Point prediction and the calibrated interval (``lo``, ``hi``, its half-width in log loss ``half_log``, the
    distance ``d`` in decades beyond the fitted compute, and ``read``: "prediction" or "backtest", the read of the
    backtests that set the width); ``fit_lo`` / ``fit_hi``: the fit-only bootstrap interval beside it.
    ``noise_scale``: the run scatter of one new run, instead of the fit's (e.g. measured on repeated seeds)."""
    cal = getattr(law, "calibration", None)
    if cal is None:
        raise AnalysisError(f"the {law.name} fit has no calibration: run analysis.backtest.calibrate(law, runs) (scaling fit calibrates by default)")
    fit = law.predict_interval(df, level=level, include_noise=include_noise, noise_scale=noise_scale, **cols)
    if df is not None:
        frame = df
    else:
        keys = [k for k, v in cols.items() if v is not None]
        frame = pd.DataFrame(dict(zip(keys, np.broadcast_arrays(*(np.atleast_1d(np.asarray(cols[k], float)) for k in keys)))))
    C = compute_of(frame)
    s_boot = 0.0
    if law.bootstrap_samples is not None:
        with np.errstate(all="ignore"):
            s_boot = np.nanstd(np.log(law.predict_samples(df, **cols)), axis=0, ddof=1)
        s_boot = np.where(np.isfinite(s_boot), s_boot, 0.0)
    noise = None
    if noise_scale is not None:  # one new run's scatter; the backtests' own figures keep the fit's sigma0
        noise, include_noise = float(noise_scale), True
    half, read = cal.half_width(C, s_boot, include_noise, level, noise)
    point = fit["loss"].to_numpy()
    out = fit.drop(columns=[c for c in ("lo", "hi", "se") if c in fit.columns]).copy()
    out["lo"], out["hi"], out["half_log"], out["d"], out["read"] = point * np.exp(-half), point * np.exp(half), half, cal.distance(C), read
    if "lo" in fit:
        out["fit_lo"], out["fit_hi"] = fit["lo"].to_numpy(), fit["hi"].to_numpy()
    return out


__all__ = ["Calibration", "calibrated_interval", "compute_of", "drift_note", "fit_kappa", "floor_verdict", "internal_cutoffs", "parameter_drift"]
