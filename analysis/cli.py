"""``scaling fit | predict | validate | plot``: the analysis package behind the ``scaling`` console script.

With ``--json`` a command prints exactly one JSON object on stdout and nothing else."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np


def _col_args(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--col expects CANONICAL=COLUMN (e.g. N=\"Model Size\"), got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _clean(o):
    """JSON-safe: NaN/inf -> null, numpy -> python."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, np.ndarray):
        return _clean(o.tolist())
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if math.isfinite(f) else None
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def _emit(obj: dict, as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(_clean(obj)) + "\n")
    else:
        print(text)


def _load(args):
    from analysis.runs import load_runs

    return load_runs(args.runs, _col_args(args.col), loss=args.loss, drop_invalid=args.drop_invalid)


def _fmt_params(law) -> str:
    iv = law.intervals()
    lines = []
    for k, v in law.params.items():
        s = f"  {k:8s} = {v:.6g}"
        if k in iv:
            s += f"   (se {iv[k]['se']:.3g}; 95% [{iv[k]['lo']:.4g}, {iv[k]['hi']:.4g}])"
        lines.append(s)
    return "\n".join(lines)


def cmd_fit(args) -> int:
    from analysis.runs import RunsError

    try:
        df = _load(args)
    except RunsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.law == "isoflop":
        from analysis.isoflop import isoflop_analysis

        res = isoflop_analysis(df, gap_dex=args.gap_dex, n_bootstrap=args.bootstrap or 1000, seed=args.seed)
        out = res.to_dict()
        out["notes"] = list(df.attrs.get("notes", [])) + out["notes"]
        if args.save:
            Path(args.save).write_text(json.dumps(_clean(out), indent=1))
        iv = res.intervals()
        text = (
            f"IsoFLOP ({len(res.minima)} budgets): N_opt ∝ C^{res.a:.4f} [{iv['a']['lo']:.3f}, {iv['a']['hi']:.3f}], "
            f"D_opt ∝ C^{res.b:.4f} [{iv['b']['lo']:.3f}, {iv['b']['hi']:.3f}]\n"
            + res.minima.drop(columns=["coef"]).to_string(index=False)
        )
        _emit(out, args.json, text)
        return 0
    from analysis.uncertainty import bootstrap
    from analysis.validate import make_law

    kw = {"x": args.x, "offset": not args.no_offset} if args.law == "power" else {}
    if args.all_starts:
        kw["top_starts"] = None
    law = make_law(args.law, delta=args.delta, **kw).fit(df)
    if args.bootstrap:
        bootstrap(law, df, n=args.bootstrap, seed=args.seed, n_jobs=args.jobs, progress=not args.json)
    out = law.to_dict()
    if args.save:
        law.save(args.save)
    out.pop("bootstrap_samples")
    extra = ""
    if args.law == "chinchilla":
        Cs = np.logspace(np.log10(df["C"].max()), np.log10(df["C"].max()) + 4, 5)
        opt = law.compute_optimal_interval(Cs)
        out["compute_optimal"] = opt.to_dict(orient="records")
        extra = "\ncompute-optimal allocation (C = 6ND):\n" + opt.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    text = (
        f"{law.name} law on {law.n_points} runs (objective {law.objective:.6g}, fit {law.fit_time_s:.2f}s):\n"
        + _fmt_params(law)
        + ("\nnotes: " + "; ".join(law.notes) if law.notes else "")
        + extra
    )
    _emit(out, args.json, text)
    return 0


def cmd_predict(args) -> int:
    from analysis.laws import Law

    law = Law.load(args.fit)
    cols = {k: v for k, v in (("N", args.N), ("D", args.D), ("C", args.C)) if v is not None}
    try:
        pred = law.predict_interval(include_noise=args.single_run, **cols)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = pred.assign(**{k: v for k, v in cols.items()}).to_dict(orient="records")
    text = "\n".join(
        ", ".join(f"{k}={r[k]:.4g}" for k in cols)
        + f": loss {r['loss']:.4f}"
        + (f"  (95% [{r['lo']:.4f}, {r['hi']:.4f}])" if "lo" in r else "")
        for r in rows
    )
    _emit({"law": law.name, "predictions": rows}, args.json, text)
    return 0


