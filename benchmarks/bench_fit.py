"""Fitting benchmark for the analysis package: speed and accuracy on the published Chinchilla refit, IsoFLOP
exponent recovery on synthetic sweeps, exponents on the shipped public sweeps, and every law's held-out errors.

    python benchmarks/bench_fit.py [--sweeps 1000] [--published-dir DIR] [--skip-cli]

Prints markdown tables (the "Fitting (analysis package)" section of benchmarks/RESULTS.md). ``--published-dir``
points at a folder with the full published files (e.g. all 15 configurations of Porian et al. 2024) to compare
exponents on tables the package does not ship.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis import ChinchillaLaw, bootstrap, chinchilla_runs, compare_laws, example_runs, isoflop_analysis, load_runs  # noqa: E402
from analysis.errors import ISOFLOP_METHODS  # noqa: E402
from analysis.runs import DATA_DIR  # noqa: E402
from analysis.synthetic import isoflop_sweep  # noqa: E402

PUBLISHED_OBJECTIVE = 0.0010182740346
PUBLISHED_CI = {"E": (1.769, 1.871), "alpha": (0.317, 0.373), "beta": (0.331, 0.415)}


def machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPU cores, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)"


def cli(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "scaling", *args], capture_output=True, text=True, cwd=ROOT)
    return time.perf_counter() - t, p


def bench_chinchilla(skip_cli: bool) -> None:
    print("## Chinchilla refit (Besiroglu et al. 2024 data, 240 runs)\n")
    print(f"machine: {machine()}\n")
    df = chinchilla_runs()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        law = ChinchillaLaw().fit(df)
        times.append(time.perf_counter() - t)
    rel = (law.objective - PUBLISHED_OBJECTIVE) / PUBLISHED_OBJECTIVE
    print("| what | time | result |\n|---|---|---|")
    print(f"| `ChinchillaLaw().fit` (4500 starts), in process, best of 3 | {min(times):.2f} s | objective {law.objective:.13g} ({rel:+.2e} relative to the published {PUBLISHED_OBJECTIVE}); {law.search['starts_within_1e-4_of_optimum']} starts reach it |")
    t = time.perf_counter()
    b = ChinchillaLaw.from_dict(law.to_dict())
    bootstrap(b, df, n=4000, seed=0)
    tb = time.perf_counter() - t
    iv = b.intervals()
    ci = "; ".join(f"{k} [{iv[k]['lo']:.4f}, {iv[k]['hi']:.4f}] (published [{lo}, {hi}])" for k, (lo, hi) in PUBLISHED_CI.items())
    print(f"| `bootstrap(law, runs, n=4000)`, in process | {tb:.2f} s | {ci} |")
    if not skip_cli:
        data = str(DATA_DIR / "epoch_chinchilla_tidy.csv")
        q = ("--query", "not excluded_in_epoch_fit")  # the 240 runs of the published fit
        tf, p = cli("fit", "chinchilla", data, *q, "--all-starts", "--json")
        o = json.loads(p.stdout)
        rel = (o["objective"] - PUBLISHED_OBJECTIVE) / PUBLISHED_OBJECTIVE
        print(f"| `scaling fit chinchilla epoch_chinchilla_tidy.csv --query 'not excluded_in_epoch_fit' --all-starts --json` (wall, incl. interpreter start-up) | {tf:.2f} s | {o['n_points']} runs, objective {o['objective']:.13g} ({rel:+.2e} relative) |")
        tb2, p = cli("fit", "chinchilla", data, *q, "--bootstrap", "4000", "--json")
        o = json.loads(p.stdout)
        ivc = o["intervals"]
        got = "; ".join(f"{k} [{ivc[k]['lo']:.4f}, {ivc[k]['hi']:.4f}]" for k in PUBLISHED_CI)
        print(f"| same with `--bootstrap 4000` (wall, incl. start-up) | {tb2:.2f} s | {got} |")
    print()


def bench_synthetic(n: int) -> None:
    print(f"## IsoFLOP exponent recovery: {n} synthetic sweeps (analysis.synthetic.isoflop_sweep, seed 0)\n")
    print("| method | within 0.02 | median | 90% | 99% | max | beyond 0.05 | bias | time per sweep |\n|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    sweeps = [isoflop_sweep(rng) for _ in range(n)]
    for m in ISOFLOP_METHODS:
        t = time.perf_counter()
        e = np.array([isoflop_analysis(df, n_bootstrap=0, method=m).a - tr["a"] for df, tr in sweeps])
        dt = (time.perf_counter() - t) / n
        a = np.abs(e)
        q = np.quantile(a, [0.5, 0.9, 0.99])
        print(f"| {m} | {100 * np.mean(a <= 0.02):.1f}% | {q[0]:.4f} | {q[1]:.4f} | {q[2]:.4f} | {a.max():.3f} | {int(np.sum(a > 0.05))} | {e.mean():+.4f} | {1000 * dt:.1f} ms |")
        if n >= 100:
            blocks = (a[: n // 100 * 100].reshape(-1, 100) <= 0.02).sum(axis=1)
            print(f"|  (per 100 sweeps within 0.02: {', '.join(map(str, blocks))}) | | | | | | | | |")
    print()


def _porian(published_dir: Path | None) -> list[tuple[str, pd.DataFrame, float, tuple]]:
    out = []
    if published_dir is not None and (published_dir / "porian2024_isoflop_points.csv").exists():
        p = pd.read_csv(published_dir / "porian2024_isoflop_points.csv")
        fr = pd.read_csv(published_dir / "porian2024_fit_results.csv")
        for (ds, lab), g in p.groupby(["dataset", "label"]):
            f = fr[(fr["dataset"] == ds) & (fr["label"] == lab)]
            pub = float(f[f["fit"] == "basic"]["n_exponent"].iloc[0])
            ci = f[f["fit"] == "bootstrap_weighted_CI95"][["n_exponent_lo", "n_exponent_hi"]].iloc[0].tolist()
            df = load_runs(pd.DataFrame({"N": g["n"], "D": g["t"], "C": g["flops"], "budget": g["flops"], "loss": g["loss"]}))
            out.append((f"Porian {ds}: {lab}", df, pub, tuple(ci)))
    else:
        out.append(("Porian rw: Reproducing Kaplan et al.", example_runs("porian_kaplan"), 0.8338, (0.8235, 0.8460)))
        out.append(("Porian rw: Optimizer tuning (no decay)", example_runs("porian_tuned"), 0.4970, (0.4907, 0.5045)))
    return out


def bench_exponents(published_dir: Path | None) -> None:
    print("## IsoFLOP exponents on public sweeps (a: N_opt ∝ C^a, b: D_opt ∝ C^b; 1000 bootstrap resamples)\n")
    print("| sweep | published | local a [95%] | local b | parabola a | akima a | local - published |\n|---|---|---|---|---|---|---|")
    rows = [("Llama 3 (b published 0.53)", example_runs("llama3_isoflop"), None, None, 0.53)]
    held = load_runs(DATA_DIR / "marin2026_validation_optimal.csv")
    for name in ("marin_comma", "marin_dclm", "marin_nemotron"):
        ds = name.split("_")[1]
        v = held[held["dataset"] == ds]
        # Marin's own choice: the sizes of its "validation-optimal" runs (its ladder's N_opt, snapped to its size grid)
        implied = (float(np.polyfit(np.log10(v["C"]), np.log10(v["N"]), 1)[0]), (np.nan, np.nan)) if len(v) >= 2 else (None, None)
        rows.append((f"Marin {ds} (published: slope of the sizes Marin trained as compute-optimal)", example_runs(name), implied[0], implied[1], None))
    for label, df, pub, ci in _porian(published_dir):
        rows.append((label, df, pub, ci, None))
    errs = {m: [] for m in ISOFLOP_METHODS}
    for label, df, pub, ci, pub_b in rows:
        res = {m: isoflop_analysis(df, n_bootstrap=1000 if m == "local" else 0, method=m) for m in ISOFLOP_METHODS}
        loc = res["local"]
        iv = loc.intervals()["a"]
        if pub is not None and np.isfinite(ci[0]):
            published = f"a {pub:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
        else:
            published = f"a {pub:.3f}" if pub is not None else (f"b {pub_b}" if pub_b else "-")
        ref = pub if pub is not None else None
        diff = f"{loc.a - ref:+.3f}" if ref is not None else (f"b {loc.b - pub_b:+.3f}" if pub_b else "-")
        if ref is not None and label.startswith("Porian"):
            for m in ISOFLOP_METHODS:
                errs[m].append(abs(res[m].a - ref))
        print(f"| {label} | {published} | {loc.a:.3f} [{iv['lo']:.3f}, {iv['hi']:.3f}] | {loc.b:.3f} | {res['parabola'].a:.3f} | {res['akima'].a:.3f} | {diff} |")
    if errs["local"]:
        print("\nmean / max |a - published| over the Porian configurations: " + "; ".join(f"{m} {np.mean(v):.3f} / {np.max(v):.3f}" for m, v in errs.items()))
    print()


def bench_validate() -> None:
    print("## Held-out errors, `scaling validate RUNS --law all` (default cut-off, 200 bootstrap resamples)\n")
    print("| table | cut-off C | law | fitted / held out | mean abs rel err | max abs rel err | bias | 95% coverage |\n|---|---|---|---|---|---|---|---|")
    tables = [p.name for p in sorted(DATA_DIR.glob("*.csv")) if p.name != "marin2026_validation_optimal.csv"]
    for name in tables:
        df = load_runs(DATA_DIR / name)
        t = time.perf_counter()
        res = compare_laws(df)
        dt = time.perf_counter() - t
        for law, r in res.items():
            if "skipped" in r:
                print(f"| {name} | | {law} | skipped: {r['skipped'][:90]} | | | | |")
                continue
            s = r["summary"]
            print(
                f"| {name} | {s['cutoff'].get('flops', float('nan')):.3g} | {law} | {s['n_fit']} / {s['n_heldout']} | {100 * s['mean_abs_rel_error']:.2f}% | "
                f"{100 * s['max_abs_rel_error']:.2f}% | {100 * s['bias']:+.2f}% | {100 * s['coverage']:.0f}% |"
            )
        print(f"|  ({name}: {dt:.1f} s for the four laws) | | | | | | | |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweeps", type=int, default=1000, help="synthetic IsoFLOP sweeps per method")
    ap.add_argument("--published-dir", type=Path, default=None, help="folder with the full published files")
    ap.add_argument("--skip-cli", action="store_true", help="skip the command-line timings")
    ap.add_argument("--only", choices=["chinchilla", "synthetic", "exponents", "validate"], default=None)
    args = ap.parse_args()
    if args.only in (None, "chinchilla"):
        bench_chinchilla(args.skip_cli)
    if args.only in (None, "synthetic"):
        bench_synthetic(args.sweeps)
    if args.only in (None, "exponents"):
        bench_exponents(args.published_dir)
    if args.only in (None, "validate"):
        bench_validate()


if __name__ == "__main__":
    main()
