"""Scaling laws as small objects with one interface: ``fit(df)``, ``predict(...)``, ``predict_interval(...)``,
``params``, ``to_dict`` / ``from_dict`` / ``save`` / ``load`` (JSON). A new functional form is one subclass
registered with ``@register``; ``make_law(name)`` builds any registered law (or alias, e.g. ``chinchilla-tied``).

Fitting follows Hoffmann et al. (2022) as replicated by Besiroglu et al. (2024): the law is written in log space
as a log-sum-exp of terms, the objective is the *sum* of Huber losses (delta = 1e-3) of the log residuals, the
optimiser runs from every start of a grid and the best objective is kept. All starts are optimised together by a
batched damped Newton method (``analysis.optim``); the best is refined by Newton to float precision and checked
with L-BFGS-B at tight tolerances. ``top_starts=K`` first scores the grid and optimises only the K best-scoring starts (faster, but on
small tables it can miss the global optimum; the default ``None`` runs them all).

* ``ChinchillaLaw``: L(N, D) = E + A / N^alpha + B / D^beta; ``tie_exponents=True`` sets beta = alpha
  (Gadre et al. 2024's form for over-trained runs).
* ``PowerLaw``: L(x) = E + A x^-alpha (``offset=True``) or A x^-alpha, for x = N, D or C.
* ``KaplanLaw``: L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D (Kaplan et al. 2020, eq. 1.5).
* ``FrontierLaw``: L_opt(C) = E + A C^-gamma fitted to the IsoFLOP minima (the loss of a compute-optimal run).
* ``SurfaceLaw``: L(N, C) = E + A (C/C0)^-gamma (1 + k ln^2(N / N_opt(C))), N_opt = N0 (C/C0)^a: the frontier and the
  IsoFLOP exponent fitted together on every run of an IsoFLOP sweep (optionally with a random intercept per group
  of runs that share a WSD trunk).

Every law refuses a table that lacks its inputs, has fewer distinct input points than parameters, or has no spread
in an input (``FitError``), and records degenerate outcomes (a parameter at its bound, a 95% interval spanning
more than 10x) in ``notes``.
"""

from __future__ import annotations

import itertools
import json
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from analysis.errors import DEFAULT_ISOFLOP_METHOD, AnalysisError, FitError
from analysis.optim import JacobianModel, LSEAffineModel, Model, huber, minimize_batched, polish
from analysis.progress import progress_bar

if TYPE_CHECKING:
    import pandas as pd

LAWS: dict[str, type["Law"]] = {}
LAW_ALIASES: dict[str, tuple[str, dict]] = {}


def register(cls: type["Law"] | None = None, *, aliases: dict[str, dict] | None = None):
    """Class decorator adding a law to the registry (``@register`` or ``@register(aliases={name: kwargs})``)."""

    def deco(c: type["Law"]) -> type["Law"]:
        LAWS[c.name] = c
        for alias, kw in (aliases or {}).items():
            LAW_ALIASES[alias] = (c.name, dict(kw))
        return c

    return deco(cls) if cls is not None else deco


def law_names(aliases: bool = True) -> list[str]:
    """Registered law names (and aliases such as ``chinchilla-tied``), in registration order."""
    return list(LAWS) + (list(LAW_ALIASES) if aliases else [])


def make_law(name: str, **kw) -> "Law":
    """A registered law by name or alias; keyword arguments override the alias's."""
    if name in LAW_ALIASES:
        base, extra = LAW_ALIASES[name]
        return LAWS[base](**{**extra, **kw})
    if name not in LAWS:
        raise FitError(f"unknown law {name!r}; known: {', '.join(law_names())}")
    return LAWS[name](**kw)


