"""``grid.kind: wsd_branches`` (Hagele et al. 2024): per variant, size and seed one trunk at constant lr after warmup,
with checkpoints kept at every branch point, and one branch per budget or token count that starts from the trunk's
checkpoint and decays the lr over its last ``cooldown_fraction``. With ``sizes_per_budget``, a budget branches only
from the sizes nearest its prior optimum (in log N), so trunks are shared between budgets."""

from __future__ import annotations

import math
from typing import Optional

from scaling.model.accounting import count_params, flops_per_token
from scaling.config import ConfigError, merge_dicts
from scaling.sweep.grids.base import GridKind, register_grid
from scaling.sweep.schema import (
    BRANCH_PREFIX, PlannedRun, SweepSpec, apply_overrides, check_budget, check_sizes_per_budget, load_run,
    positive_numbers, prior_optimum, probe_run, resolve_model, size_dict,
)
from scaling.train.record import config_hash


@register_grid("wsd_branches")
class WSDBranches(GridKind):
    uses = frozenset({"budgets", "tokens", "sizes_per_budget"})

    def validate(self, spec: SweepSpec) -> None:
        g = spec.grid
        if not g.sizes:
            raise ConfigError("grid.sizes is empty: a wsd_branches grid needs the model sizes that train a trunk each")
        if not (g.budgets or g.tokens):
            raise ConfigError("grid.budgets and grid.tokens are empty: a wsd_branches grid needs branch points (compute budgets or token counts)")
        positive_numbers(g.budgets, "grid.budgets")
        positive_numbers(g.tokens, "grid.tokens")
        if not 0 < g.cooldown_fraction < 1:
            raise ConfigError(f"grid.cooldown_fraction must be in (0, 1) (the share of each branch's steps spent decaying), got {g.cooldown_fraction}")
        if g.sizes_per_budget:
            if not g.budgets:
                raise ConfigError("grid.sizes_per_budget with wsd_branches picks sizes per compute budget: give grid.budgets")
            check_sizes_per_budget(g)
        for i, o in enumerate(spec.overrides):
            if isinstance(o, dict) and "budget" in (o.get("match") or {}):
                raise ConfigError(f"overrides[{i}].match: 'budget' cannot be matched in a wsd_branches grid (a size's branches share one trunk)")

    def plan(self, spec: SweepSpec, n_devices: int, added: list[dict]) -> list[PlannedRun]:
        """A wsd_branches grid: per variant, size and seed one trunk (constant lr after warmup, checkpoints kept at
        every branch point) and one branch per budget / token count. The recipe sizes lr and batch once per trunk
        (batch halving for its shortest branch), and the warmup is fixed in steps, so every branch's schedule equals
        its trunk's up to the branch point: a branch ends exactly where a standalone WSD run of its schedule would."""
        runs: list[PlannedRun] = []
        for vname, variant in (spec.variants or {"default": {}}).items():
            vbase = merge_dicts(spec.base, variant)
            for si, size, pts in wsd_points(spec, vbase):
                for seed in spec.seeds:
                    runs += trunk_and_branches(spec, vbase, n_devices, vname, si, size, pts, seed)
        return runs


