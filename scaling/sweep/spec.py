"""Sweep files: a typed, validated description of a grid of runs, and the planner that expands it.

A sweep YAML has::

    name: tiny_isoflop             # W&B group and default output name
    base: {model: ..., data: ..., train: ..., log: ...}   # a run config every run starts from
    grid:
      kind: isoflop                # isoflop | explicit | tokens_per_param
      sizes: [1e4, 3e4, {d_model: 64, n_layers: 2, n_heads: 2}]   # target parameter counts or model dicts
      budgets: [1e12, 3e12]        # isoflop: compute budgets C (FLOPs); D = C / FLOPs-per-token(N)
      # or, instead of sizes, an optimum-centred isoflop grid: at each budget 7 log-spaced sizes spanning 10x
      # around the prior optimum N_opt(C) = k * C^a (chinchilla: a = 0.5, 20 tokens per parameter)
      sizes_per_budget: 7
      span: 10
      center: prior
      prior: chinchilla            # or {a: 0.5, k: 0.0913}
      tokens: [1e6, 4e6]           # explicit: token budgets D (every size x every D)
      ratios: [5, 20, 80]          # tokens_per_param: D = ratio x N
      # wsd_branches (Hagele et al. 2024): one trunk per size at constant lr; a branch per budget (or token count)
      # starts from the trunk's checkpoint and decays the lr over the last cooldown_fraction of its own steps
      cooldown_fraction: 0.2
      cooldown_shape: linear       # or 1-sqrt
    seeds: [0]
    variants: {dense: {}, moe: {model: {moe: {n_experts: 8, top_k: 2}}}}   # each variant x every grid point
    recipe: {lr_base: 3e-3, ...}   # hyper-parameters as functions of N (scaling.sweep.recipe)
    overrides: [{match: {variant: moe}, set: {train.lr: 1e-3}}]

Run ids are stable hashes of each resolved run config, so editing a sweep adds or removes runs without renaming
the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from scaling.accounting import count_params, flops_per_token
from scaling.config import ConfigError, RunConfig, _f, from_dict, load_config, merge_dicts, parse_overrides, set_by_path
from scaling.configbase import load_yaml_file
from scaling.sweep.recipe import Recipe
from scaling.train.record import config_hash


@dataclass(frozen=True)
class GridSpec:
    kind: Literal["isoflop", "explicit", "tokens_per_param", "wsd_branches"] = _f(
        "isoflop",
        "Grid kind: isoflop (each size at each compute budget), explicit (each size at each token count), "
        "tokens_per_param (D = ratio x N), or wsd_branches (each size trains one constant-lr trunk; each budget or "
        "token count is a branch from the trunk's checkpoint that decays the lr over its last cooldown_fraction).",
    )
    sizes: list = _f([], "Model sizes: numbers (target total parameters) or model-section dicts.")
    budgets: list = _f([], "isoflop and wsd_branches: compute budgets in FLOPs.")
    tokens: list = _f([], "explicit and wsd_branches: token budgets D.")
    ratios: list = _f([], "tokens_per_param: D = ratio x N (N per `params`).")
    sizes_per_budget: int = _f(
        0,
        "isoflop: place this many log-spaced sizes around each budget's prior optimum instead of the same `sizes` "
        "at every budget (0: use `sizes`). wsd_branches: at each budget, branch only the this many `sizes` nearest "
        "(in log N) the prior optimum, so trunks are shared between budgets.",
    )
    span: float = _f(10.0, "isoflop with sizes_per_budget: largest / smallest size at each budget, centred on N_opt in log N.")
    center: Literal["prior"] = _f("prior", "isoflop with sizes_per_budget: where the sizes are centred (the prior optimum).")
    prior: Any = _f(
        "chinchilla",
        "The prior optimum N_opt(C) = k * C^a that centres the sizes: a named law (chinchilla: Hoffmann et al. 2022, "
        "a = 0.5 and 20 tokens per parameter at C = 6ND, i.e. k = 120^-0.5) or a mapping {a: ..., k: ...}.",
    )
    cooldown_fraction: float = _f(0.2, "wsd_branches: each branch decays the lr over this fraction of its own steps (Hagele et al. 2024 use 0.2).")
    cooldown_shape: Literal["linear", "1-sqrt"] = _f("linear", "wsd_branches: shape of each branch's decay to train.min_lr_ratio x lr.")
    trunk_eval_tokens: Optional[int] = _f(None, "wsd_branches: held-out tokens of a trunk's evaluations (null: train.eval_tokens); a trunk at constant lr is not a scaling point, so a small set saves time.")
    params: Literal["active", "total"] = _f(
        "active",
        "Which parameter count N means for tokens_per_param grids and the learning-rate recipe: active (what a token "
        "uses; equal to total for dense models, so dense and MoE runs of one size get the same tokens and lr) or "
        "total (all experts).",
    )


@dataclass(frozen=True)
class SweepSpec:
    name: str = _f("sweep", "Sweep name: the W&B group.")
    base: dict = _f({}, "Run config shared by every run (sections model, data, train, log).")
    grid: GridSpec = _f(GridSpec(), "The grid.")
    seeds: list = _f([0], "Seeds: every grid point is run once per seed.")
    variants: dict = _f({}, "Named partial configs (e.g. dense / moe) crossed with the grid; empty = one variant.")
    recipe: Recipe = _f(Recipe(), "Size-dependent hyper-parameters.")
    overrides: list = _f([], "Per-run overrides: [{match: {variant|size|budget|seed: value}, set: {dotted.key: value}}].")


@dataclass
class PlannedRun:
    run_id: str
    config: RunConfig
    variant: str
    size_index: int
    budget: Optional[float]
    seed: int
    n_params: int
    n_params_active: int
    tokens: int
    flops: float
    steps: int
    epochs: Optional[float] = None  # passes over the training split (None: endless source, or not checked)
    tags: dict = field(default_factory=dict)
    role: str = "run"  # run | trunk (a wsd_branches trunk: constant lr, not a scaling point) | branch
    trunk_id: Optional[str] = None  # branch: the trunk it starts from
    branch_step: Optional[int] = None  # branch: the trunk step it starts from (its cooldown's first step)
    cost_flops: Optional[float] = None  # compute this run spends itself (a branch: its cooldown only); None = flops

    @property
    def spent_flops(self) -> float:
        return self.flops if self.cost_flops is None else self.cost_flops

    def row(self) -> dict:
        return {
            "run_id": self.run_id,
            "variant": self.variant,
            "size": self.size_index,
            "N": self.n_params,
            "N_active": self.n_params_active,
            "D": self.tokens,
            "C": self.flops,
            "budget": self.budget,
            "steps": self.steps,
            "batch_size": self.config.train.batch_size,
            "lr": self.config.train.lr,
            "seed": self.seed,
            "epochs": self.epochs,
            "role": self.role,
            "trunk_id": self.trunk_id,
            "branch_step": self.branch_step,
            "C_spent": self.spent_flops,
        }


PRIORS = {  # named priors for N_opt(C) = k * C^a
    "chinchilla": {"a": 0.5, "k": 120**-0.5},  # Hoffmann et al. 2022: N_opt ~ C^0.5, D_opt / N_opt ~ 20 at C = 6ND
}


def prior_law(grid: GridSpec) -> tuple[float, float]:
    """(a, k) of the prior optimum N_opt(C) = k * C^a (validated)."""
    p = grid.prior
    if isinstance(p, str):
        if p not in PRIORS:
            raise ConfigError(f"grid.prior: {p!r} is not allowed; allowed values: {', '.join(PRIORS)} or a mapping {{a: ..., k: ...}}")
        p = PRIORS[p]
    if not isinstance(p, dict) or set(p) != {"a", "k"}:
        raise ConfigError(f"grid.prior: expected a named prior ({', '.join(PRIORS)}) or a mapping {{a: ..., k: ...}}, got {grid.prior!r}")
    a, k = _positive_numbers([p["a"], p["k"]], "grid.prior [a, k]")
    return a, k


def prior_optimum(grid: GridSpec, budget: float) -> float:
    a, k = prior_law(grid)
    return k * budget**a


def centred_targets(grid: GridSpec, budget: float) -> list[float]:
    """``sizes_per_budget`` target parameter counts, log-spaced over ``span`` and centred on the prior optimum."""
    n_opt, m = prior_optimum(grid, budget), grid.sizes_per_budget
    half = math.log(grid.span) / 2
    return [n_opt * math.exp(-half + 2 * half * i / (m - 1)) for i in range(m)]


def _positive_numbers(values: list, where: str) -> list[float]:
    out = []
    for i, v in enumerate(values):
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}[{i}]: expected a number, got {v!r}") from None
        if not (f > 0 and math.isfinite(f)):
            raise ConfigError(f"{where}[{i}] must be a positive number, got {v!r}")
        out.append(f)
    return out


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    return parse_sweep(load_sweep_raw(path, overrides))


def load_sweep_raw(path: str | Path, overrides: list[str] | None = None) -> dict:
    """A sweep file as a dict, with ``--set key=value`` overrides applied to its ``base`` run config (e.g.
    ``data.source=DIR``); the dict is what a sweep directory records as its ``sweep.yaml``."""
    p = Path(path)
    raw = load_yaml_file(p, "sweep file")
    if not isinstance(raw, dict):
        raise ConfigError(f"sweep file {str(p)!r} must hold a mapping (name, base, grid, ...)")
    if overrides:
        if not isinstance(raw.get("base", {}), dict):
            raise ConfigError(f"sweep file {str(p)!r}: base must be a mapping")
        raw.setdefault("base", {})
        for k, v in parse_overrides(overrides):
            set_by_path(raw["base"], k, v)
    return raw


def parse_sweep(raw: dict) -> SweepSpec:
    spec = from_dict(SweepSpec, raw)
    g = spec.grid
    if g.kind == "wsd_branches":
        _check_wsd_grid(spec)
    elif g.sizes_per_budget:
        if g.kind != "isoflop":
            raise ConfigError(f"grid.sizes_per_budget is only used by grid.kind='isoflop' or 'wsd_branches', not {g.kind!r}")
        if g.sizes:
            raise ConfigError("grid.sizes and grid.sizes_per_budget: give one (explicit sizes, or sizes centred on a prior optimum)")
        if g.sizes_per_budget < 3:
            raise ConfigError(f"grid.sizes_per_budget must be >= 3 (a minimum needs a size on each side), got {g.sizes_per_budget}")
        if not g.span > 1:
            raise ConfigError(f"grid.span must be > 1 (largest / smallest size), got {g.span}")
        prior_law(g)
    elif not g.sizes:
        raise ConfigError("grid.sizes is empty: list at least one model size (or grid.sizes_per_budget for an isoflop grid)")
    if g.kind == "isoflop":
        if not g.budgets:
            raise ConfigError("grid.budgets is empty: an isoflop grid needs compute budgets")
        _positive_numbers(g.budgets, "grid.budgets")
    elif g.kind == "explicit":
        if not g.tokens:
            raise ConfigError("grid.tokens is empty: an explicit grid needs token budgets")
        _positive_numbers(g.tokens, "grid.tokens")
    elif g.kind == "tokens_per_param":
        if not g.ratios:
            raise ConfigError("grid.ratios is empty: a tokens_per_param grid needs ratios")
        _positive_numbers(g.ratios, "grid.ratios")
    used = {"budgets": ("isoflop", "wsd_branches"), "tokens": ("explicit", "wsd_branches"), "ratios": ("tokens_per_param",)}
    for key, values in (("budgets", g.budgets), ("tokens", g.tokens), ("ratios", g.ratios)):
        if values and g.kind not in used[key]:
            raise ConfigError(f"grid.{key} is not used by grid.kind={g.kind!r}")
    if not spec.seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in spec.seeds):
        raise ConfigError(f"seeds must be a non-empty list of integers >= 0, got {spec.seeds!r}")
    for name, v in spec.variants.items():
        if not isinstance(v, dict):
            raise ConfigError(f"variants.{name}: expected a partial run config (mapping), got {v!r}")
    for i, o in enumerate(spec.overrides):
        if not isinstance(o, dict) or set(o) - {"match", "set"} or "set" not in o:
            raise ConfigError(f"overrides[{i}]: expected {{match: {{...}}, set: {{key: value}}}}, got {o!r}")
        bad = set(o.get("match") or {}) - {"variant", "size", "budget", "seed"}
        if bad:
            raise ConfigError(f"overrides[{i}].match: unknown key {sorted(bad)[0]!r}; allowed: variant, size, budget, seed")
    # Validate base (and each variant) as run configs now, so errors name the field.
    for vname, variant in (spec.variants or {"": {}}).items():
        _load("variants." + vname if vname else "base", merge_dicts(spec.base, variant), ["train.tokens=1000000000"])
    return spec


def _plan_grid(spec: SweepSpec, n_devices: int, added: list[dict]) -> list[PlannedRun]:
    """An isoflop / explicit / tokens_per_param grid: one run per variant x grid point x seed (see plan_sweep)."""
    runs: list[PlannedRun] = []
    for vname, variant in (spec.variants or {"default": {}}).items():
        for si, size, (budget, tokens, ratio) in _grid_points(spec, merge_dicts(spec.base, variant), added):
            base = merge_dicts(merge_dicts(spec.base, variant), {"model": size})
            for seed in spec.seeds:
                here = {"variant": vname, "size": si, "budget": budget, "seed": seed}
                what = "budget=%.3g" % budget if budget else ("D=%.3g" % tokens if tokens else "ratio=%g" % ratio)
                where = f"run (variant={vname}, size={si}, {what}, seed={seed})"
                raw = _apply_overrides(merge_dicts(base, {"train": {"seed": seed}}), spec.overrides, here)
                probe, n_basis, fpt = _probe(spec, raw, where)
                D = budget / fpt if budget else (tokens if tokens else ratio * n_basis)
                raw = spec.recipe.apply(raw, probe, n_params=n_basis, tokens=D, n_devices=n_devices)
                raw = _apply_overrides(raw, spec.overrides, here)
                tps = probe.model.seq_len * raw.get("train", {}).get("batch_size", probe.train.batch_size)
                steps = int(round(D / tps))
                if steps < 1:
                    raise ConfigError(
                        f"{where}: the budget is smaller than one step of this model "
                        f"({tps} tokens x {fpt:.3g} FLOPs/token = {tps * fpt:.3g} FLOPs); raise the budget or shrink the batch"
                    )
                raw = merge_dicts(raw, {"train": {"tokens": steps * tps}})
                cfg = _load(where, raw)
                run_id = config_hash(cfg.to_dict())
                cnt = count_params(cfg.model)
                fl = flops_per_token(cfg.model, cfg.train.flops_attention) * cfg.steps * cfg.tokens_per_step
                _check_budget(where, fl, budget, cfg.tokens_per_step)
                runs.append(
                    PlannedRun(run_id, cfg, vname, si, budget, seed, cnt.total, cnt.active, cfg.steps * cfg.tokens_per_step, fl, cfg.steps)
                )
    return runs


def _check_wsd_grid(spec: SweepSpec) -> None:
    g = spec.grid
    if not g.sizes:
        raise ConfigError("grid.sizes is empty: a wsd_branches grid needs the model sizes that train a trunk each")
    if not (g.budgets or g.tokens):
        raise ConfigError("grid.budgets and grid.tokens are empty: a wsd_branches grid needs branch points (compute budgets or token counts)")
    _positive_numbers(g.budgets, "grid.budgets")
    _positive_numbers(g.tokens, "grid.tokens")
    if not 0 < g.cooldown_fraction < 1:
        raise ConfigError(f"grid.cooldown_fraction must be in (0, 1) (the share of each branch's steps spent decaying), got {g.cooldown_fraction}")
    if g.sizes_per_budget:
        if not g.budgets:
            raise ConfigError("grid.sizes_per_budget with wsd_branches picks sizes per compute budget: give grid.budgets")
        if g.sizes_per_budget < 3:
            raise ConfigError(f"grid.sizes_per_budget must be >= 3 (a minimum needs a size on each side), got {g.sizes_per_budget}")
        prior_law(g)
    for i, o in enumerate(spec.overrides):
        if isinstance(o, dict) and "budget" in (o.get("match") or {}):
            raise ConfigError(f"overrides[{i}].match: 'budget' cannot be matched in a wsd_branches grid (a size's branches share one trunk)")


def _wsd_points(spec: SweepSpec, base: dict) -> list[tuple[int, dict, list[tuple[Optional[float], Optional[float]]]]]:
    """(size index, model dict, [(budget, tokens), ...]) per size of a wsd_branches grid: every size gets every
    token count; every budget goes to every size, or with ``sizes_per_budget`` to the sizes nearest its prior
    optimum (in log N). Sizes no branch uses are left out."""
    g = spec.grid
    sizes = [_size_dict(s, i) for i, s in enumerate(g.sizes)]
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


def _load(where: str, raw: dict, overrides: list[str] | None = None) -> RunConfig:
    """``load_config`` of one planned run; a bad config names the run (``where``) before the field."""
    try:
        return load_config(base=raw, overrides=overrides)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _probe(spec: SweepSpec, raw: dict, where: str) -> tuple[RunConfig, float, float]:
    """(the run config before its budget is known, N on the grid's parameter basis, FLOPs per token)."""
    probe = _load(where, raw, ["train.tokens=1000000000000"])
    counts = count_params(probe.model)
    n_basis = counts.active if spec.grid.params == "active" else counts.total
    return probe, n_basis, flops_per_token(probe.model, probe.train.flops_attention)


def _check_budget(where: str, flops: float, budget: float | None, tokens_per_step: int) -> None:
    """An IsoFLOP run's C must be within BUDGET_TOLERANCE of its budget."""
    if budget and abs(flops / budget - 1) > BUDGET_TOLERANCE:
        raise ConfigError(
            f"{where}: C = {flops:.4g} is {100 * (flops / budget - 1):+.1f}% off its budget (whole steps of "
            f"{tokens_per_step} tokens); raise the budget or shrink the batch"
        )


def _plan_wsd(spec: SweepSpec, n_devices: int) -> list[PlannedRun]:
    """A wsd_branches grid: per variant, size and seed one trunk (constant lr after warmup, checkpoints kept at
    every branch point) and one branch per budget / token count. The recipe sizes lr and batch once per trunk
    (batch halving for its shortest branch), and the warmup is fixed in steps, so every branch's schedule equals
    its trunk's up to the branch point: a branch ends exactly where a standalone WSD run of its schedule would."""
    g = spec.grid
    runs: list[PlannedRun] = []
    for vname, variant in (spec.variants or {"default": {}}).items():
        vbase = merge_dicts(spec.base, variant)
        for si, size, pts in _wsd_points(spec, vbase):
            for seed in spec.seeds:
                here = {"variant": vname, "size": si, "budget": None, "seed": seed}
                where = f"trunk (variant={vname}, size={si}, seed={seed})"
                raw = _apply_overrides(merge_dicts(merge_dicts(vbase, {"model": size}), {"train": {"seed": seed}}), spec.overrides, here)
                probe, n_basis, fpt = _probe(spec, raw, where)
                wanted = sorted({(C / fpt if C else D, C) for C, D in pts}, key=lambda t: t[0])
                raw = spec.recipe.apply(raw, probe, n_params=n_basis, tokens=wanted[0][0], n_devices=n_devices)
                raw = _apply_overrides(raw, spec.overrides, here)
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
                trunk = _load(where, trunk_raw)
                trunk_id = config_hash(trunk.to_dict())
                cnt = count_params(trunk.model)
                fpt = flops_per_token(trunk.model, trunk.train.flops_attention)
                t_fl = fpt * trunk.steps * trunk.tokens_per_step
                runs.append(PlannedRun(trunk_id, trunk, vname, si, None, seed, cnt.total, cnt.active, trunk.steps * trunk.tokens_per_step,
                                       t_fl, trunk.steps, role="trunk"))
                for steps, decay, start, C in branches:
                    b_raw = merge_dicts(raw, {"train": {
                        "schedule": "wsd", "warmup_steps": warmup, "decay_steps": decay, "decay_shape": g.cooldown_shape,
                        "tokens": steps * tps, "init_from": f"{BRANCH_PREFIX}{trunk_id}@{start}",
                    }})
                    b_where = f"branch (variant={vname}, size={si}, {f'budget={C:.3g}' if C else f'D={steps * tps:.3g}'}, seed={seed})"
                    cfg = _load(b_where, b_raw)
                    fl = fpt * cfg.steps * cfg.tokens_per_step
                    _check_budget(b_where, fl, C, cfg.tokens_per_step)
                    runs.append(PlannedRun(config_hash(cfg.to_dict()), cfg, vname, si, C, seed, cnt.total, cnt.active,
                                           cfg.steps * cfg.tokens_per_step, fl, cfg.steps, role="branch", trunk_id=trunk_id,
                                           branch_step=start, cost_flops=fpt * decay * cfg.tokens_per_step))
    return runs


BRANCH_PREFIX = "runs/"  # a branch's train.init_from in the plan: runs/TRUNK_ID@STEP, relative to the sweep directory


def branch_savings(plan: list[PlannedRun]) -> dict | None:
    """Compute of a wsd_branches plan: as separate runs (every branch from scratch) and as trunks + cooldowns."""
    branches = [r for r in plan if r.role == "branch"]
    if not branches:
        return None
    separate = sum(r.flops for r in branches) + sum(r.flops for r in plan if r.role == "run")
    spent = sum(r.spent_flops for r in plan)
    return {"separate_flops": separate, "spent_flops": spent, "saved_fraction": 1 - spent / separate,
            "n_trunks": sum(r.role == "trunk" for r in plan), "n_branches": len(branches)}


def _size_dict(size: Any, i: int) -> dict:
    if isinstance(size, dict):
        return dict(size)
    try:
        return {"target_params": float(size)}
    except (TypeError, ValueError):
        raise ConfigError(f"grid.sizes[{i}]: expected a number (target parameters) or a model mapping, got {size!r}") from None


BUDGET_TOLERANCE = 0.01  # an IsoFLOP run's C must be within 1% of its budget (steps are whole numbers)


def _apply_overrides(raw: dict, overrides: list, here: dict) -> dict:
    for o in overrides:
        m = o.get("match") or {}
        if all(here.get(k) == (float(v) if k == "budget" else v) for k, v in m.items()):
            for k, v in o["set"].items():
                set_by_path(raw, k, v)
    return raw


ADDED_FILE = "adaptive.json"  # sizes an adaptive sweep added, per budget (scaling.sweep.adaptive)


def added_sizes(sweep_dir: str | Path | None) -> list[dict]:
    """The sizes an adaptive sweep added to its IsoFLOP budgets ([{budget, target_params, reason, round}])."""
    if sweep_dir is None:
        return []
    import json

    path = Path(sweep_dir) / ADDED_FILE
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("added", []))


