"""Stage 4 of the quickstart: the figures, ``summary.json``, the Markdown report and the fits logged to W&B."""

from __future__ import annotations

import json
import time
from pathlib import Path

from analysis.fmt import interval, with_interval
from scaling.quickstart.fits import Fits, clean
from scaling.quickstart.heldout import Heldout
from scaling.quickstart.sizes import QuickstartSize


def write_report(out: Path, size: QuickstartSize, fits: Fits, held: Heldout, prediction: dict, record: dict, runs, noise,
                 seed: int, wandb: str, t_start: float, run_dir: Path, recipe: dict | None = None) -> dict:
    """Plots, ``summary.json`` (predicted vs measured, every law's error and interval, compute, wall time over
    every invocation, the recipe every run trained with) and ``report.md``; returns the summary."""
    import pandas as pd

    from analysis import plots
    from scaling.train.record import write_json_atomic

    report = out / "report"
    law, frontier, iso, surface = fits.law, fits.frontier, fits.iso, fits.surface
    measured, stderr = record["final_eval_loss"], record["final_eval_loss_stderr"]
    heldout_row = pd.DataFrame([{"N": held.N, "D": held.D, "C": record["flops"], "loss": measured}])
    C_h, C_target = held.C, held.C_target
    p = prediction
    plots.save(plots.extrapolation(runs, surface if surface is not None else frontier, C_h,
                                   {"loss": p["predicted_loss"], "lo": p["predicted_lo"], "hi": p["predicted_hi"], "label": f"{p.get('headline', 'surface')} law"},
                                   {"loss": measured, "stderr": stderr}, {**p["chinchilla"], "label": "Chinchilla law (95%)"},
                                   minima=frontier.minima if frontier is not None else None),
               report / "extrapolation.png")
    plots.save(plots.loss_vs_compute(runs, law, target_C=C_h, heldout=heldout_row), report / "loss_vs_compute.png")
    if iso is not None:
        plots.save(plots.isoflop_curves(runs, iso), report / "isoflop.png")
        plots.save(plots.optimal_allocation(iso, law, C_range=(min(size.budgets) / 3, C_target * 3)), report / "allocation.png")
    plots.save(plots.law_contours(law, runs), report / "contours.png")

    def err(pred: float) -> float:
        return (pred - measured) / measured

    spent = pd.concat([pd.read_csv(out / d / "runs.csv") for d in ("sweep", "noise")])
    summary = {
        "seed": seed,
        "prediction": prediction,
        "measured_eval_loss": measured,
        "measured_eval_loss_stderr": stderr,
        "measured_eval_loss_rel_stderr": stderr / measured,
        "eval_tokens": record.get("eval_tokens"),
        "abs_error": p["predicted_loss"] - measured,
        "rel_error": err(p["predicted_loss"]),
        "inside_interval": p["predicted_lo"] <= measured <= p["predicted_hi"],
        "interval_half_width_rel": (p["predicted_hi"] - p["predicted_lo"]) / 2 / p["predicted_loss"],
        "chinchilla_rel_error": err(p["chinchilla"]["loss"]),
        "chinchilla_inside_interval": p["chinchilla"]["lo"] <= measured <= p["chinchilla"]["hi"],
        "frontier_rel_error": err(p["frontier"]["loss"]) if p.get("frontier") else None,
        "frontier_inside_interval": (p["frontier"]["lo"] <= measured <= p["frontier"]["hi"]) if p.get("frontier") else None,
        "surface": surface.params if surface is not None else None,
        "surface_intervals": surface.intervals() if surface is not None else None,
        "frontier": frontier.params if frontier is not None else None,
        "frontier_intervals": frontier.intervals() if frontier is not None else None,
        "chinchilla": law.params,
        "chinchilla_intervals": law.intervals(),
        "isoflop": {"a": iso.a, "b": iso.b, "intervals": iso.intervals()} if iso is not None else None,
        "floor": floors(record.get("entropy_rate"), surface=surface, frontier=frontier, chinchilla=law),
        "n_sweep_runs": len(runs),
        "n_noise_runs": len(noise),
        "sweep_flops_spent": float(spent["C_spent"].sum()),
        "sweep_flops_as_separate_runs": float(spent.loc[spent["role"] != "trunk", "C"].sum()),
        "recipe": recipe,
        "wall_time_s": time.perf_counter() - t_start,
        "heldout_run_dir": str(run_dir),
    }
    times = out / "wall_times.json"  # one entry per invocation (a resumed quickstart has several)
    hist = json.loads(times.read_text()) if times.exists() else []
    hist.append(summary["wall_time_s"])
    times.write_text(json.dumps(hist))
    summary["wall_time_s_invocations"] = hist
    write_json_atomic(report / "summary.json", clean(summary))
    (report / "report.md").write_text(render_report(summary, runs, law, frontier, iso, record, surface))
    if wandb != "disabled":
        log_fits(report, "quickstart", wandb, law, frontier, iso, runs, summary, surface)
    return summary


