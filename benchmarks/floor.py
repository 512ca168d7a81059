"""Is the loss floor E determined? ``analysis.calibration.floor_verdict`` (the backtests' kappa and the refits' drift) on
synthetic IsoFLOP grids with a known floor, and on every public table at hand.

    python benchmarks/floor.py [--draws 20] [--bootstrap 200] [--shared ../shared/data]

Synthetic grids: 7 budgets x 7 sizes over 3 decades of compute, 1% log-normal run scatter, from
  exact: L = 1.8 + 400/N^0.34 + 2000/D^0.28 (the Chinchilla law's own form: E should be determined and its
         interval should cover 1.8), and
  slow:  the same plus 0.5 (D/1e9)^-0.1, a slow term the law does not have; its floor is still 1.8, but the
         fit absorbs part of the slow term into E and reports it too high with a confident interval.
For each draw and law (Chinchilla, surface): the fitted E, its bootstrap 95% interval, whether it covers the
true floor, and whether ``analysis.calibration.floor_verdict`` calls E determined (kappa 0, the bootstrap interval off 0
and within 10x, the refits' drift test passed). Public tables: the default cut-off's fit (the same
protocol as benchmarks/calibration.py), E, its interval and the verdict.
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

from analysis import bootstrap  # noqa: E402
from analysis.backtest import calibrate  # noqa: E402
from analysis.calibration import floor_verdict  # noqa: E402
from analysis.errors import AnalysisError, FitError  # noqa: E402
from analysis.laws.registry import make_law  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from calibration import shared_tables, shipped, synthetic  # noqa: E402  the grids and tables benchmarks/calibration.py uses

TRUE_E = 1.8


def floor_of(df: pd.DataFrame, law_name: str, n_bootstrap: int, seed: int = 0) -> dict:
    law = make_law(law_name).fit(df)
    bootstrap(law, df, n=n_bootstrap, seed=seed)
    calibrate(law, df)
    iv = law.intervals().get("E", {"lo": float("nan"), "hi": float("nan")})  # no resample fitted: no interval
    return {"E": law.params["E"], "lo": iv["lo"], "hi": iv["hi"], "determined": floor_verdict(law)["determined"],
            "kappa": law.calibration.kappa, "refits": law.calibration.n_backtests}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--no-tables", action="store_true")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    t0 = time.time()
    print("| source | law | draws | E determined | 95% interval covers the true floor: all draws | among 'determined' | median fitted E |")
    print("|---|---|---|---|---|---|---|")
    for label, slow in (("exact", 0.0), ("slow term", 0.5)):
        for law in ("chinchilla", "surface"):
            rows = []
            for s in range(args.draws):
                try:
                    rows.append(floor_of(synthetic(s, slow=slow), law, args.bootstrap, seed=s))
                except (AnalysisError, FitError) as e:
                    print(f"  draw {s} {law}: {e}", file=sys.stderr)
            r = pd.DataFrame(rows)
            cover = (r["lo"] <= TRUE_E) & (TRUE_E <= r["hi"])
            det = r["determined"].astype(bool)
            among = f"{int((cover & det).sum())}/{int(det.sum())}" if det.any() else "-"
            print(f"| {label} | {law} | {len(r)} | {int(det.sum())}/{len(r)} | {int(cover.sum())}/{len(r)} | {among} | {r['E'].median():.4f} |")
    if not args.no_tables:
        from analysis.validate import default_cutoff_flops

        print("\n| table | law | E [95% fit-only] | refits | kappa | determined |")
        print("|---|---|---|---|---|---|")
        tables = {**shipped(), **shared_tables(args.shared)}
        for name, df in tables.items():
            fit = df[df["C"] <= default_cutoff_flops(df)].reset_index(drop=True)
            for law in ("chinchilla",) + (("surface",) if "budget" in df.columns else ()):
                try:
                    f = floor_of(fit, law, args.bootstrap)
                except (AnalysisError, FitError, ValueError) as e:
                    print(f"| {name} | {law} | skipped: {str(e).splitlines()[0][:60]} | | | |")
                    continue
                print(f"| {name} | {law} | {f['E']:.4f} [{f['lo']:.4f}, {f['hi']:.4f}] | {f['refits']} | {f['kappa']:.4f} | "
                      f"{'yes' if f['determined'] else 'no'} |")
    print(f"\n({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