def plan_sweep(
    spec: SweepSpec, *, check_data: bool = False, n_devices: int | None = None, sweep_dir: str | Path | None = None,
    added: list[dict] | None = None, progress: bool = False,
) -> list[PlannedRun]:
    """Every run of the sweep, resolved and validated; refuses runs that cannot train (with the reason).

    Per run: base, variant, size and seed are merged and the matching overrides applied *first* (an override may
    change the model, hence FLOPs per token); D follows from the grid (IsoFLOP: budget / FLOPs per token); the
    recipe sets lr, batch and warmup from N (``grid.params``: active or total) and D; the overrides are applied
    again so an explicit value wins over the recipe. Every IsoFLOP run's C is checked within 1% of its budget.
    ``check_data`` also counts epochs over each run's training split (a text corpus is prepared once into the cache,
    with ``progress``) and refuses runs above ``data.max_epochs``. ``sweep_dir``: also the sizes an adaptive run of the sweep added there
    (``adaptive.json``), planned, hashed and resumable like the others; ``added`` gives those sizes directly."""
    if n_devices is None:
        import jax

        n_devices = jax.device_count()
    if spec.grid.kind == "wsd_branches":
        runs = _plan_wsd(spec, n_devices)
    else:
        runs = _plan_grid(spec, n_devices, added_sizes(sweep_dir) if added is None else added)
    seen: dict[str, PlannedRun] = {}
    for r in runs:
        if r.run_id in seen:
            raise ConfigError(f"two runs of the sweep resolve to the same config (run {r.run_id}); remove the duplicate grid point")
        seen[r.run_id] = r
    if check_data:
        count_epochs(runs, progress=progress)
    return runs


