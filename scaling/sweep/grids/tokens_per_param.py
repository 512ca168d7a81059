"""``grid.kind: tokens_per_param``: every size at D = ratio x N for every ratio (``grid.ratios``; N per
``grid.params``)."""

from scaling.sweep.grids.base import CrossGrid, register_grid


@register_grid("tokens_per_param")
class TokensPerParam(CrossGrid):
    field, slot, need = "ratios", 2, "a tokens_per_param grid needs ratios"
