"""``scaling moe-report STUDY_DIR``: the dense-vs-MoE answer from a sweep's ``runs.csv`` (and, optionally, a balance
sweep's run directories), written as report.md, JSON fits and plots.

What it computes (every number from the runs; nothing assumed):

1. Each variant's IsoFLOP minimum per budget and its gap to dense.
2. The dense Chinchilla law (dense runs, bootstrap), each MoE run's effective parameter count under it, and the
   multiplier N_eff / N_active per variant and per variant x budget (``analysis.moe``).
3. The compute multiplier: the compute a compute-optimal dense model needs (dense frontier law) to reach each
   variant's minimum, over the budget.
4. ``moe-clark`` on the runs at one shared token count (dense + the MoE variants that differ only in expert count,
   ``expert_family``), bilinear and saturating; ``moe-krajewski`` on the runs sharing one expansion rate with >= 3 granularities.
5. A held-out check: everything above fitted on the runs with C <= the second-largest budget, the largest
   budget's MoE losses predicted, the errors reported.
6. With ``balance_dir``: the expert balance of every run there (max / mean load, dropped fraction) and per-layer
   load heatmaps from their metrics.jsonl.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import moe, plots
from analysis.errors import FitError
from analysis.fmt import with_interval
from analysis.isoflop import budget_minima
from analysis.jsonutil import json_safe
from analysis.laws import ChinchillaLaw, FrontierLaw, make_law
from analysis.runs import load_runs
from analysis.uncertainty import bootstrap

REQUIRED = ("variant", "n_experts", "budget", "N_active")


def _md(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, (float, np.floating)):
                cells.append("-" if not np.isfinite(v) else format(v, floatfmt))
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _describe(g: pd.DataFrame) -> str:
    r = g.iloc[0]
    if not (pd.notna(r.get("n_experts")) and r["n_experts"] >= 2):
        return "dense"
    E, k, G = int(r["n_experts"]), int(r["top_k"]), int(r.get("granularity") or 1)
    return f"{E} experts of d_ff/{G}, top-{k} (expansion {E / G:g})"


def variant_minima(runs: pd.DataFrame) -> pd.DataFrame:
    rows, notes = [], []
    for v, g in runs[runs["budget"].notna()].groupby("variant", sort=False):
        m, n = budget_minima(g)
        notes += [f"{v}: {x}" for x in n]
        if len(m):
            m = m.drop(columns=["curve_x", "curve_y"], errors="ignore")
            m.insert(0, "variant", v)
            rows.append(m)
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    out.attrs["notes"] = notes
    return out


def expert_family(runs: pd.DataFrame) -> tuple[float | None, float | None]:
    """(top_k, granularity) of the MoE variants that differ only in expert count: the pair with the most distinct
    n_experts values (the family the expert-count plot and the moe-clark fit use, beside the dense runs)."""
    m = runs[runs["n_experts"] >= 2]
    if m.empty:
        return None, None
    counts = m.groupby(["top_k", "granularity"])["n_experts"].nunique()
    return counts.idxmax()


def _minima_section(runs: pd.DataFrame, desc: dict, out: Path) -> tuple[list[str], pd.DataFrame]:
    """1. Each variant's IsoFLOP minimum per budget and its gap to dense."""
    md: list[str] = []
    mins = variant_minima(runs)
    md += ["## Variants and IsoFLOP minima", ""]
    if len(mins):
        dense_min = mins[mins["variant"] == moe.DENSE].set_index("budget")["loss_opt"]
        mins["vs_dense_%"] = [100 * (r.loss_opt / dense_min.get(r.budget, np.nan) - 1) for r in mins.itertuples()]
        show = mins[["variant", "budget", "N_opt", "loss_opt", "vs_dense_%", "bracketed"]].copy()
        show.insert(1, "model", show["variant"].map(desc))
        tot = (runs["N_total"] / runs["N"]).groupby(runs["variant"]).median()
        show.insert(2, "N_total/N_active", show["variant"].map(tot))
        md += [_md(show), ""]
        md += [f"Left out or noted: {'; '.join(mins.attrs['notes'])}", ""] if mins.attrs.get("notes") else []
        mins.to_csv(out / "minima.csv", index=False)
        plots.save(plots.loss_by_variant(runs, mins), out / "loss_by_variant.png")
    return md, mins


