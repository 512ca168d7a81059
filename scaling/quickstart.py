"""``scaling quickstart``: the end-to-end job on the embedded default data.

1. Train an IsoFLOP sweep of dense models on the Python standard-library code corpus (byte-level) as WSD
   branches (Hagele et al. 2024): one constant-lr trunk per size, and at every compute budget a branch that
   decays the lr over its last 20%, for the sizes nearest that budget's expected optimum (sizes <= 1.6x apart).
   A few points are repeated with two more seeds to measure the run-to-run scatter. Two worker processes share
   the sweep (both cores).
2. Fit the IsoFLOP surface (the GPT-4 frontier E + A C^-gamma fitted with each budget's parabola in log N: the
   headline), the frontier on per-budget minima, the Chinchilla law and the IsoFLOP exponents, with bootstrap
   intervals.
3. Choose a held-out run at 10x the largest budget at the compute-optimal size the IsoFLOP fit predicts, and
   *predict* its loss with a 95% interval (fit uncertainty and the measured seed scatter) before training it
   (written to ``prediction.json`` first).
4. Train the held-out run and report predicted vs measured in ``report/report.md``: the extrapolation figure,
   the runs table, the fits as JSON and the plots.

``--seed`` changes the data order and the initialisation of every run. Rerunning the same command reuses
completed runs and resumes interrupted ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


from scaling import exits
from scaling.config import ConfigError


def _m(d: int, L: int, H: int) -> dict:
    return {"d_model": d, "n_layers": L, "n_heads": H}


@dataclass(frozen=True)
class QuickstartSize:
    budgets: tuple[float, ...]
    ladder: tuple[dict, ...]  # model shapes <= 1.6x apart in N; the held-out run picks from these too
    sizes_per_budget: int
    prior: dict  # N_opt(C) = k C^a: where each budget's sizes are centred (measured on this corpus)
    batch_size: int
    seq_len: int
    bootstrap: int
    eval_fraction: float  # share of the corpus held out: every run is scored on all of it
    noise_budgets: int = 2  # the smallest budgets' ...
    noise_sizes: int = 3  # ... sizes nearest the optimum are repeated with ...
    noise_seeds: int = 2  # ... this many more seeds
    heldout_factor: float = 10.0
    workers: int = 2
    eval_tokens: int | None = None  # None: the whole eval split
    warmup_steps: int | None = None  # every trunk's and the held-out run's warmup (None: 5% of the shortest branch)


FULL = QuickstartSize(
    budgets=tuple(1.25e11 * 2 ** (k / 2) for k in range(7)),  # 1.25e11 .. 1e12, sqrt(2) apart
    # One shape family (two layers) from 14k to 461k parameters: a one-layer model cannot compose attention heads
    # (no induction heads) and scales on another law, so a ladder that changes depth mid-way bends the frontier.
    ladder=tuple(_m(d, 2, h) for d, h in ((16, 2), (20, 2), (24, 3), (32, 4), (40, 5), (48, 6), (56, 7), (64, 8),
                                          (80, 10), (96, 12), (112, 14), (128, 16))),  # heads of 8 dims (d20: 10)
    sizes_per_budget=7,
    prior={"a": 0.52, "k": 0.061},  # 25k parameters at 6.25e10 FLOPs, C^0.52 (pilot sweeps of this corpus)
    batch_size=16,
    seq_len=64,
    bootstrap=1000,
    eval_fraction=0.04,
    # One fixed warmup for every run, so the sweep and the held-out run follow one recipe. The planner's default (5%
    # of a trunk's shortest branch) gave the large trunks 10-22 steps: at 271k parameters and 5e11 FLOPs, 16 warmup
    # steps left the loss 4.2% higher and 4.8x more seed-dependent (sd 2.16% over 3 inits x 3 data orders) than 100
    # steps (50-150 steps: the same within 0.6%). It did not make the prediction better (benchmarks/RESULTS.md).
    warmup_steps=100,
)
TINY = QuickstartSize(
    budgets=(1e10, 2e10, 4e10, 8e10),
    ladder=(_m(16, 1, 1), _m(20, 1, 1), _m(24, 1, 1), _m(32, 1, 2), _m(40, 1, 2), _m(48, 1, 3), _m(64, 1, 2)),
    sizes_per_budget=4,
    prior={"a": 0.52, "k": 0.094},  # batch 8 x 32 tokens moves the optimum up: 15k parameters at 1e10 FLOPs
    batch_size=8,
    seq_len=32,
    bootstrap=100,
    eval_fraction=0.02,
    noise_budgets=1,
    noise_sizes=3,
    noise_seeds=1,
    eval_tokens=2**15,
    warmup_steps=40,  # 2 / (1 - beta2) steps, the shortest `sweep plan` does not warn about; cooldowns start at >= 239
)
NOISE_SEED_STEP = 1000  # the repeat seeds of quickstart --seed s are s + 1000, s + 2000, ...


def _base(size: QuickstartSize, data: str, wandb: str, seed: int, eval_tokens: int) -> dict:
    return {
        "data": {"source": data, "eval_fraction": size.eval_fraction},
        "model": {"seq_len": size.seq_len, "vocab_size": 256},
        # one evaluation at the end, on the same fixed held-out set for every run
        "train": {"batch_size": size.batch_size, "log_every": 20, "eval_tokens": eval_tokens, "eval_every": 10**9,
                  "seed": seed, **({} if size.warmup_steps is None else {"warmup_steps": size.warmup_steps})},
        "log": {"wandb": wandb, "wandb_group": "quickstart"},  # the sweep, its repeat seeds, the held-out run and the fits
    }


# One batch size for every run (the sweep and the held-out run): the loss at a given compute depends on it, so
# halving it for short runs (the recipe's min_steps) would change the law between sizes.
# lr_base 5e-3: at 26k, 58k and 130k parameters (two budgets, three seeds each) half the earlier 1e-2 reached a
# lower mean loss at every point, and 1e-2 had seeds 5-8% apart.
RECIPE = {"lr_base": 5e-3, "lr_ref_params": 3e4, "lr_exponent": -0.25, "min_steps": 0}


def sweep_dict(size: QuickstartSize, data: str, wandb: str, seed: int = 0, eval_tokens: int = 2**18) -> dict:
    return {
        "name": "quickstart",
        "base": _base(size, data, wandb, seed, eval_tokens),
        "grid": {"kind": "wsd_branches", "sizes": list(size.ladder), "budgets": list(size.budgets),
                 "sizes_per_budget": size.sizes_per_budget, "prior": dict(size.prior), "cooldown_fraction": 0.2,
                 "trunk_eval_tokens": 16 * size.seq_len * 16},
        "seeds": [seed],
        "recipe": dict(RECIPE),
    }


def noise_dict(size: QuickstartSize, data: str, wandb: str, seed: int = 0, eval_tokens: int = 2**18) -> dict:
    """The repeat-seed sweep: the smallest budgets' sizes nearest the optimum, with more seeds."""
    raw = sweep_dict(size, data, wandb, seed, eval_tokens)
    raw["name"] = "quickstart-noise"
    raw["base"]["log"] = {**raw["base"]["log"], "wandb_tags": ["repeat-seed"]}
    raw["grid"] = {**raw["grid"], "budgets": list(size.budgets[: size.noise_budgets]), "sizes_per_budget": size.noise_sizes}
    raw["seeds"] = [seed + NOISE_SEED_STEP * (i + 1) for i in range(size.noise_seeds)]
    return raw


