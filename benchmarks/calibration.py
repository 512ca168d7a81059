"""Coverage of the extrapolation intervals on every public table at hand, and on synthetic data from known laws.

    python benchmarks/calibration.py [--shared ../shared/data] [--bootstrap 200] [--out table.md]

For each table: the runs above the table's default compute cut-off are held out (``analysis.default_cutoff_flops``),
the law is fitted (and bootstrapped) on the rest, and the held-out runs are predicted with a single-run interval:
the fit-only bootstrap interval (parameters + run scatter) and the calibrated one (plus the extrapolation error
that backtests *inside the fitted runs* measured, ``analysis.calibration``). Reported per table and law: coverage
of the nominal 95% and 68% intervals, median half-width, mean |relative error|. Laws: the default (Chinchilla) and,
on IsoFLOP tables, the surface law.

Tables: the ten shipped in ``analysis/data`` and, from the shared folder, every other configuration of Porian et
al. 2024 (13 more IsoFLOP grids) and the c4 / RefinedWeb runs of Gadre et al. 2024. Synthetic: a Chinchilla law
with known constants, IsoFLOP grids of 7 budgets x 7 sizes, 1% log-normal run scatter, with and without a
model-form error (a loss floor drifting with compute that the law does not have), 20 draws each.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis import load_runs  # noqa: E402
from analysis.errors import AnalysisError  # noqa: E402
from analysis.validate import validate_extrapolation  # noqa: E402


def shipped() -> dict[str, pd.DataFrame]:
    out = {}
    for f in sorted((ROOT / "analysis" / "data").glob("*.csv")):
        if f.name in ("marin2026_validation_optimal.csv",):
            continue  # one run per budget and dataset: a check of predictions, not a table to fit
        out[f.name] = load_runs(f)
    return out


def shared_tables(shared: Path) -> dict[str, pd.DataFrame]:
    out = {}
    p = shared / "porian2024_isoflop_points.csv"
    if p.exists():
        d = pd.read_csv(p)
        for (ds, label), g in d.groupby(["dataset", "label"]):
            name = f"porian2024 {ds} {label}"
            if (ds, label) in (("rw", "Reproducing Kaplan et al."), ("rw", "Optimizer tuning (no decay)")):
                continue  # shipped
            t = pd.DataFrame({"budget": g["flops"], "N": g["n"], "D": g["t"], "C": g["flops"], "loss": g["loss"]})
            out[name] = load_runs(t)
    g = shared / "gadre2024_overtraining_runs.csv"
    if g.exists():
        d = pd.read_csv(g)
        for ds in ("c4_original", "rw_original"):
            s = d[d["dataset_name"] == ds]
            out[f"gadre2024 {ds}"] = load_runs(pd.DataFrame({"N": s["N"], "D": s["D"], "C": s["flops_6ND"], "loss": s["loss_c4_val"]}))
    return out


def synthetic(seed: int, drift: float = 0.0, slow: float = 0.0) -> pd.DataFrame:
    """A Chinchilla law (E 1.8, A 400, B 2000, alpha .34, beta .28) on 7 budgets x 7 sizes, 1% scatter; ``drift``:
    the floor rises by this much per decade of compute, ``slow``: plus slow (D/1e9)^-0.1 (model-form errors the law
    cannot fit; the true floor stays 1.8 under ``slow``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in np.logspace(18, 21, 7):
        n_opt = 0.09 * C**0.5
        for N in n_opt * np.logspace(-0.6, 0.6, 7):
            D = C / (6 * N)
            L = (1.8 + drift * np.log10(C / 1e18)) + 400 / N**0.34 + 2000 / D**0.28 + slow * (D / 1e9) ** -0.1
            rows.append({"budget": C, "N": N, "D": D, "C": C, "loss": L * np.exp(0.01 * rng.standard_normal())})
    return load_runs(pd.DataFrame(rows))


def evaluate(name: str, df: pd.DataFrame, laws: list[str], n_bootstrap: int) -> list[dict]:
    out = []
    for law in laws:
        t0 = time.time()
        try:
            r = validate_extrapolation(df, law, n_bootstrap=n_bootstrap)
        except AnalysisError as e:
            out.append({"table": name, "law": law, "skipped": str(e).splitlines()[0][:90]})
            continue
        s, p = r["summary"], r["predictions"]
        row = {"table": name, "law": law, "n_fit": s["n_fit"], "n_heldout": s["n_heldout"], "mae": s["mean_abs_rel_error"],
               "bias": s["bias"], "cov95": s["coverage"], "cov68": s.get("coverage_68"), "cov95_fit": s.get("coverage_fit_only"),
               "half_width": s["median_half_width"], "kappa": s.get("kappa"), "kappa_J": s.get("kappa_backtests"),
               "from_backtests": s.get("width_from_backtests"), "interval": s["interval"], "seconds": time.time() - t0}
        fw = ((p["fit_hi"] - p["fit_lo"]) / 2 / p["predicted"]).median() if "fit_lo" in p else None
        row["half_width_fit"] = float(fw) if fw is not None else None
        out.append(row)
    return out


def pooled(rows: list[dict], key: str) -> float:
    """A coverage pooled over tables: each held-out run counted once."""
    rs = [r for r in rows if r.get(key) is not None]
    return float(np.average([r[key] for r in rs], weights=[r["n_heldout"] for r in rs]))


def kappa_text(k) -> str:
    return "-" if k is None else f"{k:.4f}"


def fmt(rows: list[dict]) -> str:
    lines = ["| table | law | fit / held out | mean abs err | bias | 95% cov (fit-only) | 68% cov | median half-width (fit-only) | kappa /dex | kappa_J /dex | width from backtests |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['table']} | {r['law']} | skipped: {r['skipped']} | | | | | | | | |")
            continue
        pct = lambda x: "-" if x is None or x != x else f"{100 * x:.0f}%"  # noqa: E731
        pct2 = lambda x: "-" if x is None or x != x else f"{100 * x:.2f}%"  # noqa: E731
        lines.append(f"| {r['table']} | {r['law']} | {r['n_fit']} / {r['n_heldout']} | {pct2(r['mae'])} | {100 * r['bias']:+.2f}% | "
                     f"{pct(r['cov95'])} ({pct(r['cov95_fit'])}) | {pct(r['cov68'])} | {pct2(r['half_width'])} ({pct2(r['half_width_fit'])}) | "
                     f"{kappa_text(r['kappa'])} | {kappa_text(r['kappa_J'])} | {pct(r['from_backtests'])} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--synthetic-draws", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    tables = {**shipped(), **shared_tables(Path(args.shared))}
    rows = []
    t0 = time.time()
    for name, df in tables.items():
        iso = "budget" in df.columns
        rows += evaluate(name, df, ["chinchilla"] + (["surface"] if iso else []), args.bootstrap)
        print(f"{name}: done ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
    text = fmt(rows)
    ok = [r for r in rows if "skipped" not in r]
    summary = []
    for law in ("chinchilla", "surface"):
        rs = [r for r in ok if r["law"] == law]
        if not rs:
            continue
        c95 = [r["cov95"] for r in rs]
        c68 = [r["cov68"] for r in rs if r["cov68"] is not None]
        ratio = [r["half_width"] / r["mae"] for r in rs if r["mae"] > 0]
        summary.append(f"{law}: {len(rs)} tables; 95% coverage min {100 * min(c95):.0f}%, median {100 * np.median(c95):.0f}% "
                       f"(fit-only min {100 * min(r['cov95_fit'] for r in rs if r['cov95_fit'] is not None):.0f}%); tables >= 90%: "
                       f"{sum(c >= 0.9 for c in c95)}/{len(c95)}; 68% coverage in [55%, 80%]: {sum(0.55 <= c <= 0.8 for c in c68)}/{len(c68)}; "
                       f"half-width / MAE median {np.median(ratio):.2f}, max {max(ratio):.2f}; pooled over the "
                       f"{sum(r['n_heldout'] for r in rs)} held-out runs: 95% {100 * pooled(rs, 'cov95'):.1f}%, 68% "
                       f"{100 * pooled(rs, 'cov68'):.1f}% (fit-only 95% {100 * pooled(rs, 'cov95_fit'):.1f}%)")
    syn = []
    for drift in (0.0, 0.01):
        for s in range(args.synthetic_draws):
            syn += [dict(r, table=f"synthetic drift {drift}") for r in evaluate(f"synthetic {s}", synthetic(s, drift), ["chinchilla"], args.bootstrap)]
    for drift in (0.0, 0.01):
        rs = [r for r in syn if r["table"] == f"synthetic drift {drift}" and "skipped" not in r]
        if rs:
            summary.append(f"synthetic Chinchilla law, floor drift {drift}/decade, {len(rs)} draws: pooled 95% coverage "
                           f"{100 * pooled(rs, 'cov95'):.0f}% (fit-only {100 * pooled(rs, 'cov95_fit'):.0f}%), "
                           f"68% {100 * pooled(rs, 'cov68'):.0f}%, "
                           f"median half-width {100 * np.median([r['half_width'] for r in rs]):.2f}%, mean abs err {100 * np.mean([r['mae'] for r in rs]):.2f}%")
    report = text + "\n\n" + "\n".join(f"- {s}" for s in summary) + f"\n\n({time.time() - t0:.0f} s)\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