def _effective_params_section(runs: pd.DataFrame, desc: dict, out: Path, summary: dict, n_bootstrap: int, seed: int) -> tuple[list[str], pd.DataFrame, tuple]:
    """2. The dense Chinchilla law, each MoE run's effective parameters and the multiplier per variant (and budget)."""
    md: list[str] = []
    dense, moe_runs = moe.split_dense(runs)
    dlaw = bootstrap(ChinchillaLaw().fit(dense), dense, n=n_bootstrap, seed=seed)
    dlaw.save(out / "fit_dense_chinchilla.json")
    eff = moe.effective_params(dlaw, moe_runs)
    by_v = moe.multiplier_table(eff, ("variant",))
    by_vb = moe.multiplier_table(eff[eff["budget"].notna()], ("variant", "budget"))
    by_v.insert(1, "model", by_v["variant"].map(desc))
    summary["dense_law"] = dlaw.params
    summary["multiplier"] = json_safe(by_v.to_dict(orient="records"))
    eff.drop(columns=[c for c in eff.columns if c.startswith("curve")], errors="ignore").to_csv(out / "effective_params.csv", index=False)
    p = dlaw.params
    md += ["## Effective parameters", "",
           f"Dense law on {len(dense)} dense runs: L = {p['E']:.3f} + {p['A']:.4g}/N^{p['alpha']:.3f} + {p['B']:.4g}/D^{p['beta']:.3f} "
           f"({n_bootstrap} bootstrap resamples). For each MoE run, N_eff is the dense size with the same loss at the same D; "
           "the multiplier N_eff / N_active is the median over the variant's runs (95% interval: the same median under the dense law's bootstrap).", "",
           _md(by_v), "", "Per budget:", "", _md(by_vb), ""]
    k_fam, g_fam = expert_family(runs)
    fam = by_v[(by_v["top_k"] == k_fam) & (by_v["granularity"] == g_fam)] if k_fam is not None else by_v
    if len(fam) >= 2:
        plots.save(plots.moe_multiplier(fam, x="n_experts"), out / "multiplier_vs_experts.png")
    plots.save(plots.moe_multiplier(by_vb, x="budget"), out / "multiplier_vs_compute.png")
    return md, dense, (k_fam, g_fam)


def _compute_multiplier_section(dense: pd.DataFrame, mins: pd.DataFrame, summary: dict, n_bootstrap: int, seed: int) -> list[str]:
    """3. The compute a compute-optimal dense model needs to reach each variant's minimum, over the budget."""
    md: list[str] = []
    dense_iso = dense[dense["budget"].notna()]
    try:
        front = bootstrap(FrontierLaw().fit(dense_iso), dense_iso, n=n_bootstrap, seed=seed)
        cm = moe.compute_multiplier(front, mins[mins["variant"] != moe.DENSE])
        cols = ["variant", "budget", "loss_opt", "C_eff", "compute_multiplier"] + [c for c in ("lo", "hi") if c in cm]
        md += ["## Compute multiplier", "",
               f"Dense frontier L_opt(C) = {front.params['E']:.3f} + {front.params['A']:.4g} C^-{front.params['gamma']:.3f} on the dense "
               "IsoFLOP minima; C_eff is the compute a compute-optimal dense model needs to reach the variant's minimum.", "",
               _md(cm[cols]), ""]
        summary["compute_multiplier"] = json_safe(cm[cols].to_dict(orient="records"))
    except FitError as e:
        md += ["## Compute multiplier", "", f"Not computed: {e}", ""]
    return md


