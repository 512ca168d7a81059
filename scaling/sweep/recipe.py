"""Hyper-parameters that change with model size, in one place.

Learning rate: ``lr = lr_base * (N / lr_ref_params) ** lr_exponent``, clipped to [lr_min, lr_max] (larger models
take smaller steps; the default exponent -0.25 sits between muP-free empirical fits). Warmup: ``warmup_fraction``
of the steps, but at least ``min_warmup_steps`` where the run is long enough. Batch size: halved (down to
``min_batch_size``) until the run has at least ``min_steps`` optimizer steps, so small budgets on large models still
train rather than stop after a handful of steps. A value set explicitly in the
sweep's ``base`` (or a per-run override) wins over the recipe when ``respect_base: true``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from scaling.config import RunConfig, _f


@dataclass(frozen=True)
class Recipe:
    enabled: bool = _f(True, "Apply the recipe (false: every run uses base as written).")
    lr_base: float = _f(3e-3, "Learning rate at lr_ref_params parameters.")
    lr_ref_params: float = _f(1e6, "Reference size of lr_base.")
    lr_exponent: float = _f(-0.25, "lr scales as N ** lr_exponent.")
    lr_min: float = _f(1e-4, "Lower clip of the learning rate.")
    lr_max: float = _f(2e-2, "Upper clip of the learning rate.")
    min_warmup_steps: int = _f(0, "Warmup at least this many steps (as a fraction of the run, at most half of it).")
    min_steps: int = _f(0, "Halve the batch size (down to min_batch_size) until a run has at least this many steps (0: off).")
    min_batch_size: int = _f(8, "Smallest batch size min_steps may reduce to.")
    respect_base: bool = _f(False, "Keep train.lr from base when it is set there.")

    def describe(self, basis: str = "N") -> str:
        """Where a run's learning rate comes from, in one line (``sweep plan``)."""
        if not self.enabled:
            return "train.lr from base for every run (recipe disabled)"
        rule = (f"{self.lr_base:.3g}" if self.lr_exponent == 0 else
                f"{self.lr_base:.3g} x ({basis} / {self.lr_ref_params:.3g})^{self.lr_exponent:g}, clipped to [{self.lr_min:.3g}, {self.lr_max:.3g}]")
        return f"recipe lr = {rule}" + (" unless base sets train.lr" if self.respect_base else "") + "; per-run overrides win"

    def lr(self, n_params: float) -> float:
        lr = self.lr_base * (n_params / self.lr_ref_params) ** self.lr_exponent
        return float(min(self.lr_max, max(self.lr_min, lr)))

    def apply(self, raw: dict, resolved: RunConfig, n_params: float, tokens: float, n_devices: int = 1) -> dict:
        """``raw`` with the recipe's hyper-parameters for a model of ``n_params`` trained on ``tokens``.

        ``resolved`` is ``raw`` as a validated config (so a preset's seq_len or a default batch size are the real
        ones, not guesses); batch halving keeps the batch divisible by ``n_devices`` x grad_accum."""
        if not self.enabled:
            return raw
        out = copy.deepcopy(raw)
        train = out.setdefault("train", {})
        if not (self.respect_base and "lr" in train):
            train["lr"] = self.lr(n_params)
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
