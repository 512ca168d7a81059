"""Batched robust least squares in numpy: many starts, or many bootstrap resamples, optimised together.

Every law is fitted by minimising, for S problems at once,

    f_s(theta_s) = sum_i  w_si * Huber_delta( m_i(theta_s) - y_si )

where m_i is the law's log-prediction for run i, y the log losses, and w_si a per-problem weight (1 for a plain
fit; the multiplicity of run i in bootstrap resample s). The optimiser is a projected, damped Newton method
(Levenberg-Marquardt on the exact Hessian, with eigenvalue shifts so indefinite Hessians still give descent
steps, and the Huber loss's majorising curvature far from a solution), run on all S problems in the same numpy
calls: an iteration costs a few elementwise passes over (S, n) arrays, a few (S, n) x (n, k) matrix products and
S small eigendecompositions, instead of S separate Python-level optimiser loops. Problems leave the active set as
they converge.

``polish`` runs scipy's L-BFGS-B from a candidate at tight tolerances, as the final step of a fit.

Models provide ``value(theta) -> (S, n)`` and ``derivs(theta) -> (pred, grad_hess)`` where
``grad_hess(d1, d2)`` returns the objective's gradient (S, p) and Hessian (S, p, p) given the weighted first and second
Huber derivatives per run; ``LSEAffineModel`` builds both for the common case pred = logsumexp_k(G_ik . theta + c_ik)
(Chinchilla, power laws) and ``JacobianModel`` from a Jacobian and a Hessian contraction (Kaplan).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber loss: r^2/2 inside |r| <= delta, linear outside (continuous first derivative)."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def huber_d1(r: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(r, -delta, delta)


def huber_d2(r: np.ndarray, delta: float) -> np.ndarray:
    """The exact second derivative of the Huber loss (1 inside |r| <= delta, 0 outside)."""
    return (np.abs(r) <= delta).astype(float)


def huber_curvature(r: np.ndarray, delta: float) -> np.ndarray:
    """min(1, delta / |r|): the curvature of the quadratic that majorises the Huber loss at r (its IRLS weight).

    The exact second derivative is 0 outside |r| <= delta, which makes Newton's model of a mostly-linear objective
    flat and its steps useless; this weight keeps the Gauss-Newton part of the Hessian informative everywhere and
    equals the exact curvature inside the quadratic zone."""
    a = np.abs(r)
    return np.where(a <= delta, 1.0, delta / np.maximum(a, delta))


class Model(Protocol):
    n_params: int

    def value(self, theta: np.ndarray) -> np.ndarray: ...

    def derivs(self, theta: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]: ...


def lse_design(n: int, terms: list[list[tuple[int, np.ndarray | float]]], p: int) -> np.ndarray:
    """Design G (n, K, p) from terms given as [(param index, coefficient per run or scalar), ...]."""
    G = np.zeros((n, len(terms), p))
    for k, term in enumerate(terms):
        for j, coef in term:
            G[:, k, j] = coef
    return G


class LSEAffineModel:
    """pred_i(theta) = logsumexp_k (G[i, k] . theta + c[i, k]) for a fixed design G (n, K, p) and offsets c (n, K).

    Derivatives are closed-form: with w = softmax_k(T), d pred_i = sum_k w_ik G_ik and
    d^2 pred_i = sum_k w_ik G_ik G_ik^T - (d pred_i)(d pred_i)^T. For the objective sum_i h(r_i) the gradient is
    sum_k (h' w_k) @ G_k and the Hessian sum_k (h' w_k) @ (G_k x G_k) + sum_kl ((h'' - h') w_k w_l) @ (G_k x G_l):
    matrix products over runs. Designs are sparse (a Chinchilla term involves 2 of the 5 parameters), so only the
    non-zero columns of G_k and of the products G_k x G_l (upper triangle) enter those products."""

    def __init__(self, G: np.ndarray, c: np.ndarray | None = None):
        G = np.asarray(G, float)
        n, K, p = G.shape
        self.n, self.K, self.n_params = n, K, p
        self.c = [None if c is None or not np.any(np.asarray(c)[:, k]) else np.asarray(c, float)[:, k].copy() for k in range(K)]
        # T_k = sum_j theta_j * G[:, k, j]: a column of ones is a broadcast add, others a scaled add.
        self.cols = [[(j, None if np.all(G[:, k, j] == 1) else G[:, k, j].copy()) for j in range(p) if np.any(G[:, k, j])] for k in range(K)]
        self.gcols = [np.flatnonzero(np.any(G[:, k, :], axis=0)) for k in range(K)]
        self.Gsub = [np.ascontiguousarray(G[:, k, self.gcols[k]]) for k in range(K)]
        iu, ju = np.triu_indices(p)
        self.iu, self.ju = iu, ju
        self.pairs = []
        for k in range(K):
            for l in range(k, K):
                M = G[:, k, iu] * G[:, l, ju]
                if l != k:
                    M = M + G[:, l, iu] * G[:, k, ju]
                keep = np.flatnonzero(np.any(M != 0, axis=0))
                if len(keep):
                    self.pairs.append((k, l, keep, np.ascontiguousarray(M[:, keep])))

    def _terms(self, theta: np.ndarray) -> list[np.ndarray]:
        S = theta.shape[0]
        out = []
        for k in range(self.K):
            t = np.zeros((S, self.n)) if self.c[k] is None else np.broadcast_to(self.c[k], (S, self.n)).copy()
            for j, col in self.cols[k]:
                if col is None:
                    t += theta[:, j : j + 1]
                else:
                    t += theta[:, j : j + 1] * col
            out.append(t)
        return out

    def _softmax(self, T):
        if self.K == 1:
            return T[0], [None]
        m = T[0].copy()
        for t in T[1:]:
            np.maximum(m, t, out=m)
        e = [np.exp(t - m) for t in T]
        s = e[0].copy()
        for x in e[1:]:
            s += x
        np.divide(1.0, s, out=s)
        w = [x * s for x in e]
        np.log(s, out=s)
        return m - s, w

    def value(self, theta: np.ndarray) -> np.ndarray:
        return self._softmax(self._terms(theta))[0]

    def derivs(self, theta: np.ndarray):
        pred, w = self._softmax(self._terms(theta))
        p = self.n_params

        def grad_hess(d1: np.ndarray, d2: np.ndarray, rows: np.ndarray | None = None):
            wr = w if rows is None else [None if x is None else x[rows] for x in w]
            S = d1.shape[0]
            g = np.zeros((S, p))
            Hu = np.zeros((S, len(self.iu)))
            if self.K == 1:  # pred is affine in theta: only the Gauss-Newton term
                g[:, self.gcols[0]] = d1 @ self.Gsub[0]
                for k, l, keep, M in self.pairs:
                    Hu[:, keep] += d2 @ M
            else:
                c = d2 - d1
                dw = [d1 * wk for wk in wr]
                for k in range(self.K):
                    g[:, self.gcols[k]] += dw[k] @ self.Gsub[k]
                for k, l, keep, M in self.pairs:
                    v = c * wr[k] * wr[l]
                    if k == l:
                        v += dw[k]
                    Hu[:, keep] += v @ M
            H = np.zeros((S, p, p))
            H[:, self.iu, self.ju] = Hu
            H[:, self.ju, self.iu] = Hu
            return g, H

        return pred, grad_hess


class JacobianModel:
    """A model given by ``fun(theta) -> (pred, J, hess)`` with J (S, n, p) and hess(v) = sum_i v_i d^2 pred_i."""

    def __init__(self, n_params: int, value: Callable, jac: Callable):
        self.n_params, self._value, self._jac = n_params, value, jac

    def value(self, theta):
        return self._value(theta)

    def derivs(self, theta):
        pred, J, hess = self._jac(theta)

        def grad_hess(d1, d2, rows=None):
            Jr = J if rows is None else J[rows]
            g = np.einsum("sn,snp->sp", d1, Jr)
            H = np.matmul((Jr * d2[..., None]).transpose(0, 2, 1), Jr) + hess(d1, rows)
            return g, H

        return pred, grad_hess


@dataclass
class BatchResult:
    theta: np.ndarray  # (S, p)
    fun: np.ndarray  # (S,)
    n_iter: np.ndarray  # (S,)
    converged: np.ndarray  # (S,) bool


def _objective(pred, y, w, delta):
    with np.errstate(over="ignore", invalid="ignore"):
        r = pred - y
        f = (w * huber(r, delta)).sum(axis=1)
    return np.where(np.isfinite(f), f, np.inf), r


def _step_eval(model: Model, Y: np.ndarray, W: np.ndarray, delta: float, exact: np.ndarray, chunk: int, idx: np.ndarray,
               th: np.ndarray, fref: np.ndarray):
    """Objective at th for problems idx; where it is below fref, also gradient and Hessian (in chunks of ``chunk``
    problems; the Huber curvature exact where ``exact``, else its majorant). Non-finite derivatives: objective inf."""
    p = th.shape[1]
    fo = np.empty(len(idx))
    go, Ho = np.zeros((len(idx), p)), np.zeros((len(idx), p, p))
    for a in range(0, len(idx), chunk):
        sl = slice(a, a + chunk)
        ii = idx[sl]
        with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
            pred, grad_hess = model.derivs(th[sl])
            fo[sl], r = _objective(pred, Y[ii], W[ii], delta)
            better = np.flatnonzero(fo[sl] < fref[sl])
            if len(better):
                rb, wb, jj = r[better], W[ii[better]], ii[better]
                curv = np.where(exact[jj, None], huber_d2(rb, delta), huber_curvature(rb, delta))
                gb, Hb = grad_hess(wb * huber_d1(rb, delta), wb * curv, better)
                go[a + better], Ho[a + better] = gb, Hb
    bad = ~np.isfinite(go).all(axis=1) | ~np.isfinite(Ho).all(axis=(1, 2))
    fo[bad] = np.inf
    return fo, go, Ho


def _damped_newton_step(th: np.ndarray, gi: np.ndarray, Hi: np.ndarray, mu: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The candidate point of one projected, damped Newton step per problem (rows of th)."""
    p = th.shape[1]
    # Projected Newton: variables at a bound whose gradient pushes outwards are held fixed this step.
    fixed = ((th <= lo) & (gi > 0)) | ((th >= hi) & (gi < 0))
    free = ~fixed
    Hf = Hi * (free[:, :, None] & free[:, None, :])
    Hf[:, np.arange(p), np.arange(p)] += fixed
    gf = gi * free
    lam, Q = np.linalg.eigh(Hf)
    scale = np.maximum(np.abs(lam).max(axis=1), 1e-300)
    # Eigenvalue shift: negative curvature is treated as zero, and mu (relative to the largest eigenvalue)
    # damps every direction (Levenberg-Marquardt); mu adapts to the success of each step.
    shifted = np.maximum(lam, 0.0) + (mu * scale)[:, None]
    step = -np.einsum("spk,sk->sp", Q, np.einsum("spk,sp->sk", Q, gf) / shifted) * free
    return np.clip(th + step, lo, hi)


def minimize_batched(
    model: Model,
    theta0: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None = None,
    delta: float = 1e-3,
    lower: np.ndarray | None = None,
    upper: np.ndarray | None = None,
    ftol: float = 1e-13,
    max_iter: int = 400,
    chunk: int = 512,
    on_iter: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Minimise the weighted summed-Huber objective for every row of ``theta0`` (S, p).

    ``y`` is (n,) shared by all problems or (S, n); ``weights`` None, (n,) or (S, n). Each iteration takes one
    damped Newton step per active problem and keeps it if it lowers that problem's objective. Far from a solution
    the Hessian uses the Huber loss's majorising curvature (IRLS weights); once steps lower the objective by less
    than 1e-3 relative it switches to the exact curvature (quadratic convergence on the final approach). A problem
    stops when two accepted steps in a row lower its objective by less than ``ftol`` relative, when no damped step
    lowers it (damping above 1e12 times the largest curvature), or after ``max_iter`` iterations.
    ``on_iter(n_done, n_total)`` is called after each iteration (progress bars)."""
    theta = np.array(theta0, float, copy=True)
    S, p = theta.shape
    n = model.value(theta[:1]).shape[1]
    Y = np.broadcast_to(np.asarray(y, float), (S, n))
    W = np.ones((S, n)) if weights is None else np.broadcast_to(np.asarray(weights, float), (S, n))
    lo = np.full(p, -np.inf) if lower is None else np.asarray(lower, float)
    hi = np.full(p, np.inf) if upper is None else np.asarray(upper, float)
    theta = np.clip(theta, lo, hi)

    f = np.full(S, np.inf)
    g = np.zeros((S, p))
    H = np.zeros((S, p, p))
    exact = np.zeros(S, bool)

    def step_eval(idx: np.ndarray, th: np.ndarray, fref: np.ndarray):
        return _step_eval(model, Y, W, delta, exact, chunk, idx, th, fref)

    allidx = np.arange(S)
    f[:], g[:], H[:] = step_eval(allidx, theta, np.full(S, np.inf))
    mu = np.full(S, 1e-3)
    small = np.zeros(S, int)
    n_iter = np.zeros(S, int)
    active = np.isfinite(f)
    converged = np.zeros(S, bool)
    it = 0
    while active.any() and it < max_iter:
        it += 1
        idx = np.flatnonzero(active)
        cand = _damped_newton_step(theta[idx], g[idx], H[idx], mu[idx], lo, hi)
        fc, gc, Hc = step_eval(idx, cand, f[idx])
        ok = fc < f[idx]
        acc = idx[ok]
        if len(acc):
            rel = (f[acc] - fc[ok]) / np.maximum(np.abs(f[acc]), 1e-300)
            theta[acc], f[acc], g[acc], H[acc] = cand[ok], fc[ok], gc[ok], Hc[ok]
            mu[acc] = np.maximum(mu[acc] * 0.3, 1e-12)
            small[acc] = np.where(rel < ftol, small[acc] + 1, 0)
            n_iter[acc] += 1
            switch = ~exact[acc] & (rel < 1e-3)
            if switch.any():  # recompute the Hessian with the exact curvature for the next step
                sw = acc[switch]
                exact[sw] = True
                f[sw], g[sw], H[sw] = step_eval(sw, theta[sw], np.full(len(sw), np.inf))
        rej = idx[~ok]
        mu[rej] *= 8.0
        done = (small >= 2) | (mu > 1e12)
        converged |= active & done
        active &= ~done
        if on_iter is not None:
            on_iter(int(S - active.sum()), S)
    return BatchResult(theta, f, n_iter, converged)


def polish(
    model: Model,
    theta0: np.ndarray,
    y: np.ndarray,
    delta: float,
    lower: np.ndarray,
    upper: np.ndarray,
    weights: np.ndarray | None = None,
    ftol: float = 1e-13,
    gtol: float = 1e-12,
) -> tuple[np.ndarray, float]:
    """L-BFGS-B from ``theta0`` with tight tolerances; returns (theta, objective).

    The objective is divided by its starting value so L-BFGS-B's ftol (relative to max(|f|, 1)) is relative to
    the objective itself: with f ~ 1e-3 its default would stop about 1e-6 relative from the optimum."""
    from scipy.optimize import minimize

    y = np.asarray(y, float)
    w = np.ones_like(y) if weights is None else np.asarray(weights, float)
    f0 = float(_objective(model.value(theta0[None]), y[None], w[None], delta)[0][0])
    scale = 1.0 / f0 if np.isfinite(f0) and f0 > 0 else 1.0

    def fun(t):
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            pred, grad_hess = model.derivs(t[None])
            fv, r = _objective(pred, y[None], w[None], delta)
            gv = grad_hess(w[None] * huber_d1(r, delta), w[None] * huber_d2(r, delta))[0][0]
        if not np.isfinite(fv[0]) or not np.isfinite(gv).all():
            return 1e300, np.zeros_like(t)
        return float(fv[0]) * scale, gv * scale

    bounds = list(zip(np.where(np.isfinite(lower), lower, None), np.where(np.isfinite(upper), upper, None)))
    res = minimize(fun, np.asarray(theta0, float), jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"ftol": ftol, "gtol": gtol, "maxiter": 500, "maxcor": 30})
    x = np.asarray(res.x, float)
    fx = float(_objective(model.value(x[None]), y[None], w[None], delta)[0][0])
    if not fx <= f0:  # never worse than the start
        return np.asarray(theta0, float), f0
    return x, fx
