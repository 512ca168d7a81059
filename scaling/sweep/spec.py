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
    recipe: {lr_base: 3e-3, ...}   # hyper-parameters as functions of N and D (scaling.sweep.recipe)
    # or recipe: {from: TUNE_DIR}  # the lr law an lr_scan sweep fitted ('scaling sweep fit-lr TUNE_DIR')
    lr_scan: [0.5, 0.71, 1, 1.41, 2]   # an lr tuning sweep: every run once per multiplier of the recipe's lr
    overrides: [{match: {variant: moe}, set: {train.lr: 1e-3}}]

Run ids are stable hashes of each resolved run config, so editing a sweep adds or removes runs without renaming
the others.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from scaling.config import ConfigError, RunConfig, from_dict, merge_dicts, parse_overrides, set_by_path
from scaling.configbase import load_yaml_file
from scaling.sweep.grids import grid_kind, grid_kinds
from scaling.sweep.grids.base import OPTIONAL_FIELDS
from scaling.sweep.recipe import check_tuned_under, resolve_recipe
from scaling.sweep.schema import (
    BRANCH_PREFIX, PlannedRun, SweepSpec, added_sizes, load_run, positive_numbers, prior_optimum,
)


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
    rec = raw.get("recipe")
    if isinstance(rec, dict) and isinstance(rec.get("from"), str) and rec["from"]:
        # recorded absolute in SWEEP_DIR/sweep.yaml, so the sweep directory reads it from any working directory
        raw["recipe"] = {**rec, "from": str(Path(rec["from"]).expanduser().absolute())}
    return raw



def parse_sweep(raw: dict) -> SweepSpec:
    """A sweep file's dict as a validated ``SweepSpec``: the schema, the grid kind's own checks, seeds, variants and
    overrides, and the base (and each variant) as a run config, so an error names the field. ``recipe: {from: X}``
    is replaced by the law fitted there (every planned run is checked against what it was tuned under)."""
    rec = raw.get("recipe") if isinstance(raw, dict) else None
    if isinstance(rec, dict) and "from" in rec:
        raw = {**raw, "recipe": resolve_recipe(rec)}
    spec = from_dict(SweepSpec, raw)
    spec.recipe.validate()
    if spec.recipe.basis and spec.recipe.basis != f"N_{spec.grid.params}":
        raise ConfigError(f"recipe.from {spec.recipe.source!r} is a law in {spec.recipe.basis}; this sweep's grid.params is "
                          f"{spec.grid.params!r}: set grid.params to {spec.recipe.basis[2:]!r}")
    if spec.lr_scan:
        bad = next((v for v in spec.lr_scan if isinstance(v, bool) or not isinstance(v, (int, float))), None)
        if bad is not None:
            raise ConfigError(f"lr_scan: expected numbers (multipliers of the recipe's lr), got {bad!r}")
        scan = positive_numbers(spec.lr_scan, "lr_scan")
        if len(set(scan)) != len(scan):
            raise ConfigError(f"lr_scan lists a multiplier twice: {spec.lr_scan!r}")
        if not spec.recipe.enabled or spec.recipe.respect_base:
            raise ConfigError("lr_scan scales the recipe's lr: it needs recipe.enabled true and recipe.respect_base false")
        for i, o in enumerate(spec.overrides):
            if isinstance(o, dict) and isinstance(o.get("set"), dict) and "train.lr" in o["set"]:
                raise ConfigError(f"overrides[{i}] sets train.lr: with lr_scan every multiplier would plan that same run; "
                                  "drop the override or the scan")
        spec = replace(spec, lr_scan=scan)
    g = spec.grid
    kind = grid_kind(g.kind)
    for key in OPTIONAL_FIELDS:
        if getattr(g, key) and key not in kind.uses:
            if key == "sizes_per_budget":
                users = " or ".join(repr(n) for n, k in grid_kinds().items() if key in k.uses)
                raise ConfigError(f"grid.sizes_per_budget is only used by grid.kind={users}, not {g.kind!r}")
            raise ConfigError(f"grid.{key} is not used by grid.kind={g.kind!r}")
    kind.validate(spec)
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
        load_run("variants." + vname if vname else "base", merge_dicts(spec.base, variant), ["train.tokens=1000000000"])
    return spec


