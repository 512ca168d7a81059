"""Grid kinds as plug-ins: a kind is one class registered under its ``grid.kind`` name.

A kind declares which optional grid fields it reads (``uses``), validates a parsed sweep (``validate``) and plans
its runs (``plan``). Kinds that are a set of (size, budget | tokens | ratio) points, one run each, subclass
``PointGrid`` and only say what their points are (``CrossGrid``: every size at every value of one field); the
shared planner applies overrides, the recipe, the token rounding to whole steps and the budget check the same way
for all of them. Adding a kind is one file::

    @register_grid("paired")
    class Paired(PointGrid):
        uses = frozenset({"tokens"})
        def validate(self, spec): ...
        def points(self, spec, base, added): return [(i, size_dict(s, i), (None, D, None)) ...]
"""

from __future__ import annotations

from typing import Optional

from scaling.model.accounting import count_params, flops_per_token
from scaling.config import ConfigError, merge_dicts
from scaling.sweep.schema import (
    PlannedRun, SweepSpec, apply_overrides, check_budget, load_run, positive_numbers, probe_run, size_dict,
)
from scaling.train.record import config_hash

# The optional grid fields a kind may read; one set elsewhere (and not read by the kind) is refused.
OPTIONAL_FIELDS = ("sizes_per_budget", "budgets", "tokens", "ratios")

_KINDS: dict[str, "GridKind"] = {}


class GridKind:
    """One kind of grid. ``name`` is set by ``register_grid``."""

    name: str = ""
    uses: frozenset = frozenset()  # which of OPTIONAL_FIELDS this kind reads
    adaptive: bool = False  # `sweep run --adaptive` may add sizes at its budgets

    def validate(self, spec: SweepSpec) -> None:
        """Refuse (ConfigError, naming the field) a grid this kind cannot plan. The fields outside ``uses`` are
        already checked unset."""

    def plan(self, spec: SweepSpec, n_devices: int, added: list[dict]) -> list[PlannedRun]:
        raise NotImplementedError


def register_grid(name: str):
    """Class decorator: register a ``GridKind`` subclass as ``grid.kind: NAME`` (replacing one of that name)."""

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, GridKind)):
            raise TypeError(f"register_grid({name!r}) decorates a GridKind subclass, got {cls!r}")
        cls.name = name
        _KINDS[name] = cls()
        return cls

    return deco


def unregister_grid(name: str) -> None:
    _KINDS.pop(name, None)


def grid_kinds() -> dict[str, GridKind]:
    """The registered kinds by name, in registration order."""
    return dict(_KINDS)


def grid_kind(name: str) -> GridKind:
    """The kind registered as ``name``; an unknown name is one ConfigError listing the kinds."""
    if name not in _KINDS:
        raise ConfigError(f"grid.kind: {name!r} is not allowed; allowed values: {', '.join(repr(k) for k in _KINDS)}")
    return _KINDS[name]


def require_values(spec: SweepSpec, key: str, what: str) -> list[float]:
    """grid.<key> non-empty and positive (``what`` says what the kind needs them for)."""
    values = getattr(spec.grid, key)
    if not values:
        raise ConfigError(f"grid.{key} is empty: {what}")
    return positive_numbers(values, f"grid.{key}")


Point = tuple[int, dict, tuple[Optional[float], Optional[float], Optional[float]]]


class PointGrid(GridKind):
    """A grid of points (size index, model-section dict, (budget, tokens, ratio)), one run per point, variant and
    seed. Subclasses define ``points``."""

    def points(self, spec: SweepSpec, base: dict, added: list[dict]) -> list[Point]:
        raise NotImplementedError

    def plan(self, spec: SweepSpec, n_devices: int, added: list[dict]) -> list[PlannedRun]:
        runs: list[PlannedRun] = []
        for vname, variant in (spec.variants or {"default": {}}).items():
            vbase = merge_dicts(spec.base, variant)
            for si, size, (budget, tokens, ratio) in self.points(spec, vbase, added):
                base = merge_dicts(vbase, {"model": size})
                for seed in spec.seeds:
                    runs.append(plan_point(spec, base, n_devices, vname, si, seed, budget, tokens, ratio))
        return runs


class CrossGrid(PointGrid):
    """Every size of ``grid.sizes`` at every value of one grid field (``field``), the value placed in the point's
    ``slot`` (0 budget, 1 tokens, 2 ratio); ``need`` says what the kind needs the values for."""

    field: str = ""
    slot: int = 0
    need: str = ""

    @property
    def uses(self) -> frozenset:
        return frozenset({self.field})

    def validate(self, spec: SweepSpec) -> None:
        if not spec.grid.sizes:
            raise ConfigError("grid.sizes is empty: list at least one model size")
        require_values(spec, self.field, self.need)

    def points(self, spec: SweepSpec, base: dict, added: list[dict]) -> list[Point]:
        return [(si, size_dict(s, si), tuple(float(v) if j == self.slot else None for j in range(3)))
                for si, s in enumerate(spec.grid.sizes) for v in getattr(spec.grid, self.field)]


def plan_point(spec: SweepSpec, base: dict, n_devices: int, vname: str, si: int, seed: int,
               budget: Optional[float], tokens: Optional[float], ratio: Optional[float]) -> PlannedRun:
    """One run of a point grid. The matching overrides are applied first (an override may change the model, hence
    FLOPs per token), D follows from the point (a budget: C / FLOPs per token), the recipe sets lr, batch and
    warmup from N and D, and the overrides are applied again so an explicit value wins over the recipe."""
    here = {"variant": vname, "size": si, "budget": budget, "seed": seed}
    what = "budget=%.3g" % budget if budget else ("D=%.3g" % tokens if tokens else "ratio=%g" % ratio)
    where = f"run (variant={vname}, size={si}, {what}, seed={seed})"
    raw = apply_overrides(merge_dicts(base, {"train": {"seed": seed}}), spec.overrides, here)
    probe, n_basis, fpt = probe_run(spec, raw, where)
    D = budget / fpt if budget else (tokens if tokens else ratio * n_basis)
    raw = spec.recipe.apply(raw, probe, n_params=n_basis, tokens=D, n_devices=n_devices)
    raw = apply_overrides(raw, spec.overrides, here)
    tps = probe.model.seq_len * raw.get("train", {}).get("batch_size", probe.train.batch_size)
    steps = int(round(D / tps))
    if steps < 1:
        raise ConfigError(
            f"{where}: the budget is smaller than one step of this model "
            f"({tps} tokens x {fpt:.3g} FLOPs/token = {tps * fpt:.3g} FLOPs); raise the budget or shrink the batch"
        )
    cfg = load_run(where, merge_dicts(raw, {"train": {"tokens": steps * tps}}))
    cnt = count_params(cfg.model)
    fl = flops_per_token(cfg.model, cfg.train.flops_attention) * cfg.steps * cfg.tokens_per_step
    check_budget(where, fl, budget, cfg.tokens_per_step)
    return PlannedRun(config_hash(cfg.to_dict()), cfg, vname, si, budget, seed, cnt.total, cnt.active,
                      cfg.steps * cfg.tokens_per_step, fl, cfg.steps)
