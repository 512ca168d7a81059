"""The quickstart as four named stages (see ``scaling.quickstart``): train the sweep, fit, predict the held-out run
and train it, report."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from analysis.fmt import with_interval
from scaling.config import ConfigError
from scaling.quickstart.fits import fit_laws
from scaling.quickstart.heldout import choose_heldout, predict_heldout
from scaling.quickstart.processes import run_sweeps, train_heldout
from scaling.quickstart.report import write_report
from scaling.quickstart.sizes import FULL, RECIPE_TAG, TINY, eval_tokens_for, noise_dict, recipe_note, sweep_dict


def _check_manifest(out: Path, manifest: dict, before=None) -> None:
    """Write ``out/quickstart.json``, or refuse (``ConfigError``) a directory whose manifest says otherwise. A key
    an older manifest lacks is read as ``before[key]()``: what the code that wrote it did."""
    path = out / "quickstart.json"
    if path.exists():
        old = json.loads(path.read_text())
        old = {**{k: f() for k, f in (before or {}).items() if k not in old}, **old}
        if old != manifest:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {manifest.get(k)!r}" for k in sorted(set(old) | set(manifest)) if old.get(k) != manifest.get(k))
            raise ConfigError(f"{out} holds a quickstart run with other settings ({diff}); pass another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=1))


def run_quickstart(
    out: str | Path, tiny: bool = False, data: str = "stdlib", wandb: str = "offline", progress: bool = True, should_stop=None,
    seed: int = 0,
) -> dict:
    """The whole job into ``out`` (rerunning resumes); returns the summary (also ``out/report/summary.json``)."""
    from analysis import load_runs
    from scaling.config import load_config
    from scaling.train.record import config_hash

    t_start = time.perf_counter()
    out = Path(out)
    size = TINY if tiny else FULL
    for m in size.ladder:  # the held-out run may take any ladder shape: all of them are checked before training
        load_config(base={"model": {**m, "seq_len": size.seq_len, "vocab_size": 256}})
    eval_tokens = eval_tokens_for(size, data)
    # the recipe every run trains with and the windows every run is scored on are part of what a quickstart directory
    # holds: a directory trained under another recipe or scored on other windows is refused rather than mixed into one fit
    # (before the manifest named them, the full size scored on the whole split and --tiny on its 2^15 tokens)
    scored_before = lambda: eval_tokens_for(size if tiny else replace(size, eval_tokens=None), data)  # noqa: E731
    _check_manifest(out, {"tiny": tiny, "data": data, "seed": seed, "recipe": RECIPE_TAG, "eval_tokens": eval_tokens},
                    before={"eval_tokens": scored_before})
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    raw, noise_raw = sweep_dict(size, data, wandb, seed, eval_tokens), noise_dict(size, data, wandb, seed, eval_tokens)
    say = print

    say(
        f"[1/4] IsoFLOP sweep as WSD branches: {len(size.budgets)} budgets x {size.sizes_per_budget} sizes (of {len(size.ladder)}), "
        f"plus {size.noise_seeds} repeat seeds at {size.noise_budgets * size.noise_sizes} points, on data={data!r}, seed {seed}, "
        f"{size.workers} workers -> {out}/sweep"
    )
    run_sweeps([(raw, out / "sweep"), (noise_raw, out / "noise")], size, progress, should_stop)
    runs = load_runs(out / "sweep" / "runs.csv")
    noise = load_runs(out / "noise" / "runs.csv")
    runs.to_csv(report / "runs.csv", index=False)
    noise.to_csv(report / "noise_runs.csv", index=False)

    say(f"[2/4] fitting the IsoFLOP surface, the compute frontier, the Chinchilla law ({size.bootstrap} bootstrap resamples each) and the IsoFLOP exponents")
    fits = fit_laws(size, runs, noise, report, say)
    from scaling.sweep.spec import parse_sweep

    spec = parse_sweep(raw)
    held = choose_heldout(size, raw["base"], fits, runs, spec.recipe)
    prediction = predict_heldout(fits, held, runs, report, seed, say)
    say(
        f"[3/4] held-out run: N={held.N:,} D={held.D:,} C={held.C:.3g} ({held.C / max(size.budgets):.1f}x the largest budget); "
        f"predicted loss {with_interval(prediction['predicted_loss'], prediction['predicted_lo'], prediction['predicted_hi'], '.4f')} ({prediction['headline']} law)"
    )
    run_id = config_hash(held.cfg.to_dict())
    run_dir = out / "heldout" / run_id
    record = train_heldout(held.cfg, run_dir, run_id, progress, should_stop, size.workers)

    say("[4/4] writing the report")
    m = held.cfg.model
    recipe = {"parametrization": f"muP relative to d_model {m.mup_base_width} (heads of {m.mup_base_head_dim} dims)" if m.parametrization == "mup" else "sp",
              "lr": spec.recipe.describe(), "note": recipe_note(size, data), "warmup_steps": size.warmup_steps,
              "heldout_lr": held.cfg.train.lr}
    summary = write_report(out, size, fits, held, prediction, record, runs, noise, seed, wandb, t_start, run_dir, recipe)
    p, measured, stderr = prediction, summary["measured_eval_loss"], summary["measured_eval_loss_stderr"]
    say(
        f"held-out loss: predicted {with_interval(p['predicted_loss'], p['predicted_lo'], p['predicted_hi'], '.4f')} ({p['headline']} law), "
        f"measured {measured:.4f} ± {stderr:.4f} "
        f"({100 * summary['rel_error']:+.2f}%, {'inside' if summary['inside_interval'] else 'outside'} the interval; "
        + (f"frontier law {p['frontier']['loss']:.4f}, {100 * summary['frontier_rel_error']:+.2f}%; " if p.get("frontier") and p["headline"] != "frontier" else "")
        + f"Chinchilla law {p['chinchilla']['loss']:.4f}, {100 * summary['chinchilla_rel_error']:+.2f}%)\n"
        f"report: {report / 'report.md'}"
    )
    return summary