def resolve_model(base: dict, size: dict):
    """The model config a size (target parameters or a model-section dict) resolves to on top of ``base``."""
    return load_config(base=merge_dicts(base, {"model": size}), overrides=["train.tokens=1000000000"]).model


def _grid_points(spec: SweepSpec, base: dict, added: list[dict] = ()) -> list[tuple[int, dict, tuple]]:
    """(size index, model-section dict, (budget, tokens, ratio)) for every grid point of one variant.

    Explicit sizes cross every budget / token count / ratio. An optimum-centred isoflop grid has its own sizes at
    each budget (index 0 = smallest there); targets that the size rule maps to the same model are kept once. Sizes
    an adaptive sweep added come last at their budget (indices after the grid's own)."""
    g = spec.grid
    out = []
    if g.sizes_per_budget:
        for C in g.budgets:
            seen: list = []
            for target in centred_targets(g, float(C)):
                model = resolve_model(base, {"target_params": target})
                if model not in seen:
                    seen.append(model)
                    out.append((len(seen) - 1, {"target_params": target}, (float(C), None, None)))
    else:
        if g.kind == "isoflop":
            points = [(float(C), None, None) for C in g.budgets]
        elif g.kind == "explicit":
            points = [(None, float(D), None) for D in g.tokens]
        else:
            points = [(None, None, float(r)) for r in g.ratios]
        out = [(si, _size_dict(size, si), pt) for si, size in enumerate(g.sizes) for pt in points]
    if added and g.kind == "isoflop":
        for C in g.budgets:
            here = [(si, size) for si, size, pt in out if pt[0] == float(C)]
            seen = [resolve_model(base, size) for _, size in here]
            k = max((si for si, _ in here), default=-1) + 1
            for a in added:
                if float(a["budget"]) == float(C):
                    model = resolve_model(base, {"target_params": float(a["target_params"])})
                    if model not in seen:
                        seen.append(model)
                        out.append((k, {"target_params": float(a["target_params"])}, (float(C), None, None)))
                        k += 1
    return out