def _eval_tokens(size: QuickstartSize, data: str) -> int:
    """Every run is scored on the whole eval split (``size.eval_tokens`` caps it): the same windows for all."""
    if size.eval_tokens is not None:
        return size.eval_tokens
    from scaling.config import load_config
    from scaling.data import build_dataset

    cfg = load_config(base={"data": {"source": data, "eval_fraction": size.eval_fraction}, "model": {"seq_len": size.seq_len, "vocab_size": 256}})
    _, avail = build_dataset(cfg.data, cfg.model).eval_windows(1, size.seq_len)
    return int(avail) * size.seq_len if avail else 2**20


HELPER_PRELUDE = """\
import os, signal, threading, time
from scaling.cli import main
parent = os.getppid()
def _orphaned():
    while os.getppid() == parent:
        time.sleep(2)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=_orphaned, daemon=True).start()
rc = 0
"""


def _stop_child(p: subprocess.Popen, timeout: float = 120) -> None:
    """SIGTERM a child still running (it checkpoints and exits as preempted); kill it if it has not exited in
    ``timeout`` seconds."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _run_sweeps(sweeps: list[tuple[dict, Path]], size: QuickstartSize, progress: bool, should_stop) -> None:
    """Train the sweeps with ``size.workers`` processes: this one (with the progress bar) and helpers started
    with ``scaling sweep run`` on the same directories (runs are claimed, so none is trained twice)."""
    import yaml

    from scaling.sweep.runner import collect, run_sweep
    from scaling.sweep.spec import parse_sweep
    from scaling.ui import progress_bar

    specs = [parse_sweep(raw) for raw, _ in sweeps]  # both validated before anything trains
    for raw, d in sweeps:
        d.mkdir(parents=True, exist_ok=True)
        (d.parent / f"{d.name}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    helpers = []
    # A helper stops (SIGTERM to itself: checkpointed, resumable) when this process dies, and runs the next sweep
    # only when the previous one finished.
    script = HELPER_PRELUDE + "".join(
        f"rc = rc or main(['sweep', 'run', {str(d.parent / (d.name + '.yaml'))!r}, '--out', {str(d)!r}, '--no-progress'])\n" for _, d in sweeps
    )
    env = dict(os.environ)
    for w in range(size.workers - 1):
        log = open(sweeps[0][1].parent / f"worker{w + 1}.log", "a")
        helpers.append(subprocess.Popen([sys.executable, "-c", script], stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        for spec, (raw, d) in zip(specs, sweeps):
            with progress_bar(progress) as bar:
                res = run_sweep(spec, d, progress=bar, should_stop=should_stop, sweep_yaml=yaml.safe_dump(raw, sort_keys=False))
            if res.stopped:
                raise KeyboardInterrupt("stopped; rerun to resume")
        for h in helpers:
            h.wait()
    finally:
        for h in helpers:  # stopped: the helpers checkpoint and exit too (SIGTERM = preempted, resumable)
            _stop_child(h)
    for spec, (_, d) in zip(specs, sweeps):  # a helper may have finished runs after this process collected
        collect(spec, d)


HELDOUT_SCRIPT = """\
from scaling.signals import StopFlag
stop = StopFlag().install()
from scaling.config import load_config
from scaling.train import StopRequested, train
from scaling.ui import progress_bar
try:
    with progress_bar({progress!r}) as bar:
        train(load_config({cfg!r}), {out!r}, progress=bar, should_stop=stop, run_id={run_id!r})
