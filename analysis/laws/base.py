"""The ``Law`` base: table checks, multi-start fitting, notes, intervals, the bootstrap and JSON; helpers the forms
share. The registry is ``analysis.laws.registry``."""

from __future__ import annotations

import itertools
import json
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from analysis.errors import AnalysisError, FitError
from analysis.optim import Model, huber, minimize_batched, polish
from analysis.progress import progress_bar
from analysis.laws.registry import LAWS, Option


class Law(ABC):
    """Base class. Subclasses define ``name``, ``inputs`` (columns a prediction needs), ``theta_names`` (the
    optimised vector), ``default_grid()``, ``bounds()``, ``model(X)`` (a batched ``analysis.optim`` model of
    log L) and ``params_from_theta``."""

    name: ClassVar[str]
    inputs: tuple[str, ...]
    theta_names: tuple[str, ...]
    form: str = ""
    validate_in_all: ClassVar[bool] = False  # compared by `scaling validate --law all`
    options: ClassVar[tuple[Option, ...]] = ()  # constructor arguments `scaling fit` exposes as flags

    def fit_summary(self, df: "pd.DataFrame") -> tuple[dict, str]:
        """What `scaling fit` adds for this law beyond its parameters: (fields for the JSON, text lines)."""
        return {}, ""

    # What a held-out check compares this law's predictions with. A law of single runs predicts the runs beyond the
    # cut-off; a law of something else (the frontier: compute-optimal losses) says what its targets are there.
    target_kind: ClassVar[str] = "held-out runs"

    def holdout(self, df: "pd.DataFrame", train: "pd.DataFrame", test: "pd.DataFrame", cutoff_flops: float | None):
        """(runs to fit, targets to predict) of a held-out check at a cut-off (``validate``): by default the runs
        at or below it and the runs above it (``train``, ``test``)."""
        return train, test

    def targets_above(self, df: "pd.DataFrame", above: "pd.DataFrame", cut: float) -> "pd.DataFrame":
        """The targets above an internal compute cut-off (the backtests of ``analysis.backtest``), this law
        fitted below it: by default the runs there."""
        return above

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
        self.calibration = None  # a refit invalidates what the last backtests measured (and the floor's verdict)
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

    @staticmethod
    def spans_a_decade(lo: float, hi: float) -> bool:
        """Whether a (positive) parameter's interval does not pin it: not finite, reaching 0, or over 10x wide."""
        return not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 < hi or (lo > 0 and hi / lo > 10)

    def interval_notes(self, level: float = 0.95) -> list[str]:
        """A note for each parameter whose bootstrap interval spans more than 10x (or includes 0)."""
        notes = []
        for k, iv in self.intervals(level).items():
            lo, hi = iv["lo"], iv["hi"]
            if not (np.isfinite(lo) and np.isfinite(hi)):
                notes.append(f"degenerate fit: the {100 * level:.0f}% interval of {k} is not finite")
            elif self.spans_a_decade(lo, hi):
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
        """The calibrated extrapolation interval (``analysis.calibration``): loss, lo, hi, its half-width in log loss
        ``half_log``, the distance ``d`` in decades of compute beyond the fit, ``read`` (which read of the backtests set
        the width: "prediction" or "backtest"), and the fit-only interval (``fit_lo``, ``fit_hi``)."""
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


def table_flops_per_param_token(df: "pd.DataFrame") -> float:
    """The table's FLOPs per parameter per token: median of C / (N D) (6 under the 6ND convention)."""
    if not {"N", "D", "C"} <= set(df.columns):
        return 6.0
    k = (df["C"] / (df["N"] * df["D"])).to_numpy(float)
    k = k[np.isfinite(k) & (k > 0)]
    return float(np.median(k)) if len(k) else 6.0


def load_fit(path: str | Path) -> Law:
    return Law.load(path)