def budget_summary(spec: SweepSpec, plan: list[PlannedRun]) -> list[dict]:
    """Per IsoFLOP budget: its sizes' range, tokens-per-parameter range and, for a centred grid, where the prior
    optimum falls (inside the sizes or not)."""
    out = []
    for C in sorted({r.budget for r in plan if r.budget}):
        runs = [r for r in plan if r.budget == C]
        ns = [r.n_params_active if spec.grid.params == "active" else r.n_params for r in runs]
        tpp = [r.tokens / n for r, n in zip(runs, ns)]
        row = {"budget": C, "n_sizes": len(set(ns)), "N_min": min(ns), "N_max": max(ns), "tokens_per_param_min": min(tpp), "tokens_per_param_max": max(tpp)}
        if spec.grid.sizes_per_budget:
            n_opt = prior_optimum(spec.grid, C)
            row |= {"prior_N_opt": n_opt, "prior_inside": min(ns) < n_opt < max(ns)}
        out.append(row)
    return out


def count_epochs(runs: list[PlannedRun], progress: bool = False) -> list[dict]:
    """Fill each run's epochs over its training split (a prepared dataset's size is read from its manifest; a text
    source is prepared into the cache once, with ``progress``); refuse, in one line, runs above their
    ``data.max_epochs``, saying how large a training split the sweep needs. Returns one summary per corpus."""
    from scaling.data import build_dataset

    corpora: dict[str, dict] = {}
    for r in runs:
        key = repr((r.config.data, r.config.model.vocab_size, r.config.model.seq_len))
        if key not in corpora:
            ds = build_dataset(r.config.data, r.config.model, progress=progress)
            windows = ds.train_windows_per_epoch(r.config.model.seq_len)
            corpora[key] = {"source": r.config.data.source, "windows": windows, "train_tokens": None if windows is None else len(ds.train.tokens),
                            "fingerprint": ds.fingerprint, "max_tokens": 0, "over": [], "cap": r.config.data.max_epochs, "seq_len": r.config.model.seq_len}
        c = corpora[key]
        if c["windows"]:
            r.epochs = r.steps * r.config.train.batch_size / c["windows"]
            c["max_tokens"] = max(c["max_tokens"], r.tokens)
            if c["cap"] is not None and r.epochs > c["cap"]:
                c["over"].append(r)
    for c in corpora.values():
        if c["over"]:
            worst = max(c["over"], key=lambda r: r.epochs)
            need = c["max_tokens"] / c["cap"]
            raise ConfigError(
                f"{len(c['over'])} runs would pass over data.source={c['source']!r} more than data.max_epochs={c['cap']:g} times "
                f"(up to {worst.epochs:.3g} epochs over its {c['windows'] * c['seq_len']:,}-token training split: run {worst.run_id}, "
                f"N={worst.n_params:.3g}, D={worst.tokens:.3g}); this sweep needs a training split of at least {need:.3g} tokens "
                f"({c['max_tokens']:.3g} for one pass): prepare one with 'scaling data prepare CORPUS --out DIR' and plan with "
                "--set data.source=DIR, lower the budgets, or raise data.max_epochs"
            )
    return list(corpora.values())