def log_fits(report: Path, group: str, mode: str, law, frontier, iso, runs, summary: dict, surface=None) -> None:
    """The fits as W&B runs in the sweep's group (beside its training runs): parameters, intervals, each law's
    held-out prediction and the measurement in the summary, per-run predictions or the minima as Tables, the
    report's plots as images."""
    from analysis.wandb_log import lock_artifact, log_fit, predictions_table, summary_of

    p = summary["prediction"]
    tables_used = {"runs-quickstart": ("runs", report / "runs.csv"), "runs-quickstart-noise": ("runs", report / "noise_runs.csv"),
                   "prediction": ("prediction", report / "prediction.json"), **lock_artifact()}
    measured = {"heldout/measured": summary["measured_eval_loss"], "heldout/N": p["N"], "heldout/D": p["D"], "heldout/C": p["C"]}

    def held(loss: float, lo: float, hi: float) -> dict:
        m = summary["measured_eval_loss"]
        return {"heldout/predicted": loss, "heldout/lo": lo, "heldout/hi": hi, "heldout/rel_error": (loss - m) / m, **measured}

    c = p["chinchilla"]
    images = {k: report / f"{k}.png" for k in ("loss_vs_compute", "contours") if (report / f"{k}.png").exists()}
    log_fit("fit-chinchilla", {**summary_of(law.to_dict()), **held(c["loss"], c["lo"], c["hi"])}, tables={"predictions": predictions_table(law, runs)},
            figures=images, group=group, mode=mode, directory=report, config={"law": "chinchilla", "n_runs": len(runs)},
            artifacts={**tables_used, "fit-chinchilla": ("fit", report / "fit_chinchilla.json")})
    if surface is not None:
        images = {k: report / f"{k}.png" for k in ("extrapolation",) if (report / f"{k}.png").exists()}
        log_fit("fit-surface", {**summary_of(surface.to_dict()), **held(p["predicted_loss"], p["predicted_lo"], p["predicted_hi"])},
                tables={"predictions": predictions_table(surface, runs)}, figures=images, group=group, mode=mode, directory=report,
                config={"law": "surface", "n_runs": len(runs), "headline": p.get("headline") == "surface"},
                artifacts={"fit-surface": ("fit", report / "fit_surface.json")})
    if frontier is not None:
        f = p.get("frontier") or {"loss": p["predicted_loss"], "lo": p["predicted_lo"], "hi": p["predicted_hi"]}
        images = {k: report / f"{k}.png" for k in ("extrapolation",) if (report / f"{k}.png").exists() and surface is None}
        log_fit("fit-frontier", {**summary_of(frontier.to_dict()), **held(f["loss"], f["lo"], f["hi"])},
                tables={"minima": frontier.minima}, figures=images, group=group, mode=mode, directory=report,
                config={"law": "frontier", "n_runs": len(runs), "headline": p.get("headline") == "frontier"},
                artifacts={"fit-frontier": ("fit", report / "fit_frontier.json")})
    if iso is not None:
        images = {k: report / f"{k}.png" for k in ("isoflop", "allocation") if (report / f"{k}.png").exists()}
        log_fit("fit-isoflop", summary_of(iso.to_dict()), tables={"minima": iso.minima_table()}, figures=images, group=group,
                mode=mode, directory=report, config={"law": "isoflop", "n_runs": len(runs)}, artifacts={"fit-isoflop": ("fit", report / "fit_isoflop.json")})


HEADLINE_WHY = {
    "surface": "The headline is the surface law: the GPT-4 frontier E + A C^-gamma fitted together with each budget's "
    "parabola in log N on every run (six parameters from all runs, not three from a few noisy per-budget minima), so it "
    "also predicts a held-out run that is not exactly compute-optimal. The frontier law on per-budget minima and the "
    "Chinchilla law are shown beside it.",
    "frontier": "The headline is the frontier law on per-budget minima (the surface law could not be fitted); the "
    "Chinchilla law is shown beside it.",
    "chinchilla": "The headline is the Chinchilla law (neither frontier fit was possible on this sweep).",
}


