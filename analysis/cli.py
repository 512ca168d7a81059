"""``scaling fit | predict | validate | plot``: the analysis package behind the ``scaling`` console script.

With ``--json`` a command prints exactly one JSON object on stdout and nothing else. Bad input (a missing, empty,
binary or malformed file, an unknown law, a table a law cannot be fitted to, ...) is one line on stderr and exit
status 2. Law names come from the registry in ``analysis.laws``."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

from analysis.cli_wandb import add_wandb_args, log_fit_to_wandb, log_validation_to_wandb
from analysis.errors import AnalysisError
from analysis.fmt import interval
from analysis.jsonutil import json_safe

_clean = json_safe  # the name older callers import


def _col_args(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise AnalysisError(f'--col expects CANONICAL=COLUMN (e.g. N="Model Size"), got {item!r}')
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _emit(obj: dict, as_json: bool, text: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(json_safe(obj)) + "\n")
    else:
        print(text)


def _load(args):
    from analysis.runs import load_runs

    df = load_runs(args.runs, _col_args(args.col), loss=args.loss, drop_invalid=args.drop_invalid)
    if args.query:
        notes = list(df.attrs.get("notes", []))
        try:
            kept = df.query(args.query)
        except Exception as e:  # any parse or evaluation error of the user's expression
            raise AnalysisError(f"--query {args.query!r}: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if len(kept) == 0:
            raise AnalysisError(f"--query {args.query!r} keeps no runs")
        df = kept.reset_index(drop=True)
        df.attrs["notes"] = notes + [f"{len(kept)} runs kept by --query {args.query!r}"]
    return df


def _groups(df, by: str | None):
    """[(label, table)]: the whole table, or one per value of column ``by`` (notes carried over)."""
    if not by:
        return [(None, df)]
    if by not in df.columns:
        raise AnalysisError(f"--by {by}: no such column; columns are {', '.join(map(str, df.columns))}")
    out = []
    for value, g in df.groupby(df[by].astype(str), sort=True):
        g = g.reset_index(drop=True)
        g.attrs["notes"] = list(df.attrs.get("notes", []))
        out.append((value, g))
    return out


def _write(path: str | Path, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as e:
        raise AnalysisError(f"cannot write {str(path)!r}: {e.strerror or e}") from None


def _fmt_params(law) -> str:
    iv = law.intervals()
    lines = []
    for k, v in law.params.items():
        s = f"  {k:8s} = {v:.6g}"
        if k in iv:
            s += f"   (se {iv[k]['se']:.3g}; 95% {interval(iv[k]['lo'], iv[k]['hi'])})"
        lines.append(s)
    return "\n".join(lines)


def _fmt_notes(notes: list[str]) -> str:
    return ("\nnotes:\n" + "\n".join(f"  - {n}" for n in notes)) if notes else ""


def _fit_isoflop(df, args) -> tuple[dict, str]:
    from analysis.isoflop import isoflop_analysis

    n_boot = 1000 if args.bootstrap is None else args.bootstrap
    res = isoflop_analysis(df, gap_dex=args.gap_dex, n_bootstrap=n_boot, seed=args.seed, method=args.method or "local", keep_unbracketed=args.keep_unbracketed)
    args._isoflop_result = res  # for --wandb
    out = res.to_dict()
    out["notes"] = list(df.attrs.get("notes", [])) + out["notes"]
    iv = res.intervals()
    ci = lambda k: f" {interval(iv[k]['lo'], iv[k]['hi'], '.3f')}" if k in iv else ""  # noqa: E731
    cols = ["budget", "N_opt", "D_opt", "loss_opt", "n_runs", "n_sizes", "bracketed", "in_range", "weight"]
    text = (
        f"IsoFLOP ({res.method}, {len(res.minima)} budgets): N_opt ∝ C^{res.a:.4f}{ci('a')}, D_opt ∝ C^{res.b:.4f}{ci('b')}\n"
        + res.minima[[c for c in cols if c in res.minima]].to_string(index=False, float_format=lambda v: f"{v:.4g}")
        + _fmt_notes(out["notes"])
    )
    return out, text


def _option_kwargs(args) -> dict:
    """The constructor arguments of ``args.law`` from its declared options (``Law.options``); a flag another law
    declares as ``only`` is refused with this one."""
    from analysis.laws import LAW_ALIASES, LAWS, law_options

    cls = LAWS[LAW_ALIASES[args.law][0] if args.law in LAW_ALIASES else args.law]
    kw = {}
    for opt, owners in law_options():
        value = getattr(args, opt.dest, opt.default)
        if opt in cls.options:
            kw[opt.kwarg] = (not value) if opt.invert else value
        elif opt.only and value not in (None, False, opt.default):
            raise AnalysisError(f"{opt.flag} applies to the {' / '.join(owners)} law only")
    return kw


def _fit_law(df, args, progress: bool):
    from analysis.laws import make_law
    from analysis.uncertainty import bootstrap

    kw: dict = {"delta": args.delta}
    if args.top_starts is not None:  # else the law's own default (the surface law optimises its 256 best starts)
        kw["top_starts"] = args.top_starts
    kw.update(_option_kwargs(args))
    law = make_law(args.law, **kw).fit(df, progress=progress)
    if args.bootstrap:
        bootstrap(law, df, n=args.bootstrap, seed=args.seed, progress=progress)
    cal_text = ""
    if not getattr(args, "no_calibrate", False):
        from analysis.backtest import calibrate

        try:
            calibrate(law, df, progress=progress)
            c = law.calibration
            kJ = c.kappa_backtests
            cal_text = (f"\nextrapolation error (backtests inside the table, analysis.calibration): kappa = {c.kappa:.4f} per decade of "
                        f"compute beyond C = {c.c_max:.3g} (from {c.n_backtests} inner fits, {c.n_residuals} predictions up to "
                        f"{c.max_distance:.2f} decades out), run scatter sigma0 = {c.sigma0:.4f}"
                        + (f"; per backtest {kJ:.4f} per decade (root mean square of {len(c.backtest_slopes())} backtests' errors, "
                           "Student t)" if kJ is not None else "")
                        + "; `scaling predict` widens its intervals by the wider of the two")
        except AnalysisError as e:
            law.notes.append(f"not calibrated: {e}")
    out = law.to_dict()
    out.pop("bootstrap_samples")
    if out.get("calibration"):
        out["calibration"] = {k: v for k, v in out["calibration"].items() if k not in ("residuals", "refits")}
    fields, summary = law.fit_summary(df)
    out.update(fields)
    extra = cal_text + summary
    text = (
        f"{args.law} law ({law.form}) on {law.n_points} points: objective {law.objective:.10g}, "
        f"{law.search.get('optimised_starts', '?')} starts, fit {law.fit_time_s:.2f}s\n" + _fmt_params(law) + _fmt_notes(law.notes) + extra
    )
    return law, out, text


def cmd_fit(args) -> int:
    if args.bootstrap is not None and args.bootstrap < 0:
        raise AnalysisError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    df = _load(args)
    progress = not args.json and sys.stderr.isatty()
    results, texts = {}, []
    for label, g in _groups(df, args.by):
        if args.law == "isoflop":
            out, text = _fit_isoflop(g, args)
            if args.save:
                _write(_save_path(args.save, label), json.dumps(json_safe(out), indent=1))
        else:
            law, out, text = _fit_law(g, args, progress)
            if args.save:
                _write(_save_path(args.save, label), json.dumps(json_safe(law.to_dict()), indent=1))
        results[label] = out
        if args.wandb:
            log_fit_to_wandb(args, g, label, out, None if args.law == "isoflop" else law,
                             _save_path(args.save, label) if args.save else None)
        texts.append(text if label is None else f"== {args.by} = {label} ({len(g)} runs) ==\n{text}")
    obj = results[None] if args.by is None else {"by": args.by, "fits": results}
    _emit(obj, args.json, "\n\n".join(texts))
    return 0


def _save_path(path: str, label: str | None) -> Path:
    p = Path(path)
    return p if label is None else p.with_name(f"{p.stem}.{label}{p.suffix or '.json'}")


def _check_inputs(cols: dict) -> None:
    """Every value asked for is a finite number > 0 (E and G: >= 1), else one line naming it."""
    for k, vs in cols.items():
        for v in vs:
            if not np.isfinite(v) or v <= 0 or (k in ("E", "G") and v < 1):
                what = ">= 1" if k in ("E", "G") else "> 0"
                raise AnalysisError(f"--{k} {v!r}: every value must be a finite number {what}")


def cmd_predict(args) -> int:
    from analysis.laws import Law

    law = Law.load(args.fit)
    cols = {k: v for k, v in (("N", args.N), ("D", args.D), ("C", args.C), ("E", args.E), ("G", args.G)) if v is not None}
    _check_inputs(cols)
    lens = {len(v) for v in cols.values()}
    if len(lens) > 1 and not lens <= {1, max(lens)}:
        raise AnalysisError("--N, --D, --C, --E and --G must give the same number of values (or one)")
    extra = [k for k in cols if k not in law.inputs]
    if extra:
        raise AnalysisError(f"the {law.name} law predicts from {', '.join(law.inputs)}; --{extra[0]} is not one of them")
    calibrated = law.calibration is not None and not args.fit_only
    if calibrated:
        if "C" not in cols and not {"N", "D"} <= set(cols):
            raise AnalysisError("the calibrated interval needs the compute of the prediction: give --C (or --N and --D)")
        pred = law.predict_calibrated(include_noise=args.single_run, **cols)
    else:
        pred = law.predict_interval(include_noise=args.single_run, **cols)
    if not np.all(np.isfinite(pred["loss"].to_numpy(float))):
        raise AnalysisError(f"the {law.name} fit predicts a non-finite loss for these inputs (its parameters: {law.params})")
    n = len(pred)
    used = {k: np.broadcast_to(np.asarray(v, float), (n,)) for k, v in cols.items()}
    rows = pred.assign(**used).to_dict(orient="records")
    kind = "calibrated 95%" if calibrated else "95%, fit only" + ("" if law.calibration is not None else ": the fit has no calibration")
    text = "\n".join(
        ", ".join(f"{k}={r[k]:.4g}" for k in used)
        + f": loss {r['loss']:.4f}"
        + (f"  ({kind} {interval(r['lo'], r['hi'], '.4f')}" if "lo" in r else "")
        + (f", width from the per-{r['read']} read" if "read" in r else "")
        + (f"; fit only [{r['fit_lo']:.4f}, {r['fit_hi']:.4f}]; {r['d']:.2f} decades beyond the fitted compute)" if "fit_lo" in r
           else (f"; {r['d']:.2f} decades beyond the fitted compute)" if "d" in r else (")" if "lo" in r else "")))
        for r in rows
    )
    _emit({"law": law.name, "interval": "calibrated" if calibrated else "fit-only", "predictions": rows}, args.json, text)
    return 0


def cmd_moe_report(args) -> int:
    from analysis.moe_report import write_report

    out = write_report(args.study, balance_dir=args.balance, out=args.out, n_bootstrap=args.bootstrap, seed=args.seed)
    where = Path(out["out"])
    print((where / "report.md").read_text())
    print(f"written to {where} in {out['report_time_s']:.1f}s")
    return 0


def _validate_text(label, res: dict, cut: dict) -> str:
    key, val = next(iter(cut.items()))
    what = "C" if key == "flops" else "N"
    head = f"fitted on runs with {what} <= {val:.3g}, predicting the runs above (frontier: the held-out budgets' IsoFLOP minima)"
    lines = [head if label is None else f"== {label} ==\n{head}; 95% single-run intervals calibrated by backtests inside the fitted runs (fit-only in brackets)",
             f"{'law':16s} {'fitted':>6s} {'held-out':>8s} {'mean|rel err|':>13s} {'max|rel err|':>12s} {'bias':>7s} {'95% coverage':>18s} {'half-width':>10s}"]
    for name, r in res.items():
        if "skipped" in r:
            lines.append(f"{name:16s} skipped: {r['skipped']}")
            continue
        s = r["summary"]
        cov = f"{100 * s['coverage']:.0f}%" if s.get("coverage") is not None else "-"
        if s.get("coverage_fit_only") is not None:
            cov += f" ({100 * s['coverage_fit_only']:.0f}%)"
        hw = f"{100 * s['median_half_width']:.2f}%" if s.get("median_half_width") is not None else "-"
        lines.append(
            f"{name:16s} {s['n_fit']:6d} {s['n_heldout']:8d} {100 * s['mean_abs_rel_error']:12.2f}% {100 * s['max_abs_rel_error']:11.2f}% "
            f"{100 * s['bias']:+6.2f}% {cov:>18s} {hw:>10s}"
        )
        if s.get("kappa") is not None:
            kJ = s.get("kappa_backtests")
            lines.append(f"{'':16s}   calibration: kappa {s['kappa']:.4f} per decade over every backtest prediction"
                         + (f", {kJ:.4f} per backtest ({s['n_backtests']} backtests); the per-backtest read set "
                            f"{100 * s.get('width_from_backtests', 0.0):.0f}% of the widths" if kJ is not None else ""))
        for n in s["notes"]:
            if n.startswith("degenerate"):
                lines.append(f"{'':16s}   note: {n}")
    return "\n".join(lines)


def cmd_validate(args) -> int:
    from analysis.validate import compare_laws, default_cutoff_flops, laws_in_all

    if args.bootstrap < 0:
        raise AnalysisError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    df = _load(args)
    laws = laws_in_all() if args.law == "all" else [args.law]
    blocks, texts = {}, []
    validated = 0
    for label, g in _groups(df, args.by):
        cf, cp = args.cutoff_flops, args.cutoff_params
        if cf is None and cp is None:
            cf = default_cutoff_flops(g)
        res = compare_laws(g, laws, cutoff_flops=cf, cutoff_params=cp, n_bootstrap=args.bootstrap, seed=args.seed, method=args.method,
                           top_starts=args.top_starts, progress=len(laws) > 1 and not args.json and sys.stderr.isatty())
        if len(laws) == 1 and "skipped" in res[laws[0]]:
            raise AnalysisError(res[laws[0]]["skipped"])
        validated += sum("skipped" not in r for r in res.values())
        cut = {"flops": cf} if cf is not None else {"params": cp}
        block = {"cutoff": cut, "laws": {}}
        for name, r in res.items():
            block["laws"][name] = r if "skipped" in r else {"summary": r["summary"], "predictions": r["predictions"].to_dict(orient="records")}
        if len(laws) == 1 and "summary" in block["laws"][laws[0]]:
            block.update(block["laws"][laws[0]])
        blocks[label] = block
        if args.wandb:
            log_validation_to_wandb(args, g, label, res, cut)
        texts.append(_validate_text(None if label is None else f"{args.by} = {label}", res, cut))
    if not validated:
        raise AnalysisError("nothing to validate: every law was skipped (" + "; ".join(
            f"{n}: {r['skipped']}" for b in blocks.values() for n, r in b["laws"].items())[:400] + ")")
    obj = blocks[None] if args.by is None else {"by": args.by, "groups": blocks}
    _emit(obj, args.json, "\n\n".join(texts))
    return 0


def cmd_plot(args) -> int:
    from analysis import plots
    from analysis.isoflop import isoflop_analysis
    from analysis.laws import ChinchillaLaw, Law

    df = _load(args)
    law = Law.load(args.fit) if args.fit else None
    method = args.method or "local"
    if args.kind == "compute":
        fig = plots.loss_vs_compute(df, law or ChinchillaLaw().fit(df), target_C=args.target_C)
    elif args.kind == "isoflop":
        fig = plots.isoflop_curves(df, isoflop_analysis(df, n_bootstrap=0, method=method))
    elif args.kind == "allocation":
        fig = plots.optimal_allocation(isoflop_analysis(df, n_bootstrap=0, method=method), law)
    elif args.kind == "contours":
        fig = plots.law_contours(law or ChinchillaLaw().fit(df), df)
    elif args.kind == "frontier":
        from analysis.laws import FrontierLaw

        fig = plots.frontier(law if isinstance(law, FrontierLaw) else FrontierLaw(method=method).fit(df), df, target_C=args.target_C)
    else:  # heldout
        from analysis.validate import validate_extrapolation

        fig = plots.predicted_vs_actual(validate_extrapolation(df, "chinchilla", cutoff_flops=args.cutoff_flops)["predictions"])
    try:
        path = plots.save(fig, args.out)
    except (OSError, ValueError) as e:
        raise AnalysisError(f"cannot write {args.out!r}: {e}") from None
    print(f"wrote {path}")
    return 0


def _guard(func):
    """Run a command; input errors become one line on stderr and exit status 2."""

    @functools.wraps(func)
    def run(args) -> int:
        try:
            return func(args)
        except AnalysisError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return run


def _one_line_errors(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Argument errors of this subcommand as one line on stderr (exit 2), without the usage block."""

    def error(message: str):
        p.exit(2, f"error: {p.prog}: {message} (see {p.prog} --help)\n")

    p.error = error  # type: ignore[method-assign]
    return p


