"""The registered grid kinds (``grid.kind``). Each built-in kind is one module here; a kind defined elsewhere
registers itself with ``register_grid`` on import (see ``scaling.sweep.grids.base``)."""

from scaling.sweep.grids.base import CrossGrid, GridKind, PointGrid, grid_kind, grid_kinds, plan_point, register_grid, require_values, unregister_grid
from scaling.sweep.grids import isoflop, explicit, tokens_per_param, wsd_branches  # noqa: F401,E402  (registration, in this order)

__all__ = ["CrossGrid", "GridKind", "PointGrid", "grid_kind", "grid_kinds", "plan_point", "register_grid", "require_values", "unregister_grid"]