class Law(ABC):
    """Base class. Subclasses define ``name``, ``inputs`` (columns a prediction needs), ``theta_names`` (the
    optimised vector), ``default_grid()``, ``bounds()``, ``model(X)`` (a batched ``analysis.optim`` model of
    log L) and ``params_from_theta``."""

    name: ClassVar[str]
    inputs: tuple[str, ...]
    theta_names: tuple[str, ...]
    form: str = ""
    validate_in_all: ClassVar[bool] = False  # compared by `scaling validate --law all`

    def __init__(self, delta: float = 1e-3, grid: dict[str, list[float]] | None = None, top_starts: int | None = None):
        self.delta = delta
        self.grid = grid
        self.top_starts = top_starts
        self.theta: np.ndarray | None = None
        self.objective: float | None = None
        self.n_points: int | None = None
        self.fit_time_s: float | None = None
        self.bootstrap_samples: np.ndarray | None = None  # (n_boot, len(theta)); NaN rows: resamples that failed
        self.resid_scale: float | None = None  # robust std of the log residuals (1.4826 MAD)
        self.calibration = None  # analysis.calibration.Calibration: the extrapolation error backtests measured
        self.search: dict = {}
        self.notes: list[str] = []
        self._prepare_notes: list[str] = []  # what ``prepare`` derived for the last fit_data call

    # -- to implement -----------------------------------------------------------------------------------------
    @abstractmethod
    def default_grid(self) -> dict[str, list[float]]: ...

    @abstractmethod
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) for theta: they keep the optimiser where the law is finite and meaningful."""

    @abstractmethod
    def model(self, X: np.ndarray) -> Model:
        """The batched model of log L over inputs X (n, len(inputs))."""

    @abstractmethod
    def params_from_theta(self, theta: np.ndarray) -> dict[str, float]: ...

    def fit_model(self, X: np.ndarray) -> Model:
        """The model the fit's objective is summed over (the fitted runs' inputs X). Default: ``model(X)``; a law
        whose fit whitens correlated residuals returns the whitened model (the surface law's trunk effects)."""
        return self.model(X)

    # -- inputs and refusals ----------------------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return len(self.theta_names)

    def requirements(self) -> str:
        cols = ", ".join(self.inputs)
        return (
            f"{self.name} law ({self.form}): columns {cols} and loss; at least {self.n_params} distinct "
            f"({cols}) points and more than one value of each of {cols}"
        )

    def check_table(self, df: pd.DataFrame) -> None:
        """Raise FitError naming the reason when ``df`` cannot determine this law's parameters."""
        missing = [c for c in (*self.inputs, "loss") if c not in df.columns]
        if missing:
            raise FitError(f"the {self.name} law needs columns {', '.join((*self.inputs, 'loss'))}; the table lacks {', '.join(missing)}")
        distinct = len(df[list(self.inputs)].drop_duplicates())
        if distinct < self.n_params:
            raise FitError(
                f"the {self.name} law has {self.n_params} parameters but the table has {distinct} distinct "
                f"({', '.join(self.inputs)}) point{'s' if distinct != 1 else ''}: the fit is underdetermined"
            )
        for c in self.inputs:
            vals = df[c].unique()
            if len(vals) < 2:
                raise FitError(f"no spread in {c}: every run has {c} = {float(vals[0]):.4g}, so the {self.name} law's {c} dependence cannot be identified")

    def _X(self, df: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.inputs if c not in df.columns]
        if missing:
            raise FitError(f"the {self.name} law needs {', '.join(self.inputs)}; missing {', '.join(missing)}")
        return df[list(self.inputs)].to_numpy(float)

    def prepare(self, df: pd.DataFrame) -> pd.DataFrame:
        """Hook: derive the law's input columns from a runs table's canonical ones (the MoE laws read ``N_active``
        and ``n_experts`` / ``granularity``). The base class uses the table as it is."""
        return df

    def fit_data(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(X, log loss) the objective is summed over; checks the table first."""
        df = self.prepare(df)
        self._prepare_notes = list(df.attrs.get("prepare_notes", []))
        self.check_table(df)
        return self._X(df), np.log(df["loss"].to_numpy(float))

    # -- shared machinery -------------------------------------------------------------------------------------
    def starts(self) -> np.ndarray:
        grid = self.grid or self.default_grid()
        lo, hi = self.bounds()
        return np.clip(np.array(list(itertools.product(*(grid[k] for k in self.theta_names))), float), lo, hi)

    def _log_pred(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        """log L for a (S, p) batch of parameter vectors over (n, m) inputs -> (S, n)."""
        with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
            return self.model(X).value(np.atleast_2d(np.asarray(theta, float)))

    def objective_batch(self, thetas: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore", under="ignore", divide="ignore"):
            r = self.fit_model(X).value(np.atleast_2d(np.asarray(thetas, float))) - y[None, :]
            obj = huber(r, self.delta).sum(axis=1)
        return np.where(np.isfinite(obj), obj, np.inf)

    def fit(self, df: pd.DataFrame, starts: np.ndarray | None = None, progress: bool = False) -> "Law":
        """Fit on ``df``; ``starts`` overrides the grid (e.g. a warm start). ``progress`` shows a progress bar."""
        t0 = time.perf_counter()
        X, y = self.fit_data(df)
        model = self.fit_model(X)
        S = self.starts() if starts is None else np.atleast_2d(np.asarray(starts, float))
        n_grid = len(S)
        if self.top_starts is not None and len(S) > self.top_starts:
            S = S[np.argsort(self.objective_batch(S, X, y), kind="stable")[: self.top_starts]]
        lo, hi = self.bounds()
        with progress_bar(progress, f"fitting {self.name} ({len(S)} starts)") as cb:
            # ftol 1e-10: the batch only has to bring the best starts into the optimum's basin; the polish below
            # converges them to 1e-13.
            res = minimize_batched(model, S, y, delta=self.delta, lower=lo, upper=hi, ftol=1e-10, on_iter=cb)
        t1 = time.perf_counter()
        if not np.isfinite(res.fun).any():
            raise FitError(f"the {self.name} law could not be evaluated from any start (non-finite loss everywhere)")
        # Polish the best start, and up to two distinct others within 1e-6 of its objective (a flat valley can
        # hold near-ties), with L-BFGS-B at tight tolerances; keep the best.
        order = np.argsort(res.fun, kind="stable")
        f0 = res.fun[order[0]]
        cands: list[np.ndarray] = []
        for i in order:
            if not res.fun[i] <= f0 * (1 + 1e-6) + 1e-300 or len(cands) == 3:
                break
            if all(np.max(np.abs(res.theta[i] - c)) > 1e-4 for c in cands):
                cands.append(res.theta[i])
        # Newton to its floating-point limit first (quadratic convergence), then L-BFGS-B as an independent check
        # that no descent direction is left (it never returns a worse point).
        fine = minimize_batched(model, np.array(cands), y, delta=self.delta, lower=lo, upper=hi, ftol=1e-15, max_iter=100)
        best_x, best_f = None, np.inf
        for c in fine.theta:
            x, fx = polish(model, c, y, self.delta, lo, hi)
            if fx < best_f:
                best_x, best_f = x, fx
        self.theta, self.objective, self.n_points = best_x, float(best_f), len(y)
        r = self.fit_model(X).value(best_x[None])[0] - y
        self.resid_scale = float(1.4826 * np.median(np.abs(r - np.median(r))))
        self.fit_time_s = time.perf_counter() - t0
        self.search = {
            "grid_starts": int(n_grid),
            "optimised_starts": int(len(S)),
            "starts_within_1e-4_of_optimum": int(np.sum(res.fun <= best_f * (1 + 1e-4) + 1e-300)),
            "batch_time_s": t1 - t0,
        }
        self.notes = list(df.attrs.get("notes", [])) + self._prepare_notes
        self.notes += self.bound_notes()
        self.bootstrap_samples = None
        self._after_fit(df)
        return self

    def _after_fit(self, df: pd.DataFrame) -> None:
        """Hook for law-specific bookkeeping after a fit."""

    def bound_notes(self, theta: np.ndarray | None = None) -> list[str]:
        """A note for each parameter that ended on a bound of the allowed range (not identified by the data)."""
        theta = self._require_fit() if theta is None else theta
        lo, hi = self.bounds()
        notes = []
        for name, v, l, h in zip(self.theta_names, theta, lo, hi):
            for side, b in (("lower", l), ("upper", h)):
                if np.isfinite(b) and abs(v - b) <= 1e-6 * (1 + abs(b)):
                    notes.append(f"degenerate fit: {name} = {v:.4g} is at its {side} bound; the data do not determine it")
        return notes

    def interval_notes(self, level: float = 0.95) -> list[str]:
        """A note for each parameter whose bootstrap interval spans more than 10x (or includes 0)."""
        notes = []
        for k, iv in self.intervals(level).items():
            lo, hi = iv["lo"], iv["hi"]
            if not (np.isfinite(lo) and np.isfinite(hi)):
                notes.append(f"degenerate fit: the {100 * level:.0f}% interval of {k} is not finite")
            elif lo <= 0 < hi or (lo > 0 and hi / lo > 10):
                notes.append(f"degenerate fit: the {100 * level:.0f}% interval of {k} spans more than 10x ([{lo:.4g}, {hi:.4g}])")
        return notes

    def _require_fit(self) -> np.ndarray:
        if self.theta is None:
            raise RuntimeError(f"{self.name} law is not fitted")
        return self.theta

    @property
    def params(self) -> dict[str, float]:
        return self.params_from_theta(self._require_fit())

    def _inputs(self, df: pd.DataFrame | None, cols: dict) -> np.ndarray:
        if df is None:
            missing = [c for c in self.inputs if cols.get(c) is None]
            if missing:
                raise FitError(f"the {self.name} law predicts from {', '.join(self.inputs)}; give {', '.join('--' + c for c in missing)}")
            import pandas as pd

            arrs = np.broadcast_arrays(*(np.atleast_1d(np.asarray(cols[c], float)) for c in self.inputs))
            df = pd.DataFrame({c: a for c, a in zip(self.inputs, arrs)})
        return self._X(self.prepare(df))

    def predict(self, df: pd.DataFrame | None = None, **cols: Any) -> np.ndarray:
        """Predicted loss for a DataFrame or for columns given as keywords (``predict(N=7e10, D=1.4e12)``)."""
        X = self._inputs(df, cols)
        return np.exp(self._log_pred(self._require_fit()[None], X)[0])

    def predict_samples(self, df: pd.DataFrame | None = None, **cols: Any) -> np.ndarray:
        """Predictions under every bootstrap sample: (n_boot, n)."""
        if self.bootstrap_samples is None:
            raise RuntimeError("no bootstrap samples: run analysis.bootstrap(law, df) first")
        X = self._inputs(df, cols)
        ok = np.isfinite(self.bootstrap_samples).all(axis=1)
        out = np.full((len(self.bootstrap_samples), len(X)), np.nan)
        with np.errstate(over="ignore"):
            out[ok] = np.exp(self._log_pred(self.bootstrap_samples[ok], X))
        return out

    def predict_interval(
        self, df: pd.DataFrame | None = None, level: float = 0.95, include_noise: bool = False,
        noise_scale: float | None = None, **cols: Any
    ) -> pd.DataFrame:
        """Point prediction with a bootstrap percentile interval (lo, hi) and standard error (se).

        By default the interval is for the law's expected loss (parameter uncertainty). ``include_noise=True``
        makes it a prediction interval for one new run: each bootstrap prediction is also multiplied by
        exp(eps), eps ~ N(0, resid_scale^2), the run-to-run scatter of the fit's log residuals. ``noise_scale``
        gives that scatter instead (e.g. measured on repeated seeds, ``analysis.seed_scatter``)."""
        import pandas as pd

        point = self.predict(df, **cols)
        out = pd.DataFrame({"loss": point})
        asked = self._asked(df, cols, len(point))  # the inputs asked for come back beside their predictions
        for k in reversed(list(asked)):
            out.insert(0, k, asked[k])
        if self.bootstrap_samples is not None:
            s = self.predict_samples(df, **cols)
            scale = noise_scale if noise_scale is not None else (self.resid_scale if include_noise else None)
            if scale:
                s = s * np.exp(scale * np.random.default_rng(0).standard_normal(s.shape))
            q = (1 - level) / 2
            with np.errstate(all="ignore"):
                out["lo"], out["hi"] = np.nanquantile(s, q, axis=0), np.nanquantile(s, 1 - q, axis=0)
                out["se"] = np.nanstd(s, axis=0, ddof=1)
        return out

    def predict_calibrated(self, df: pd.DataFrame | None = None, level: float = 0.95, include_noise: bool = True,
                           noise_scale: float | None = None, **cols: Any) -> pd.DataFrame:
        """The calibrated extrapolation interval (``analysis.calibration``): loss, lo, hi, the log scale ``sigma``,
        the distance ``d`` in decades of compute beyond the fit, and the fit-only interval (``fit_lo``, ``fit_hi``)."""
        from analysis.calibration import calibrated_interval

        return calibrated_interval(self, df, level=level, include_noise=include_noise, noise_scale=noise_scale, **cols)

    def _asked(self, df, cols: dict, n: int) -> dict:
        if df is not None:
            return {c: df[c].to_numpy() for c in (*self.inputs, "C") if c in df.columns}
        return {k: np.broadcast_to(np.asarray(v, float), (n,)) for k, v in cols.items() if v is not None}

    def interval_table(self, level: float = 0.95):
        """The parameters as a DataFrame (one row each: value, se, lo, hi at ``level``; NaN without a bootstrap)."""
        import pandas as pd

        iv = self.intervals(level)
        return pd.DataFrame([{"param": k, "value": v, **{q: iv.get(k, {}).get(q, np.nan) for q in ("se", "lo", "hi")}}
                             for k, v in self.params.items()]).set_index("param")

    def param_samples(self) -> pd.DataFrame:
        if self.bootstrap_samples is None:
            raise RuntimeError("no bootstrap samples")
        import pandas as pd

        ok = np.isfinite(self.bootstrap_samples).all(axis=1)
        return pd.DataFrame([self.params_from_theta(t) for t in self.bootstrap_samples[ok]])

    def intervals(self, level: float = 0.95) -> dict[str, dict[str, float]]:
        if self.bootstrap_samples is None:
            return {}
        s, q = self.param_samples(), (1 - level) / 2
        if s.empty:
            return {}
        return {
            k: {"se": float(s[k].std(ddof=1)), "lo": float(s[k].quantile(q)), "hi": float(s[k].quantile(1 - q))}
            for k in s.columns
        }

    # -- bootstrap support ------------------------------------------------------------------------------------
    def bootstrap_problems(self, df: pd.DataFrame, n: int, rng: np.random.Generator):
        """(X, Y, W) for ``n`` resamples: inputs shared by all, log losses (n_pts,) or (n, n_pts), and weights
        (n, n_pts) = how often each run is drawn (resampling runs with replacement)."""
        X, y = self.fit_data(df)
        m = len(y)
        idx = rng.integers(0, m, (n, m))
        W = np.zeros((n, m))
        np.add.at(W, (np.repeat(np.arange(n), m), idx.ravel()), 1.0)
        return X, y, W

    # -- serialisation ----------------------------------------------------------------------------------------
    def config(self) -> dict:
        return {"delta": self.delta, "top_starts": self.top_starts}

    def to_dict(self, level: float = 0.95) -> dict:
        return {
            "law": self.name,
            "form": self.form,
            "requires": self.requirements(),
            "config": self.config(),
            "params": self.params,
            "theta": self._require_fit().tolist(),
            "objective": self.objective,
            "n_points": self.n_points,
            "fit_time_s": self.fit_time_s,
            "search": self.search,
            "intervals": self.intervals(level),
            "interval_level": level,
            "bootstrap_samples": None if self.bootstrap_samples is None else self.bootstrap_samples.tolist(),
            "resid_scale": self.resid_scale,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Law":
        if not isinstance(d, dict):
            raise AnalysisError(f"not a saved fit: expected a JSON object, got {type(d).__name__}")
        name = d.get("law")
        if name is None:
            raise AnalysisError("not a saved fit: the JSON object has no 'law' field (write one with `scaling fit ... --save`)")
        if name == "isoflop":
            raise AnalysisError("this is an IsoFLOP analysis (exponents of N_opt and D_opt), not a loss law; fit `frontier` to predict compute-optimal losses")
        klass = LAWS.get(name) if isinstance(name, str) else None
        if klass is None:
            raise AnalysisError(f"not a saved fit: unknown law {name!r}; known: {', '.join(LAWS)}")
        try:
            law = klass(**(d.get("config") or {}))
            theta = np.asarray(d["theta"], float)
            bs = d.get("bootstrap_samples")
            bs = None if bs is None else np.asarray(bs, float)
        except (KeyError, TypeError, ValueError) as e:
            raise AnalysisError(f"not a saved {name} fit: {e.__class__.__name__}: {e}") from None
        if theta.shape != (law.n_params,) or (bs is not None and (bs.ndim != 2 or bs.shape[1] != law.n_params)):
            raise AnalysisError(f"not a saved {name} fit: theta must hold {law.n_params} numbers ({', '.join(law.theta_names)})")
        if not np.all(np.isfinite(theta)):
            raise AnalysisError(f"not a usable {name} fit: theta holds a non-finite number ({theta.tolist()})")
        saved = d.get("params")
        if saved is not None:  # the readable parameters must be the ones theta gives: a file edited by hand is refused
            if not isinstance(saved, dict):
                raise AnalysisError(f"not a saved {name} fit: params is not an object")
            want = law.params_from_theta(theta)
            for k, v in want.items():
                got = saved.get(k)
                if not isinstance(got, (int, float)) or isinstance(got, bool) or not np.isfinite(got) or not np.isclose(got, v, rtol=1e-9, atol=0):
                    raise AnalysisError(f"the {name} fit's params disagree with its theta ({k}: {got!r} in params, {v!r} from theta): the file was edited or damaged")
        for key, ok in (("notes", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)), ("search", lambda v: isinstance(v, dict)),
                        ("resid_scale", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0),
                        ("objective", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
                        ("n_points", lambda v: isinstance(v, int) and not isinstance(v, bool))):
            if d.get(key) is not None and not ok(d[key]):
                raise AnalysisError(f"not a saved {name} fit: its {key} is {d[key]!r:.60}")
        law.theta, law.bootstrap_samples = theta, bs
        law.objective, law.n_points, law.fit_time_s = d.get("objective"), d.get("n_points"), d.get("fit_time_s")
        law.resid_scale = d.get("resid_scale")
        if d.get("calibration") is not None:
            from analysis.calibration import Calibration

            if not isinstance(d["calibration"], dict):
                raise AnalysisError(f"not a saved {name} fit: its calibration is not an object")
            law.calibration = Calibration.from_dict(d["calibration"])
        law.search = d.get("search") or {}
        law.notes = list(d.get("notes") or [])
        law._restore(d)
        return law

    def _restore(self, d: dict) -> None:
        """Hook: law-specific fields from ``to_dict``."""

    def save(self, path: str | Path) -> None:
        from analysis.jsonutil import json_safe

        Path(path).write_text(json.dumps(json_safe(self.to_dict()), indent=1))

    @staticmethod
    def load(path: str | Path) -> "Law":
        from analysis.jsonutil import read_json

        return Law.from_dict(read_json(path, "fit file"))

    def __repr__(self) -> str:
        if self.theta is None:
            return f"{type(self).__name__}(unfitted)"
        ps = ", ".join(f"{k}={v:.4g}" for k, v in self.params.items())
        return f"{type(self).__name__}({ps})"


def _lse_design(n: int, terms: list[list[tuple[int, np.ndarray | float]]], p: int) -> np.ndarray:
    """Design G (n, K, p) from terms given as [(param index, coefficient per run or scalar), ...]."""
    G = np.zeros((n, len(terms), p))
    for k, term in enumerate(terms):
        for j, coef in term:
            G[:, k, j] = coef
    return G


def table_flops_per_param_token(df: pd.DataFrame) -> float:
    """The table's FLOPs per parameter per token: median of C / (N D) (6 under the 6ND convention)."""
    if not {"N", "D", "C"} <= set(df.columns):
        return 6.0
    k = (df["C"] / (df["N"] * df["D"])).to_numpy(float)
    k = k[np.isfinite(k) & (k > 0)]
    return float(np.median(k)) if len(k) else 6.0


@register(aliases={"chinchilla-tied": {"tie_exponents": True}})
class ChinchillaLaw(Law):
    """L(N, D) = E + A / N^alpha + B / D^beta, fitted as log L = LSE(a - alpha log N, b - beta log D, e).

    ``tie_exponents=True``: beta = alpha (Gadre et al. 2024), 4 parameters."""

    name = "chinchilla"
    inputs = ("N", "D")
    validate_in_all = True

    def __init__(self, tie_exponents: bool = False, flops_per_param_token: float | None = None, **kw):
        super().__init__(**kw)
        self.tie_exponents = bool(tie_exponents)
        self.theta_names = ("a", "b", "e", "alpha") if self.tie_exponents else ("a", "b", "e", "alpha", "beta")
        self.form = "E + A/N^alpha + B/D^alpha" if self.tie_exponents else "E + A/N^alpha + B/D^beta"
        # C = k N D for the compute-optimal allocation; set from the training table's own C at fit time.
        self.flops_per_param_token = flops_per_param_token

    def config(self):
        return {**super().config(), "tie_exponents": self.tie_exponents, "flops_per_param_token": self.flops_per_param_token}

    def default_grid(self):
        g = {
            "a": [0, 5, 10, 15, 20, 25],
            "b": [0, 5, 10, 15, 20, 25],
            "e": [-1, -0.5, 0, 0.5, 1],
            "alpha": [0, 0.5, 1, 1.5, 2],
            "beta": [0, 0.5, 1, 1.5, 2],
        }
        return {k: g[k] for k in self.theta_names}

    def bounds(self):
        lo = {"a": -20.0, "b": -20.0, "e": -20.0, "alpha": 0.0, "beta": 0.0}
        hi = {"a": 100.0, "b": 100.0, "e": 10.0, "alpha": 5.0, "beta": 5.0}
        return np.array([lo[k] for k in self.theta_names]), np.array([hi[k] for k in self.theta_names])

    def model(self, X):
        lN, lD = np.log(X[:, 0]), np.log(X[:, 1])
        beta = 3 if self.tie_exponents else 4
        G = _lse_design(len(X), [[(0, 1.0), (3, -lN)], [(1, 1.0), (beta, -lD)], [(2, 1.0)]], self.n_params)
        return LSEAffineModel(G)

    def full_theta(self, thetas: np.ndarray) -> np.ndarray:
        """(S, 5) parameter vectors (a, b, e, alpha, beta), beta = alpha when tied."""
        t = np.atleast_2d(thetas)
        return np.column_stack([t, t[:, 3]]) if self.tie_exponents else t

    def params_from_theta(self, theta):
        a, b, e, alpha, beta = self.full_theta(theta)[0]
        return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": float(alpha), "beta": float(beta)}

    def _after_fit(self, df):
        self.flops_per_param_token = table_flops_per_param_token(df)

    def _k(self, k: float | None) -> float:
        return float(k if k is not None else (self.flops_per_param_token or 6.0))

    def compute_optimal(self, C, flops_per_param_token: float | None = None) -> pd.DataFrame:
        """N_opt(C), D_opt(C) and the loss there, with C = k N D: k is the fitted table's own FLOPs per
        parameter-token (median C / ND; 6 for tables that count 6ND) unless given.
        N_opt = G (C/k)^(beta/(alpha+beta)), D_opt = (C/k) / N_opt, G = (alpha A / (beta B))^(1/(alpha+beta))."""
        return compute_optimal_from_theta(self.full_theta(self._require_fit()), C, self._k(flops_per_param_token))

    def compute_optimal_interval(self, C, level: float = 0.95, k: float | None = None) -> pd.DataFrame:
        out = compute_optimal_from_theta(self.full_theta(self._require_fit()), C, self._k(k))
        if self.bootstrap_samples is not None:
            q = (1 - level) / 2
            ok = np.isfinite(self.bootstrap_samples).all(axis=1)
            s = compute_optimal_from_theta(self.full_theta(self.bootstrap_samples[ok]), C, self._k(k), stacked=True)
            for col in ("N_opt", "D_opt", "loss", "tokens_per_param"):
                with np.errstate(all="ignore"):
                    out[f"{col}_lo"] = np.nanquantile(s[col], q, axis=0)
                    out[f"{col}_hi"] = np.nanquantile(s[col], 1 - q, axis=0)
        return out


def compute_optimal_from_theta(thetas: np.ndarray, C, k: float = 6.0, stacked: bool = False):
    """Compute-optimal allocation under C = k N D for (S, 5) Chinchilla parameter vectors (a, b, e, alpha, beta)."""
    C = np.atleast_1d(np.asarray(C, float))
    thetas = np.atleast_2d(thetas)
    a, b, e, al, be = (thetas[:, i : i + 1] for i in range(5))
    A, B, E = np.exp(a), np.exp(b), np.exp(e)
    with np.errstate(all="ignore"):
        G = (al * A / (be * B)) ** (1 / (al + be))
        N = G * (C[None] / k) ** (be / (al + be))
        D = (C[None] / k) / N
        L = E + A / N**al + B / D**be
    if stacked:
        return {"N_opt": N, "D_opt": D, "loss": L, "tokens_per_param": D / N}
    import pandas as pd

    return pd.DataFrame({"C": C, "N_opt": N[0], "D_opt": D[0], "tokens_per_param": D[0] / N[0], "loss": L[0]})


@register
class PowerLaw(Law):
    """L(x) = E + A x^-alpha (offset) or A x^-alpha, x one of N, D, C; log L = LSE(a - alpha log x, e)."""

    name = "power"
    theta_names = ("a", "alpha", "e")

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
        return LSEAffineModel(_lse_design(len(X), terms, self.n_params))

    def params_from_theta(self, theta):
        theta = np.asarray(theta, float).ravel()
        out = {"A": float(np.exp(theta[0])), "alpha": float(theta[1])}
        if self.offset:
            out["E"] = float(np.exp(theta[2]))
        return out


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


@register
class FrontierLaw(PowerLaw):
    """The compute frontier L_opt(C) = E + A C^-gamma, fitted to the IsoFLOP minima of a table of runs.

    Each budget's minimum loss comes from ``analysis.isoflop`` (same method options); the law predicts the loss of a
    compute-optimal run at budget C. Its bootstrap resamples runs within each budget and refits the minima."""

    name = "frontier"
    validate_in_all = True

    def __init__(self, method: str | None = None, gap_dex: float = 0.1, keep_unbracketed: bool = False, **kw):
        kw.pop("x", None)
        kw.pop("offset", None)
        super().__init__(x="C", offset=True, **kw)
        self.theta_names = ("a", "gamma", "e")
        self.form = "E + A C^-gamma (IsoFLOP minima)"
        self.method = method or DEFAULT_ISOFLOP_METHOD
        self.gap_dex, self.keep_unbracketed = gap_dex, bool(keep_unbracketed)
        self.minima: pd.DataFrame | None = None

    def config(self):
        c = super().config()
        c.pop("x"), c.pop("offset")
        return {**c, "method": self.method, "gap_dex": self.gap_dex, "keep_unbracketed": self.keep_unbracketed}

    def default_grid(self):
        return {"a": [0, 2.5, 5, 10, 15, 20, 25], "gamma": [0, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0], "e": [-1, -0.5, 0, 0.5, 1, 1.5]}

    def bounds(self):
        return np.array([-50.0, 0.0, -20.0]), np.array([300.0, 5.0, 10.0])

    def requirements(self) -> str:
        return (
            "frontier law (E + A C^-gamma on IsoFLOP minima): columns N, C and loss (D optional), runs grouped into "
            "compute budgets (a budget column, or C values that cluster), at least 3 budgets with a bracketed minimum"
        )

    def _minima(self, df: pd.DataFrame):
        from analysis.isoflop import budget_minima

        missing = [c for c in ("N", "C", "loss") if c not in df.columns]
        if missing:
            raise FitError(f"the frontier law needs columns N, C and loss (runs at several sizes per compute budget); the table lacks {', '.join(missing)}")
        return budget_minima(df, method=self.method, gap_dex=self.gap_dex, keep_unbracketed=self.keep_unbracketed)

    def fit_data(self, df):
        minima, notes = self._minima(df)
        if len(minima) < self.n_params:
            from analysis.isoflop import summarize_left_out

            raise FitError(
                f"the frontier law has {self.n_params} parameters but the table gives IsoFLOP minima at {len(minima)} "
                f"budget{'s' if len(minima) != 1 else ''}{summarize_left_out(notes)}"
            )
        self._fit_minima, self._fit_minima_notes = minima, notes
        return minima[["budget"]].to_numpy(float), np.log(minima["loss_opt"].to_numpy(float))

    def _after_fit(self, df):
        self.minima = self._fit_minima.drop(columns=["curve_x", "curve_y"], errors="ignore")
        self.notes += self._fit_minima_notes

    def bootstrap_problems(self, df, n, rng):
        from analysis.isoflop import bootstrap_minima

        if getattr(self, "_fit_minima", None) is None:
            self.fit_data(df)
        minima = self._fit_minima
        boot = bootstrap_minima(df, minima, method=self.method, gap_dex=self.gap_dex, n=n, rng=rng)
        L = boot["loss_opt"]  # (n, B) with NaN where a resample has no minimum at that budget
        W = np.isfinite(L).astype(float)
        Y = np.log(np.where(np.isfinite(L), L, 1.0))
        W[W.sum(axis=1) < self.n_params] = 0.0  # too few minima: the resample is left out
        return minima[["budget"]].to_numpy(float), Y, W

    def to_dict(self, level: float = 0.95) -> dict:
        d = super().to_dict(level)
        if self.minima is not None:
            d["minima"] = self.minima.to_dict(orient="records")
        return d

    def _restore(self, d):
        if d.get("minima"):
            import pandas as pd

            self.minima = pd.DataFrame(d["minima"])

    def params_from_theta(self, theta):
        theta = np.asarray(theta, float).ravel()
        return {"A": float(np.exp(theta[0])), "gamma": float(theta[1]), "E": float(np.exp(theta[2]))}

LN10 = float(np.log(10.0))


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
            G = _lse_design(len(X), [[(0, LN10 * n), (1, lE), (2, n * lE), (3, LN10)]], 4)
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
        return LSEAffineModel(_lse_design(len(X), terms, 7))

    def params_from_theta(self, theta):
        la, lb, lc, lg, al, be, ga = np.asarray(theta, float).ravel()
        return {"a": float(np.exp(la)), "b": float(np.exp(lb)), "c": float(np.exp(lc)), "g": float(np.exp(lg)),
                "alpha": float(al), "beta": float(be), "gamma": float(ga)}


def load_fit(path: str | Path) -> Law:
    return Law.load(path)


HUBER_K = 1.345  # Huber's constant: delta = 1.345 sigma is 95% efficient for Gaussian scatter


@register
class SurfaceLaw(Law):
    """The IsoFLOP surface: every run of a sweep on one law of N and C,

        L(N, C) = E + A (C/C0)^-gamma * (1 + k ln^2(N / N_opt(C))),   N_opt(C) = N0 (C/C0)^a,

    i.e. at each compute budget a parabola in log N (relative to the frontier's excess loss A C^-gamma) whose
    minimum is the compute frontier L_opt(C) = E + A C^-gamma and whose position follows N_opt ~ C^a. It is the
    frontier law (the GPT-4 form) and the IsoFLOP exponent fitted together on all runs instead of on per-budget
    minima: six parameters from every run rather than three from a handful of noisy minima, one curvature shared
    by all budgets (the Chinchilla law's second derivative in ln N at its optimum, relative to its excess loss, is
    the constant alpha * beta: k = alpha * beta / 2 on its profiles), and
    a prediction for a run of any size, not only a compute-optimal one.

    theta = (ln E, ln A, gamma, a, ln(N0 / N_ref), ln k); C0 and N_ref are the geometric means of the table's C
    and N (fixed at the first fit and saved in the config), so the start grid is the same for any table's scale.
    Its bootstrap resamples runs within each compute budget (a budget keeps its number of runs).

    ``groups`` names a column of runs that share their training (WSD branches of one trunk: ``trunk_id``). Such
    runs share the trunk's luck (init and data order), so their residuals are correlated: a random intercept per
    group, u ~ N(0, sigma_u^2), on top of independent scatter e ~ N(0, sigma_e^2). The fit is then feasible GLS:
    a first fit's residuals give sigma_u and sigma_e (one-way ANOVA, method of moments), the residuals are
    whitened within each group (Fuller & Battese 1973: r - theta_g mean_g(r), theta_g = 1 - sigma_e /
    sqrt(sigma_e^2 + n_g sigma_u^2)) and the law is refitted on them, with Huber's delta at 1.345 sigma_e (95%
    efficient for Gaussian scatter). The C dependence is then measured within trunks, where their luck cancels:
    in simulations from that noise model, shaped like the quickstart's sweeps, it halves the prediction's sampling
    spread; on the real sweeps the trunks' residuals also drift with C, and it did not pay (benchmarks/RESULTS.md). The
    bootstrap is then a wild cluster bootstrap: each resample adds the fitted residuals of each group times one
    draw of Webb's six-point distribution (Webb 2013; few clusters), scaled by sqrt(n / (n - 6))."""

    name = "surface"
    inputs = ("N", "C")
    validate_in_all = True
    theta_names = ("e", "a_log", "gamma", "a", "n0", "k_log")
    form = "E + A (C/C0)^-gamma (1 + k ln^2(N / (N0 (C/C0)^a)))"

    def __init__(self, c_ref: float | None = None, n_ref: float | None = None, gap_dex: float = 0.1, groups: str | None = None, **kw):
        # Its 1728-start grid is scored on the data and the 256 best starts optimised: on the three quickstart sweeps
        # the same optimum as all 1728 (objective within 1e-12 relative, prediction within 1e-9), 8x faster.
        kw.setdefault("top_starts", 256)
        super().__init__(**kw)
        self._delta0 = self.delta  # a grouped fit sets delta from its sigma_e; every fit starts from this one
        self.c_ref = None if c_ref is None else float(c_ref)
        self.n_ref = None if n_ref is None else float(n_ref)
        self.gap_dex = gap_dex
        self.groups = groups
        self._T: np.ndarray | None = None  # the whitening transform of the fitted runs (grouped fits)
        self._group_index: np.ndarray | None = None
        self.variance: dict | None = None  # grouped fits: sigma_u, sigma_e, n_groups

    def config(self):
        return {**super().config(), "c_ref": self.c_ref, "n_ref": self.n_ref, "gap_dex": self.gap_dex, "groups": self.groups}

    def _group_codes(self, df) -> np.ndarray | None:
        """Integer group per run, or None when the table has no usable groups (column absent, or every run alone)."""
        if not self.groups or self.groups not in df.columns:
            return None
        codes = np.unique(df[self.groups].astype(str).to_numpy(), return_inverse=True)[1]
        return codes if np.bincount(codes).max() > 1 else None

    def fit(self, df, starts=None, progress: bool = False):
        self._T, self._group_index, self.delta = None, None, self._delta0
        g = self._group_codes(df)
        super().fit(df, starts=starts, progress=progress)
        if g is None:
            self.variance = None
            return self
        # Feasible GLS: variance components from the first fit's residuals, then a refit on whitened residuals.
        X, y = self.fit_data(df)
        r = self.model(X).value(self.theta[None])[0] - y
        n_g = np.bincount(g)
        k, n = len(n_g), len(r)
        mean_g = np.bincount(g, weights=r) / n_g
        ss_within = float(((r - mean_g[g]) ** 2).sum())
        var_e = ss_within / max(n - k, 1)
        ms_between = float((n_g * (mean_g - r.mean()) ** 2).sum()) / max(k - 1, 1)
        n0 = (n - (n_g**2).sum() / n) / max(k - 1, 1)
        var_u = max((ms_between - var_e) / n0, 0.0) if n0 > 0 else 0.0
        theta_g = 1.0 - np.sqrt(var_e / (var_e + n_g * var_u)) if var_e > 0 else np.zeros(k)
        T = np.eye(n)
        for j in range(k):
            idx = np.flatnonzero(g == j)
            T[np.ix_(idx, idx)] -= theta_g[j] / n_g[j]
        self._T, self._group_index = T, g
        self.variance = {"sigma_u": float(np.sqrt(var_u)), "sigma_e": float(np.sqrt(var_e)), "n_groups": int(k),
                         "groups": self.groups, "method": "one-way ANOVA on the first fit's log residuals; Fuller-Battese whitening"}
        if var_e > 0:
            self.delta = HUBER_K * float(np.sqrt(var_e))
        first = self.theta
        super().fit(df, starts=first[None], progress=progress)
        # a new run's scatter about the law is its trunk's luck plus its own: not the whitened residuals' sigma_e
        self.resid_scale = float(np.sqrt(var_u + var_e))
        self.notes.append(
            f"runs grouped by {self.groups} ({k} groups): trunk scatter sigma_u {100 * np.sqrt(var_u):.2f}%, run scatter "
            f"sigma_e {100 * np.sqrt(var_e):.2f}% of the loss; fitted on whitened residuals (feasible GLS)"
        )
        return self

    def requirements(self) -> str:
        return (
            "surface law (E + A C^-gamma (1 + k ln^2(N/N_opt(C))), N_opt ~ C^a): columns N, C and loss; runs at "
            "several sizes in each of at least 2 compute budgets, at least 6 distinct (N, C) points"
        )

    def check_table(self, df):
        super().check_table(df)
        from analysis.isoflop import assign_budgets

        b = assign_budgets(df, self.gap_dex)
        sizes = df.groupby(b.to_numpy())["N"].nunique()
        if int((sizes >= 3).sum()) < 2:
            raise FitError(
                f"the surface law needs at least 2 compute budgets with 3 or more sizes each (a parabola in log N per "
                f"budget); the table has {int((sizes >= 3).sum())}"
            )

    def fit_data(self, df):
        X, y = super().fit_data(df)
        if self.c_ref is None:
            self.c_ref = float(np.exp(np.mean(np.log(X[:, 1]))))
        if self.n_ref is None:
            self.n_ref = float(np.exp(np.mean(np.log(X[:, 0]))))
        if self._T is not None and len(y) == len(self._T):
            y = self._T @ y
        return X, y

    def default_grid(self):
        return {
            "e": [-1.5, -0.5, 0.0, 0.4],
            "a_log": [-3.0, -1.5, -0.5, 0.5],
            "gamma": [0.05, 0.15, 0.3, 0.5],
            "a": [0.3, 0.5, 0.7],
            "n0": [-1.0, 0.0, 1.0],
            "k_log": [-3.5, -2.3, -1.0],
        }

    def bounds(self):
        return np.array([-20.0, -20.0, 0.0, 0.0, -10.0, -12.0]), np.array([5.0, 10.0, 5.0, 2.0, 10.0, 5.0])

    def model(self, X):
        if self.c_ref is None or self.n_ref is None:
            raise RuntimeError("surface law: c_ref / n_ref unset (fit first)")
        x = (np.log(X[:, 0]) - np.log(self.n_ref))[None]
        c = (np.log(X[:, 1]) - np.log(self.c_ref))[None]

        def parts(theta):
            e, la, g, a, n0, lk = (theta[:, i : i + 1] for i in range(6))
            K = np.exp(lk)
            u = x - n0 - a * c
            q = 1.0 + K * u * u
            T2 = la - g * c + np.log(q)
            m = np.maximum(e, T2)
            w1, w2 = np.exp(e - m), np.exp(T2 - m)
            s = w1 + w2
            return K, u, q, m + np.log(s), w1 / s, w2 / s

        def value(theta):
            return parts(theta)[3]

        def jac(theta):
            K, u, q, pred, w1, w2 = parts(theta)
            S, n = pred.shape
            one = np.ones((S, n))
            cc = c * one
            du = np.stack([0 * one, 0 * one, 0 * one, -cc, -one, 0 * one], axis=-1)  # du/dtheta
            sk = K * u * u / q  # d ln q / d ln k
            fu = 2 * K * u / q  # d ln q / du
            g2 = np.stack([0 * one, one, -cc, 0 * one, 0 * one, sk], axis=-1) + fu[..., None] * du  # dT2/dtheta
            g1 = np.zeros_like(g2)
            g1[..., 0] = 1.0
            J = w1[..., None] * g1 + w2[..., None] * g2

            def hess(v, rows=None):
                sl = slice(None) if rows is None else rows
                w1r, w2r, g1r, g2r, dur = w1[sl], w2[sl], g1[sl], g2[sl], du[sl]
                Kr, ur, qr, skr = K[sl] * one[sl], u[sl], q[sl], sk[sl]
                dd = g1r - g2r
                H = np.einsum("sn,snp,snq->spq", v * w1r * w2r, dd, dd)
                vw = v * w2r  # w2 * d^2 T2: the ln q term only
                fuu = 2 * Kr * (1 - Kr * ur * ur) / qr**2
                fku = 2 * Kr * ur / qr**2
                H += np.einsum("sn,snp,snq->spq", vw * fuu, dur, dur)
                cross = np.einsum("sn,snp->sp", vw * fku, dur)
                H[:, 5, :] += cross
                H[:, :, 5] += cross
                H[:, 5, 5] += (vw * skr * (1 - skr)).sum(1)
                return H

            return pred, J, hess

        return JacobianModel(6, value, jac)

    def fit_model(self, X):
        """With trunk groups: the model whitened by the trunks' random-intercept covariance (Fuller-Battese
        transform m -> T m), so the objective is over uncorrelated residuals; else the plain model."""
        m = self.model(X)
        T = self._T
        if T is None or len(X) != len(T):
            return m

        def value(theta):
            return m.value(theta) @ T.T

        def jac(theta):
            pred, J, hess = m._jac(theta)
            return pred @ T.T, np.einsum("ij,sjp->sip", T, J), lambda v, rows=None: hess(v @ T, rows)

        return JacobianModel(6, value, jac)

    def params_from_theta(self, theta):
        theta = np.asarray(theta, float).ravel()
        return {
            "E": float(np.exp(theta[0])),
            "A": float(np.exp(theta[1])),
            "gamma": float(theta[2]),
            "a": float(theta[3]),
            "N0": float(np.exp(theta[4]) * (self.n_ref or 1.0)),
            "k": float(np.exp(theta[5])),
        }

    def bootstrap_problems(self, df, n, rng):
        from analysis.isoflop import assign_budgets

        g = self._group_codes(df)
        if g is not None and (self._T is None or len(g) != len(self._T) or not np.array_equal(g, self._group_index)):
            self.fit(df)  # a loaded fit, or another table: rebuild the whitening on this one first
        if self._T is not None:  # wild cluster bootstrap on the whitened fit
            X, _ = self.fit_data(df)
            y = np.log(self.prepare(df)["loss"].to_numpy(float))
            fitted = self.model(X).value(self.theta[None])[0]
            r = (y - fitted) * np.sqrt(len(y) / max(len(y) - self.n_params, 1))
            webb = np.sqrt(np.array([0.5, 1.0, 1.5]))
            v = rng.choice(np.concatenate([-webb, webb]), size=(n, int(self._group_index.max()) + 1))
            Y = (fitted[None] + v[:, self._group_index] * r[None]) @ self._T.T
            return X, Y, np.ones((n, len(y)))
        X, y = self.fit_data(df)
        groups = assign_budgets(self.prepare(df), self.gap_dex).to_numpy()
        W = np.zeros((n, len(y)))
        for b in np.unique(groups):
            idx = np.flatnonzero(groups == b)
            draw = idx[rng.integers(0, len(idx), (n, len(idx)))]
            np.add.at(W, (np.repeat(np.arange(n), len(idx)), draw.ravel()), 1.0)
        return X, y, W

    def _after_fit(self, df):
        self.notes.append(f"C0 = {self.c_ref:.4g} FLOPs and N_ref = {self.n_ref:.4g} (geometric means of the fitted table): A is the excess loss at C0")

    def to_dict(self, level: float = 0.95) -> dict:
        return {**super().to_dict(level), "variance": self.variance}

    def _restore(self, d):
        self.variance = d.get("variance")

    def frontier(self, C) -> np.ndarray:
        """L_opt(C) = E + A (C/C0)^-gamma: the loss of a compute-optimal run."""
        p = self.params
        return p["E"] + p["A"] * (np.asarray(C, float) / self.c_ref) ** -p["gamma"]

    def N_opt(self, C, theta: np.ndarray | None = None) -> np.ndarray:
        """N_opt(C) = N0 (C/C0)^a (the sizes' parabola minima); ``theta`` (S, 6) gives one row per sample."""
        t = np.atleast_2d(self._require_fit() if theta is None else theta)
        C = np.atleast_1d(np.asarray(C, float))
        return (np.exp(t[:, 4:5]) * self.n_ref) * (C[None] / self.c_ref) ** t[:, 3:4]

    def frontier_interval(self, C, level: float = 0.95) -> "pd.DataFrame":
        """L_opt(C) with the bootstrap's percentile band (lo, hi) where samples are attached."""
        import pandas as pd

        C = np.atleast_1d(np.asarray(C, float))
        out = pd.DataFrame({"loss": self.frontier(C)})
        if self.bootstrap_samples is not None:
            t = self.bootstrap_samples[np.isfinite(self.bootstrap_samples).all(axis=1)]
            s = np.exp(t[:, 0:1]) + np.exp(t[:, 1:2]) * (C[None] / self.c_ref) ** -t[:, 2:3]
            q = (1 - level) / 2
            out["lo"], out["hi"] = np.quantile(s, q, axis=0), np.quantile(s, 1 - q, axis=0)
        return out
