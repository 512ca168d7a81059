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


def clark_runs(params: dict, experts=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), logN=(7.0, 9.5), n_sizes: int = 6,
               sigma: float = 0.005, seed: int = 0) -> pd.DataFrame:
    """Runs on a grid of (N, E) with loss from Clark et al.'s routed law (keys a, b, c, d, E_start, E_max; base-10
    logs) times exp(sigma * z)."""
    rng = np.random.default_rng(seed)
    q2 = 1.0 / params["E_max"]
    q1 = 1.0 / (params["E_start"] - 1.0) - q2
    rows = []
    for N in 10 ** np.linspace(*logN, n_sizes):
        for E in experts:
            u = -np.log10(1.0 / (E - 1.0 + 1.0 / q1) + q2)
            n = np.log10(N)
            l10 = params["a"] * n + params["b"] * u + params["c"] * n * u + params["d"]
            rows.append({"N": N, "E": float(E), "loss": 10**l10 * np.exp(sigma * rng.standard_normal())})
    return pd.DataFrame(rows)


def krajewski_runs(params: dict, granularities=(1, 2, 4, 8, 16), logN=(7.0, 9.5), logD=(9.0, 11.5), n: int = 6,
                   sigma: float = 0.005, seed: int = 0) -> pd.DataFrame:
    """Runs on a grid of (N, D, G) with loss c + (g/G^gamma + a)/N^alpha + b/D^beta (Krajewski et al. 2024) times
    exp(sigma * z)."""
    rng = np.random.default_rng(seed)
    p = params
    rows = []
    for G in granularities:
        for N in 10 ** np.linspace(*logN, n):
            for D in 10 ** np.linspace(*logD, n - 1):
                L = p["c"] + (p["g"] / G ** p["gamma"] + p["a"]) / N ** p["alpha"] + p["b"] / D ** p["beta"]
                rows.append({"N": N, "D": D, "G": float(G), "loss": L * np.exp(sigma * rng.standard_normal())})
    return pd.DataFrame(rows)


def moe_study_runs(dense: dict, multipliers: dict, budgets=(1e17, 4e17, 1.6e18), sizes_per_budget: int = 7,
                   sigma: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """A dense-vs-MoE IsoFLOP study shaped like a sweep's runs.csv: for each variant (``multipliers``: name ->
    (n_experts, top_k, granularity, m); dense is added with m = 1) and budget, log-spaced active sizes around the
    dense optimum, loss from the dense Chinchilla law ``dense`` at the effective size m x N_active, times
    exp(sigma * z). C = 6 N_active D."""
    rng = np.random.default_rng(seed)
    al, be, A, B, E = (dense[k] for k in ("alpha", "beta", "A", "B", "E"))
    G = (al * A / (be * B)) ** (1 / (al + be))
    rows = []
    variants = {"dense": (None, None, None, 1.0), **multipliers}
    for v, (ne, k, gr, m) in variants.items():
        for C in budgets:
            n_opt = G * (C / 6) ** (be / (al + be))
            for N in n_opt * 10 ** np.linspace(-0.6, 0.6, sizes_per_budget):
                D = C / (6 * N)
                L = (E + A / (m * N) ** al + B / D**be) * np.exp(sigma * rng.standard_normal())
                total = N if ne is None else N * (1 + 0.5 * (ne / (gr or 1) - 1))
                rows.append({"variant": v, "N": total, "N_active": N, "D": D, "C": C, "budget": C, "loss": L,
                             "n_experts": ne, "top_k": k, "granularity": gr, "status": "completed", "role": "branch"})
    return pd.DataFrame(rows)
