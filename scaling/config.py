"""Typed, frozen run configuration loaded from YAML and validated on load.

A run config has four sections, ``model``, ``data``, ``train`` and ``log``; ``model.moe`` is an optional
sub-section. Every field is documented exactly once, in the ``doc`` metadata of its dataclass field; that text is
what ``scaling train --help`` prints. A field missing from a file takes its default. Errors name the field
(``train.lr``) and say what is allowed, and are raised before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import glob
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from scaling.configbase import (
    ConfigError,
    _f,
    _positive,
    _deepcopy,
    describe_fields as _describe_fields,
    from_dict,
    load_yaml_file,
    merge_dicts,
    parse_overrides,
    set_by_path,
)
from scaling.model.config import ModelConfig, MoEConfig
from scaling.model.presets import PRESETS, config_for_params


SHARD_SUFFIXES = (".bin", ".npy")  # pre-tokenized shards (scaling.data.shards)


def _glob_chars(s: str) -> bool:
    return any(c in s for c in "*?[")


def is_text_source(source: str) -> bool:
    """Whether ``data.source`` is text to tokenize (not synthetic, a prepared directory or pre-tokenized shards)."""
    if source == "synthetic":
        return False
    if source == "stdlib":
        return True
    p = Path(source).expanduser()
    return not ((p / "manifest.json").is_file() or p.suffix in SHARD_SUFFIXES or _glob_chars(source)
                or (p.is_dir() and any(f.suffix in SHARD_SUFFIXES for f in p.iterdir())))


@dataclass(frozen=True)
class DataConfig:
    source: str = _f("stdlib", "'synthetic' (sparse Markov chain, exact entropy rate), 'stdlib' (the running Python's standard-library sources), a path to text (a file, a directory, .jsonl with a field 'text', .parquet with a column 'text': prepared into the cache on first use), a directory prepared by 'scaling data prepare', or pre-tokenized shards (a file, directory or glob of llm.c/nanoGPT .bin shards or .npy arrays; set data.vocab_size).")
    tokenizer: str = _f("byte", "Text sources: 'byte' (vocab 256, no files), 'bpe' (trained locally with HF tokenizers to model.vocab_size on up to data.bpe_sample_bytes of the training split, cached) or the path of an HF tokenizer.json (GPT-2, Llama, your own).")
    eval_fraction: float = _f(0.02, "Fraction held out for evaluation (text: pieces chosen by a hash of their name; shards without data.eval_source: shards chosen by a hash of their name, or a single shard's last tokens); never in training.")
    eval_source: Optional[str] = _f(None, "Pre-tokenized shards only: the eval split's shards (a file, directory or glob), e.g. modded-nanogpt's fineweb_val_*.bin (null: held out from data.source by data.eval_fraction).")
    vocab_size: Optional[int] = _f(None, "Pre-tokenized shards: the vocabulary their ids were written with (e.g. 50257 for GPT-2); checked against model.vocab_size and the shards' dtype, and every batch's ids checked below it.")
    max_bytes: Optional[int] = _f(None, "Read at most this many characters of corpus text (null: all).")
    bpe_sample_bytes: int = _f(128 * 2**20, "data.tokenizer 'bpe': train the tokenizer on at most about this many bytes of the training split (all of it when smaller; otherwise a hash-chosen sample spread over the whole corpus).")
    eos_token: Optional[str] = _f(None, "A tokenizer.json's end-of-document token (null: the first of <|endoftext|>, <|end_of_text|>, </s>, <eos> it has).")
    cache_dir: Optional[str] = _f(None, "Where prepared text corpora and tokenizers are cached (null: $SCALING_CACHE or ~/.cache/scaling).")
    synthetic_branching: int = _f(4, "Synthetic source: successors per state in the random sparse Markov chain.")
    synthetic_seed: int = _f(1234, "Synthetic source: seed of the Markov chain (its transition table), independent of train.seed.")
    max_epochs: Optional[float] = _f(4.0, "Refuse a run that would pass over the training split more than this many times (null: no cap). Above one epoch the run is warned about and its record says how many; repeated tokens are worth less than fresh ones (Muennighoff et al. 2023 find them nearly as good up to ~4 epochs).")

    def validate(self, where: str = "data") -> None:
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"{where}.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        for name in ("source", "eval_source"):
            v = getattr(self, name)
            if v is None or v in ("synthetic", "stdlib") and name == "source":
                continue
            if _glob_chars(v):
                if not glob.glob(str(Path(v).expanduser())):
                    raise ConfigError(f"{where}.{name}: the glob {v!r} matches no file")
            elif not Path(v).expanduser().exists():
                allowed = "'synthetic', 'stdlib', an existing path or a glob of shards" if name == "source" else "an existing path or a glob of shards"
                raise ConfigError(f"{where}.{name}: {v!r} does not exist (allowed: {allowed})")
        if self.eval_source is not None and is_text_source(self.source):
            raise ConfigError(f"{where}.eval_source is for pre-tokenized shards; a text source holds out data.eval_fraction of its pieces")
        if self.tokenizer not in ("byte", "bpe") and not Path(self.tokenizer).expanduser().is_file():
            raise ConfigError(f"{where}.tokenizer: {self.tokenizer!r} is not allowed; allowed: 'byte', 'bpe' or the path of an existing tokenizer.json")
        if self.vocab_size is not None and self.vocab_size < 2:
            raise ConfigError(f"{where}.vocab_size must be >= 2 or null, got {self.vocab_size}")
        if self.synthetic_branching < 1:
            raise ConfigError(f"{where}.synthetic_branching must be >= 1, got {self.synthetic_branching}")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ConfigError(f"{where}.max_bytes must be > 0 or null, got {self.max_bytes}")
        if not self.bpe_sample_bytes > 0:
            raise ConfigError(f"{where}.bpe_sample_bytes must be > 0, got {self.bpe_sample_bytes}")
        if self.max_epochs is not None and not self.max_epochs > 0:
            raise ConfigError(f"{where}.max_epochs must be > 0 or null, got {self.max_epochs}")


@dataclass(frozen=True)
class TrainConfig:
    tokens: int = _f(1_000_000, "Training token budget D; trained exactly as steps * batch_size * seq_len with steps = tokens // (batch_size * seq_len).")
    batch_size: int = _f(32, "Global batch size in sequences (split across devices and gradient-accumulation micro-batches).")
    lr: float = _f(3e-3, "Peak learning rate.")
    schedule: Literal["cosine", "wsd", "constant"] = _f("cosine", "Learning-rate schedule after linear warmup: cosine decay, warmup-stable-decay, or constant.")
    warmup_fraction: float = _f(0.05, "Fraction of steps spent in linear warmup.")
    warmup_steps: Optional[int] = _f(None, "Linear warmup in optimizer steps; overrides warmup_fraction (WSD branches share their trunk's warmup).")
    decay_fraction: float = _f(0.2, "WSD: fraction of steps spent in the final decay.")
    decay_steps: Optional[int] = _f(None, "WSD: optimizer steps of the final decay; overrides decay_fraction.")
    decay_shape: Literal["linear", "1-sqrt"] = _f("linear", "WSD: shape of the final decay to min_lr_ratio x lr: linear, or 1-sqrt (Hagele et al. 2024).")
    min_lr_ratio: float = _f(0.1, "Final learning rate as a fraction of the peak (cosine and wsd).")
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay (applied to matrices, not to norms).")
    beta1: float = _f(0.9, "AdamW beta1.")
    beta2: float = _f(0.95, "AdamW beta2.")
    eps: float = _f(1e-8, "AdamW epsilon.")
    grad_clip: Optional[float] = _f(1.0, "Clip the global gradient norm to this value (null: no clipping).")
    z_loss_coef: float = _f(0.0, "Output-logit z-loss coefficient: coef * mean(logsumexp(logits)^2).")
    grad_accum: int = _f(1, "Gradient-accumulation micro-batches per step.")
    remat: Literal["none", "block", "full"] = _f("none", "Rematerialisation (jax.checkpoint around each block): none keeps every activation for the backward pass; block keeps the matmul outputs and recomputes the element-wise rest (norms, activations, softmax); full keeps only each block's input and recomputes the block (~1/3 more FLOPs, least memory).")
    seed: int = _f(0, "Seed of the parameter init and of the data order (unless init_seed / data_seed are set).")
    init_seed: Optional[int] = _f(None, "Seed of the parameter init (null: seed).")
    data_seed: Optional[int] = _f(None, "Seed of the data order (null: seed).")
    init_from: Optional[str] = _f(None, "Start from another run's checkpoint, RUN_DIR@STEP: its parameters, optimizer state and step counter (e.g. a WSD branch from its trunk); the data order continues from that step.")
    keep_steps: list = _f([], "Also checkpoint at these steps and keep them (never rotated away): the branch points other runs start from with init_from.")
    eval_every: int = _f(0, "Evaluate every this many steps (0: only at the end); always at the end.")
    eval_tokens: int = _f(2**18, "Held-out tokens per evaluation: a fixed set of eval_tokens // seq_len windows (the same for every run with this data and seq_len, whatever its batch size), each scored once; the mean and its standard error are over windows. A smaller split is used whole, with a warning.")
    eval_batch_size: Optional[int] = _f(None, "Sequences per evaluation micro-batch (null: on a CPU, sized so one call's activations stay in cache, scaling.train.evaluate.eval_micro_batch; elsewhere batch_size / grad_accum, the training micro-batch). Changes memory and speed, not the result.")
    log_every: int = _f(10, "Log train metrics every this many steps.")
    checkpoint_every: int = _f(0, "Checkpoint every this many steps (0: about ten times per run); always at the end.")
    keep_checkpoints: int = _f(2, "Checkpoints kept on disk (the newest).")
    flops_attention: Literal["causal", "full", "none"] = _f("causal", "FLOPs convention for attention: 12*n_layers*seq_len*d_attn per token, halved for causal, or left out.")

    def validate(self, where: str = "train") -> None:
        _positive(self, where, "tokens", "batch_size", "grad_accum", "eval_tokens", "log_every", "keep_checkpoints")
        if self.eval_batch_size is not None and self.eval_batch_size <= 0:
            raise ConfigError(f"{where}.eval_batch_size must be > 0 or null, got {self.eval_batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"{where}.lr must be a finite number > 0, got {self.lr}")
        for name in ("warmup_fraction", "decay_fraction", "min_lr_ratio"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ConfigError(f"{where}.{name} must be in [0, 1], got {v}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"{where}.batch_size={self.batch_size} must be divisible by {where}.grad_accum={self.grad_accum}")
        for name in ("eval_every", "checkpoint_every", "weight_decay", "z_loss_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("warmup_steps", "decay_steps"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{where}.{name} must be >= 0 or null, got {v}")
        for name in ("seed", "init_seed", "data_seed"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{where}.{name} must be >= 0, got {v}")
        if not all(isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in self.keep_steps):
            raise ConfigError(f"{where}.keep_steps must be a list of positive step numbers, got {self.keep_steps!r}")
        if self.init_from is not None:
            path, _, step = self.init_from.rpartition("@")
            if not path or not step.isdigit():
                raise ConfigError(f"{where}.init_from must be RUN_DIR@STEP (e.g. runs/trunk@400), got {self.init_from!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"{where}.grad_clip must be > 0 or null, got {self.grad_clip}")


@dataclass(frozen=True)
class ParallelConfig:
    data: int = _f(-1, "Mesh axis 'data': batch shards holding full parameter copies (-1: the devices left over by the other axes).")
    fsdp: int = _f(1, "Mesh axis 'fsdp': batch shards that also shard parameters and optimizer state (ZeRO-3; gathered per layer by the compiler).")
    tensor: int = _f(1, "Mesh axis 'tensor': shards attention heads, the MLP hidden width and the vocabulary (Megatron-style).")
    expert: int = _f(1, "Mesh axis 'expert': shards the experts of MoE layers (tokens are exchanged between expert shards); the batch is also split over it.")

    def validate(self, where: str = "parallel") -> None:
        for name in ("data", "fsdp", "tensor", "expert"):
            v = getattr(self, name)
            if v == 0 or v < -1:
                raise ConfigError(f"{where}.{name} must be a positive mesh size or -1 (the remaining devices), got {v}")
        if [self.data, self.fsdp, self.tensor, self.expert].count(-1) > 1:
            raise ConfigError(f"{where}: at most one axis may be -1 (the remaining devices)")


@dataclass(frozen=True)
class LogConfig:
    wandb: Literal["offline", "online", "disabled"] = _f("offline", "Weights & Biases mode; offline needs no account or network.")
    wandb_project: str = _f("scaling", "W&B project name.")
    wandb_group: Optional[str] = _f(None, "W&B group (sweeps set it to the sweep name).")
    wandb_tags: list = _f([], "W&B tags.")
    wandb_name: Optional[str] = _f(None, "W&B run name (null: the run id; sweeps name each run by sweep, variant, N, D and seed).")
    progress: bool = _f(True, "Show a progress bar on the terminal.")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = _f(ModelConfig(), "Model architecture.")
    data: DataConfig = _f(DataConfig(), "Training and evaluation data.")
    train: TrainConfig = _f(TrainConfig(), "Optimisation, budget and schedule.")
    parallel: ParallelConfig = _f(ParallelConfig(), "Device mesh: how the devices split the batch, parameters, heads and experts.")
    log: LogConfig = _f(LogConfig(), "Logging.")
    name: Optional[str] = _f(None, "Optional human-readable run name.")

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.data.validate()
        self.train.validate()
        self.parallel.validate()
        if self.data.tokenizer == "byte" and is_text_source(self.data.source) and self.model.vocab_size < 256:
            raise ConfigError(f"model.vocab_size={self.model.vocab_size} is too small for data.tokenizer='byte' (needs >= 256)")
        if self.data.tokenizer == "bpe" and is_text_source(self.data.source) and self.model.vocab_size < 260:
            raise ConfigError(f"model.vocab_size={self.model.vocab_size}: data.tokenizer='bpe' needs >= 260 (256 bytes + specials)")
        if self.steps < 1:
            raise ConfigError(
                f"train.tokens={self.train.tokens} is less than one step of batch_size*seq_len="
                f"{self.train.batch_size * self.model.seq_len} tokens"
            )
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.model.seq_len

    @property
    def steps(self) -> int:
        return self.train.tokens // self.tokens_per_step

    @property
    def init_seed(self) -> int:
        return self.train.seed if self.train.init_seed is None else self.train.init_seed

    @property
    def data_seed(self) -> int:
        return self.train.seed if self.train.data_seed is None else self.train.data_seed

    @property
    def eval_batch_size(self) -> int:
        return self.train.eval_batch_size or self.train.batch_size // self.train.grad_accum

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Loading: dicts / YAML -> validated frozen dataclasses, errors naming the field.


def expand_model_shortcuts(data: dict, where: str = "model") -> dict:
    """``preset: NAME`` starts from a named preset; ``target_params: N`` from the config sized for N parameters."""
    base: dict = {}
    if "preset" in data:
        name = data.pop("preset")
        if name not in PRESETS:
            raise ConfigError(f"{where}.preset: {name!r} is not allowed; allowed values: {', '.join(PRESETS)}")
        base = dataclasses.asdict(PRESETS[name])
    if "target_params" in data:
        target = data.pop("target_params")
        try:
            target = float(target)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.target_params: expected a number, got {target!r}") from None
        if not target > 0:
            raise ConfigError(f"{where}.target_params must be > 0, got {target}")
        keep = {k: data[k] for k in ("vocab_size", "seq_len", "mlp", "tie_embeddings") if k in data}
        base = dataclasses.asdict(config_for_params(target, **keep))
    if base:
        base = {k: v for k, v in base.items() if v is not None or k in data}
        base.update(data)
        return base
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> RunConfig:
    """Load a run config from YAML (or ``base``), apply ``key=value`` overrides, validate, return it frozen."""
    raw: dict = {}
    if base is not None:
        raw = _deepcopy(base)
    if path is not None:
        p = Path(path)
        loaded = load_yaml_file(p, "config file")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping with sections model/data/train/log")
        raw = merge_dicts(raw, loaded)
    for k, v in parse_overrides(overrides):
        set_by_path(raw, k, v)
    if isinstance(raw.get("model"), dict):
        raw["model"] = expand_model_shortcuts(raw["model"])
    return from_dict(RunConfig, raw).validate()


def describe_fields(cls: type = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type and default, doc) for every run-config field: the source of ``scaling train --help``."""
    return _describe_fields(RunConfig if cls is None else cls, prefix)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


__all__ = [
    "ConfigError",
    "DataConfig",
    "LogConfig",
    "MoEConfig",
    "ModelConfig",
    "ParallelConfig",
    "RunConfig",
    "TrainConfig",
    "describe_fields",
    "dump_yaml",
    "from_dict",
    "load_config",
    "merge_dicts",
    "replace",
]
