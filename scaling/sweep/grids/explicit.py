"""``grid.kind: explicit``: every size at every token count D."""

from scaling.config import ConfigError
from scaling.sweep.grids.base import PointGrid, register_grid, require_values
from scaling.sweep.schema import size_dict


@register_grid("explicit")
class Explicit(PointGrid):
    uses = frozenset({"tokens"})
    help = "each size at each token count D (grid.tokens)"

    def validate(self, spec):
        if not spec.grid.sizes:
            raise ConfigError("grid.sizes is empty: list at least one model size")
        require_values(spec, "tokens", "an explicit grid needs token budgets")

    def points(self, spec, base, added):
        return [(si, size_dict(s, si), (None, float(D), None)) for si, s in enumerate(spec.grid.sizes) for D in spec.grid.tokens]
