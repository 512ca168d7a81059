"""The minimum of loss against log10 N within each IsoFLOP budget, for many budgets (or bootstrap resamples) at
once: ``local`` (a kernel-weighted quadratic centred on its own vertex), ``parabola`` (one quadratic through every
size) or ``akima`` (an interpolant through the mean loss per size). ``analysis.isoflop`` explains the choice.

Arrays are (S, n): S budgets or resamples of n runs each; ``W`` weights each run (0 leaves it out)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.errors import DEFAULT_ISOFLOP_METHOD, ISOFLOP_METHODS, FitError

METHODS = ISOFLOP_METHODS
DEFAULT_METHOD = DEFAULT_ISOFLOP_METHOD
# local method: Gaussian kernel in log10 N, starting at 0.5 dex, then the width over which the fitted quadratic rises
# by 2% of the minimum loss, kept within 0.2-1.0 dex (measured on synthetic sweeps and on Porian et al.'s sweeps,
# see benchmarks/RESULTS.md: a fixed 0.5 dex window spans far beyond the quadratic regime on steep budgets)
LOCAL_BANDWIDTH_DEX = 0.5
LOCAL_RISE = 0.02
LOCAL_H_RANGE = (0.2, 1.0)


@dataclass
class Minima:
    x_opt: np.ndarray  # (S,) log10 N at the minimum
    loss_opt: np.ndarray  # (S,)
    curvature: np.ndarray  # (S,) d^2 loss / d x^2 / 2 of the fitted quadratic (NaN for akima)
    spread: np.ndarray  # (S,) weighted sum of squared x deviations the quadratic saw (its leverage on x_opt)
    curve: list  # per row: (xs, ys) of the fitted curve, or None


def _distinct(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ux = np.unique(x)
    return ux, (np.searchsorted(ux, x)[None, :] == np.arange(len(ux))[:, None]).astype(float)  # (k, m)


def empirical_argmin(x: np.ndarray, y: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: the distinct sizes, the index of the lowest mean loss among sizes drawn, and how many sizes are drawn."""
    ux, onehot = _distinct(x)
    cnt = W @ onehot.T
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, (W * y) @ onehot.T / np.where(cnt > 0, cnt, 1), np.inf)
    return ux, np.argmin(mean, axis=1), (cnt > 0).sum(axis=1)


def _quad_batch(x: np.ndarray, y: np.ndarray, K: np.ndarray, xc: np.ndarray) -> np.ndarray:
    """Weighted least-squares quadratics in u = x - xc for weight rows K (S, m): coefficients (S, 3), NaN if singular."""
    u = x[None, :] - xc[:, None]
    u2 = u * u
    m = [K.sum(1), (K * u).sum(1), (K * u2).sum(1), (K * u2 * u).sum(1), (K * u2 * u2).sum(1)]
    M = np.stack([np.stack(m[0:3], -1), np.stack(m[1:4], -1), np.stack(m[2:5], -1)], -2)
    rhs = np.stack([(K * y).sum(1), (K * u * y).sum(1), (K * u2 * y).sum(1)], -1)
    out = np.full((len(K), 3), np.nan)
    scale = np.maximum(np.abs(M).max(axis=(1, 2)), 1e-300)
    with np.errstate(all="ignore"):
        ok = np.abs(np.linalg.det(M / scale[:, None, None])) > 1e-12
    if ok.any():
        out[ok] = np.linalg.solve(M[ok], rhs[ok][..., None])[..., 0]
    return out


def _spread(x, K, xc):
    u = x[None, :] - xc[:, None]
    ub = (K * u).sum(1) / np.maximum(K.sum(1), 1e-300)
    return (K * (u - ub[:, None]) ** 2).sum(1)


def minima_local(x: np.ndarray, y: np.ndarray, W: np.ndarray, bandwidth: float = LOCAL_BANDWIDTH_DEX, max_iter: int = 100) -> Minima:
    """Quadratic with Gaussian weights exp(-(x - x*)^2 / 2h^2) centred on its own vertex x*, iterated from the
    empirical minimum with h = ``bandwidth``; then h follows the curve: the half-width over which the quadratic
    rises by ``LOCAL_RISE`` (2%) of its minimum, within ``LOCAL_H_RANGE`` dex. x* stays within the budget's sizes.
    Where the curve is too flat for a convex quadratic (noise larger than its rise), the fit is retried with fixed
    bandwidths 2h and 4h: a wider, noisier but still local estimate (its low curvature gives it a low weight in
    the exponent fit)."""
    out = _minima_local(x, y, W, bandwidth, max_iter, LOCAL_RISE, LOCAL_H_RANGE)
    for wider in (2 * bandwidth, 4 * bandwidth):
        redo = ~np.isfinite(out.x_opt)
        if not redo.any():
            break
        again = _minima_local(x, y, W[redo], wider, max_iter)
        idx = np.flatnonzero(redo)
        for f in ("x_opt", "loss_opt", "curvature", "spread"):
            getattr(out, f)[idx] = getattr(again, f)
        for j, i in enumerate(idx):
            out.curve[i] = again.curve[j]
    return out


