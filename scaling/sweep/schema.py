"""The sweep file's schema and the pieces every grid kind plans with.

``GridSpec`` and ``SweepSpec`` are the typed sections of a sweep YAML (see ``scaling.sweep.spec`` for the file);
``PlannedRun`` is one resolved run of a plan. The helpers below resolve one run's config (overrides, the recipe's
probe, the budget check) and are shared by the grid kinds in ``scaling.sweep.grids``. This module imports no grid
kind: kinds import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from scaling.model.accounting import count_params, flops_per_token
from scaling.config import ConfigError, RunConfig, _f, load_config, merge_dicts, set_by_path
from scaling.sweep.recipe import Recipe


@dataclass(frozen=True)
class GridSpec:
    kind: str = _f(
        "isoflop",
        "Grid kind, one of the registered kinds (scaling.sweep.grids): isoflop (each size at each compute budget), "
        "explicit (each size at each token count), tokens_per_param (D = ratio x N), or wsd_branches (each size "
        "trains one constant-lr trunk; each budget or token count is a branch from the trunk's checkpoint that "
        "decays the lr over its last cooldown_fraction).",
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
    recipe: Recipe = _f(Recipe(), "Size- and horizon-dependent hyper-parameters, or {from: DIR}: the lr law a tuning sweep fitted ('scaling sweep fit-lr DIR').")
    lr_scan: list = _f(
        [],
        "Multipliers of the recipe's lr (e.g. [0.5, 0.71, 1, 1.41, 2]): every run is planned once per value, an lr "
        "tuning sweep; 'scaling sweep fit-lr DIR' fits the best lr as a law of N and D and writes DIR/recipe.json. "
        "Empty: one run at the recipe's lr.",
    )
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
    lr_multiplier: float = 1.0  # lr_scan: the recipe's lr times this

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
            "lr_multiplier": self.lr_multiplier,
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
BUDGET_TOLERANCE = 0.01  # an IsoFLOP run's C must be within 1% of its budget (steps are whole numbers)
ADDED_FILE = "adaptive.json"  # sizes an adaptive sweep added, per budget (scaling.sweep.adaptive)
BRANCH_PREFIX = "runs/"  # a branch's train.init_from in the plan: runs/TRUNK_ID@STEP, relative to the sweep directory


def prior_law(grid: GridSpec) -> tuple[float, float]:
    """(a, k) of the prior optimum N_opt(C) = k * C^a (validated)."""
    p = grid.prior
    if isinstance(p, str):
        if p not in PRIORS:
            raise ConfigError(f"grid.prior: {p!r} is not allowed; allowed values: {', '.join(PRIORS)} or a mapping {{a: ..., k: ...}}")
        p = PRIORS[p]
    if not isinstance(p, dict) or set(p) != {"a", "k"}:
        raise ConfigError(f"grid.prior: expected a named prior ({', '.join(PRIORS)}) or a mapping {{a: ..., k: ...}}, got {grid.prior!r}")
    a, k = positive_numbers([p["a"], p["k"]], "grid.prior [a, k]")
    return a, k


def prior_optimum(grid: GridSpec, budget: float) -> float:
    a, k = prior_law(grid)
    return k * budget**a


def centred_targets(grid: GridSpec, budget: float) -> list[float]:
    """``sizes_per_budget`` target parameter counts, log-spaced over ``span`` and centred on the prior optimum."""
    n_opt, m = prior_optimum(grid, budget), grid.sizes_per_budget
    half = math.log(grid.span) / 2
    return [n_opt * math.exp(-half + 2 * half * i / (m - 1)) for i in range(m)]


def check_sizes_per_budget(grid: GridSpec) -> None:
    """``sizes_per_budget`` (when set) is at least 3 and its prior is valid."""
    if grid.sizes_per_budget < 3:
        raise ConfigError(f"grid.sizes_per_budget must be >= 3 (a minimum needs a size on each side), got {grid.sizes_per_budget}")
    prior_law(grid)


def positive_numbers(values: list, where: str) -> list[float]:
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


def size_dict(size: Any, i: int) -> dict:
    """Entry ``i`` of grid.sizes as a model-section dict (a number is a target parameter count)."""
    if isinstance(size, dict):
        return dict(size)
    try:
        return {"target_params": float(size)}
    except (TypeError, ValueError):
        raise ConfigError(f"grid.sizes[{i}]: expected a number (target parameters) or a model mapping, got {size!r}") from None


def resolve_model(base: dict, size: dict):
    """The model config a size (target parameters or a model-section dict) resolves to on top of ``base``."""
    return load_config(base=merge_dicts(base, {"model": size}), overrides=["train.tokens=1000000000"]).model


def apply_overrides(raw: dict, overrides: list, here: dict) -> dict:
    """The sweep's ``overrides`` whose ``match`` fits ``here`` (variant, size, budget, seed), set into ``raw``."""
    for o in overrides:
        m = o.get("match") or {}
        if all(here.get(k) == (float(v) if k == "budget" else v) for k, v in m.items()):
            for k, v in o["set"].items():
                set_by_path(raw, k, v)
    return raw


def load_run(where: str, raw: dict, overrides: list[str] | None = None) -> RunConfig:
    """``load_config`` of one planned run; a bad config names the run (``where``) before the field."""
    try:
        return load_config(base=raw, overrides=overrides)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def probe_run(spec: SweepSpec, raw: dict, where: str) -> tuple[RunConfig, float, float]:
    """(the run config before its budget is known, N on the grid's parameter basis, FLOPs per token)."""
    probe = load_run(where, raw, ["train.tokens=1000000000000"])
    counts = count_params(probe.model)
    n_basis = counts.active if spec.grid.params == "active" else counts.total
    return probe, n_basis, flops_per_token(probe.model, probe.train.flops_attention)


def check_budget(where: str, flops: float, budget: float | None, tokens_per_step: int) -> None:
    """An IsoFLOP run's C must be within BUDGET_TOLERANCE of its budget."""
    if budget and abs(flops / budget - 1) > BUDGET_TOLERANCE:
        raise ConfigError(
            f"{where}: C = {flops:.4g} is {100 * (flops / budget - 1):+.1f}% off its budget (whole steps of "
            f"{tokens_per_step} tokens); raise the budget or shrink the batch"
        )


def added_sizes(sweep_dir: str | Path | None) -> list[dict]:
    """The sizes an adaptive sweep added to its IsoFLOP budgets ([{budget, target_params, reason, round}])."""
    if sweep_dir is None:
        return []
    import json

    path = Path(sweep_dir) / ADDED_FILE
    if not path.exists():
        return []
    return list(json.loads(path.read_text()).get("added", []))
