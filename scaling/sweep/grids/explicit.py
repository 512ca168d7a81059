"""``grid.kind: explicit``: every size at every token count D (``grid.tokens``)."""

from scaling.sweep.grids.base import CrossGrid, register_grid


@register_grid("explicit")
class Explicit(CrossGrid):
    field, slot, need = "tokens", 1, "an explicit grid needs token budgets"