def _minima_local(x: np.ndarray, y: np.ndarray, W: np.ndarray, bandwidth: float, max_iter: int, rise: float | None = None,
                  h_range: tuple[float, float] = (0.2, 1.0)) -> Minima:
    S = len(W)
    ux, i0, nsz = empirical_argmin(x, y, W)
    lo, hi = float(ux[0]), float(ux[-1])
    xc = ux[i0].astype(float)
    h = np.full(S, float(bandwidth))
    live = nsz >= 3
    c = np.full((S, 3), np.nan)
    for _ in range(max_iter):
        K = W * np.exp(-0.5 * ((x[None, :] - xc[:, None]) / h[:, None]) ** 2)
        c = _quad_batch(x, y, K, xc)
        conv = live & (c[:, 2] > 0)
        with np.errstate(all="ignore"):
            xn = np.where(conv, np.clip(xc - c[:, 1] / (2 * c[:, 2]), lo, hi), xc)
            hn = h if rise is None else np.where(conv, np.clip(np.sqrt(rise * np.abs(c[:, 0]) / c[:, 2]), *h_range), h)
        moved = np.abs(xn - xc) + np.abs(hn - h)
        xc, h = xn, hn
        if not np.any(conv & (moved > 1e-9)):
            break
    K = W * np.exp(-0.5 * ((x[None, :] - xc[:, None]) / h[:, None]) ** 2)
    c = _quad_batch(x, y, K, xc)
    ok = live & (c[:, 2] > 0) & np.isfinite(c).all(axis=1)
    with np.errstate(all="ignore"):
        xv = np.clip(xc - c[:, 1] / (2 * c[:, 2]), lo, hi)
        lv = c[:, 0] + c[:, 1] * (xv - xc) + c[:, 2] * (xv - xc) ** 2
    curves = []
    for s in range(S):
        if ok[s]:
            xs = np.linspace(max(lo, xv[s] - 2 * h[s]), min(hi, xv[s] + 2 * h[s]), 60)
            curves.append((xs, c[s, 0] + c[s, 1] * (xs - xc[s]) + c[s, 2] * (xs - xc[s]) ** 2))
        else:
            curves.append(None)
    nan = np.full(S, np.nan)
    return Minima(np.where(ok, xv, nan), np.where(ok, lv, nan), np.where(ok, c[:, 2], nan), np.where(ok, _spread(x, K, xc), nan), curves)


def minima_parabola(x: np.ndarray, y: np.ndarray, W: np.ndarray) -> Minima:
    """One quadratic in log N through every point (the original procedure); no minimum if it is not convex.
    The vertex may lie outside the sizes (``in_range`` says so)."""
    S = len(W)
    ux, _, nsz = empirical_argmin(x, y, W)
    x0 = np.full(S, float(np.mean(ux)))
    c = _quad_batch(x, y, W, x0)
    ok = (nsz >= 3) & (c[:, 2] > 0) & np.isfinite(c).all(axis=1)
    with np.errstate(all="ignore"):
        xv = x0 - c[:, 1] / (2 * c[:, 2])
        lv = c[:, 0] - c[:, 1] ** 2 / (4 * c[:, 2])
    xs = np.linspace(ux[0], ux[-1], 60)
    curves = [(xs, c[s, 0] + c[s, 1] * (xs - x0[s]) + c[s, 2] * (xs - x0[s]) ** 2) if ok[s] else None for s in range(S)]
    nan = np.full(S, np.nan)
    ok &= np.abs(xv - x0) < 50  # a vertex tens of decades away: no usable minimum
    return Minima(np.where(ok, xv, nan), np.where(ok, lv, nan), np.where(ok, c[:, 2], nan), np.where(ok, _spread(x, W, x0), nan), curves)


def minima_akima(x: np.ndarray, y: np.ndarray, W: np.ndarray) -> Minima:
    """Minimum of scipy's Akima interpolant through the mean loss at each size drawn (between the sizes)."""
    from scipy.interpolate import Akima1DInterpolator

    S = len(W)
    ux, onehot = _distinct(x)
    cnt = W @ onehot.T
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (W * y) @ onehot.T / np.where(cnt > 0, cnt, 1)
    xv, lv, curves = np.full(S, np.nan), np.full(S, np.nan), []
    for s in range(S):
        keep = cnt[s] > 0
        if keep.sum() < 3:
            curves.append(None)
            continue
        f = Akima1DInterpolator(ux[keep], mean[s, keep])
        xs = np.linspace(ux[keep][0], ux[keep][-1], 400)
        ys = f(xs)
        i = int(np.argmin(ys))
        fine = np.linspace(xs[max(i - 1, 0)], xs[min(i + 1, len(xs) - 1)], 101)
        fy = f(fine)
        j = int(np.argmin(fy))
        xv[s], lv[s] = fine[j], fy[j]
        curves.append((xs, ys))
    nan = np.full(S, np.nan)
    return Minima(xv, lv, nan, nan, curves)


def budget_minima_batch(x: np.ndarray, y: np.ndarray, W: np.ndarray, method: str = DEFAULT_METHOD) -> Minima:
    if method == "local":
        return minima_local(x, y, W)
    if method == "parabola":
        return minima_parabola(x, y, W)
    if method == "akima":
        return minima_akima(x, y, W)
    raise FitError(f"unknown IsoFLOP method {method!r}; choose one of {', '.join(METHODS)}")


def interp_logD(x_opt: np.ndarray, x: np.ndarray, logD: np.ndarray) -> np.ndarray:
    """log10 D at log10 N = x_opt from the budget's own runs: linear interpolation of log D against log N (mean
    per size), extended linearly from the end segments for minima outside the sizes."""
    ux, onehot = _distinct(x)
    ud = (onehot @ logD) / onehot.sum(axis=1)
    x_opt = np.asarray(x_opt, float)
    if len(ux) == 1:
        return np.full_like(x_opt, ud[0])
    out = np.interp(x_opt, ux, ud)
    lo_s = (ud[1] - ud[0]) / (ux[1] - ux[0])
    hi_s = (ud[-1] - ud[-2]) / (ux[-1] - ux[-2])
    out = np.where(x_opt < ux[0], ud[0] + lo_s * (x_opt - ux[0]), out)
    return np.where(x_opt > ux[-1], ud[-1] + hi_s * (x_opt - ux[-1]), out)
