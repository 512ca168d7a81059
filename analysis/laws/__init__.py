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

One law form per file (``chinchilla``, ``power``, ``kaplan``, ``frontier``, ``moe``, ``surface``), each registered
by ``@register`` from ``registry`` on the ``Law`` base of ``base``; importing this package registers them all, in this order (``law_names``).
"""

from analysis.laws.base import Law, load_fit, table_flops_per_param_token
from analysis.laws.registry import LAW_ALIASES, LAWS, Option, law_names, law_options, make_law, register
from analysis.laws.chinchilla import ChinchillaLaw, compute_optimal_from_theta
from analysis.laws.power import PowerLaw
from analysis.laws.kaplan import KaplanLaw
from analysis.laws.frontier import FrontierLaw
from analysis.laws.moe import ClarkLaw, KrajewskiLaw, moe_inputs
from analysis.laws.surface import HUBER_K, SurfaceLaw

__all__ = [
    "HUBER_K", "LAWS", "LAW_ALIASES", "ChinchillaLaw", "ClarkLaw", "FrontierLaw", "KaplanLaw", "KrajewskiLaw", "Law",
    "Option", "PowerLaw", "SurfaceLaw", "compute_optimal_from_theta", "law_names", "law_options", "load_fit", "make_law", "moe_inputs",
    "register", "table_flops_per_param_token",
]
