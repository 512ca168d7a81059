"""``scaling quickstart``: the end-to-end job on the embedded default data.

1. Train a small IsoFLOP sweep of dense models (3 budgets x 3 sizes, N spanning > 10x) on the Python
   standard-library code corpus (byte-level), resumably.
2. Fit the Chinchilla law (with bootstrap intervals) and the IsoFLOP exponents on it.
3. Choose a held-out run at 10x the largest budget, at the compute-optimal size the IsoFLOP fit predicts, and
   *predict* its loss with an interval before training it (written to ``prediction.json`` first).
4. Train the held-out run and report predicted vs measured in ``report/report.md`` with the runs table, the fits
   as JSON and the plots.

Rerunning the same command reuses completed runs and resumes interrupted ones.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path


from scaling.config import ConfigError


@dataclass(frozen=True)
class QuickstartSize:
    budgets: tuple[float, ...]
    sizes: tuple[dict, ...]
    batch_size: int
    seq_len: int
    bootstrap: int
    eval_tokens: int = 2**18
    heldout_factor: float = 10.0


FULL = QuickstartSize(
    budgets=(1.5e11, 5e11, 1.5e12),
    sizes=(
        {"d_model": 16, "n_layers": 1, "n_heads": 1},
        {"d_model": 32, "n_layers": 1, "n_heads": 2},
        {"d_model": 64, "n_layers": 1, "n_heads": 2},
        {"d_model": 96, "n_layers": 2, "n_heads": 3},
    ),
    batch_size=16,
    seq_len=64,
    bootstrap=300,
)
TINY = QuickstartSize(
    budgets=(1e10, 3e10, 1e11),
    sizes=(
        {"d_model": 16, "n_layers": 1, "n_heads": 1},
        {"d_model": 32, "n_layers": 1, "n_heads": 2},
        {"d_model": 64, "n_layers": 2, "n_heads": 2},
    ),
    batch_size=8,
    seq_len=32,
    bootstrap=100,
    eval_tokens=2**15,
)


def sweep_dict(size: QuickstartSize, data: str, wandb: str) -> dict:
    return {
        "name": "quickstart",
        "base": {
            "data": {"source": data},
            "model": {"seq_len": size.seq_len, "vocab_size": 256},
            # one evaluation at the end, on a fixed held-out set: low noise where it matters, little time spent
            "train": {"batch_size": size.batch_size, "log_every": 20, "eval_tokens": size.eval_tokens, "eval_every": 10**9},
            "log": {"wandb": wandb},
        },
        "grid": {"kind": "isoflop", "budgets": list(size.budgets), "sizes": list(size.sizes)},
        "seeds": [0],
        "recipe": {"lr_base": 1e-2, "lr_ref_params": 3e4, "lr_exponent": -0.25, "min_steps": 200, "min_batch_size": 2},
    }


def run_quickstart(out: str | Path, tiny: bool = False, data: str = "stdlib", wandb: str = "offline", progress: bool = True, should_stop=None) -> dict:
    import pandas as pd

    from analysis import bootstrap, isoflop_analysis, load_runs, plots
    from analysis.laws import ChinchillaLaw
    from scaling.accounting import count_params, flops_per_token
    from scaling.config import load_config
    from scaling.model.presets import config_for_params
    from scaling.sweep.runner import run_sweep
    from scaling.sweep.spec import parse_sweep
    from scaling.train import train
    from scaling.train.record import config_hash, write_json_atomic
    from scaling.ui import progress_bar

    t_start = time.perf_counter()
    out = Path(out)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    size = TINY if tiny else FULL
    raw = sweep_dict(size, data, wandb)
    spec = parse_sweep(raw)
    say = print

    say(f"[1/4] IsoFLOP sweep: {len(size.budgets)} budgets x {len(size.sizes)} sizes on data={data!r} -> {out}/sweep")
    import yaml

    with progress_bar(progress) as bar:
        res = run_sweep(spec, out / "sweep", progress=bar, should_stop=should_stop, sweep_yaml=yaml.safe_dump(raw))
    if res.stopped:
        raise KeyboardInterrupt("stopped; rerun to resume")
    runs = load_runs(out / "sweep" / "runs.csv")
    runs.to_csv(report / "runs.csv", index=False)

    say(f"[2/4] fitting the Chinchilla law ({size.bootstrap} bootstrap resamples) and the IsoFLOP exponents")
    law = ChinchillaLaw().fit(runs)
    bootstrap(law, runs, n=size.bootstrap, seed=0)
    law.save(report / "fit_chinchilla.json")
    C_target = size.heldout_factor * max(size.budgets)
    try:
        iso = isoflop_analysis(runs, n_bootstrap=1000, seed=0)
        (report / "fit_isoflop.json").write_text(json.dumps(_clean(iso.to_dict()), indent=1))
    except ValueError as e:  # too few budgets with an interior minimum: noisy or badly bracketed sizes
        iso = None
        (report / "fit_isoflop.json").write_text(json.dumps({"law": "isoflop", "error": str(e)}, indent=1))
        say(f"      IsoFLOP analysis not possible on this sweep: {e}")
    # The held-out size: the IsoFLOP optimum where that fit is well-posed (every minimum inside the trained sizes,
    # a plausible exponent), else the Chinchilla law's optimum.
    if iso is not None and len(iso.minima) == len(size.budgets) and iso.minima["bracketed"].all() and 0.2 <= iso.a <= 0.9:
        N_star, size_from = float(iso.N_opt(C_target)), "IsoFLOP fit N_opt(C)"
    else:
        N_star = float(law.compute_optimal([C_target]).iloc[0]["N_opt"])
        size_from = "Chinchilla-law N_opt(C)" + (" (the IsoFLOP fit is not well-posed on this sweep)" if iso is not None else "")
    n_lo, n_hi = float(runs["N"].min()), float(runs["N"].max())
    if not (math.isfinite(N_star) and N_star > 0):
        size_from += f" = {N_star} (not usable), replaced by the geometric mean of the sizes"
        N_star = math.sqrt(n_lo * n_hi)
    elif not n_lo <= N_star <= 4 * n_hi:
        size_from += f" = {N_star:.3g}, clamped to [{n_lo:.3g}, {4 * n_hi:.3g}]"
        N_star = min(max(N_star, n_lo), 4 * n_hi)

    # Held-out run: 10x the largest budget at the predicted optimal size, snapped to a width on the rule.
    held_model = config_for_params(N_star, vocab_size=256, seq_len=size.seq_len)
    model = {k: getattr(held_model, k) for k in ("d_model", "n_layers", "n_heads", "seq_len", "vocab_size")}
    tokens_per_step = size.batch_size * size.seq_len
    steps = max(1, round(C_target / flops_per_token(held_model) / tokens_per_step))
    import jax

    held_base = {**raw["base"], "model": model, "train": {**raw["base"]["train"], "tokens": steps * tokens_per_step}}
    held_raw = spec.recipe.apply(
        held_base, load_config(base=held_base), count_params(held_model).total, steps * tokens_per_step, jax.device_count()
    )
    held_cfg = load_config(base=held_raw)
    N_h, D_h = count_params(held_cfg.model).total, held_cfg.steps * held_cfg.tokens_per_step
    C_h = flops_per_token(held_cfg.model) * D_h
    pred = law.predict_interval(N=N_h, D=D_h, include_noise=True).iloc[0]
    prediction = {
        "C_target": C_target,
        "N_target": N_star,
        "size_from": size_from,
        "N": N_h,
        "D": D_h,
        "C": C_h,
        "model": model,
        "predicted_loss": float(pred["loss"]),
        "predicted_lo": float(pred["lo"]),
        "predicted_hi": float(pred["hi"]),
        "interval": "95% prediction interval: bootstrap over sweep runs plus the fit's run-to-run scatter",
    }
    pred_path = report / "prediction.json"
    if not pred_path.exists():  # the prediction is written before the held-out run trains, and kept
        write_json_atomic(pred_path, prediction)
    prediction = json.loads(pred_path.read_text())
    say(
        f"[3/4] held-out run: N={N_h:,} D={D_h:,} C={C_h:.3g} ({C_h / max(size.budgets):.1f}x the largest budget); "
        f"predicted loss {prediction['predicted_loss']:.4f} [{prediction['predicted_lo']:.4f}, {prediction['predicted_hi']:.4f}]"
    )
    run_id = config_hash(held_cfg.to_dict())
    with progress_bar(progress) as bar:
        record = train(held_cfg, out / "heldout" / run_id, progress=bar, should_stop=should_stop, run_id=run_id)
    measured = record["final_eval_loss"]
    heldout_row = pd.DataFrame([{"N": N_h, "D": D_h, "C": record["flops"], "loss": measured}])

    say("[4/4] writing the report")
    pred_table = heldout_row.assign(predicted=prediction["predicted_loss"], lo=prediction["predicted_lo"], hi=prediction["predicted_hi"])
    plots.save(plots.loss_vs_compute(runs, law, target_C=C_h, heldout=heldout_row), report / "loss_vs_compute.png")
    if iso is not None:
        plots.save(plots.isoflop_curves(runs, iso), report / "isoflop.png")
        plots.save(plots.optimal_allocation(iso, law, C_range=(min(size.budgets) / 3, C_target * 3)), report / "allocation.png")
    plots.save(plots.law_contours(law, runs), report / "contours.png")
    plots.save(plots.predicted_vs_actual(pred_table), report / "heldout.png")
    summary = {
        "prediction": prediction,
        "measured_eval_loss": measured,
        "measured_eval_loss_stderr": record["final_eval_loss_stderr"],
        "abs_error": prediction["predicted_loss"] - measured,
        "rel_error": (prediction["predicted_loss"] - measured) / measured,
        "inside_interval": prediction["predicted_lo"] <= measured <= prediction["predicted_hi"],
        "chinchilla": law.params,
        "chinchilla_intervals": law.intervals(),
        "isoflop": {"a": iso.a, "b": iso.b, "intervals": iso.intervals()} if iso is not None else None,
        "n_sweep_runs": len(runs),
        "wall_time_s": time.perf_counter() - t_start,
        "heldout_run_dir": str(out / "heldout" / run_id),
    }
    write_json_atomic(report / "summary.json", _clean(summary))
    (report / "report.md").write_text(render_report(summary, runs, law, iso, record))
    if wandb != "disabled":
        _log_fits(report, spec.name, wandb, law, iso, runs, summary)
    say(
        f"held-out loss: predicted {prediction['predicted_loss']:.4f} [{prediction['predicted_lo']:.4f}, {prediction['predicted_hi']:.4f}], "
        f"measured {measured:.4f} ± {record['final_eval_loss_stderr']:.4f} "
        f"({100 * summary['rel_error']:+.2f}%, {'inside' if summary['inside_interval'] else 'outside'} the interval)\n"
        f"report: {report / 'report.md'}"
    )
    return summary


def _log_fits(report: Path, group: str, mode: str, law, iso, runs, summary: dict) -> None:
    """The fits as W&B runs in the sweep's group (beside its training runs): parameters, intervals, the held-out
    prediction and measurement in the summary, per-run predictions as a Table, the report's plots as images."""
    from analysis.wandb_log import log_fit, predictions_table, summary_of

    p = summary["prediction"]
    held = {
        "heldout/predicted": p["predicted_loss"], "heldout/lo": p["predicted_lo"], "heldout/hi": p["predicted_hi"],
        "heldout/measured": summary["measured_eval_loss"], "heldout/rel_error": summary["rel_error"],
        "heldout/N": p["N"], "heldout/D": p["D"], "heldout/C": p["C"],
    }
    images = {k: report / f"{k}.png" for k in ("loss_vs_compute", "contours", "heldout") if (report / f"{k}.png").exists()}
    log_fit("fit-chinchilla", {**summary_of(law.to_dict()), **held}, tables={"predictions": predictions_table(law, runs)},
            figures=images, group=group, mode=mode, directory=report, config={"law": "chinchilla", "n_runs": len(runs)})
    if iso is not None:
        images = {k: report / f"{k}.png" for k in ("isoflop", "allocation") if (report / f"{k}.png").exists()}
        log_fit("fit-isoflop", summary_of(iso.to_dict()), tables={"minima": iso.minima_table()}, figures=images, group=group,
                mode=mode, directory=report, config={"law": "isoflop", "n_runs": len(runs)})