def _moe_laws_section(runs: pd.DataFrame, family: tuple, out: Path, summary: dict, n_bootstrap: int, seed: int) -> list[str]:
    """4. The published MoE laws: moe-clark at one token count, moe-krajewski at one expansion rate."""
    k_fam, g_fam = family
    md = ["## MoE laws", ""]
    fixed = runs[runs["budget"].isna()]
    clark_rows = fixed[(fixed["n_experts"].isna()) | ((fixed["granularity"] == g_fam) & (fixed["top_k"] == k_fam))]
    for name in ("moe-clark-bilinear", "moe-clark"):
        try:
            if clark_rows["D"].nunique() > 1:
                raise FitError("the runs at one token count have several D values")
            law = bootstrap(make_law(name).fit(clark_rows), clark_rows, n=n_bootstrap, seed=seed)
            law.save(out / f"fit_{name}.json")
            iv = law.intervals()
            md += [f"**{name}** on {len(clark_rows)} runs at D = {clark_rows['D'].iloc[0]:.3g} tokens (E = "
                   f"{', '.join(str(int(e)) for e in sorted(clark_rows['n_experts'].fillna(1).unique()))}): "
                   + ", ".join(f"{k} = {with_interval(v, iv[k]['lo'], iv[k]['hi'], '.4g', '.3g')}" for k, v in law.params.items())
                   + (f". Notes: {'; '.join(law.notes)}" if law.notes else ""), ""]
            summary[name] = {"params": law.params, "intervals": iv, "notes": law.notes}
        except FitError as e:
            md += [f"**{name}**: not fitted: {e}", ""]
    rates = runs["expansion"].dropna().value_counts()
    krows = None
    for rate in rates.index:
        sub = runs[runs["expansion"] == rate]
        if sub["granularity"].nunique() >= 3:
            krows = sub
            break
    if krows is not None:
        try:
            law = bootstrap(make_law("moe-krajewski").fit(krows), krows, n=n_bootstrap, seed=seed)
            law.save(out / "fit_moe-krajewski.json")
            iv = law.intervals()
            md += [f"**moe-krajewski** on {len(krows)} runs at expansion rate {krows['expansion'].iloc[0]:g} (G = "
                   f"{', '.join(str(int(g)) for g in sorted(krows['granularity'].unique()))}): "
                   + ", ".join(f"{k} = {with_interval(v, iv[k]['lo'], iv[k]['hi'], '.4g', '.3g')}" for k, v in law.params.items())
                   + (f". Notes: {'; '.join(law.notes)}" if law.notes else ""), ""]
            summary["moe-krajewski"] = {"params": law.params, "intervals": iv, "notes": law.notes}
        except FitError as e:
            md += [f"**moe-krajewski**: not fitted: {e}", ""]
    else:
        md += ["**moe-krajewski**: not fitted: no expansion rate has runs at 3 or more granularities", ""]
    return md


def _heldout_section(runs: pd.DataFrame, out: Path, summary: dict, n_bootstrap: int, seed: int) -> list[str]:
    """5. Everything fitted below the second-largest budget, the largest budget's MoE losses predicted."""
    md: list[str] = []
    budgets = sorted(runs["budget"].dropna().unique())
    if len(budgets) >= 2:
        cut = budgets[-2] * 1.01
        try:
            ho = moe.heldout_check(runs, cut, n_bootstrap=n_bootstrap, seed=seed)
            ho.to_csv(out / "heldout.csv", index=False)
            agg = ho.groupby("variant").agg(n=("error", "size"), mean_abs_error_pct=("error", lambda e: 100 * np.mean(np.abs(e))),
                                            max_abs_error_pct=("error", lambda e: 100 * np.max(np.abs(e))),
                                            bias_pct=("error", lambda e: 100 * np.mean(e))).reset_index()
            if {"lo", "hi"} <= set(ho.columns):
                inside = ((ho["loss"] >= ho["lo"]) & (ho["loss"] <= ho["hi"])).groupby(ho["variant"]).mean()
                agg["inside_95%"] = agg["variant"].map(inside)
            md += ["## Held-out check", "",
                   f"Fitted on the runs with C <= {cut:.3g} (the dense law on the dense runs, each variant's multiplier on its MoE "
                   f"runs), then each MoE run above it predicted as L_dense(multiplier x N_active, D): {len(ho)} runs.", "",
                   _md(agg), "", f"Over all held-out MoE runs: mean |error| {100 * ho['error'].abs().mean():.2f}%, "
                   f"max {100 * ho['error'].abs().max():.2f}%.", ""]
            summary["heldout"] = {"cut": cut, "mean_abs_error": float(ho["error"].abs().mean()), "max_abs_error": float(ho["error"].abs().max()),
                                  "by_variant": json_safe(agg.to_dict(orient="records"))}
        except FitError as e:
            md += ["## Held-out check", "", f"Not run: {e}", ""]
    return md


