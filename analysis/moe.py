"""Dense against mixture-of-experts: effective parameter and compute multipliers, a held-out check, expert balance.

The question a user brings: *at my compute budget, does MoE beat dense, by how much, and with how many experts?*

* ``effective_params(dense_law, runs)``: for each MoE run, the dense parameter count N_eff that reaches the same
  loss at the same tokens under the dense Chinchilla law, and the multiplier N_eff / N_active (Clark et al. 2022's
  effective parameter count, read off a fitted dense law instead of their routed law). With the dense law's
  bootstrap samples attached, each multiplier gets a percentile interval.
* ``compute_multiplier(frontier, minima)``: at each budget, the compute a compute-optimal *dense* model needs to
  reach an MoE variant's IsoFLOP minimum, over that budget (the dense frontier law inverted).
* ``heldout_check(runs, cut)``: fit the dense law and each variant's multiplier on the runs with C <= cut, predict
  the MoE losses above it, report the errors.
* ``expert_load(run_dir)`` and ``balance_summary(run_dirs)``: per-layer expert load over training from a run's
  ``metrics.jsonl`` (max / mean load, dropped fraction).

Conventions: N is the active parameter count (``N_active``; equal to N for dense runs); a run is MoE when its
``n_experts`` is set. The module reads tables and run directories only; it never imports the training code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.errors import FitError
from analysis.laws import ChinchillaLaw, FrontierLaw

DENSE = "dense"


def split_dense(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(dense runs, MoE runs) by ``n_experts`` (missing or < 2: dense), with N set to the active count."""
    df = df.copy()
    if "N_active" in df.columns:
        df["N"] = df["N_active"].fillna(df["N"])
    ne = pd.to_numeric(df["n_experts"], errors="coerce") if "n_experts" in df.columns else pd.Series(np.nan, index=df.index)
    moe = ne >= 2
    if not moe.any():
        raise FitError("the table has no MoE runs (no run with n_experts >= 2)")
    if moe.all():
        raise FitError("the table has no dense runs (every run has n_experts >= 2): a dense law is the reference")
    return df[~moe].copy(), df[moe].copy()


