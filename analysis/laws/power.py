"""A single power law L(x) = E + A x^-alpha (or A x^-alpha) in x = N, D or C."""

from __future__ import annotations

import numpy as np

from analysis.errors import FitError
from analysis.laws.base import Law
from analysis.laws.registry import Option, register
from analysis.optim import LSEAffineModel, lse_design


@register
class PowerLaw(Law):
    """L(x) = E + A x^-alpha (offset) or A x^-alpha, x one of N, D, C; log L = LSE(a - alpha log x, e)."""

    name = "power"
    theta_names = ("a", "alpha", "e")
    options = (Option("--x", "x", "power law: the variable (default C)", choices=("N", "D", "C"), default="C"),
               Option("--no-offset", "offset", "power law without the irreducible term E", store_true=True, invert=True))

    def __init__(self, x: str = "C", offset: bool = True, **kw):
        if x not in ("N", "D", "C"):
            raise FitError(f"x must be one of N, D, C; got {x!r}")
        super().__init__(**kw)
        self.x, self.offset = x, bool(offset)
        self.inputs = (x,)
        self.theta_names = ("a", "alpha", "e") if self.offset else ("a", "alpha")
        self.form = f"E + A {x}^-alpha" if self.offset else f"A {x}^-alpha"

    def config(self):
        return {**super().config(), "x": self.x, "offset": self.offset}

    def default_grid(self):
        g = {"a": [0, 2.5, 5, 10, 15, 20, 25], "alpha": [0, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0], "e": [-1, -0.5, 0, 0.5, 1, 1.5]}
        return {k: g[k] for k in self.theta_names}

    def bounds(self):
        lo = {"a": -50.0, "alpha": 0.0, "e": -20.0}
        hi = {"a": 300.0, "alpha": 5.0, "e": 10.0}
        return np.array([lo[k] for k in self.theta_names]), np.array([hi[k] for k in self.theta_names])

    def model(self, X):
        lx = np.log(X[:, 0])
        terms = [[(0, 1.0), (1, -lx)]] + ([[(2, 1.0)]] if self.offset else [])
        return LSEAffineModel(lse_design(len(X), terms, self.n_params))

    def params_from_theta(self, theta):
        theta = np.asarray(theta, float).ravel()
        out = {"A": float(np.exp(theta[0])), "alpha": float(theta[1])}
        if self.offset:
            out["E"] = float(np.exp(theta[2]))
        return out