def render_report(s: dict, runs, law, frontier, iso, record, surface=None) -> str:
    p = s["prediction"]
    iv, fv = law.intervals(), (frontier.intervals() if frontier is not None else {})
    sv = surface.intervals() if surface is not None else {}
    fr = p.get("frontier")
    sc = p["seed_scatter"]
    ch = p["chinchilla"]
    walls = s.get("wall_time_s_invocations") or [s["wall_time_s"]]
    wall = f"{sum(walls) / 60:.1f} min" + (f" over {len(walls)} invocations" if len(walls) > 1 else "")
    lines = [
        "# Scaling quickstart report",
        "",
        f"Seed {s['seed']}. Sweep: {s['n_sweep_runs']} dense runs (WSD branches of an IsoFLOP grid) and {s['n_noise_runs']} repeat-seed "
        f"runs on `{record['data'].get('source', record['data'].get('kind'))}` data; loss = eval loss (nats/token) on the same "
        f"{record.get('eval_tokens') or 0:,} held-out tokens for every run. Sweep compute {s['sweep_flops_spent']:.3g} FLOPs "
        f"({s['sweep_flops_as_separate_runs']:.3g} as separate runs). Wall time {wall}.",
        "",
        *([recipe_line(s["recipe"]), ""] if s.get("recipe") else []),
        "## Held-out extrapolation",
        "",
        "![extrapolation](extrapolation.png)",
        "",
        "| | N | D | C | loss | error |",
        "|---|---|---|---|---|---|",
        f"| **predicted, {p.get('headline', 'frontier')} law** (before training) | {p['N']:,} | {p['D']:,} | {p['C']:.3g} | {with_interval(p['predicted_loss'], p['predicted_lo'], p['predicted_hi'], '.4f')} | {100 * s['rel_error']:+.2f}% |",
        *([f"| predicted, frontier law (per-budget minima) | | | | {with_interval(fr['loss'], fr['lo'], fr['hi'], '.4f')} | {100 * s['frontier_rel_error']:+.2f}% |"]
          if fr and p.get("headline") != "frontier" else []),
        f"| predicted, Chinchilla law | | | | {with_interval(ch['loss'], ch['lo'], ch['hi'], '.4f')} | {100 * s['chinchilla_rel_error']:+.2f}% |",
        f"| measured | | | {record['flops']:.3g} | {s['measured_eval_loss']:.4f} ± {s['measured_eval_loss_stderr']:.4f} "
        f"({100 * s['measured_eval_loss_rel_stderr']:.2f}%) | |",
        "",
        f"The measurement is **{'inside' if s['inside_interval'] else 'outside'}** the {p.get('headline', 'frontier')} law's 95% interval "
        f"(half-width {100 * s['interval_half_width_rel']:.1f}%). The interval combines the fit's bootstrap"
        + (f", the extrapolation error its backtests inside the sweep measured (kappa {p['kappa'][p['headline']]:.4f} per decade of compute"
           + (f" over every backtest prediction, {kJ:.4f} per decade per backtest; the {p.get('width_from') or 'wider'} read set the width"
              if (kJ := (p.get("kappa_backtests") or {}).get(p.get("headline"))) is not None else "") + ")"
           if (p.get("kappa") or {}).get(p.get("headline")) is not None else " (not calibrated: too few budgets to backtest)")
        + " and the "
        + (f"run-to-run scatter measured on repeated seeds: {100 * sc['sigma']:.2f}% ({sc['n_points']} points, {sc['dof']} degrees of freedom)."
           if sc.get("sigma") else "fit's residual scatter (no repeated seeds finished).")
        + " " + HEADLINE_WHY[p.get("headline", "frontier")],
        "",
        "## IsoFLOP surface  L(N, C) = E + A (C/C0)^-gamma (1 + k ln^2(N / N_opt(C))),  N_opt = N0 (C/C0)^a",
        "",
        "| param | value | 95% interval |",
        "|---|---|---|",
        *([f"| {k} | {v:.4g} | {interval(sv[k]['lo'], sv[k]['hi'])} |" for k, v in surface.params.items() if k in sv]
          if surface is not None else ["Not fitted on this sweep (fewer than 2 budgets with 3 sizes)."]),
        *([f"", f"Scatter of log loss: between trunks sigma_u {100 * surface.variance['sigma_u']:.2f}%, between branches of one trunk "
           f"sigma_e {100 * surface.variance['sigma_e']:.2f}% ({surface.variance['n_groups']} trunks)."]
          if surface is not None and surface.variance else []),
        "",
        "## Compute frontier  L_opt(C) = E + A C^-gamma (IsoFLOP minima)",
        "",
        "| param | value | 95% interval |",
        "|---|---|---|",
        *([f"| {k} | {v:.4g} | {interval(fv[k]['lo'], fv[k]['hi'])} |" for k, v in frontier.params.items() if k in fv]
          if frontier is not None else [f"Not fitted on this sweep (fewer bracketed budgets than its 3 parameters); the headline is the {p.get('headline', 'chinchilla')} law."]),
        "",
        "## Chinchilla law  L = E + A/N^α + B/D^β",
        "",
        "| param | value | 95% interval |",
        "|---|---|---|",
        *[f"| {k} | {v:.4g} | {interval(iv[k]['lo'], iv[k]['hi'])} |" for k, v in law.params.items() if k in iv],
        "",
        "![contours](contours.png) ![loss vs compute](loss_vs_compute.png)",
        "",
        *(floor_lines(s["floor"]) + [""] if s.get("floor") else []),
        "## IsoFLOP analysis",
        "",
        *(iso_lines(iso) if iso is not None else ["Not possible on this sweep (fewer than 2 budgets with an interior loss minimum)."]),
        "",
        f"Held-out size chosen from: {p['size_from']}.",
        "",
        "## Runs",
        "",
        "`runs.csv` holds every branch (N, D, C, loss, trunk_id, ...), `noise_runs.csv` the repeat seeds. Tiny models on a",
        "small corpus: the fitted constants describe this setup, not large language models; what carries over is the",
        "method and the extrapolation check.",
        "",
    ]
    return "\n".join(lines)


