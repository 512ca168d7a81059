"""``grid.kind: tokens_per_param``: every size at D = ratio x N for every ratio (N per ``grid.params``)."""

from scaling.config import ConfigError
from scaling.sweep.grids.base import PointGrid, register_grid, require_values
from scaling.sweep.schema import size_dict


@register_grid("tokens_per_param")
class TokensPerParam(PointGrid):
    uses = frozenset({"ratios"})
    help = "each size at D = ratio x N for each ratio (grid.ratios)"

    def validate(self, spec):
        if not spec.grid.sizes:
            raise ConfigError("grid.sizes is empty: list at least one model size")
        require_values(spec, "ratios", "a tokens_per_param grid needs ratios")

    def points(self, spec, base, added):
        return [(si, size_dict(s, si), (None, None, float(r))) for si, s in enumerate(spec.grid.sizes) for r in spec.grid.ratios]