def plan_sweep(
    spec: SweepSpec, *, check_data: bool = False, n_devices: int | None = None, sweep_dir: str | Path | None = None,
    added: list[dict] | None = None, progress: bool = False,
) -> list[PlannedRun]:
    """Every run of the sweep, resolved and validated by its grid kind (``scaling.sweep.grids``); refuses runs that
    cannot train (with the reason) and two grid points that resolve to one config.

    Per run (point grids: ``grids.base.plan_point``): base, variant, size and seed are merged and the matching
    overrides applied *first*; D follows from the grid (IsoFLOP: budget / FLOPs per token); the recipe sets lr,
    batch and warmup from N (``grid.params``: active or total) and D; the overrides are applied again so an explicit
    value wins over the recipe. Every IsoFLOP run's C is checked within 1% of its budget. ``check_data`` also counts
    epochs over each run's training split (a text corpus is prepared once into the cache, with ``progress``) and
    refuses runs above ``data.max_epochs``. ``sweep_dir``: also the sizes an adaptive run of the sweep added there
    (``adaptive.json``), planned, hashed and resumable like the others; ``added`` gives those sizes directly."""
    if n_devices is None:
        import jax

        n_devices = jax.device_count()
    kind, added = grid_kind(spec.grid.kind), added_sizes(sweep_dir) if added is None else added
    runs = []
    for m in spec.lr_scan or [1.0]:  # an lr tuning sweep: the whole grid once per multiplier of the recipe's lr
        scaled = replace(spec, recipe=replace(spec.recipe, lr_multiplier=spec.recipe.lr_multiplier * float(m)))
        part = kind.plan(scaled, n_devices, added)
        for r in part:
            r.lr_multiplier = float(m)
        runs += part
    seen: dict[str, PlannedRun] = {}
    for r in runs:
        check_tuned_under(spec.recipe, r.config, f"run {r.run_id} (variant={r.variant}, size={r.size_index}, seed={r.seed})")
        if r.run_id in seen:
            raise ConfigError(f"two runs of the sweep resolve to the same config (run {r.run_id}); remove the duplicate grid point")
        seen[r.run_id] = r
    if check_data:
        count_epochs(runs, progress=progress)
    return runs


def branch_savings(plan: list[PlannedRun]) -> dict | None:
    """Compute of a wsd_branches plan: as separate runs (every branch from scratch) and as trunks + cooldowns."""
    branches = [r for r in plan if r.role == "branch"]
    if not branches:
        return None
    separate = sum(r.flops for r in branches) + sum(r.flops for r in plan if r.role == "run")
    spent = sum(r.spent_flops for r in plan)
    return {"separate_flops": separate, "spent_flops": spent, "saved_fraction": 1 - spent / separate,
            "n_trunks": sum(r.role == "trunk" for r in plan), "n_branches": len(branches)}


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
    scan = [f"lr={run.config.train.lr:.3g}"] if spec.lr_scan else []
    tags += scan
    base_log = run.config.log
    parts = [spec.name] + ([run.variant] if run.variant != "default" else []) + ([run.role] if run.role != "run" else [])
    name = " ".join(parts + [f"N={_short(run.n_params)}", f"D={_short(run.tokens)}"] + scan + [f"s{run.seed}"])
    log = replace(base_log, wandb_group=base_log.wandb_group or spec.name, wandb_tags=list(base_log.wandb_tags) + tags,
                  wandb_name=name, progress=False)
    cfg = replace(run.config, log=log, name=None)
    init = cfg.train.init_from
    if run.role == "branch" and sweep_dir is not None and init and init.startswith(BRANCH_PREFIX):
        cfg = replace(cfg, train=replace(cfg.train, init_from=str(Path(sweep_dir).absolute() / init)))
    return cfg