def render_report(s: dict, runs, law, iso, record) -> str:
    p = s["prediction"]
    iv = law.intervals()
    lines = [
        "# Scaling quickstart report",
        "",
        f"Sweep: {s['n_sweep_runs']} dense runs (IsoFLOP grid) on `{record['data'].get('source', record['data'].get('kind'))}` data; "
        f"loss = held-out eval loss (nats/token). Wall time {s['wall_time_s'] / 60:.1f} min.",
        "",
        "## Held-out extrapolation",
        "",
        "| | N | D | C | loss |",
        "|---|---|---|---|---|",
        f"| predicted (before training) | {p['N']:,} | {p['D']:,} | {p['C']:.3g} | {p['predicted_loss']:.4f} [{p['predicted_lo']:.4f}, {p['predicted_hi']:.4f}] |",
        f"| measured | | | {record['flops']:.3g} | {s['measured_eval_loss']:.4f} ± {s['measured_eval_loss_stderr']:.4f} |",
        "",
        f"Error {s['abs_error']:+.4f} ({100 * s['rel_error']:+.2f}%); the measurement is "
        f"**{'inside' if s['inside_interval'] else 'outside'}** the 95% interval.",
        "",
        "![held-out](heldout.png) ![loss vs compute](loss_vs_compute.png)",
        "",
        "## Chinchilla law  L = E + A/N^α + B/D^β",
        "",
        "| param | value | 95% interval |",
        "|---|---|---|",
        *[f"| {k} | {v:.4g} | [{iv[k]['lo']:.4g}, {iv[k]['hi']:.4g}] |" for k, v in law.params.items()],
        "",
        "![contours](contours.png)",
        "",
        "## IsoFLOP analysis",
        "",
        *(_iso_lines(iso) if iso is not None else ["Not possible on this sweep (fewer than 2 budgets with an interior loss minimum)."]),
        "",
        f"Held-out size chosen from: {p['size_from']}.",
        "",
        "## Runs",
        "",
        "`runs.csv` holds every run (N, D, C, loss, ...). Tiny models on a small corpus: the fitted constants describe",
        "this setup, not large language models; what carries over is the method and the extrapolation check.",
        "",
    ]
    return "\n".join(lines)


