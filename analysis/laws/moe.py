"""Mixture-of-experts laws: Clark et al. (2022)'s L(N, E) and Krajewski et al. (2024)'s granularity law."""

from __future__ import annotations

import numpy as np

from analysis.errors import FitError
from analysis.laws.base import Law
from analysis.laws.registry import register
from analysis.laws.frontier import LN10
from analysis.optim import JacobianModel, LSEAffineModel, lse_design


def moe_inputs(df: pd.DataFrame, need: tuple[str, ...]) -> pd.DataFrame:
    """The MoE laws' inputs from a runs table: N is the *active* parameter count (``N_active`` where the table
    has it), E the routed expert count (``n_experts``; 1 for dense rows) and G the granularity (``granularity``:
    each expert's hidden size is d_ff / G; 1 for dense rows). Columns already named E or G are kept."""
    import pandas as pd

    out = df.copy()
    notes = []
    if "N_active" in df.columns and df["N_active"].notna().all() and not np.array_equal(df["N_active"].to_numpy(float), df["N"].to_numpy(float)):
        out["N"] = df["N_active"].to_numpy(float)
        notes.append("N is the active parameter count (N_active): what a token uses, the dense-equivalent size")
    if "E" in need and "E" not in df.columns and "n_experts" in df.columns:
        out["E"] = pd.to_numeric(df["n_experts"], errors="coerce").fillna(1.0).to_numpy(float)
    if "G" in need and "G" not in df.columns and "granularity" in df.columns:
        out["G"] = pd.to_numeric(df["granularity"], errors="coerce").fillna(1.0).to_numpy(float)
    out.attrs = {**df.attrs, "prepare_notes": notes}
    return out


@register(aliases={"moe-clark-bilinear": {"saturating": False}})
class ClarkLaw(Law):
    """Routed-model law of Clark et al. (2022), "Unified Scaling Laws for Routed Language Models":

        log10 L(N, E) = a log10 N + b log10 Ê + c log10 N log10 Ê + d,
        1/Ê = 1 / (E - 1 + (1/(E_start - 1) - 1/E_max)^-1) + 1/E_max,

    N the dense-equivalent (active) parameter count, E the number of experts (E = 1 is the dense model). Ê grows
    like E in the middle of its range and saturates at E_max; E_start shapes its low end (Ê(1) = E_start - 1).
    Logs are base 10 as in the paper; L is the loss in the table's units (nats). The law describes models trained on
    one token count (Clark et al. train every model on the same data): fit it to runs that share D.

    ``saturating=False`` is the paper's bilinear form (their eq. 1) with Ê = E: 4 parameters (a, b, c, d), and the
    dense law log10 L = a log10 N + d. The saturating form is fitted as theta = (a, b, c, d, s, t) with
    exp(s) = 1/(E_start - 1) - 1/E_max and exp(t) = 1/E_max, so every real theta is a valid transform.
    Inputs: columns N and E, or a sweep's N_active and n_experts (``moe_inputs``)."""

    name = "moe-clark"
    inputs = ("N", "E")

    def __init__(self, saturating: bool = True, **kw):
        super().__init__(**kw)
        self.saturating = bool(saturating)
        self.theta_names = ("a", "b", "c", "d", "s", "t") if self.saturating else ("a", "b", "c", "d")
        self.form = ("log10 L = a log10 N + b log10 Ehat + c log10 N log10 Ehat + d (Ehat saturating in E)" if self.saturating
                     else "log10 L = a log10 N + b log10 E + c log10 N log10 E + d")

    def config(self):
        return {**super().config(), "saturating": self.saturating}

    def prepare(self, df):
        out = moe_inputs(df, ("E",))
        if "D" in df.columns and df["D"].nunique() > 1:
            out.attrs["prepare_notes"] = out.attrs["prepare_notes"] + [
                f"the runs span {df['D'].nunique()} token counts ({df['D'].min():.3g}-{df['D'].max():.3g}); the moe-clark law "
                "describes one training length (select one D with --query)"]
        return out

    def check_table(self, df):
        super().check_table(df)
        if (df["E"] < 1).any():
            raise FitError("the moe-clark law needs E >= 1 experts (E = 1 for dense models); the table has E < 1")

    def default_grid(self):
        g = {"a": [-0.2, -0.1, -0.03], "b": [-0.2, -0.05, 0.0], "c": [-0.02, 0.0, 0.02], "d": [0.0, 0.5, 1.0, 1.5],
             "s": [np.log(2.0), 0.0, np.log(1 / 3)], "t": [-np.log(30.0), -np.log(300.0), -np.log(3000.0)]}
        return {k: g[k] for k in self.theta_names}

    def bounds(self):
        lo = {"a": -5.0, "b": -5.0, "c": -5.0, "d": -20.0, "s": -12.0, "t": -14.0}
        hi = {"a": 5.0, "b": 5.0, "c": 5.0, "d": 20.0, "s": 12.0, "t": 2.0}
        return np.array([lo[k] for k in self.theta_names]), np.array([hi[k] for k in self.theta_names])

    @staticmethod
    def log_ehat(E, s, t):
        """ln Ê for experts E under (s, t); broadcasts."""
        x = E - 1.0 + np.exp(-s)
        return -np.log(1.0 / x + np.exp(t))

    def model(self, X):
        n, lE = np.log10(X[:, 0]), np.log(X[:, 1])
        if not self.saturating:
            # ln L = ln10 (a n + d) + b ln E + c n ln E: linear in theta (one log-sum-exp term)
            G = lse_design(len(X), [[(0, LN10 * n), (1, lE), (2, n * lE), (3, LN10)]], 4)
            return LSEAffineModel(G)
        E = X[:, 1][None]
        n2 = n[None]

        def parts(theta):
            a, b, c, d, s, t = (theta[:, i : i + 1] for i in range(6))
            x = E - 1.0 + np.exp(-s)
            ws, wt = np.exp(-s) / x**2, np.exp(t) * np.ones_like(x)  # dw/ds, dw/dt for w = 1/Ê = 1/x + e^t
            w = 1.0 / x + np.exp(t)
            wss = -ws + 2.0 * np.exp(-2.0 * s) / x**3
            g = np.log(w)  # = -ln Ê
            gs, gt = ws / w, wt / w
            gss, gtt, gst = wss / w - gs**2, wt / w - gt**2, -gs * gt
            k = b + c * n2
            pred = LN10 * (a * n2 + d) - k * g
            return pred, g, gs, gt, gss, gtt, gst, k

        def value(theta):
            return parts(theta)[0]

        def jac(theta):
            pred, g, gs, gt, gss, gtt, gst, k = parts(theta)
            one = np.ones_like(pred)
            J = np.stack([LN10 * n2 * one, -g, -n2 * g, LN10 * one, -k * gs, -k * gt], axis=-1)

            def hess(v, rows=None):
                sl = slice(None) if rows is None else rows
                vr, gsr, gtr, kr = v, gs[sl], gt[sl], k[sl]
                H = np.zeros((len(vr), 6, 6))
                for (i, j), term in {
                    (1, 4): -gsr, (1, 5): -gtr, (2, 4): -n2 * gsr, (2, 5): -n2 * gtr,
                    (4, 4): -kr * gss[sl], (5, 5): -kr * gtt[sl], (4, 5): -kr * gst[sl],
                }.items():
                    h = (vr * term).sum(axis=1)
                    H[:, i, j] += h
                    if i != j:
                        H[:, j, i] += h
                return H

            return pred, J, hess

        return JacobianModel(6, value, jac)

    def params_from_theta(self, theta):
        theta = np.asarray(theta, float).ravel()
        out = {k: float(v) for k, v in zip(("a", "b", "c", "d"), theta[:4])}
        if self.saturating:
            q1, q2 = np.exp(theta[4]), np.exp(theta[5])
            out["E_start"] = float(1.0 + 1.0 / (q1 + q2))
            out["E_max"] = float(1.0 / q2)
        return out

    def effective_experts(self, E) -> np.ndarray:
        """Ê for expert counts E (E itself for the bilinear form)."""
        E = np.asarray(E, float)
        if not self.saturating:
            return E
        th = self._require_fit()
        return np.exp(self.log_ehat(E, th[4], th[5]))