def _short(x: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def with_logging(run: PlannedRun, spec: SweepSpec, sweep_dir: str | Path | None = None) -> RunConfig:
    """The run's config with W&B grouping (the base's ``log.wandb_group``, else the sweep name), a readable name
    (sweep, variant, role, N, D, seed) and tags (N, D, C, variant, grid kind, role) added to the base's; ids ignore
    all of these. A branch's ``init_from`` (``runs/TRUNK_ID@STEP``, relative to the sweep) is resolved against
    ``sweep_dir``."""
    from dataclasses import replace

    tags = [f"N={run.n_params:.2g}", f"D={run.tokens:.2g}", f"C={run.flops:.2g}", run.variant, spec.grid.kind] + ([run.role] if run.role != "run" else [])
    base_log = run.config.log
    parts = [spec.name] + ([run.variant] if run.variant != "default" else []) + ([run.role] if run.role != "run" else [])
    name = " ".join(parts + [f"N={_short(run.n_params)}", f"D={_short(run.tokens)}", f"s{run.seed}"])
    log = replace(base_log, wandb_group=base_log.wandb_group or spec.name, wandb_tags=list(base_log.wandb_tags) + tags,
                  wandb_name=name, progress=False)
    cfg = replace(run.config, log=log, name=None)
    init = cfg.train.init_from
    if run.role == "branch" and sweep_dir is not None and init and init.startswith(BRANCH_PREFIX):
        cfg = replace(cfg, train=replace(cfg.train, init_from=str(Path(sweep_dir).absolute() / init)))
    return cfg