def _balance_section(balance_dir: str | Path, out: Path, summary: dict) -> list[str]:
    """6. The expert balance of every run of a balance sweep, with per-layer load heatmaps."""
    md: list[str] = []
    bdir = Path(balance_dir)
    bruns = load_runs(bdir / "runs.csv", status=None) if (bdir / "runs.csv").exists() else None
    dirs = {}
    if bruns is not None and "run_id" in bruns.columns:
        for r in bruns.itertuples():
            d = bdir / "runs" / str(r.run_id)
            if (d / "metrics.jsonl").exists():
                dirs[str(getattr(r, "variant", r.run_id))] = d
    if dirs:
        bal = moe.balance_summary(dirs)
        stats = {k: moe.expert_load(d) for k, d in dirs.items()}
        for k, s in stats.items():
            plots.save(plots.expert_load_heatmap(s, f"expert load: {k}"), out / f"load_heatmap_{k}.png")
        plots.save(plots.max_load_over_training(stats), out / "max_load_over_training.png")
        if bruns is not None:
            lmap = bruns.set_index(bruns["variant"].astype(str))["loss"].to_dict() if "variant" in bruns else {}
            bal["eval_loss"] = bal["run"].map(lmap)
        md += ["## Expert balance", "", f"Runs in `{bdir}` ({', '.join(dirs)}); end = mean over the last 10% of logged steps.", "",
               _md(bal), ""]
        summary["balance"] = json_safe(bal.to_dict(orient="records"))
    return md


def write_report(study_dir: str | Path, balance_dir: str | Path | None = None, out: str | Path | None = None,
                 n_bootstrap: int = 200, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    study_dir = Path(study_dir)
    table = study_dir / "runs.csv" if study_dir.is_dir() else study_dir
    out = Path(out) if out else (table.parent / "moe_report")
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(table)
    missing = [c for c in REQUIRED if c not in runs.columns]
    if missing:
        raise FitError(f"{table} lacks column(s) {', '.join(missing)}: write it with a current `scaling sweep collect`")
    runs["N_total"] = runs["N"]
    runs["N"] = runs["N_active"].fillna(runs["N"])
    runs["expansion"] = (runs["n_experts"] / runs["granularity"].fillna(1)).where(runs["n_experts"] >= 2)
    summary: dict = {"study": str(table), "n_runs": int(len(runs)), "variants": {}}
    md = ["# Dense vs mixture-of-experts", "", f"Runs: `{table}` ({len(runs)} runs; trunks left out). N is the active parameter count.", ""]

    # the six sections (see the module docstring)
    desc = {v: _describe(g) for v, g in runs.groupby("variant", sort=False)}
    part, mins = _minima_section(runs, desc, out)
    md += part
    part, dense, family = _effective_params_section(runs, desc, out, summary, n_bootstrap, seed)
    md += part
    md += _compute_multiplier_section(dense, mins, summary, n_bootstrap, seed)
    md += _moe_laws_section(runs, family, out, summary, n_bootstrap, seed)
    md += _heldout_section(runs, out, summary, n_bootstrap, seed)
    if balance_dir is not None:
        md += _balance_section(balance_dir, out, summary)
    summary["out"] = str(out)
    summary["report_time_s"] = time.perf_counter() - t0
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=1))
    return summary