@register
class KrajewskiLaw(Law):
    """Fine-grained MoE law of Krajewski et al. (2024), "Scaling Laws for Fine-Grained Mixture of Experts":

        L(N, D, G) = c + (g / G^gamma + a) / N^alpha + b / D^beta,

    N the active parameter count, D training tokens, G the granularity (each expert's hidden size is d_ff / G and a
    token is routed to G times as many experts, so the active compute does not change with G). The paper holds the
    expansion rate (total expert parameters / dense feed-forward parameters; here n_experts / granularity) fixed:
    fit it to runs that share one expansion rate, with at least three values of G. Fitted in log space as
    log L = LSE(lg - gamma log G - alpha log N, la - alpha log N, lb - beta log D, lc), every coefficient positive.
    Inputs: columns N, D and G, or a sweep's N_active and granularity (``moe_inputs``)."""

    name = "moe-krajewski"
    inputs = ("N", "D", "G")
    theta_names = ("la", "lb", "lc", "lg", "alpha", "beta", "gamma")
    form = "c + (g/G^gamma + a)/N^alpha + b/D^beta"

    def prepare(self, df):
        return moe_inputs(df, ("G",))

    def check_table(self, df):
        super().check_table(df)
        nG = df["G"].nunique()
        if nG < 3:
            raise FitError(f"the moe-krajewski law needs at least 3 granularities to determine g, gamma and a; the table has {nG}")
        if "n_experts" in df.columns and "granularity" in df.columns:
            import pandas as pd

            rate = (pd.to_numeric(df["n_experts"], errors="coerce") / pd.to_numeric(df["granularity"], errors="coerce")).dropna().round(6).unique()
            if len(rate) > 1:
                raise FitError(f"the moe-krajewski law holds the expansion rate (n_experts / granularity) fixed; the table mixes {', '.join(f'{r:g}' for r in sorted(rate))} (select one with --query)")

    def default_grid(self):
        return {"la": [0.0, 4.0], "lb": [0.0, 4.0, 8.0], "lc": [-0.5, 0.5], "lg": [-1.0, 2.0],
                "alpha": [0.1, 0.4], "beta": [0.1, 0.4], "gamma": [0.3, 1.0]}

    def bounds(self):
        return (np.array([-30.0, -30.0, -20.0, -30.0, 0.0, 0.0, 0.0]), np.array([100.0, 100.0, 10.0, 100.0, 5.0, 5.0, 5.0]))

    def model(self, X):
        lN, lD, lG = np.log(X[:, 0]), np.log(X[:, 1]), np.log(X[:, 2])
        terms = [[(3, 1.0), (6, -lG), (4, -lN)], [(0, 1.0), (4, -lN)], [(1, 1.0), (5, -lD)], [(2, 1.0)]]
        return LSEAffineModel(lse_design(len(X), terms, 7))

    def params_from_theta(self, theta):
        la, lb, lc, lg, al, be, ga = np.asarray(theta, float).ravel()
        return {"a": float(np.exp(la)), "b": float(np.exp(lb)), "c": float(np.exp(lc)), "g": float(np.exp(lg)),
                "alpha": float(al), "beta": float(be), "gamma": float(ga)}