def _n_eff(theta5: np.ndarray, D: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """N solving E + A/N^alpha + B/D^beta = loss, for (S, 5) Chinchilla vectors (a, b, e, alpha, beta) -> (S, n);
    inf where the loss is at or below what any dense model reaches at that D (E + B/D^beta)."""
    a, b, e, al, be = (theta5[:, i : i + 1] for i in range(5))
    with np.errstate(all="ignore"):
        gap = loss[None] - np.exp(e) - np.exp(b) / D[None] ** be
        N = np.where(gap > 0, (np.exp(a) / gap) ** (1.0 / al), np.inf)
    return N


def effective_params(dense_law: ChinchillaLaw, moe: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per MoE run: N_eff (the dense parameter count with the same loss at the same D), multiplier = N_eff / N
    (N active), and with bootstrap samples on the law, ``multiplier_lo`` / ``multiplier_hi`` (percentiles)."""
    if not isinstance(dense_law, ChinchillaLaw):
        raise FitError("effective_params needs a fitted dense Chinchilla law (E + A/N^alpha + B/D^beta)")
    D, L, N = (moe[c].to_numpy(float) for c in ("D", "loss", "N"))
    out = moe.copy()
    out["N_eff"] = _n_eff(dense_law.full_theta(dense_law._require_fit()), D, L)[0]
    out["multiplier"] = out["N_eff"] / N
    if dense_law.bootstrap_samples is not None:
        ok = np.isfinite(dense_law.bootstrap_samples).all(axis=1)
        s = _n_eff(dense_law.full_theta(dense_law.bootstrap_samples[ok]), D, L) / N[None]
        q = (1 - level) / 2
        out["multiplier_lo"] = np.quantile(s, q, axis=0)
        out["multiplier_hi"] = np.quantile(s, 1 - q, axis=0)
        out.attrs["multiplier_samples"] = s  # (n_boot, runs), columns in the order of multiplier_index
        out.attrs["multiplier_index"] = list(out.index)
    return out


def _median(x: np.ndarray, axis=-1) -> np.ndarray:
    """Median over runs: robust to the runs whose N_eff is infinite or huge under a resampled dense law (a loss
    near the dense law's floor E + B/D^beta makes N_eff arbitrarily sensitive), which a mean is not."""
    return np.median(x, axis=axis)


def multiplier_table(eff: pd.DataFrame, by: tuple[str, ...] = ("variant",), level: float = 0.95) -> pd.DataFrame:
    """Median multiplier over each group's runs (e.g. per variant, or per variant and budget), with the percentile
    interval of the same median under the dense law's bootstrap samples (when ``effective_params`` had them)."""
    samples = eff.attrs.get("multiplier_samples")
    cols = pd.Index(eff.attrs.get("multiplier_index", list(eff.index)))  # a filtered table keeps the full samples
    rows = []
    for key, g in eff.groupby(list(by), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        idx = cols.get_indexer(g.index)
        row = dict(zip(by, key))
        first = g.iloc[0]
        for c in ("n_experts", "top_k", "granularity"):
            if c in g.columns:
                row[c] = first[c]
        row.update(n_runs=len(g), multiplier=float(_median(g["multiplier"].to_numpy(float))))
        if samples is not None:
            m = _median(samples[:, idx], axis=1)
            q = (1 - level) / 2
            row["lo"], row["hi"] = float(np.quantile(m, q)), float(np.quantile(m, 1 - q))
        rows.append(row)
    return pd.DataFrame(rows)


def compute_multiplier(frontier: FrontierLaw, minima: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """For IsoFLOP minima (columns budget, loss_opt): the compute C_eff a compute-optimal dense model needs to reach
    loss_opt under the dense frontier law L = E + A C^-gamma, and C_eff / budget (inf below the law's E)."""
    p = frontier.params

    def inv(A, g, E, L):
        with np.errstate(all="ignore"):
            return np.where(L > E, (A / (L - E)) ** (1 / g), np.inf)

    L, C = minima["loss_opt"].to_numpy(float), minima["budget"].to_numpy(float)
    out = minima.copy()
    out["C_eff"] = inv(p["A"], p["gamma"], p["E"], L)
    out["compute_multiplier"] = out["C_eff"] / C
    if frontier.bootstrap_samples is not None:
        ok = np.isfinite(frontier.bootstrap_samples).all(axis=1)
        th = frontier.bootstrap_samples[ok]
        s = inv(np.exp(th[:, :1]), th[:, 1:2], np.exp(th[:, 2:3]), L[None]) / C[None]
        q = (1 - level) / 2
        out["lo"], out["hi"] = np.quantile(s, q, axis=0), np.quantile(s, 1 - q, axis=0)
    return out


def heldout_check(df: pd.DataFrame, cut: float, n_bootstrap: int = 200, seed: int = 0) -> pd.DataFrame:
    """Fit on runs with C <= cut (dense law on the dense runs, each variant's multiplier on its MoE runs), predict
    the MoE runs above the cut as L_dense(multiplier x N_active, D); columns predicted, lo, hi (95%, the dense
    law's bootstrap), error = predicted / loss - 1."""
    from analysis.uncertainty import bootstrap

    dense, moe = split_dense(df)
    d_fit, m_fit, m_test = dense[dense["C"] <= cut], moe[moe["C"] <= cut], moe[moe["C"] > cut]
    if m_test.empty:
        raise FitError(f"no MoE run has C above the cut {cut:.3g}: nothing is held out")
    law = bootstrap(ChinchillaLaw().fit(d_fit), d_fit, n=n_bootstrap, seed=seed)
    eff = effective_params(law, m_fit)
    th = law.full_theta(law._require_fit())
    ok = np.isfinite(law.bootstrap_samples).all(axis=1) if law.bootstrap_samples is not None else None
    rows = []
    for v, test in m_test.groupby("variant"):
        fit_v = eff[eff["variant"] == v]
        if fit_v.empty:
            continue
        m = float(_median(fit_v["multiplier"].to_numpy(float)))
        Ne, D = m * test["N"].to_numpy(float), test["D"].to_numpy(float)
        pred = law.predict(N=Ne, D=D)
        out = test[["variant", "N", "D", "C", "loss"] + [c for c in ("budget", "n_experts") if c in test.columns]].copy()
        out["multiplier"] = m
        out["predicted"] = pred
        if ok is not None:
            # each bootstrap law with its own multiplier (refitted on the same MoE runs), then its prediction
            thb = law.full_theta(law.bootstrap_samples[ok])
            mb = _median(_n_eff(thb, fit_v["D"].to_numpy(float), fit_v["loss"].to_numpy(float)) / fit_v["N"].to_numpy(float)[None], axis=1)
            a, b, e, al, be = (thb[:, i : i + 1] for i in range(5))
            with np.errstate(all="ignore"):
                Lb = np.exp(e) + np.exp(a) / (mb[:, None] * test["N"].to_numpy(float)[None]) ** al + np.exp(b) / D[None] ** be
            Lb = Lb[np.isfinite(mb)]
            out["lo"], out["hi"] = np.quantile(Lb, 0.025, axis=0), np.quantile(Lb, 0.975, axis=0)
        out["error"] = pred / out["loss"].to_numpy(float) - 1
        rows.append(out)
    res = pd.concat(rows, ignore_index=True)
    res.attrs["dense_law"] = {k: float(v) for k, v in law.params.items()}
    res.attrs["dense_law_point"] = th.tolist()
    return res


# -- expert balance -----------------------------------------------------------------------------------------------

def expert_load(run_dir: str | Path) -> dict:
    """A run's routing statistics over training from ``metrics.jsonl``: steps (T,), load (T, layers, experts) as the
    fraction of routed tokens per expert, max_load_ratio (T, layers) = max / mean load, dropped_frac (T, layers)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FitError(f"{path} does not exist: not a run directory with metrics")
    steps, load, mlr, drop = [], [], [], []
    with path.open() as f:
        for line in f:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: the rest of the file is still good
            m = r.get("moe")
            if not isinstance(m, dict) or "load" not in m:
                continue
            steps.append(r.get("step"))
            load.append(m["load"])
            mlr.append(m.get("max_load_ratio"))
            drop.append(m.get("dropped_frac"))
    if not steps:
        raise FitError(f"{path} has no MoE routing metrics (a dense run, or a run logged before any MoE step)")
    load_TLE = np.asarray(load, float)
    if load_TLE.ndim == 2:
        load_TLE = load_TLE[:, None, :]
    as_TL = lambda x: np.asarray(x, float).reshape(len(steps), -1)  # noqa: E731
    return {"steps": np.asarray(steps, float), "load": load_TLE, "max_load_ratio": as_TL(mlr), "dropped_frac": as_TL(drop)}


def balance_summary(runs: dict[str, str | Path], last_frac: float = 0.1) -> pd.DataFrame:
    """One row per run and layer: max / mean load and dropped fraction at the end (mean over the last
    ``last_frac`` of the logged steps), their peak over training, and the least-used expert's share of the mean."""
    rows = []
    for name, d in runs.items():
        s = expert_load(d)
        T = len(s["steps"])
        tail = slice(max(0, T - max(1, int(round(last_frac * T)))), T)
        E = s["load"].shape[2]
        for layer in range(s["load"].shape[1]):
            load = s["load"][:, layer, :]
            rows.append({
                "run": name, "layer": layer, "n_experts": E, "logged_steps": T, "last_step": int(s["steps"][-1]),
                "max_load_ratio_end": float(s["max_load_ratio"][tail, layer].mean()),
                "max_load_ratio_peak": float(s["max_load_ratio"][:, layer].max()),
                "dropped_frac_end": float(s["dropped_frac"][tail, layer].mean()),
                "dropped_frac_mean": float(s["dropped_frac"][:, layer].mean()),
                "min_load_ratio_end": float((load[tail].min(axis=1) * E).mean()),
            })
    return pd.DataFrame(rows)