def cmd_validate(args) -> int:
    from analysis.runs import RunsError
    from analysis.validate import validate_extrapolation

    try:
        df = _load(args)
        res = validate_extrapolation(df, args.law, cutoff_flops=args.cutoff_flops, n_bootstrap=args.bootstrap, seed=args.seed)
    except (RunsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = res["summary"]
    out = {"summary": s, "predictions": res["predictions"].to_dict(orient="records")}
    text = (
        f"{s['law']} fitted on {s['n_fit']} runs with C <= {s['cutoff_flops']:.3g}; {s['n_heldout']} held out:\n"
        f"  MAE {s['mae']:.4f}, RMSE {s['rmse']:.4f}, mean rel. error {100 * s['mean_rel_error']:+.2f}%, "
        f"max |rel. error| {100 * s['max_abs_rel_error']:.2f}%"
        + (f", interval coverage {100 * s['coverage']:.0f}%" if "coverage" in s else "")
    )
    _emit(out, args.json, text)
    return 0


def cmd_plot(args) -> int:
    from analysis import plots
    from analysis.isoflop import isoflop_analysis
    from analysis.laws import ChinchillaLaw, Law

    df = _load(args)
    law = Law.load(args.fit) if args.fit else None
    if args.kind == "compute":
        fig = plots.loss_vs_compute(df, law or ChinchillaLaw().fit(df), target_C=args.target_C)
    elif args.kind == "isoflop":
        fig = plots.isoflop_curves(df, isoflop_analysis(df, n_bootstrap=0))
    elif args.kind == "allocation":
        fig = plots.optimal_allocation(isoflop_analysis(df, n_bootstrap=0), law)
    elif args.kind == "contours":
        fig = plots.law_contours(law or ChinchillaLaw().fit(df), df)
    else:  # heldout
        from analysis.validate import validate_extrapolation

        fig = plots.predicted_vs_actual(validate_extrapolation(df, "chinchilla", cutoff_flops=args.cutoff_flops)["predictions"])
    path = plots.save(fig, args.out)
    print(f"wrote {path}")
    return 0


def _runs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", help="runs table: CSV, parquet or JSON (a sweep's runs.csv, or published data)")
    p.add_argument("--col", action="append", metavar="CANON=COLUMN", help='map a column, e.g. --col N="Model Size" (N, D, C, loss)')
    p.add_argument("--loss", default=None, help="column to use as the loss (shortcut for --col loss=NAME)")
    p.add_argument("--drop-invalid", action="store_true", help="drop rows with missing/non-positive values instead of failing")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def add_analysis_parsers(sub) -> None:
    f = sub.add_parser("fit", help="fit a scaling law to a runs table", description="Fit a scaling law; --json prints one JSON object.")
    f.add_argument("law", choices=["chinchilla", "isoflop", "power", "kaplan"])
    _runs_args(f)
    f.add_argument("--x", choices=["N", "D", "C"], default="C", help="power law: the variable (default C)")
    f.add_argument("--no-offset", action="store_true", help="power law without the irreducible term E")
    f.add_argument("--bootstrap", type=int, default=0, metavar="N", help="bootstrap resamples for intervals (isoflop default 1000)")
    f.add_argument("--jobs", type=int, default=None, help="processes for the bootstrap (default: all cores)")
    f.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log residuals")
    f.add_argument("--all-starts", action="store_true", help="run L-BFGS-B from every grid start (slow reference)")
    f.add_argument("--gap-dex", type=float, default=0.1, help="isoflop: log10 C gap that separates budgets")
    f.add_argument("--save", metavar="FIT.json", help="save the fit (reload with `scaling predict`)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="predict loss from a saved fit")
    p.add_argument("fit", help="FIT.json written by `scaling fit ... --save`")
    p.add_argument("--N", type=float, nargs="+", help="parameters")
    p.add_argument("--D", type=float, nargs="+", help="tokens")
    p.add_argument("--C", type=float, nargs="+", help="FLOPs (power laws in C)")
    p.add_argument("--single-run", action="store_true", help="interval for one new run (adds the fit's run-to-run scatter)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    v = sub.add_parser("validate", help="fit below a compute cut-off, score predictions above it")
    _runs_args(v)
    v.add_argument("--law", choices=["chinchilla", "power", "kaplan"], default="chinchilla")
    v.add_argument("--cutoff-flops", type=float, required=True)
    v.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples (adds intervals and coverage)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_validate)

    pl = sub.add_parser("plot", help="write a plot (PNG/SVG by suffix)")
    pl.add_argument("kind", choices=["compute", "isoflop", "allocation", "contours", "heldout"])
    _runs_args(pl)
    pl.add_argument("--fit", help="a saved fit to draw (default: fit Chinchilla on the table)")
    pl.add_argument("--target-C", type=float, default=None, help="compute plot: extrapolate to this budget")
    pl.add_argument("--cutoff-flops", type=float, default=None, help="heldout plot: the cut-off")
    pl.add_argument("--out", required=True, help="output file (.png or .svg)")
    pl.set_defaults(func=cmd_plot)
