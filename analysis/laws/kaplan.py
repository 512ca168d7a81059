"""Kaplan et al. (2020)'s L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D."""

from __future__ import annotations

import numpy as np

from analysis.laws.base import Law
from analysis.laws.registry import register
from analysis.optim import JacobianModel


@register
class KaplanLaw(Law):
    """L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D; theta = (log N_c, log D_c, alpha_N, alpha_D)."""

    name = "kaplan"
    inputs = ("N", "D")
    validate_in_all = True
    theta_names = ("log_Nc", "log_Dc", "alpha_N", "alpha_D")
    form = "[(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D"

    def default_grid(self):
        return {
            "log_Nc": [20, 25, 30, 35, 40],
            "log_Dc": [20, 25, 30, 35, 40],
            "alpha_N": [0.05, 0.1, 0.3, 0.5],
            "alpha_D": [0.05, 0.1, 0.3, 0.5],
        }

    def bounds(self):
        return np.array([0.0, 0.0, 1e-4, 1e-4]), np.array([200.0, 200.0, 5.0, 5.0])

    def model(self, X):
        lN, lD = np.log(X[:, 0])[None], np.log(X[:, 1])[None]

        def parts(theta):
            lNc, lDc, aN, aD = (theta[:, i : i + 1] for i in range(4))
            s = aN / aD
            u1 = lNc - lN
            z1, z2 = s * u1, lDc - lD
            m = np.maximum(z1, z2)
            e1, e2 = np.exp(z1 - m), np.exp(z2 - m)
            U = m + np.log(e1 + e2)
            return lNc, lDc, aN, aD, s, u1, U, e1 / (e1 + e2), e2 / (e1 + e2)

        def value(theta):
            *_, aD, s, u1, U, w1, w2 = parts(theta)
            return aD * U

        def jac(theta):
            lNc, lDc, aN, aD, s, u1, U, w1, w2 = parts(theta)
            S, n = U.shape
            one, zero = np.ones_like(U), np.zeros_like(U)
            dz1 = np.stack([s * one, zero, u1 / aD * one, -s * u1 / aD * one], axis=-1)
            dz2 = np.stack([zero, one, zero, zero], axis=-1)
            dU = w1[..., None] * dz1 + w2[..., None] * dz2
            J = aD[..., None] * dU
            J[..., 3] += U

            def hess(v, rows=None):
                sl = slice(None) if rows is None else rows
                aDr, sr, u1r = aD[sl], s[sl], u1[sl] * np.ones_like(U[sl])
                w1r, w2r, dUr, dd = w1[sl], w2[sl], dU[sl], dz1[sl] - dz2[sl]
                k = len(aDr)
                # d^2 z1: (lNc, aN) = 1/aD, (lNc, aD) = -s/aD, (aN, aD) = -u1/aD^2, (aD, aD) = 2 s u1 / aD^2
                vw = v * w1r
                H = np.zeros((k, 4, 4))
                c02 = (vw / aDr).sum(1)
                c03 = (vw * (-sr / aDr)).sum(1)
                c23 = (vw * (-u1r / aDr**2)).sum(1)
                c33 = (vw * (2 * sr * u1r / aDr**2)).sum(1)
                H[:, 0, 2] = H[:, 2, 0] = c02
                H[:, 0, 3] = H[:, 3, 0] = c03
                H[:, 2, 3] = H[:, 3, 2] = c23
                H[:, 3, 3] = c33
                # + w1 w2 (dz1 - dz2)(dz1 - dz2)^T, all times aD; plus the cross terms of pred = aD * U
                H += np.einsum("sn,snp,snq->spq", v * w1r * w2r, dd, dd)
                H *= aDr[:, 0, None, None]
                cross = np.einsum("sn,snp->sp", v, dUr)
                H[:, 3, :] += cross
                H[:, :, 3] += cross
                return H

            return aD * U, J, hess

        return JacobianModel(4, value, jac)

    def params_from_theta(self, theta):
        theta = np.asarray(theta, float).ravel()
        return {"N_c": float(np.exp(theta[0])), "D_c": float(np.exp(theta[1])), "alpha_N": float(theta[2]), "alpha_D": float(theta[3])}
