"""Synthetic sweeps drawn from known laws, for checking that the fits recover what generated the data."""

from __future__ import annotations

import numpy as np
import pandas as pd


def isoflop_sweep(rng: np.random.Generator, noise: float = 0.003) -> tuple[pd.DataFrame, dict]:
    """One IsoFLOP sweep from a random Chinchilla law L = E + A/N^alpha + B/D^beta (C = 6ND), shaped like
    published ladders: 4-8 budgets over 2-3.5 decades of compute, 7-14 log-spaced sizes per budget, the optimum
    0.25-0.7 dex from one end of the sizes and 1-2.5 dex from the other (the side drawn per budget), multiplicative
    log-normal noise of ``noise`` (0.3%). Exponents alpha, beta in [0.25, 0.45] with |alpha - beta| >= 0.03.

    Returns (runs with columns N, D, C, budget, loss; truth with alpha, beta, E, A, B, a = beta/(alpha+beta),
    b = alpha/(alpha+beta))."""
    while True:
        al, be = rng.uniform(0.25, 0.45, 2)
        if abs(al - be) >= 0.03:
            break
    E, A, B = rng.uniform(1.5, 2.2), 10 ** rng.uniform(2.3, 3.0), 10 ** rng.uniform(2.6, 3.5)
    n_budgets = int(rng.integers(4, 9))
    c0, span = rng.uniform(17, 19), rng.uniform(2.0, 3.5)
    G = (al * A / (be * B)) ** (1 / (al + be))
    rows = []
    for C in 10 ** np.linspace(c0, c0 + span, n_budgets):
        n_opt = G * (C / 6) ** (be / (al + be))
        near, far = rng.uniform(0.25, 0.7), rng.uniform(1.0, 2.5)
        below, above = (near, far) if rng.random() < 0.5 else (far, near)
        k = int(rng.integers(7, 15))
        N = n_opt * 10 ** np.linspace(-below, above, k)
        D = C / (6 * N)
        L = (E + A / N**al + B / D**be) * np.exp(noise * rng.standard_normal(k))
        rows += [{"N": n, "D": d, "C": C, "budget": C, "loss": loss} for n, d, loss in zip(N, D, L)]
    truth = {"alpha": al, "beta": be, "E": E, "A": A, "B": B, "a": be / (al + be), "b": al / (al + be)}
    return pd.DataFrame(rows), truth


def chinchilla_law_runs(params: dict, n: int = 200, sigma: float = 0.01, seed: int = 0, logN=(7, 10), logD=(9, 12)) -> pd.DataFrame:
    """Runs at log-uniform random (N, D) with loss from L = E + A/N^alpha + B/D^beta times exp(sigma * z)."""
    rng = np.random.default_rng(seed)
    N = 10 ** rng.uniform(*logN, n)
    D = 10 ** rng.uniform(*logD, n)
    L = (params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]) * np.exp(sigma * rng.standard_normal(n))
    return pd.DataFrame({"N": N, "D": D, "C": 6 * N * D, "loss": L})