except StopRequested:
    rc = stop.exit_code
except Exception as e:  # the record keeps the traceback; the terminal gets one line
    import sys
    print(f"held-out run: {{type(e).__name__}}: {{e}}", file=sys.stderr)
    rc = 1
"""


class QuickstartError(RuntimeError):
    """A stage of the quickstart failed (the message says which and where its output is)."""


def _train_heldout(cfg, run_dir: Path, run_id: str, progress: bool, should_stop, devices: int) -> dict:
    """Train the held-out run and return its record. On a CPU with ``devices`` >= 2 cores it trains data-parallel
    over that many host devices in a child process (``--xla_force_host_platform_device_count``; this process's
    JAX is already initialised with one): the sweep's workers are done, and one process alone leaves a core idle
    (measured 1.8x the tokens/s of one process with both cores' threads). The child resumes like any run and is
    stopped (checkpointed) with this process."""
    import jax
    import yaml

    from scaling.config import load_config
    from scaling.train import train
    from scaling.ui import progress_bar

    rec = run_dir / "record.json"
    if rec.exists() and json.loads(rec.read_text()).get("status") == "completed":
        return json.loads(rec.read_text())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    devices = min(devices, cores)
    if jax.default_backend() != "cpu" or devices < 2 or cfg.train.batch_size % devices:
        with progress_bar(progress) as bar:
            return train(cfg, run_dir, progress=bar, should_stop=should_stop, run_id=run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir.parent / f"{run_id}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if load_config(cfg_path).to_dict() != cfg.to_dict():  # the child must train exactly this config
        raise QuickstartError(f"{cfg_path} does not round-trip the held-out config")
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    script = HELPER_PRELUDE + HELDOUT_SCRIPT.format(progress=progress, cfg=str(cfg_path), out=str(run_dir), run_id=run_id) + "raise SystemExit(rc)\n"
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        while child.poll() is None and not (should_stop is not None and should_stop()):
            time.sleep(0.5)
    finally:
        _stop_child(child)  # stopped (or this process failing): checkpoint and exit, a resumable preemption
    r = json.loads(rec.read_text()) if rec.exists() else {}
    if child.returncode == 0 and r.get("status") == "completed":
        return r
    if child.returncode in (75, 130, -signal.SIGTERM, -signal.SIGINT):  # by exit code: an older record may say "stopped"
        raise KeyboardInterrupt("held-out run stopped; rerun to resume")
    raise QuickstartError(f"the held-out run failed (exit code {child.returncode}, status {r.get('status')!r}); its record and log are in {run_dir}")


def _predict(law, runs, sigma, path: Path, say, **cols):
    """The held-out prediction with the law's calibrated interval (the fit-only one where the sweep cannot be
    backtested, said), the law re-saved with its calibration."""
    from analysis.backtest import calibrate
    from analysis.errors import AnalysisError

    try:
        calibrate(law, runs)
        law.save(path)
    except AnalysisError as e:
        say(f"      {law.name} law: intervals not calibrated ({e})")
    inputs = {k: v for k, v in cols.items() if k in law.inputs or (k == "C" and law.calibration is not None)}
    if law.calibration is not None:
        return law.predict_calibrated(noise_scale=sigma, **inputs).iloc[0]
    return law.predict_interval(noise_scale=sigma, **{k: v for k, v in inputs.items() if k in law.inputs}).iloc[0]


def _check_manifest(out: Path, manifest: dict) -> None:
    path = out / "quickstart.json"
    if path.exists():
        old = json.loads(path.read_text())
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
    import numpy as np
    import pandas as pd

    from analysis import bootstrap, isoflop_analysis, load_runs, plots, seed_scatter
    from analysis.errors import FitError
    from analysis.laws import HUBER_K, ChinchillaLaw, FrontierLaw, SurfaceLaw
    from scaling.accounting import count_params, flops_per_token
    from scaling.config import load_config
    from scaling.model.config import ModelConfig
    from scaling.sweep.recipe import Recipe
    from scaling.train import train
    from scaling.train.record import config_hash, write_json_atomic
    from scaling.ui import progress_bar

    t_start = time.perf_counter()
    out = Path(out)
    size = TINY if tiny else FULL
    _check_manifest(out, {"tiny": tiny, "data": data, "seed": seed})
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    for m in size.ladder:  # the held-out run may take any ladder shape: all of them are checked before training
        load_config(base={"model": {**m, "seq_len": size.seq_len, "vocab_size": 256}})
    eval_tokens = _eval_tokens(size, data)
    raw, noise_raw = sweep_dict(size, data, wandb, seed, eval_tokens), noise_dict(size, data, wandb, seed, eval_tokens)
    say = print

    say(
        f"[1/4] IsoFLOP sweep as WSD branches: {len(size.budgets)} budgets x {size.sizes_per_budget} sizes (of {len(size.ladder)}), "
        f"plus {size.noise_seeds} repeat seeds at {size.noise_budgets * size.noise_sizes} points, on data={data!r}, seed {seed}, "
        f"{size.workers} workers -> {out}/sweep"
    )
    _run_sweeps([(raw, out / "sweep"), (noise_raw, out / "noise")], size, progress, should_stop)
    runs = load_runs(out / "sweep" / "runs.csv")
    noise = load_runs(out / "noise" / "runs.csv")
    runs.to_csv(report / "runs.csv", index=False)
    noise.to_csv(report / "noise_runs.csv", index=False)

    say(f"[2/4] fitting the IsoFLOP surface, the compute frontier, the Chinchilla law ({size.bootstrap} bootstrap resamples each) and the IsoFLOP exponents")
    keys = ("d_model", "n_layers", "budget")
    repeats = pd.concat([runs.merge(noise[list(keys)].drop_duplicates(), on=list(keys)), noise], ignore_index=True)
    scatter = seed_scatter(repeats, keys=keys)
    sigma = scatter["sigma"]
    law = ChinchillaLaw().fit(runs)
    bootstrap(law, runs, n=size.bootstrap, seed=0)
    law.save(report / "fit_chinchilla.json")
    try:
        frontier = FrontierLaw().fit(runs)
        bootstrap(frontier, runs, n=size.bootstrap, seed=0)
        frontier.save(report / "fit_frontier.json")
    except FitError as e:  # fewer bracketed budgets than the law has parameters: the Chinchilla law is the headline
        frontier = None
        (report / "fit_frontier.json").write_text(json.dumps({"law": "frontier", "error": str(e)}, indent=1))
        say(f"      frontier law not fitted on this sweep: {e}")
    try:
        # Huber's delta at 1.345 times the measured run-to-run scatter (95% efficient for Gaussian scatter); without
        # repeats, the first fit's own residual scatter. Ungrouped: the trunk random-intercept fit
        # (groups="trunk_id") gave narrower intervals but missed seed 2's measurement (benchmarks/RESULTS.md).
        scale = sigma or SurfaceLaw().fit(runs).resid_scale
        surface = SurfaceLaw(delta=HUBER_K * scale).fit(runs)
        bootstrap(surface, runs, n=size.bootstrap, seed=0)
        surface.save(report / "fit_surface.json")
    except FitError as e:
        surface = None
        (report / "fit_surface.json").write_text(json.dumps({"law": "surface", "error": str(e)}, indent=1))
        say(f"      surface law not fitted on this sweep: {e}")
    C_target = size.heldout_factor * max(size.budgets)
    try:
        iso = isoflop_analysis(runs, n_bootstrap=1000, seed=0)
        (report / "fit_isoflop.json").write_text(json.dumps(_clean(iso.to_dict()), indent=1))
    except ValueError as e:  # too few budgets with an interior minimum: noisy or badly bracketed sizes
        iso = None
        (report / "fit_isoflop.json").write_text(json.dumps({"law": "isoflop", "error": str(e)}, indent=1))
        say(f"      IsoFLOP analysis not possible on this sweep: {e}")
    # The held-out size: the surface law's optimum where its exponent is plausible, else the IsoFLOP optimum where
    # that fit is well-posed (every minimum inside the trained sizes, a plausible exponent), else the Chinchilla
    # law's optimum; then the ladder shape nearest it (in log N).
    if surface is not None and 0.2 <= surface.params["a"] <= 0.9:
        N_star, size_from = float(surface.N_opt([C_target])[0, 0]), "surface law N_opt(C)"
    elif iso is not None and len(iso.minima) == len(size.budgets) and iso.minima["bracketed"].all() and 0.2 <= iso.a <= 0.9:
        N_star, size_from = float(iso.N_opt(C_target)), "IsoFLOP fit N_opt(C)"
    else:
        N_star = float(law.compute_optimal([C_target]).iloc[0]["N_opt"])
        size_from = "Chinchilla-law N_opt(C)" + (" (the IsoFLOP fit is not well-posed on this sweep)" if iso is not None else "")
    shapes = [ModelConfig(**m, seq_len=size.seq_len, vocab_size=256) for m in size.ladder]
    if not (math.isfinite(N_star) and N_star > 0):
        size_from += f" = {N_star} (not usable), replaced by the largest swept size"
        N_star = float(runs["N"].max())
    held_model = min(shapes, key=lambda m: abs(math.log(count_params(m).total / N_star)))
    model = {k: getattr(held_model, k) for k in ("d_model", "n_layers", "n_heads", "seq_len", "vocab_size")}

    # Held-out run: a standalone WSD run (warmup, constant lr, the last 20% decayed) of C_target FLOPs.
    tokens_per_step = size.batch_size * size.seq_len
    steps = max(1, round(C_target / flops_per_token(held_model) / tokens_per_step))
    held_base = raw["base"] | {"model": model, "train": {**raw["base"]["train"], "tokens": steps * tokens_per_step,
                                                           "schedule": "wsd", "decay_fraction": 0.2}}
    held_base["log"] = {**held_base["log"], "wandb_tags": ["heldout", f"C={C_target:.2g}"],
                        "wandb_name": f"quickstart heldout N={count_params(held_model).total / 1e3:.0f}k C={C_target:.2g}"}
    held_raw = Recipe(**RECIPE).apply(held_base, load_config(base=held_base), count_params(held_model).total, steps * tokens_per_step, 1)
    held_cfg = load_config(base=held_raw)
    N_h, D_h = count_params(held_cfg.model).total, held_cfg.steps * held_cfg.tokens_per_step
    C_h = flops_per_token(held_cfg.model) * D_h
    # Every law's interval is calibrated: widened by the extrapolation error its backtests inside the sweep measured
    # (analysis/backtest.py), with the seeds' run scatter for the one held-out run
    cp = _predict(law, runs, sigma, report / "fit_chinchilla.json", say, N=[N_h], D=[D_h], C=[C_h])
    fp = _predict(frontier, runs, sigma, report / "fit_frontier.json", say, C=[C_h]) if frontier is not None else None
    sp = _predict(surface, runs, sigma, report / "fit_surface.json", say, N=[N_h], C=[C_h]) if surface is not None else None
    headline = "surface" if sp is not None else "frontier" if fp is not None else "chinchilla"
    hp = {"surface": sp, "frontier": fp, "chinchilla": cp}[headline]
    prediction = {
        "seed": seed,
        "C_target": C_target,
        "N_target": N_star,
        "size_from": size_from,
        "N": N_h,
        "D": D_h,
        "C": C_h,
        "model": model,
        "headline": headline,
        "interval": "calibrated" if {"surface": surface, "frontier": frontier, "chinchilla": law}[headline].calibration is not None else "fit-only",
        "kappa": {n: (m.calibration.kappa if m is not None and m.calibration is not None else None)
                  for n, m in (("surface", surface), ("frontier", frontier), ("chinchilla", law))},
        "predicted_loss": float(hp["loss"]),
        "predicted_lo": float(hp["lo"]),
        "predicted_hi": float(hp["hi"]),
        "chinchilla": {"loss": float(cp["loss"]), "lo": float(cp["lo"]), "hi": float(cp["hi"])},
        "frontier": None if fp is None else {"loss": float(fp["loss"]), "lo": float(fp["lo"]), "hi": float(fp["hi"])},
        "seed_scatter": scatter,
        "interval": "95% prediction interval for one run: the fit's bootstrap (runs resampled within each budget) times "
                    "exp(N(0, sigma^2)), sigma the run-to-run scatter measured on repeated seeds",
    }
    pred_path = report / "prediction.json"
    if not pred_path.exists():  # the prediction is written before the held-out run trains, and kept
        write_json_atomic(pred_path, _clean(prediction))
    prediction = json.loads(pred_path.read_text())
    say(
        f"[3/4] held-out run: N={N_h:,} D={D_h:,} C={C_h:.3g} ({C_h / max(size.budgets):.1f}x the largest budget); "
        f"predicted loss {prediction['predicted_loss']:.4f} [{prediction['predicted_lo']:.4f}, {prediction['predicted_hi']:.4f}] ({prediction['headline']} law)"
    )
    run_id = config_hash(held_cfg.to_dict())
    record = _train_heldout(held_cfg, out / "heldout" / run_id, run_id, progress, should_stop, size.workers)
    measured, stderr = record["final_eval_loss"], record["final_eval_loss_stderr"]
    heldout_row = pd.DataFrame([{"N": N_h, "D": D_h, "C": record["flops"], "loss": measured}])

    say("[4/4] writing the report")
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
        "n_sweep_runs": len(runs),
        "n_noise_runs": len(noise),
        "sweep_flops_spent": float(spent["C_spent"].sum()),
        "sweep_flops_as_separate_runs": float(spent.loc[spent["role"] != "trunk", "C"].sum()),
        "wall_time_s": time.perf_counter() - t_start,
        "heldout_run_dir": str(out / "heldout" / run_id),
    }
    times = out / "wall_times.json"  # one entry per invocation (a resumed quickstart has several)
    hist = json.loads(times.read_text()) if times.exists() else []
    hist.append(summary["wall_time_s"])
    times.write_text(json.dumps(hist))
    summary["wall_time_s_invocations"] = hist
    write_json_atomic(report / "summary.json", _clean(summary))
    (report / "report.md").write_text(render_report(summary, runs, law, frontier, iso, record, surface))
    if wandb != "disabled":
        _log_fits(report, "quickstart", wandb, law, frontier, iso, runs, summary, surface)
    say(
        f"held-out loss: predicted {p['predicted_loss']:.4f} [{p['predicted_lo']:.4f}, {p['predicted_hi']:.4f}] ({p['headline']} law), "
        f"measured {measured:.4f} ± {stderr:.4f} "
        f"({100 * summary['rel_error']:+.2f}%, {'inside' if summary['inside_interval'] else 'outside'} the interval; "
        + (f"frontier law {p['frontier']['loss']:.4f}, {100 * summary['frontier_rel_error']:+.2f}%; " if p.get("frontier") and p["headline"] != "frontier" else "")
        + f"Chinchilla law {p['chinchilla']['loss']:.4f}, {100 * summary['chinchilla_rel_error']:+.2f}%)\n"
        f"report: {report / 'report.md'}"
    )
    return summary


def _log_fits(report: Path, group: str, mode: str, law, frontier, iso, runs, summary: dict, surface=None) -> None:
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
        "## Held-out extrapolation",
        "",
        "![extrapolation](extrapolation.png)",
        "",
        "| | N | D | C | loss | error |",
        "|---|---|---|---|---|---|",
        f"| **predicted, {p.get('headline', 'frontier')} law** (before training) | {p['N']:,} | {p['D']:,} | {p['C']:.3g} | {p['predicted_loss']:.4f} "
        f"[{p['predicted_lo']:.4f}, {p['predicted_hi']:.4f}] | {100 * s['rel_error']:+.2f}% |",
        *([f"| predicted, frontier law (per-budget minima) | | | | {fr['loss']:.4f} [{fr['lo']:.4f}, {fr['hi']:.4f}] | {100 * s['frontier_rel_error']:+.2f}% |"]
          if fr and p.get("headline") != "frontier" else []),
        f"| predicted, Chinchilla law | | | | {ch['loss']:.4f} [{ch['lo']:.4f}, {ch['hi']:.4f}] | {100 * s['chinchilla_rel_error']:+.2f}% |",
        f"| measured | | | {record['flops']:.3g} | {s['measured_eval_loss']:.4f} ± {s['measured_eval_loss_stderr']:.4f} "
        f"({100 * s['measured_eval_loss_rel_stderr']:.2f}%) | |",
        "",
        f"The measurement is **{'inside' if s['inside_interval'] else 'outside'}** the {p.get('headline', 'frontier')} law's 95% interval "
        f"(half-width {100 * s['interval_half_width_rel']:.1f}%). The interval combines the fit's bootstrap"
        + (f", the extrapolation error its backtests inside the sweep measured (kappa {p['kappa'][p['headline']]:.4f} per decade of compute)"
           if p.get("interval") == "calibrated" and (p.get("kappa") or {}).get(p.get("headline")) is not None else " (not calibrated: too few budgets to backtest)")
        + " and the "
        + (f"run-to-run scatter measured on repeated seeds: {100 * sc['sigma']:.2f}% ({sc['n_points']} points, {sc['dof']} degrees of freedom)."
           if sc.get("sigma") else "fit's residual scatter (no repeated seeds finished).")
        + " " + HEADLINE_WHY[p.get("headline", "frontier")],
        "",
        "## IsoFLOP surface  L(N, C) = E + A (C/C0)^-gamma (1 + k ln^2(N / N_opt(C))),  N_opt = N0 (C/C0)^a",
        "",
        "| param | value | 95% interval |",
        "|---|---|---|",
        *([f"| {k} | {v:.4g} | [{sv[k]['lo']:.4g}, {sv[k]['hi']:.4g}] |" for k, v in surface.params.items() if k in sv]
          if surface is not None else ["Not fitted on this sweep (fewer than 2 budgets with 3 sizes)."]),
        *([f"", f"Scatter of log loss: between trunks sigma_u {100 * surface.variance['sigma_u']:.2f}%, between branches of one trunk "
           f"sigma_e {100 * surface.variance['sigma_e']:.2f}% ({surface.variance['n_groups']} trunks)."]
          if surface is not None and surface.variance else []),
        "",
        "## Compute frontier  L_opt(C) = E + A C^-gamma (IsoFLOP minima)",
        "",
        "| param | value | 95% interval |",
        "|---|---|---|",
        *([f"| {k} | {v:.4g} | [{fv[k]['lo']:.4g}, {fv[k]['hi']:.4g}] |" for k, v in frontier.params.items() if k in fv]
          if frontier is not None else [f"Not fitted on this sweep (fewer bracketed budgets than its 3 parameters); the headline is the {p.get('headline', 'chinchilla')} law."]),
        "",
        "## Chinchilla law  L = E + A/N^α + B/D^β",
        "",
        "| param | value | 95% interval |",
        "|---|---|---|",
        *[f"| {k} | {v:.4g} | [{iv[k]['lo']:.4g}, {iv[k]['hi']:.4g}] |" for k, v in law.params.items() if k in iv],
        "",
        "![contours](contours.png) ![loss vs compute](loss_vs_compute.png)",
        "",
        "## IsoFLOP analysis",
        "",
        *(_iso_lines(iso) if iso is not None else ["Not possible on this sweep (fewer than 2 budgets with an interior loss minimum)."]),
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
        out = args.out or ("quickstart_out" + (f"_seed{args.seed}" if args.seed else "") + ("_tiny" if args.tiny else ""))
        run_quickstart(out, tiny=args.tiny, data=args.data, wandb=args.wandb, progress=not args.no_progress, should_stop=stop, seed=args.seed)
    except ConfigError as e:
        return exits.fail(str(e), prefix="config error")
    except QuickstartError as e:
        return exits.fail(str(e), exits.FAILED)
    except (KeyboardInterrupt, StopRequested):
        print(f"{stop.status if stop.stop else 'stopped'}: rerun the same command to resume", file=sys.stderr)
        return stop.exit_code
    return 0


def add_quickstart_parser(sub) -> None:
    q = sub.add_parser(
        "quickstart",
        help="train an IsoFLOP sweep of WSD branches, fit the compute frontier, predict a 10x larger held-out run, train it, report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--out", default=None, help="output directory (rerun to resume; default quickstart_out[_seedN][_tiny])")
    q.add_argument("--seed", type=int, default=0, help="seed of every run's data order and initialisation (default 0)")
    q.add_argument("--tiny", action="store_true", help="reduced size (a few minutes; what CI runs)")
    q.add_argument("--data", default="stdlib", help="'stdlib' (default), 'synthetic' or a path to a corpus")
    q.add_argument("--wandb", choices=["offline", "online", "disabled"], default="offline")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_quickstart)


__all__ = ["FULL", "TINY", "add_quickstart_parser", "run_quickstart"]