def trunk_and_branches(spec: SweepSpec, vbase: dict, n_devices: int, vname: str, si: int, size: dict,
                       pts: list[tuple[Optional[float], Optional[float]]], seed: int) -> list[PlannedRun]:
    """One trunk (variant, size, seed) and its branches, one per (budget, tokens) point: the trunk keeps a
    checkpoint at every branch's cooldown start; a branch's schedule is the trunk's up to there."""
    g = spec.grid
    here = {"variant": vname, "size": si, "budget": None, "seed": seed}
    where = f"trunk (variant={vname}, size={si}, seed={seed})"
    raw = apply_overrides(merge_dicts(merge_dicts(vbase, {"model": size}), {"train": {"seed": seed}}), spec.overrides, here)
    probe, n_basis, fpt = probe_run(spec, raw, where)
    wanted = sorted({(C / fpt if C else D, C) for C, D in pts}, key=lambda t: t[0])
    # one lr for all the trunk's branches: a horizon-dependent recipe takes the geometric mean of their lengths
    lr_tokens = math.exp(sum(math.log(D) for D, _ in wanted) / len(wanted))
    raw = spec.recipe.apply(raw, probe, n_params=n_basis, tokens=wanted[0][0], n_devices=n_devices, lr_tokens=lr_tokens)
    raw = apply_overrides(raw, spec.overrides, here)
    tps = probe.model.seq_len * raw.get("train", {}).get("batch_size", probe.train.batch_size)
    steps_min = int(round(wanted[0][0] / tps))
    train_raw = raw.get("train", {})
    warmup = train_raw.get("warmup_steps")
    if warmup is None:
        warmup = int(round(train_raw.get("warmup_fraction", probe.train.warmup_fraction) * steps_min))
    branches = []
    for D, C in wanted:
        steps = int(round(D / tps))
        decay = max(1, int(round(g.cooldown_fraction * steps)))
        start = steps - decay
        what = f"budget={C:.3g}" if C else f"D={D:.3g}"
        if start < max(1, warmup):
            raise ConfigError(
                f"branch (variant={vname}, size={si}, {what}, seed={seed}): its {steps} steps of {tps} tokens "
                f"would start the cooldown at step {start}, before the trunk's warmup of {warmup} steps ends; "
                "raise the budget, shrink the batch or lower grid.cooldown_fraction"
            )
        if (steps, C) not in [(b[0], b[3]) for b in branches]:
            branches.append((steps, decay, start, C))
    keep = sorted({b[2] for b in branches})
    trunk_raw = merge_dicts(raw, {"train": {"schedule": "constant", "warmup_steps": warmup, "tokens": keep[-1] * tps, "keep_steps": keep}})
    if g.trunk_eval_tokens:
        trunk_raw["train"]["eval_tokens"] = int(g.trunk_eval_tokens)
    trunk = load_run(where, trunk_raw)
    trunk_id = config_hash(trunk.to_dict())
    cnt = count_params(trunk.model)
    fpt = flops_per_token(trunk.model, trunk.train.flops_attention)
    t_fl = fpt * trunk.steps * trunk.tokens_per_step
    runs = [PlannedRun(trunk_id, trunk, vname, si, None, seed, cnt.total, cnt.active, trunk.steps * trunk.tokens_per_step,
                           t_fl, trunk.steps, role="trunk")]
    for steps, decay, start, C in branches:
        b_raw = merge_dicts(raw, {"train": {
            "schedule": "wsd", "warmup_steps": warmup, "decay_steps": decay, "decay_shape": g.cooldown_shape,
            "tokens": steps * tps, "init_from": f"{BRANCH_PREFIX}{trunk_id}@{start}",
        }})
        b_where = f"branch (variant={vname}, size={si}, {f'budget={C:.3g}' if C else f'D={steps * tps:.3g}'}, seed={seed})"
        cfg = load_run(b_where, b_raw)
        fl = fpt * cfg.steps * cfg.tokens_per_step
        check_budget(b_where, fl, C, cfg.tokens_per_step)
        runs.append(PlannedRun(config_hash(cfg.to_dict()), cfg, vname, si, C, seed, cnt.total, cnt.active,
                               cfg.steps * cfg.tokens_per_step, fl, cfg.steps, role="branch", trunk_id=trunk_id,
                               branch_step=start, cost_flops=fpt * decay * cfg.tokens_per_step))
    return runs


def wsd_points(spec: SweepSpec, base: dict) -> list[tuple[int, dict, list[tuple[Optional[float], Optional[float]]]]]:
    """(size index, model dict, [(budget, tokens), ...]) per size of a wsd_branches grid: every size gets every
    token count; every budget goes to every size, or with ``sizes_per_budget`` to the sizes nearest its prior
    optimum (in log N). Sizes no branch uses are left out."""
    g = spec.grid
    sizes = [size_dict(s, i) for i, s in enumerate(g.sizes)]
    points: list[list] = [[(None, float(D)) for D in g.tokens] for _ in sizes]
    if g.budgets:
        if g.sizes_per_budget:
            ns = []
            for s in sizes:
                c = count_params(resolve_model(base, s))
                ns.append(c.active if g.params == "active" else c.total)
        for C in g.budgets:
            C = float(C)
            chosen = range(len(sizes))
            if g.sizes_per_budget:
                n_opt = prior_optimum(g, C)
                chosen = sorted(range(len(sizes)), key=lambda j: abs(math.log(ns[j] / n_opt)))[: g.sizes_per_budget]
            for j in chosen:
                points[j].append((C, None))
    return [(si, sizes[si], pts) for si, pts in enumerate(points) if pts]