def floors(entropy_rate: float | None, **laws) -> dict:
    """Each law's loss floor E: value, fit-only 95% interval, whether the data determine it
    (``analysis.calibration.floor_verdict``) and, on the synthetic source, the true floor (its entropy rate)."""
    from analysis.calibration import floor_verdict

    out = {"entropy_rate": entropy_rate}
    for name, law in laws.items():
        if law is None or "E" not in law.params:
            continue
        iv = law.intervals().get("E", {})
        v = floor_verdict(law) or {"determined": None, "note": ""}  # no backtests: too few budgets
        row = {"E": law.params["E"], "lo": iv.get("lo"), "hi": iv.get("hi"), "determined": v["determined"], "note": v["note"]}
        if entropy_rate is not None and row["lo"] is not None:
            row["covers_entropy_rate"] = bool(row["lo"] <= entropy_rate <= row["hi"])
        out[name] = row
    return out


def floor_lines(f: dict) -> list[str]:
    """The report's section on the loss floor E (``summary.json``'s ``floor``)."""
    h = f.get("entropy_rate")
    lines = ["## The loss floor E", "",
             "E is each law's loss at infinite compute, not a measurement: its bootstrap interval holds only for a law of "
             "exactly the fitted form. It is called determined when the backtests inside the sweep measured no "
             "extrapolation error (kappa 0), its bootstrap interval stays off 0 and within 10x, and the refits below internal "
             "cut-offs held it still (`analysis.calibration.floor_verdict`).", ""]
    if h is not None:
        lines += [f"The synthetic source's entropy rate, the loss a perfect model reaches, is **{h:.4f}** nats/token.", ""]
    lines += ["| law | E | 95% interval (fit only) | determined |" + (" interval holds the entropy rate |" if h is not None else ""),
              "|---|---|---|---|" + ("---|" if h is not None else "")]
    for name in ("surface", "frontier", "chinchilla"):
        r = f.get(name)
        if r is None:
            continue
        iv = interval(r["lo"], r["hi"], ".4f") if r["lo"] is not None else "-"
        det = {True: "yes", False: "**no**", None: "- (no backtests)"}[r["determined"]]
        cov = {True: "yes", False: "**no**", None: "-"}[r.get("covers_entropy_rate")]
        lines.append(f"| {name} | {r['E']:.4f} | {iv} | {det} |" + (f" {cov} |" if h is not None else ""))
    notes = [f"- {name}: {f[name]['note']}" for name in ("surface", "frontier", "chinchilla") if f.get(name) and f[name]["note"]]
    return lines + ([""] + notes if notes else [])


def recipe_line(r: dict) -> str:
    """The report's statement of the one recipe every run trained with (``summary.json``'s ``recipe``)."""
    return (f"Every run (the sweep, the repeats and the held-out run): {r['parametrization']}; {r['lr']}; warmup "
            f"{r['warmup_steps']} steps. The lr law: {r['note']}. Held-out run's lr: {r['heldout_lr']:.4g}.")


def iso_lines(iso) -> list[str]:
    iv = iso.intervals()
    table = iso.minima_table()
    return [
        f"N_opt ∝ C^{with_interval(iso.a, iv['a']['lo'], iv['a']['hi'], '.3f')}, D_opt ∝ C^{with_interval(iso.b, iv['b']['lo'], iv['b']['hi'], '.3f')}",
        "",
        "```",
        table.to_string(index=False),
        "```",
        "",
        "![isoflop](isoflop.png) ![allocation](allocation.png)",
    ]