def _runs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", help="runs table: CSV, parquet or JSON (a sweep's runs.csv, or published data)")
    p.add_argument("--col", action="append", metavar="CANON=COLUMN", help='map a column, e.g. --col N="Model Size" (N, D, C, loss, N_active, n_experts, top_k, granularity, variant, budget)')
    p.add_argument("--loss", default=None, help="column to use as the loss (shortcut for --col loss=NAME)")
    p.add_argument("--drop-invalid", action="store_true", help="drop rows with missing/non-positive values instead of failing")
    p.add_argument("--query", metavar="EXPR", default=None, help='keep the runs matching a pandas query, e.g. --query "not excluded_in_epoch_fit"')
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def add_analysis_parsers(sub) -> None:
    from analysis.errors import ISOFLOP_METHODS as METHODS
    from analysis.laws import law_names, law_options

    fit_choices = law_names() + ["isoflop"]
    f = _one_line_errors(sub.add_parser("fit", help="fit a scaling law to a runs table", description="Fit a scaling law; --json prints one JSON object."))
    f.add_argument("law", choices=fit_choices, help=f"one of {', '.join(fit_choices)}")
    _runs_args(f)
    for opt, _ in law_options():  # each law form's own flags (analysis/laws/<form>.py: Law.options)
        if opt.store_true:
            f.add_argument(opt.flag, action="store_true", help=opt.help)
        else:
            f.add_argument(opt.flag, choices=list(opt.choices) if opt.choices else None, type=opt.type, default=opt.default, help=opt.help)
    f.add_argument("--bootstrap", type=int, default=None, metavar="N", help="bootstrap resamples for intervals (default 0; isoflop 1000)")
    f.add_argument("--jobs", type=int, default=None, help=argparse.SUPPRESS)  # accepted for compatibility; the batched bootstrap runs in one process
    f.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log residuals")
    f.add_argument("--all-starts", action="store_true", help="optimise every start of the grid (the default; kept for compatibility)")
    f.add_argument("--top-starts", type=int, default=None, metavar="K", help="optimise only the K best-scoring grid starts (faster, may miss the optimum)")
    f.add_argument("--by", metavar="COLUMN", default=None, help="fit each value of COLUMN separately (e.g. --by variant for dense vs MoE)")
    f.add_argument("--save", metavar="FIT.json", help="save the fit (reload with `scaling predict`); with --by, one file per group")
    f.add_argument("--no-calibrate", action="store_true", help="skip the backtests that measure the law's extrapolation error (then `predict` gives fit-only intervals)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    add_wandb_args(f)
    f.set_defaults(func=_guard(cmd_fit))

    p = _one_line_errors(sub.add_parser("predict", help="predict loss from a saved fit"))
    p.add_argument("fit", help="FIT.json written by `scaling fit ... --save`")
    p.add_argument("--N", type=float, nargs="+", help="parameters")
    p.add_argument("--D", type=float, nargs="+", help="tokens")
    p.add_argument("--C", type=float, nargs="+", help="FLOPs (power and frontier laws)")
    p.add_argument("--E", type=float, nargs="+", help="experts (moe-clark; 1 = dense)")
    p.add_argument("--G", type=float, nargs="+", help="granularity (moe-krajewski)")
    p.add_argument("--single-run", action="store_true", help="interval for one new run (adds the fit's run-to-run scatter)")
    p.add_argument("--fit-only", action="store_true", help="the bootstrap interval alone (parameters; without the extrapolation error the calibration measured)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_predict))

    val_choices = law_names() + ["all"]
    v = _one_line_errors(sub.add_parser("validate", help="fit below a cut-off, score predictions above it (compare laws)"))
    _runs_args(v)
    v.add_argument("--law", choices=val_choices, default="chinchilla", help=f"one of {', '.join(val_choices)} (all: every law that predicts runs)")
    cut = v.add_mutually_exclusive_group()
    cut.add_argument("--cutoff-flops", type=float, default=None, help="fit runs with C <= this (default: a gap holding out the largest 10-30%% of runs)")
    cut.add_argument("--cutoff-params", type=float, default=None, help="fit runs with N <= this instead")
    v.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the prediction intervals (0: no coverage)")
    v.add_argument("--method", choices=METHODS, default=None, help="frontier: IsoFLOP minimum per budget (default local)")
    v.add_argument("--top-starts", type=int, default=None, metavar="K", help="optimise only the K best-scoring grid starts of each law (faster; default all)")
    v.add_argument("--by", metavar="COLUMN", default=None, help="validate each value of COLUMN separately")
    v.add_argument("--json", action="store_true")
    add_wandb_args(v)
    v.set_defaults(func=_guard(cmd_validate))

    mr = _one_line_errors(sub.add_parser(
        "moe-report", help="dense vs MoE: multipliers, MoE laws, a held-out check, expert balance",
        description="Read a dense-vs-MoE sweep (e.g. sweeps/moe_study_cpu.yaml) and write report.md, fits and plots."))
    mr.add_argument("study", help="the sweep directory (or its runs.csv)")
    mr.add_argument("--balance", metavar="SWEEP_DIR", default=None, help="a sweep of MoE runs whose expert load to report (e.g. sweeps/moe_balance_cpu.yaml)")
    mr.add_argument("--out", default=None, help="output directory (default STUDY/moe_report)")
    mr.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for every interval")
    mr.add_argument("--seed", type=int, default=0)
    mr.set_defaults(func=_guard(cmd_moe_report))

    pl = _one_line_errors(sub.add_parser("plot", help="write a plot (PNG/SVG by suffix)"))
    pl.add_argument("kind", choices=["compute", "isoflop", "allocation", "contours", "frontier", "heldout"])
    _runs_args(pl)
    pl.add_argument("--fit", help="a saved fit to draw (default: fit the Chinchilla, or frontier, law on the table)")
    pl.add_argument("--target-C", type=float, default=None, help="compute/frontier plot: extrapolate to this budget")
    pl.add_argument("--cutoff-flops", type=float, default=None, help="heldout plot: the cut-off")
    pl.add_argument("--method", choices=METHODS, default=None, help="isoflop/allocation/frontier: minimum per budget (default local)")
    pl.add_argument("--out", required=True, help="output file (.png or .svg)")
    pl.set_defaults(func=_guard(cmd_plot))
