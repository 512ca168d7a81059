"""Hyper-parameters that change with model size and token horizon, in one place.

Learning rate: ``lr = lr_base * (N / lr_ref_params) ** lr_exponent * (D / lr_ref_tokens) ** lr_tokens_exponent``,
clipped to [lr_min, lr_max], times ``lr_multiplier`` (1; a sweep's ``lr_scan`` sets it per run). Under sp larger
models take smaller steps (the default -0.25 in N); under muP (``model.parametrization: mup``) the best lr no longer
moves with width and the exponent in N is near 0. Longer runs take smaller steps too (Bjorck et al. 2024, DeepSeek
2024): the exponent in D. Warmup: ``warmup_fraction`` of the steps, but at least ``min_warmup_steps`` where the run
is long enough. Batch size: halved (down to ``min_batch_size``) until the run has at least ``min_steps`` optimizer
steps. A value set explicitly in the sweep's ``base`` (or a per-run override) wins over the recipe when
``respect_base: true``.

A fitted recipe (``scaling sweep fit-lr DIR``: the best lr of an ``lr_scan`` sweep as a law of N and D) is written to
``DIR/recipe.json`` and named by a sweep as ``recipe: {from: DIR}``. The file carries what the lr was tuned under
(corpus, tokenizer, sequence length, batch size, parametrization, optimizer); a sweep whose base differs in any of
those is refused, since a learning rate does not transfer across them.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaling.config import ConfigError, RunConfig, _f

RECIPE_FILE = "recipe.json"  # what `sweep fit-lr` writes into the tuning sweep's directory
RECIPE_VERSION = 1
# the fields a fitted recipe sets (the lr law); the others (warmup, batch halving) stay the sweep's own
LAW_FIELDS = ("lr_base", "lr_ref_params", "lr_exponent", "lr_ref_tokens", "lr_tokens_exponent", "lr_min", "lr_max")
# what a learning rate was tuned under: every run of a sweep naming the recipe must have one of the values the tuning
# runs had, per setting (dotted run-config paths; muP carries an lr across width, not across depth)
PROVENANCE = (
    "data.source", "data.tokenizer", "model.vocab_size", "model.seq_len", "model.n_layers", "model.parametrization",
    "model.mup_base_width", "model.mup_base_head_dim", "model.mlp", "model.tie_embeddings", "model.qk_norm",
    "model.init_std", "model.moe", "train.batch_size", "train.grad_accum", "train.beta1", "train.beta2", "train.eps",
    "train.weight_decay", "train.grad_clip", "train.min_lr_ratio", "train.warmup_steps",
)
NAMED_SOURCES = ("stdlib", "synthetic")  # data.source values that are not paths


@dataclass(frozen=True)
class Recipe:
    enabled: bool = _f(True, "Apply the recipe (false: every run uses base as written).")
    lr_base: float = _f(3e-3, "Learning rate at lr_ref_params parameters (and lr_ref_tokens tokens).")
    lr_ref_params: float = _f(1e6, "Reference size of lr_base.")
    lr_exponent: float = _f(-0.25, "lr scales as N ** lr_exponent.")
    lr_ref_tokens: float = _f(1e7, "Reference token horizon of lr_base.")
    lr_tokens_exponent: float = _f(
        0.0,
        "lr scales as D ** lr_tokens_exponent (0: the same lr at every horizon). A wsd_branches trunk takes one lr for "
        "all its branches: the one at the geometric mean of their token counts.",
    )
    lr_min: float = _f(1e-4, "Lower clip of the learning rate.")
    lr_max: float = _f(2e-2, "Upper clip of the learning rate.")
    lr_multiplier: float = _f(1.0, "Scales the rule's (clipped) lr; a sweep's lr_scan sets it per run.")
    min_warmup_steps: int = _f(0, "Warmup at least this many steps (as a fraction of the run, at most half of it).")
    min_steps: int = _f(0, "Halve the batch size (down to min_batch_size) until a run has at least this many steps (0: off).")
    min_batch_size: int = _f(8, "Smallest batch size min_steps may reduce to.")
    respect_base: bool = _f(False, "Keep train.lr from base when it is set there.")
    source: str = _f("", "Set by recipe.from: the recipe file the lr law was read from (empty: written in the sweep).")
    tuned_under: dict = _f({}, "Set by recipe.from: per setting, the values the lr was tuned under; every run is checked against them.")
    basis: str = _f("", "Set by recipe.from: the parameter count the law is in (N_active or N_total); checked against grid.params.")

    def validate(self) -> None:
        for name in ("lr_base", "lr_ref_params", "lr_ref_tokens", "lr_min", "lr_max", "lr_multiplier"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"recipe.{name} must be a positive finite number, got {v!r}")
        for name in ("lr_exponent", "lr_tokens_exponent"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ConfigError(f"recipe.{name} must be a finite number, got {v!r}")
        if self.lr_min > self.lr_max:
            raise ConfigError(f"recipe.lr_min={self.lr_min:g} is above recipe.lr_max={self.lr_max:g}")
        if self.min_warmup_steps < 0 or self.min_steps < 0 or self.min_batch_size < 1:
            raise ConfigError("recipe.min_warmup_steps and recipe.min_steps must be >= 0 and recipe.min_batch_size >= 1")

    def describe(self, basis: str = "N") -> str:
        """Where a run's learning rate comes from, in one line (``sweep plan``)."""
        if not self.enabled:
            return "train.lr from base for every run (recipe disabled)"
        terms = [f"{self.lr_base:.3g}"]
        if self.lr_exponent:
            terms.append(f"({basis} / {self.lr_ref_params:.3g})^{self.lr_exponent:.3g}")
        if self.lr_tokens_exponent:
            terms.append(f"(D / {self.lr_ref_tokens:.3g})^{self.lr_tokens_exponent:.3g}")
        rule = " x ".join(terms) + (f", clipped to [{self.lr_min:.3g}, {self.lr_max:.3g}]" if len(terms) > 1 else "")
        where = f" (fitted: {self.source})" if self.source else ""
        return f"recipe lr = {rule}{where}" + (" unless base sets train.lr" if self.respect_base else "") + "; per-run overrides win"

    def lr(self, n_params: float, tokens: float | None = None) -> float:
        lr = self.lr_base * (n_params / self.lr_ref_params) ** self.lr_exponent
        if self.lr_tokens_exponent:
            if tokens is None:
                raise ValueError("this recipe's lr depends on the token horizon: pass tokens")
            lr *= (tokens / self.lr_ref_tokens) ** self.lr_tokens_exponent
        return float(min(self.lr_max, max(self.lr_min, lr))) * self.lr_multiplier

    def apply(self, raw: dict, resolved: RunConfig, n_params: float, tokens: float, n_devices: int = 1,
              lr_tokens: float | None = None) -> dict:
        """``raw`` with the recipe's hyper-parameters for a model of ``n_params`` trained on ``tokens``.

        ``resolved`` is ``raw`` as a validated config (so a preset's seq_len or a default batch size are the real
        ones, not guesses); batch halving keeps the batch divisible by ``n_devices`` x grad_accum. ``lr_tokens``: the
        horizon the lr is set for, when it is not ``tokens`` (a trunk shared by branches of several lengths)."""
        if not self.enabled:
            return raw
        out = copy.deepcopy(raw)
        train = out.setdefault("train", {})
        if not (self.respect_base and "lr" in train):
            train["lr"] = self.lr(n_params, tokens if lr_tokens is None else lr_tokens)
        seq = resolved.model.seq_len
        batch = train.get("batch_size", resolved.train.batch_size)
        if self.min_steps:
            unit = n_devices * resolved.train.grad_accum
            while batch // 2 >= self.min_batch_size and (batch // 2) % unit == 0 and tokens / (batch * seq) < self.min_steps:
                batch //= 2
            train["batch_size"] = batch
        if self.min_warmup_steps:
            steps = max(1, int(tokens // (batch * seq)))
            train["warmup_fraction"] = max(
                train.get("warmup_fraction", resolved.train.warmup_fraction), min(0.5, self.min_warmup_steps / steps)
            )
        return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def provenance(cfg: RunConfig) -> dict[str, Any]:
    """The settings a learning rate is tuned under (``PROVENANCE``), read from a run config; a data source that is
    a path is made absolute, and a section (``model.moe``) written as canonical JSON, so values compare exactly."""
    d = cfg.to_dict()
    out = {}
    for path in PROVENANCE:
        node: Any = d
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if path == "data.source" and isinstance(node, str) and node not in NAMED_SOURCES:
            node = str(Path(node).expanduser().absolute())
        if isinstance(node, (dict, list)):
            node = json.dumps(node, sort_keys=True)
        out[path] = node
    return out


def provenance_values(cfgs) -> dict[str, list]:
    """Per ``PROVENANCE`` setting, the sorted distinct values over the run configs ``cfgs`` (a tuning sweep's runs)."""
    seen: dict[str, list] = {k: [] for k in PROVENANCE}
    for cfg in cfgs:
        for k, v in provenance(cfg).items():
            if not any(_same(v, w) for w in seen[k]):
                seen[k].append(v)
    return {k: sorted(v, key=repr) for k, v in seen.items()}


def check_tuned_under(recipe: "Recipe", cfg: RunConfig, where: str) -> None:
    """Refuse (one ConfigError naming the run and the setting) a run outside what ``recipe`` was tuned under."""
    if not recipe.tuned_under:
        return
    mine = provenance(cfg)
    for key, values in recipe.tuned_under.items():
        if not any(_same(mine.get(key), v) for v in values):
            shown = values[0] if len(values) == 1 else values
            raise ConfigError(
                f"{where}: recipe.from {recipe.source!r} was tuned with {key}={shown!r}, this run has {key}={mine.get(key)!r}; "
                f"a learning rate does not transfer across {key.split('.')[-1]}: tune on this setting (an lr_scan sweep "
                "and 'scaling sweep fit-lr') or change the sweep"
            )


def recipe_file(where: str | Path) -> Path:
    """``recipe: {from: X}``: X is a tuning sweep's directory (its ``recipe.json``) or the file itself."""
    p = Path(where).expanduser()
    return p / RECIPE_FILE if p.is_dir() else p


def read_recipe_file(where: str | Path) -> dict:
    """A fitted recipe file, checked whole: one ConfigError naming the file and what is wrong."""
    path = recipe_file(where)
    name = str(path)
    if not path.exists():
        hint = " (run 'scaling sweep fit-lr DIR' on the tuning sweep first)" if path.name == RECIPE_FILE else ""
        raise ConfigError(f"recipe.from: {name!r} does not exist{hint}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"recipe.from: {name!r} is not a recipe file (not valid JSON: {getattr(e, 'msg', e)})") from None
    except OSError as e:
        raise ConfigError(f"recipe.from: {name!r} cannot be read: {e.strerror or e}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "lr_recipe":
        raise ConfigError(f"recipe.from: {name!r} is not a recipe file (no \"kind\": \"lr_recipe\")")
    if doc.get("version") != RECIPE_VERSION:
        raise ConfigError(f"recipe.from: {name!r} has version {doc.get('version')!r}; this toolkit reads version {RECIPE_VERSION}")
    law, prov = doc.get("recipe"), doc.get("provenance")
    if not isinstance(law, dict) or not isinstance(prov, dict):
        raise ConfigError(f"recipe.from: {name!r} lacks its 'recipe' or 'provenance' mapping")
    missing = [k for k in LAW_FIELDS if k not in law] + [k for k in PROVENANCE if k not in prov] + [k for k in ("basis",) if k not in doc]
    if missing:
        raise ConfigError(f"recipe.from: {name!r} lacks the field {missing[0]!r} a sweep needs")
    bad = next((k for k in PROVENANCE if not (isinstance(prov[k], list) and prov[k])), None)
    if bad:
        raise ConfigError(f"recipe.from: {name!r}: provenance {bad!r} must be a non-empty list of the values tuned under")
    if doc["basis"] not in ("N_active", "N_total"):
        raise ConfigError(f"recipe.from: {name!r}: basis must be N_active or N_total, got {doc['basis']!r}")
    try:
        Recipe(**{k: law[k] for k in LAW_FIELDS}).validate()
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"recipe.from: {name!r}: {e}") from None
    return doc


def resolve_recipe(raw_recipe: Any) -> Any:
    """A sweep's ``recipe`` section with ``from: X`` replaced by the fitted law it names, what it was tuned under
    (checked against every run when the sweep is planned) and its basis. Other keys beside ``from`` (warmup) are
    kept; a law field beside ``from`` is refused (the file sets it), and so is batch halving (it would train runs at
    a batch the lr was not tuned for)."""
    if not (isinstance(raw_recipe, dict) and "from" in raw_recipe):
        return raw_recipe
    rest = {k: v for k, v in raw_recipe.items() if k != "from"}
    clash = sorted(set(rest) & set(LAW_FIELDS + ("source", "tuned_under", "basis")))
    if clash:
        raise ConfigError(f"recipe.{clash[0]} is set by recipe.from ({raw_recipe['from']!r}); remove one of them")
    if rest.get("min_steps"):
        raise ConfigError("recipe.min_steps halves the batch of short runs; with recipe.from the lr was tuned at one batch size: set min_steps 0")
    if not isinstance(raw_recipe["from"], str) or not raw_recipe["from"]:
        raise ConfigError(f"recipe.from must be the path of a tuning sweep's directory or its {RECIPE_FILE}, got {raw_recipe['from']!r}")
    doc = read_recipe_file(raw_recipe["from"])
    return {**rest, **{k: doc["recipe"][k] for k in LAW_FIELDS}, "source": str(recipe_file(raw_recipe["from"]).absolute()),
            "tuned_under": {k: doc["provenance"][k] for k in PROVENANCE}, "basis": doc["basis"]}


__all__ = ["LAW_FIELDS", "PROVENANCE", "RECIPE_FILE", "RECIPE_VERSION", "Recipe", "check_tuned_under", "provenance",
           "provenance_values", "read_recipe_file", "recipe_file", "resolve_recipe"]
