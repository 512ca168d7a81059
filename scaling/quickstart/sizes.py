"""The quickstart's two sizes (full and ``--tiny``), its one recipe, and the sweep files it trains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _m(d: int, L: int, H: int) -> dict:
    return {"d_model": d, "n_layers": L, "n_heads": H}


@dataclass(frozen=True)
class QuickstartSize:
    budgets: tuple[float, ...]
    ladder: tuple[dict, ...]  # model shapes <= 1.6x apart in N; the held-out run picks from these too
    sizes_per_budget: int
    prior: dict  # N_opt(C) = k C^a: where each budget's sizes are centred (measured on this corpus)
    batch_size: int
    seq_len: int
    bootstrap: int
    eval_fraction: float  # share of the corpus held out
    noise_budgets: int = 2  # the smallest budgets' ...
    noise_sizes: int = 3  # ... sizes nearest the optimum are repeated with ...
    noise_seeds: int = 2  # ... this many more seeds
    heldout_factor: float = 10.0
    workers: int = 2
    eval_tokens: int | None = None  # every run is scored on these first tokens of the eval split's fixed permutation (None: all)
    warmup_steps: int | None = None  # every trunk's and the held-out run's warmup (None: 5% of the shortest branch)
    tuned: bool = False  # LR_RECIPE was tuned for this size's base (corpus stdlib, batch, sequence length)


FULL = QuickstartSize(
    budgets=tuple(1.25e11 * 2 ** (k / 2) for k in range(7)),  # 1.25e11 .. 1e12, sqrt(2) apart
    # One shape family (two layers) from 14k to 461k parameters: a one-layer model cannot compose attention heads
    # (no induction heads) and scales on another law, so a ladder that changes depth mid-way bends the frontier.
    ladder=tuple(_m(d, 2, h) for d, h in ((16, 2), (20, 2), (24, 3), (32, 4), (40, 5), (48, 6), (56, 7), (64, 8),
                                          (80, 10), (96, 12), (112, 14), (128, 16))),  # heads of 8 dims (d20: 10)
    sizes_per_budget=7,
    prior={"a": 0.52, "k": 0.061},  # 25k parameters at 6.25e10 FLOPs, C^0.52 (pilot sweeps of this corpus)
    batch_size=16,
    seq_len=64,
    bootstrap=1000,
    eval_fraction=0.04,
    # 4,096 of the split's 18,676 windows, drawn by its fixed permutation: the same windows score every run (sweep,
    # repeats, held-out), so their offset from the whole split is shared and a fit absorbs it. What is not shared,
    # measured on seed 0's branch models scored on both (benchmarks/eval_subset.py): sd 0.07% of the loss across
    # models, against 0.8% seed scatter. The whole split (1.2M tokens) took 4-11 s a run, more than half of the sweep's
    # time outside training.
    eval_tokens=2**18,
    # One fixed warmup for every run, so the sweep and the held-out run follow one recipe. The planner's default (5%
    # of a trunk's shortest branch) gave the large trunks 10-22 steps: at 271k parameters and 5e11 FLOPs, 16 warmup
    # steps left the loss 4.2% higher and 4.8x more seed-dependent (sd 2.16% over 3 inits x 3 data orders) than 100
    # steps (50-150 steps: the same within 0.6%). It did not make the prediction better (benchmarks/RESULTS.md).
    warmup_steps=100,
    tuned=True,
)
TINY = QuickstartSize(
    budgets=(1e10, 2e10, 4e10, 8e10),
    ladder=(_m(16, 1, 1), _m(20, 1, 1), _m(24, 1, 1), _m(32, 1, 2), _m(40, 1, 2), _m(48, 1, 3), _m(64, 1, 2)),
    sizes_per_budget=4,
    prior={"a": 0.52, "k": 0.094},  # batch 8 x 32 tokens moves the optimum up: 15k parameters at 1e10 FLOPs
    batch_size=8,
    seq_len=32,
    bootstrap=100,
    eval_fraction=0.02,
    noise_budgets=1,
    noise_sizes=3,
    noise_seeds=1,
    eval_tokens=2**15,
    warmup_steps=40,  # 2 / (1 - beta2) steps, the shortest `sweep plan` does not warn about; cooldowns start at >= 239
)
NOISE_SEED_STEP = 1000  # the repeat seeds of quickstart --seed s are s + 1000, s + 2000, ...


# muP relative to the ladder's smallest width: the lr tuned there holds at every width of the ladder (the held-out
# run included), instead of an lr rule in N that trains the small models further from their best than the large.
MUP = {"parametrization": "mup", "mup_base_width": 16, "mup_base_head_dim": 8}
# The quickstart's lr law in N and D, fitted by `scaling sweep fit-lr` on sweeps/quickstart_lr_tune.yaml (3 widths x 7
# lrs x 4 horizons under MUP, on stdlib, batch 16 x 64): benchmarks/RESULTS.md, "The quickstart's learning rate".
LR_RECIPE = Path(__file__).with_name("lr_recipe.json")
RECIPE_TAG = "mup16-lr_recipe-v1"  # recorded in a quickstart directory's manifest (scaling.quickstart.pipeline)


def recipe_for(size: QuickstartSize, data: str) -> dict:
    """The sweep's ``recipe`` section: the tuned law by reference (its provenance checked against the sweep's base)
    where it was tuned for this size and corpus; elsewhere (``--tiny``, another corpus) the same law's numbers,
    untuned there (the report says so)."""
    from scaling.sweep.recipe import read_recipe_file, resolve_recipe

    if size.tuned and data == "stdlib":
        return resolve_recipe({"from": str(LR_RECIPE), "min_steps": 0})
    return {**read_recipe_file(LR_RECIPE)["recipe"], "min_steps": 0}


def recipe_note(size: QuickstartSize, data: str) -> str:
    if size.tuned and data == "stdlib":
        return f"the lr law tuned for this corpus and batch ({LR_RECIPE.name}: sweeps/quickstart_lr_tune.yaml, `scaling sweep fit-lr`)"
    why = "another corpus" if data != "stdlib" else "the --tiny size's batch, sequence length and depth"
    return (f"the full quickstart's lr law ({LR_RECIPE.name}), not tuned for {why}: tune one with "
            "sweeps/quickstart_lr_tune.yaml (--set data.source=...) and `scaling sweep fit-lr`")


def _base(size: QuickstartSize, data: str, wandb: str, seed: int, eval_tokens: int) -> dict:
    return {
        "data": {"source": data, "eval_fraction": size.eval_fraction},
        "model": {"seq_len": size.seq_len, "vocab_size": 256, **MUP},
        # one evaluation at the end, on the same fixed held-out set for every run
        "train": {"batch_size": size.batch_size, "log_every": 20, "eval_tokens": eval_tokens, "eval_every": 10**9,
                  "seed": seed, **({} if size.warmup_steps is None else {"warmup_steps": size.warmup_steps})},
        "log": {"wandb": wandb, "wandb_group": "quickstart"},  # the sweep, its repeat seeds, the held-out run and the fits
    }


# One batch size for every run (the sweep and the held-out run): the loss at a given compute depends on it, so
# halving it for short runs (the recipe's min_steps: 0) would change the law between sizes.


def sweep_dict(size: QuickstartSize, data: str, wandb: str, seed: int = 0, eval_tokens: int = 2**18) -> dict:
    return {
        "name": "quickstart",
        "base": _base(size, data, wandb, seed, eval_tokens),
        "grid": {"kind": "wsd_branches", "sizes": list(size.ladder), "budgets": list(size.budgets),
                 "sizes_per_budget": size.sizes_per_budget, "prior": dict(size.prior), "cooldown_fraction": 0.2,
                 "trunk_eval_tokens": 16 * size.seq_len * 16},
        "seeds": [seed],
        "recipe": recipe_for(size, data),
    }


def noise_dict(size: QuickstartSize, data: str, wandb: str, seed: int = 0, eval_tokens: int = 2**18) -> dict:
    """The repeat-seed sweep: the smallest budgets' sizes nearest the optimum, with more seeds."""
    raw = sweep_dict(size, data, wandb, seed, eval_tokens)
    raw["name"] = "quickstart-noise"
    raw["base"]["log"] = {**raw["base"]["log"], "wandb_tags": ["repeat-seed"]}
    raw["grid"] = {**raw["grid"], "budgets": list(size.budgets[: size.noise_budgets]), "sizes_per_budget": size.noise_sizes}
    raw["seeds"] = [seed + NOISE_SEED_STEP * (i + 1) for i in range(size.noise_seeds)]
    return raw


def eval_tokens_for(size: QuickstartSize, data: str) -> int:
    """The tokens every run is scored on, the same windows for all: ``size.eval_tokens``, or the whole eval split
    where that is smaller (or ``size.eval_tokens`` is None)."""
    from scaling.config import ConfigError, load_config
    from scaling.data import build_dataset

    cfg = load_config(base={"data": {"source": data, "eval_fraction": size.eval_fraction}, "model": {"seq_len": size.seq_len, "vocab_size": 256}})
    ds = build_dataset(cfg.data, cfg.model)
    try:
        _, avail = ds.eval_windows(1, size.seq_len)
    except ValueError as e:  # an eval split shorter than one sequence
        raise ConfigError(f"data.source {data!r}: {e}") from None
    whole = int(avail) * size.seq_len if avail else 2**20  # an endless source (synthetic): 2^20 tokens
    return whole if size.eval_tokens is None else min(size.eval_tokens, whole)
