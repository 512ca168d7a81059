"""Stage 3 of the quickstart: the held-out run at ``heldout_factor`` x the largest budget, at the compute-optimal
size the fits predict (the nearest ladder shape), trained with the sweep's recipe; its loss predicted with a 95%
interval and written to ``prediction.json`` before it trains."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.quickstart.fits import Fits, clean, predict
from scaling.quickstart.sizes import QuickstartSize


@dataclass
class Heldout:
    cfg: Any  # its RunConfig
    N_target: float  # the compute-optimal N the fits predict at C_target
    size_from: str  # which fit chose it
    model: dict  # the ladder shape nearest N_target
    C_target: float
    N: int
    D: int
    C: float


def choose_heldout(size: QuickstartSize, base: dict, fits: Fits, runs, recipe) -> Heldout:
    """The held-out size: the surface law's optimum where its exponent is plausible, else the IsoFLOP optimum where
    that fit is well-posed (every minimum inside the trained sizes, a plausible exponent), else the Chinchilla law's
    optimum; then the ladder shape nearest it (in log N). A standalone WSD run (warmup, constant lr, the last 20%
    decayed) of C_target FLOPs, its lr from the sweep's ``recipe`` (a ``Recipe``) at its own N and D."""
    from scaling.model.accounting import count_params, flops_per_token
    from scaling.config import load_config
    from scaling.model.config import ModelConfig
    from scaling.sweep.recipe import check_tuned_under

    surface, iso = fits.surface, fits.iso
    C_target = size.heldout_factor * max(size.budgets)
    if surface is not None and 0.2 <= surface.params["a"] <= 0.9:
        N_star, size_from = float(surface.N_opt([C_target])[0, 0]), "surface law N_opt(C)"
    elif iso is not None and len(iso.minima) == len(size.budgets) and iso.minima["bracketed"].all() and 0.2 <= iso.a <= 0.9:
        N_star, size_from = float(iso.N_opt(C_target)), "IsoFLOP fit N_opt(C)"
    else:
        N_star = float(fits.law.compute_optimal([C_target]).iloc[0]["N_opt"])
        size_from = "Chinchilla-law N_opt(C)" + (" (the IsoFLOP fit is not well-posed on this sweep)" if iso is not None else "")
    shapes = [ModelConfig(**m, seq_len=size.seq_len, vocab_size=256) for m in size.ladder]
    if not (math.isfinite(N_star) and N_star > 0):
        size_from += f" = {N_star} (not usable), replaced by the largest swept size"
        N_star = float(runs["N"].max())
    held_model = min(shapes, key=lambda m: abs(math.log(count_params(m).total / N_star)))
    model = {k: getattr(held_model, k) for k in ("d_model", "n_layers", "n_heads", "seq_len", "vocab_size")}
    tokens_per_step = size.batch_size * size.seq_len
    steps = max(1, round(C_target / flops_per_token(held_model) / tokens_per_step))
    held_base = base | {"model": {**base["model"], **model}, "train": {**base["train"], "tokens": steps * tokens_per_step, "schedule": "wsd", "decay_fraction": 0.2}}
    held_base["log"] = {**held_base["log"], "wandb_tags": ["heldout", f"C={C_target:.2g}"],
                        "wandb_name": f"quickstart heldout N={count_params(held_model).total / 1e3:.0f}k C={C_target:.2g}"}
    held_raw = recipe.apply(held_base, load_config(base=held_base), count_params(held_model).total, steps * tokens_per_step, 1)
    cfg = load_config(base=held_raw)
    check_tuned_under(recipe, cfg, "the held-out run")  # the sweep's runs were checked when it was planned
    N, D = count_params(cfg.model).total, cfg.steps * cfg.tokens_per_step
    return Heldout(cfg, N_star, size_from, model, C_target, N, D, flops_per_token(cfg.model) * D)


def predict_heldout(fits: Fits, held: Heldout, runs, report: Path, seed: int, say) -> dict:
    """Every law's calibrated prediction of the held-out run (widened by the extrapolation error its backtests
    inside the sweep measured, with the seeds' run scatter for one run); the headline is the surface law, else the
    frontier, else Chinchilla. Written to ``prediction.json`` once, before the run trains, and read back after."""
    from scaling.train.record import write_json_atomic

    law, frontier, surface, sigma = fits.law, fits.frontier, fits.surface, fits.sigma
    N_h, D_h, C_h = held.N, held.D, held.C
    cp = predict(law, runs, sigma, report / "fit_chinchilla.json", say, N=[N_h], D=[D_h], C=[C_h])
    fp = predict(frontier, runs, sigma, report / "fit_frontier.json", say, C=[C_h]) if frontier is not None else None
    sp = predict(surface, runs, sigma, report / "fit_surface.json", say, N=[N_h], C=[C_h]) if surface is not None else None
    headline = "surface" if sp is not None else "frontier" if fp is not None else "chinchilla"
    hp = {"surface": sp, "frontier": fp, "chinchilla": cp}[headline]
    cals = {n: (m.calibration if m is not None else None) for n, m in (("surface", surface), ("frontier", frontier), ("chinchilla", law))}
    calibrated = cals[headline] is not None
    prediction = {
        "seed": seed,
        "C_target": held.C_target,
        "N_target": held.N_target,
        "size_from": held.size_from,
        "N": N_h,
        "D": D_h,
        "C": C_h,
        "model": held.model,
        "headline": headline,
        "kappa": {n: (c.kappa if c is not None else None) for n, c in cals.items()},
        "kappa_backtests": {n: (c.kappa_backtests if c is not None else None) for n, c in cals.items()},
        "width_from": str(hp["read"]) if "read" in hp else None,  # which read of the backtests set the headline's width ("prediction" / "backtest")
        "predicted_loss": float(hp["loss"]),
        "predicted_lo": float(hp["lo"]),
        "predicted_hi": float(hp["hi"]),
        "chinchilla": {"loss": float(cp["loss"]), "lo": float(cp["lo"]), "hi": float(cp["hi"])},
        "frontier": None if fp is None else {"loss": float(fp["loss"]), "lo": float(fp["lo"]), "hi": float(fp["hi"])},
        "seed_scatter": fits.scatter,
        "interval_kind": "calibrated" if calibrated else "fit-only",
        "interval": "95% prediction interval for one run: the fit's bootstrap (runs resampled within each budget)"
                    + (", widened by the extrapolation error the law's backtests inside the sweep measured (the wider of two "
                       "reads: kappa per decade of compute beyond the fitted range over every backtest prediction, and the "
                       "backtests' own errors per decade under Student's t)" if calibrated else "")
                    + ", times exp(N(0, sigma^2)), sigma the run-to-run scatter measured on repeated seeds",
    }
    pred_path = report / "prediction.json"
    if not pred_path.exists():  # the prediction is written before the held-out run trains, and kept
        write_json_atomic(pred_path, clean(prediction))
    return json.loads(pred_path.read_text())
