"""Scaling laws as small objects with one interface: ``fit(df)``, ``predict(...)``, ``params``, ``to_dict`` /
``from_dict`` (JSON). A new functional form is one subclass registered with ``@register``.

Fitting follows Hoffmann et al. (2022) as replicated by Besiroglu et al. (2024): the law is written in log space
as a log-sum-exp of terms, the objective is the *sum* of Huber losses (delta = 1e-3) of the log residuals, and
L-BFGS-B runs from a grid of starts, keeping the best objective. The start grid is first scored in one vectorised
pass and L-BFGS-B runs from the ``top_starts`` best-scoring starts only (``top_starts=None`` runs all of them:
the exhaustive reference, same optimum on the Chinchilla data, ~100x slower).

* ``ChinchillaLaw``: L(N, D) = E + A / N^alpha + B / D^beta.
* ``PowerLaw``: L(x) = E + A x^-alpha (``offset=True``) or A x^-alpha, for x = N, D or C.
* ``KaplanLaw``: L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D (Kaplan et al. 2020, eq. 1.5).
"""

from __future__ import annotations

import itertools
import json
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import logsumexp

LAWS: dict[str, type["Law"]] = {}


def register(cls: type["Law"]) -> type["Law"]:
    LAWS[cls.name] = cls
    return cls


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def huber_grad(r: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(r, -delta, delta)


class Law(ABC):
    """Base class. Subclasses define ``name``, ``inputs`` (columns used), ``theta_names`` (the optimised
    vector), ``default_grid()``, ``_log_pred(theta, X)`` and optionally an analytic ``_grad``."""

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    theta_names: ClassVar[tuple[str, ...]]

    def __init__(self, delta: float = 1e-3, grid: dict[str, list[float]] | None = None, top_starts: int | None = 64):
        self.delta = delta
        self.grid = grid
        self.top_starts = top_starts
        self.theta: np.ndarray | None = None
        self.objective: float | None = None
        self.n_points: int | None = None
        self.fit_time_s: float | None = None
        self.bootstrap_samples: np.ndarray | None = None  # (n_boot, len(theta))
        self.resid_scale: float | None = None  # robust std of the log residuals (1.4826 MAD)
        self.notes: list[str] = []

    # -- to implement -----------------------------------------------------------------------------------------
    @abstractmethod
    def default_grid(self) -> dict[str, list[float]]: ...

    @abstractmethod
    def _log_pred(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """log L for a (S, p) batch of parameter vectors over (n, m) inputs -> (S, n)."""

    def _grad(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray] | None:
        return None  # numerical gradient

    @abstractmethod
    def params_from_theta(self, theta: np.ndarray) -> dict[str, float]: ...

    # -- shared machinery -------------------------------------------------------------------------------------
    def _X(self, df: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.inputs if c not in df.columns]
        if missing:
            raise ValueError(f"{self.name} law needs columns {', '.join(self.inputs)}; missing {', '.join(missing)}")
        return df[list(self.inputs)].to_numpy(float)

    def starts(self) -> np.ndarray:
        grid = self.grid or self.default_grid()
        return np.array(list(itertools.product(*(grid[k] for k in self.theta_names))), float)

    def objective_batch(self, thetas: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            r = self._log_pred(thetas, X) - y[None, :]
            obj = huber(r, self.delta).sum(axis=1)
        return np.where(np.isfinite(obj), obj, np.inf)

    def _fun(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray):
        g = self._grad(theta, X, y)
        if g is not None:
            return g
        return float(self.objective_batch(theta[None], X, y)[0])

    def fit(self, df: pd.DataFrame, starts: np.ndarray | None = None) -> "Law":
        """Fit on ``df`` (columns ``inputs`` and ``loss``); ``starts`` overrides the grid (e.g. a warm start)."""
        t0 = time.perf_counter()
        X, y = self._X(df), np.log(df["loss"].to_numpy(float))
        S = self.starts() if starts is None else np.atleast_2d(np.asarray(starts, float))
        if self.top_starts is not None and len(S) > self.top_starts:
            scores = self.objective_batch(S, X, y)
            S = S[np.argsort(scores, kind="stable")[: self.top_starts]]
        jac = self._grad(S[0], X, y) is not None
        best_x, best_f = None, np.inf
        for s in S:
            with np.errstate(over="ignore", invalid="ignore"):
                res = minimize(self._fun, s, args=(X, y), jac=jac, method="L-BFGS-B")
            if np.isfinite(res.fun) and res.fun < best_f:
                best_x, best_f = res.x, float(res.fun)
        if best_x is None:
            raise RuntimeError(f"{self.name} fit failed from every start")
        self.theta, self.objective, self.n_points = best_x, best_f, len(df)
        r = self._log_pred(best_x[None], X)[0] - y
        self.resid_scale = float(1.4826 * np.median(np.abs(r - np.median(r))))
        self.fit_time_s = time.perf_counter() - t0
        self.notes = list(df.attrs.get("notes", []))
        return self

    def _require_fit(self) -> np.ndarray:
        if self.theta is None:
            raise RuntimeError(f"{self.name} law is not fitted")
        return self.theta

    @property
    def params(self) -> dict[str, float]:
        return self.params_from_theta(self._require_fit())

    def predict(self, df: pd.DataFrame | None = None, **cols: Any) -> np.ndarray:
        """Predicted loss for a DataFrame or for columns given as keywords (``predict(N=7e10, D=1.4e12)``)."""
        X = self._inputs(df, cols)
        return np.exp(self._log_pred(self._require_fit()[None], X)[0])

    def _inputs(self, df: pd.DataFrame | None, cols: dict) -> np.ndarray:
        if df is None:
            df = pd.DataFrame({k: np.atleast_1d(np.asarray(v, float)) for k, v in cols.items()})
            if "C" in self.inputs and "C" not in df and {"N", "D"} <= set(df):
                df["C"] = 6 * df["N"] * df["D"]
        return self._X(df)

    def predict_samples(self, df: pd.DataFrame | None = None, **cols: Any) -> np.ndarray:
        """Predictions under every bootstrap sample: (n_boot, n)."""
        if self.bootstrap_samples is None:
            raise RuntimeError("no bootstrap samples: run analysis.bootstrap(law, df) first")
        X = self._inputs(df, cols)
        with np.errstate(over="ignore"):
            return np.exp(self._log_pred(self.bootstrap_samples, X))

    def predict_interval(
        self, df: pd.DataFrame | None = None, level: float = 0.95, include_noise: bool = False, **cols: Any
    ) -> pd.DataFrame:
        """Point prediction with a bootstrap percentile interval (lo, hi) and standard error (se).

        By default the interval is for the law's expected loss (parameter uncertainty). ``include_noise=True``
        makes it a prediction interval for one new run: each bootstrap prediction is also multiplied by
        exp(eps), eps ~ N(0, resid_scale^2), the run-to-run scatter of the fit's log residuals."""
        point = self.predict(df, **cols)
        out = pd.DataFrame({"loss": point})
        if self.bootstrap_samples is not None:
            s = self.predict_samples(df, **cols)
            if include_noise and self.resid_scale:
                s = s * np.exp(self.resid_scale * np.random.default_rng(0).standard_normal(s.shape))
            q = (1 - level) / 2
            out["lo"], out["hi"] = np.nanquantile(s, q, axis=0), np.nanquantile(s, 1 - q, axis=0)
            out["se"] = np.nanstd(s, axis=0, ddof=1)
        return out

    def param_samples(self) -> pd.DataFrame:
        if self.bootstrap_samples is None:
            raise RuntimeError("no bootstrap samples")
        return pd.DataFrame([self.params_from_theta(t) for t in self.bootstrap_samples])

    def intervals(self, level: float = 0.95) -> dict[str, dict[str, float]]:
        if self.bootstrap_samples is None:
            return {}
        s, q = self.param_samples(), (1 - level) / 2
        return {
            k: {"se": float(s[k].std(ddof=1)), "lo": float(s[k].quantile(q)), "hi": float(s[k].quantile(1 - q))}
            for k in s.columns
        }

    # -- serialisation ----------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"delta": self.delta, "top_starts": self.top_starts}

    def to_dict(self, level: float = 0.95) -> dict:
        return {
            "law": self.name,
            "config": self.config(),
            "params": self.params,
            "theta": self._require_fit().tolist(),
            "objective": self.objective,
            "n_points": self.n_points,
            "fit_time_s": self.fit_time_s,
            "intervals": self.intervals(level),
            "interval_level": level,
            "bootstrap_samples": None if self.bootstrap_samples is None else self.bootstrap_samples.tolist(),
            "resid_scale": self.resid_scale,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Law":
        klass = LAWS.get(d.get("law", ""))
        if klass is None:
            raise ValueError(f"unknown law {d.get('law')!r}; known: {', '.join(LAWS)}")
        law = klass(**d.get("config", {}))
        law.theta = np.asarray(d["theta"], float)
        law.objective, law.n_points, law.fit_time_s = d.get("objective"), d.get("n_points"), d.get("fit_time_s")
        bs = d.get("bootstrap_samples")
        law.bootstrap_samples = None if bs is None else np.asarray(bs, float)
        law.resid_scale = d.get("resid_scale")
        law.notes = d.get("notes", [])
        return law

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @staticmethod
    def load(path: str | Path) -> "Law":
        return Law.from_dict(json.loads(Path(path).read_text()))

    def __repr__(self) -> str:
        if self.theta is None:
            return f"{type(self).__name__}(unfitted)"
        ps = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return f"{type(self).__name__}({ps})"


@register
class ChinchillaLaw(Law):
    """L(N, D) = E + A / N^alpha + B / D^beta, fitted as log L = LSE(a - alpha log N, b - beta log D, e)."""

    name = "chinchilla"
    inputs = ("N", "D")
    theta_names = ("a", "b", "e", "alpha", "beta")

    def default_grid(self):
        return {
            "a": [0, 5, 10, 15, 20, 25],
            "b": [0, 5, 10, 15, 20, 25],
            "e": [-1, -0.5, 0, 0.5, 1],
            "alpha": [0, 0.5, 1, 1.5, 2],
            "beta": [0, 0.5, 1, 1.5, 2],
        }

    @staticmethod
    def _terms(theta, X):
        theta = np.atleast_2d(theta)
        a, b, e, al, be = (theta[:, i : i + 1] for i in range(5))
        lN, lD = np.log(X[:, 0])[None], np.log(X[:, 1])[None]
        return np.stack([a - al * lN, b - be * lD, np.broadcast_to(e, (theta.shape[0], X.shape[0]))], axis=-1)

    def _log_pred(self, theta, X):
        T = self._terms(theta, X)
        return np.logaddexp(np.logaddexp(T[..., 0], T[..., 1]), T[..., 2])

    def _grad(self, theta, X, y):
        T = self._terms(theta, X)[0]
        lse = np.logaddexp(np.logaddexp(T[:, 0], T[:, 1]), T[:, 2])
        w = np.exp(T - lse[:, None])
        r = lse - y
        h = huber_grad(r, self.delta)
        g = np.array(
            [
                h @ w[:, 0],
                h @ w[:, 1],
                h @ w[:, 2],
                -(h * w[:, 0]) @ np.log(X[:, 0]),
                -(h * w[:, 1]) @ np.log(X[:, 1]),
            ]
        )
        return float(huber(r, self.delta).sum()), g

    def params_from_theta(self, theta):
        a, b, e, alpha, beta = theta
        return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": float(alpha), "beta": float(beta)}

    def compute_optimal(self, C, flops_per_param_token: float = 6.0) -> pd.DataFrame:
        """N_opt(C), D_opt(C) and the loss there, with C = k N D (k = 6 by default), from the fitted law:
        N_opt = G (C/k)^(beta/(alpha+beta)), D_opt = (C/k) / N_opt, G = (alpha A / (beta B))^(1/(alpha+beta))."""
        return compute_optimal_from_theta(np.atleast_2d(self._require_fit()), C, flops_per_param_token).iloc[0:len(np.atleast_1d(C))]

    def compute_optimal_interval(self, C, level: float = 0.95, k: float = 6.0) -> pd.DataFrame:
        out = compute_optimal_from_theta(np.atleast_2d(self._require_fit()), C, k)
        if self.bootstrap_samples is not None:
            q = (1 - level) / 2
            s = compute_optimal_from_theta(self.bootstrap_samples, C, k, stacked=True)
            for col in ("N_opt", "D_opt", "loss", "tokens_per_param"):
                out[f"{col}_lo"] = np.nanquantile(s[col], q, axis=0)
                out[f"{col}_hi"] = np.nanquantile(s[col], 1 - q, axis=0)
        return out


def compute_optimal_from_theta(thetas: np.ndarray, C, k: float = 6.0, stacked: bool = False):
    C = np.atleast_1d(np.asarray(C, float))
    a, b, e, al, be = (thetas[:, i : i + 1] for i in range(5))
    A, B, E = np.exp(a), np.exp(b), np.exp(e)
    with np.errstate(all="ignore"):
        G = (al * A / (be * B)) ** (1 / (al + be))
        N = G * (C[None] / k) ** (be / (al + be))
        D = (C[None] / k) / N
        L = E + A / N**al + B / D**be
    if stacked:
        return {"N_opt": N, "D_opt": D, "loss": L, "tokens_per_param": D / N}
    return pd.DataFrame({"C": C, "N_opt": N[0], "D_opt": D[0], "tokens_per_param": D[0] / N[0], "loss": L[0]})


@register
class PowerLaw(Law):
    """L(x) = E + A x^-alpha (offset) or A x^-alpha, x one of N, D, C; log L = LSE(a - alpha log x, e)."""

    name = "power"
    theta_names = ("a", "alpha", "e")

    def __init__(self, x: str = "C", offset: bool = True, **kw):
        if x not in ("N", "D", "C"):
            raise ValueError(f"x must be one of N, D, C; got {x!r}")
        super().__init__(**kw)
        self.x, self.offset = x, offset
        self.inputs = (x,)  # type: ignore[misc]
        if not offset:
            self.theta_names = ("a", "alpha")  # type: ignore[misc]

    def config(self):
        return {**super().config(), "x": self.x, "offset": self.offset}

    def default_grid(self):
        g = {"a": [0, 2.5, 5, 10, 15, 20, 25], "alpha": [0, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0], "e": [-1, -0.5, 0, 0.5, 1, 1.5]}
        return g if self.offset else {k: g[k] for k in ("a", "alpha")}

    def _terms(self, theta, X):
        theta = np.atleast_2d(theta)
        lx = np.log(X[:, 0])[None]
        t = [theta[:, 0:1] - theta[:, 1:2] * lx]
        if self.offset:
            t.append(np.broadcast_to(theta[:, 2:3], (theta.shape[0], X.shape[0])))
        return np.stack(t, axis=-1)

    def _log_pred(self, theta, X):
        return logsumexp(self._terms(theta, X), axis=-1)

    def _grad(self, theta, X, y):
        T = self._terms(theta, X)[0]
        lse = logsumexp(T, axis=-1)
        w = np.exp(T - lse[:, None])
        r = lse - y
        h = huber_grad(r, self.delta)
        g = [h @ w[:, 0], -(h * w[:, 0]) @ np.log(X[:, 0])]
        if self.offset:
            g.append(h @ w[:, 1])
        return float(huber(r, self.delta).sum()), np.array(g)

    def params_from_theta(self, theta):
        out = {"A": float(np.exp(theta[0])), "alpha": float(theta[1])}
        if self.offset:
            out["E"] = float(np.exp(theta[2]))
        return out


@register
class KaplanLaw(Law):
    """L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D; theta = (log N_c, log D_c, alpha_N, alpha_D)."""

    name = "kaplan"
    inputs = ("N", "D")
    theta_names = ("log_Nc", "log_Dc", "alpha_N", "alpha_D")

    def default_grid(self):
        return {
            "log_Nc": [20, 25, 30, 35, 40],
            "log_Dc": [20, 25, 30, 35, 40],
            "alpha_N": [0.05, 0.1, 0.3, 0.5],
            "alpha_D": [0.05, 0.1, 0.3, 0.5],
        }

    def _log_pred(self, theta, X):
        theta = np.atleast_2d(theta)
        lNc, lDc, aN, aD = (theta[:, i : i + 1] for i in range(4))
        lN, lD = np.log(X[:, 0])[None], np.log(X[:, 1])[None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            inner = np.stack([(aN / aD) * (lNc - lN), lDc - lD + 0 * lN], axis=-1)
            return aD * logsumexp(inner, axis=-1)

    def params_from_theta(self, theta):
        return {"N_c": float(np.exp(theta[0])), "D_c": float(np.exp(theta[1])), "alpha_N": float(theta[2]), "alpha_D": float(theta[3])}


def load_fit(path: str | Path) -> Law:
    return Law.load(path)