def _iso_lines(iso) -> list[str]:
    iv = iso.intervals()
    table = iso.minima_table()
    return [
        f"N_opt ∝ C^{iso.a:.3f} [{iv['a']['lo']:.3f}, {iv['a']['hi']:.3f}], D_opt ∝ C^{iso.b:.3f} [{iv['b']['lo']:.3f}, {iv['b']['hi']:.3f}]",
        "",
        "```",
        table.to_string(index=False),
        "```",
        "",
        "![isoflop](isoflop.png) ![allocation](allocation.png)",
    ]


def _clean(o):
    from analysis import json_safe

    return json_safe(o)


def cmd_quickstart(args) -> int:
    from scaling.signals import StopFlag
    from scaling.train import StopRequested

    stop = StopFlag().install()
    try:
        run_quickstart(args.out, tiny=args.tiny, data=args.data, wandb=args.wandb, progress=not args.no_progress, should_stop=stop)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, StopRequested):
        print(f"{stop.status if stop.stop else 'stopped'}: rerun the same command to resume", file=sys.stderr)
        return stop.exit_code
    return 0


def add_quickstart_parser(sub) -> None:
    q = sub.add_parser(
        "quickstart",
        help="train a small IsoFLOP sweep, fit it, predict a 10x larger held-out run, train it, report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--out", default="quickstart_out", help="output directory (rerun to resume)")
    q.add_argument("--tiny", action="store_true", help="reduced size (a few minutes; what CI runs)")
    q.add_argument("--data", default="stdlib", help="'stdlib' (default), 'synthetic' or a path to a corpus")
    q.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_quickstart)


__all__ = ["FULL", "TINY", "add_quickstart_parser", "run_quickstart"]
