"""``grid.kind: isoflop``: each size at each compute budget C (D = C / FLOPs per token), or, with
``sizes_per_budget``, that many log-spaced sizes centred on each budget's prior optimum. An adaptive sweep may add
sizes at a budget (``adaptive.json``); they come after the grid's own at that budget."""

from scaling.config import ConfigError
from scaling.sweep.grids.base import PointGrid, register_grid, require_values
from scaling.sweep.schema import centred_targets, check_sizes_per_budget, resolve_model, size_dict


@register_grid("isoflop")
class IsoFLOP(PointGrid):
    uses = frozenset({"budgets", "sizes_per_budget"})
    adaptive = True

    def validate(self, spec):
        g = spec.grid
        if g.sizes_per_budget:
            if g.sizes:
                raise ConfigError("grid.sizes and grid.sizes_per_budget: give one (explicit sizes, or sizes centred on a prior optimum)")
            check_sizes_per_budget(g)
            if not g.span > 1:
                raise ConfigError(f"grid.span must be > 1 (largest / smallest size), got {g.span}")
        elif not g.sizes:
            raise ConfigError("grid.sizes is empty: list at least one model size (or grid.sizes_per_budget for an isoflop grid)")
        require_values(spec, "budgets", "an isoflop grid needs compute budgets")

    def points(self, spec, base, added):
        """Explicit sizes cross every budget. An optimum-centred grid has its own sizes at each budget (index 0 =
        smallest there); targets that the size rule maps to the same model are kept once. Added sizes come last at
        their budget."""
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
            out = [(si, size_dict(s, si), (float(C), None, None)) for si, s in enumerate(g.sizes) for C in g.budgets]
        for C in g.budgets if added else ():
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
