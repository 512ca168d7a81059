"""Typed, frozen run configuration loaded from YAML and validated on load.

A run config has four sections, ``model``, ``data``, ``train`` and ``log``; ``model.moe`` is an optional
sub-section. Every field is documented exactly once, in the ``doc`` metadata of its dataclass field; that text is
what ``scaling train --help`` prints. A field missing from a file takes its default. Errors name the field
(``train.lr``) and say what is allowed, and are raised before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


def _f(default: Any, doc: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass(frozen=True)
class MoEConfig:
    n_experts: int = _f(8, "Number of routed experts per MoE layer.")
    top_k: int = _f(2, "Experts each token is routed to (k >= 1).")
    capacity_factor: Optional[float] = _f(
        1.25,
        "Per-expert capacity = ceil(k * T / E * capacity_factor) tokens per routing group (one sequence); overflow "
        "tokens skip the expert through the residual. null selects the dropless path.",
    )
    every_n_layers: int = _f(1, "Every n-th block (counting from the last) uses an MoE feed-forward; others are dense.")
    n_shared_experts: int = _f(0, "Experts every token passes through in addition to its top-k routed experts.")
    granularity: int = _f(1, "Fine-grained experts: each expert's hidden size is d_ff / granularity.")
    aux_loss_coef: float = _f(0.01, "Load-balancing loss coefficient (Switch/GShard; equals the coefficient at uniform routing).")
    router_z_loss_coef: float = _f(0.001, "Router z-loss coefficient (ST-MoE): coef * mean(logsumexp(router logits)^2).")
    renormalize: bool = _f(True, "Renormalise the top-k gate weights to sum to one (k >= 2 only: at k = 1 the gate stays the router probability, as in Switch, so the router learns from the LM loss).")
    bias_balancing: bool = _f(False, "Auxiliary-loss-free balancing: a per-expert selection bias updated by the sign of the load error.")
    bias_update_rate: float = _f(1e-3, "Step size of the auxiliary-loss-free bias update.")

    def validate(self, where: str = "model.moe") -> None:
        _positive(self, where, "n_experts", "top_k", "every_n_layers", "granularity")
        if self.top_k > self.n_experts:
            raise ConfigError(f"{where}.top_k={self.top_k} must be <= {where}.n_experts={self.n_experts}")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ConfigError(f"{where}.capacity_factor must be > 0 or null (dropless), got {self.capacity_factor}")
        if self.n_shared_experts < 0:
            raise ConfigError(f"{where}.n_shared_experts must be >= 0, got {self.n_shared_experts}")
        for name in ("aux_loss_coef", "router_z_loss_coef", "bias_update_rate"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = _f(128, "Residual stream width.")
    n_layers: int = _f(2, "Number of transformer blocks.")
    n_heads: int = _f(4, "Attention query heads; d_model must be divisible by n_heads.")
    n_kv_heads: Optional[int] = _f(None, "Key/value heads for grouped-query attention (null = n_heads); must divide n_heads.")
    d_ff: Optional[int] = _f(None, "Feed-forward hidden size (null: 4*d_model for gelu; for swiglu the multiple of 8 nearest 8/3*d_model, so d_ff is within a relative 1.5/d_model of 8/3*d_model at every width).")
    vocab_size: int = _f(256, "Vocabulary size (256 for the byte tokenizer; the BPE tokenizer is trained to this size).")
    seq_len: int = _f(128, "Context length in tokens.")
    mlp: Literal["swiglu", "gelu"] = _f("swiglu", "Feed-forward type.")
    tie_embeddings: bool = _f(False, "Share the input embedding with the output projection.")
    qk_norm: bool = _f(False, "RMS-normalise queries and keys per head before attention.")
    rope_theta: float = _f(10000.0, "Rotary position embedding base.")
    init_std: float = _f(0.02, "Std of the normal init of every matrix; output projections get init_std / sqrt(2 * n_layers).")
    dtype: Literal["auto", "float32", "bfloat16"] = _f("auto", "Compute dtype (params stay float32; softmax and loss in float32). auto: bfloat16 on GPU/TPU, float32 on CPU.")
    moe: Optional[MoEConfig] = _f(None, "Mixture-of-experts feed-forward blocks (null: dense model).")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "gelu":
            return 4 * self.d_model
        # SwiGLU keeps the MLP's parameters at 8 d^2 (as GELU's 4d) with d_ff = 8d/3; rounding to the nearest
        # multiple of 8 (not up to a coarse multiple) keeps the ratio uniform across a sweep's widths.
        return max(8, 8 * round(self.d_model / 3))

    def validate(self, where: str = "model") -> None:
        _positive(self, where, "d_model", "n_layers", "n_heads", "vocab_size", "seq_len")
        if self.d_model % self.n_heads:
            raise ConfigError(f"{where}.d_model={self.d_model} must be divisible by {where}.n_heads={self.n_heads}")
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise ConfigError(f"{where}.n_kv_heads={self.n_kv_heads} must be a positive divisor of n_heads={self.n_heads}")
        if self.d_ff is not None and self.d_ff <= 0:
            raise ConfigError(f"{where}.d_ff must be > 0 or null, got {self.d_ff}")
        if self.head_dim % 2:
            raise ConfigError(f"{where}: head dim d_model/n_heads={self.head_dim} must be even for rotary embeddings")
        if not self.init_std > 0:
            raise ConfigError(f"{where}.init_std must be > 0, got {self.init_std}")
        if self.moe is not None:
            self.moe.validate(f"{where}.moe")
            if self.ff_dim % self.moe.granularity:
                raise ConfigError(f"{where}.moe.granularity={self.moe.granularity} must divide d_ff={self.ff_dim}")


@dataclass(frozen=True)
class DataConfig:
    source: str = _f("stdlib", "'synthetic' (sparse Markov chain, exact entropy rate), 'stdlib' (the running Python's standard-library sources), or a path to text files / a directory / .jsonl (field 'text') / .parquet.")
    tokenizer: Literal["byte", "bpe"] = _f("byte", "'byte' (vocab 256, no files) or 'bpe' (trained locally with HF tokenizers to model.vocab_size, cached).")
    eval_fraction: float = _f(0.02, "Fraction of documents held out for evaluation (chosen by a hash of the document name; never in training).")
    max_bytes: Optional[int] = _f(None, "Read at most this many bytes of corpus text (null: all).")
    cache_dir: Optional[str] = _f(None, "Where tokenized corpora and tokenizers are cached (null: $SCALING_CACHE or ~/.cache/scaling).")
    synthetic_branching: int = _f(4, "Synthetic source: successors per state in the random sparse Markov chain.")
    synthetic_seed: int = _f(1234, "Synthetic source: seed of the Markov chain (its transition table), independent of train.seed.")
    max_epochs: Optional[float] = _f(4.0, "Refuse a run that would pass over the training split more than this many times (null: no cap). Above one epoch the run is warned about and its record says how many; repeated tokens are worth less than fresh ones (Muennighoff et al. 2023 find them nearly as good up to ~4 epochs).")

    def validate(self, where: str = "data") -> None:
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"{where}.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.source not in ("synthetic", "stdlib") and not Path(self.source).expanduser().exists():
            raise ConfigError(f"{where}.source: corpus path {self.source!r} does not exist (allowed: 'synthetic', 'stdlib' or an existing path)")
        if self.synthetic_branching < 1:
            raise ConfigError(f"{where}.synthetic_branching must be >= 1, got {self.synthetic_branching}")
        if self.max_bytes is not None and self.max_bytes <= 0:
            raise ConfigError(f"{where}.max_bytes must be > 0 or null, got {self.max_bytes}")
        if self.max_epochs is not None and not self.max_epochs > 0:
            raise ConfigError(f"{where}.max_epochs must be > 0 or null, got {self.max_epochs}")


@dataclass(frozen=True)
class TrainConfig:
    tokens: int = _f(1_000_000, "Training token budget D; trained exactly as steps * batch_size * seq_len with steps = tokens // (batch_size * seq_len).")
    batch_size: int = _f(32, "Global batch size in sequences (split across devices and gradient-accumulation micro-batches).")
    lr: float = _f(3e-3, "Peak learning rate.")
    schedule: Literal["cosine", "wsd", "constant"] = _f("cosine", "Learning-rate schedule after linear warmup: cosine decay, warmup-stable-decay, or constant.")
    warmup_fraction: float = _f(0.05, "Fraction of steps spent in linear warmup.")
    decay_fraction: float = _f(0.2, "WSD: fraction of steps spent in the final linear decay.")
    min_lr_ratio: float = _f(0.1, "Final learning rate as a fraction of the peak (cosine and wsd).")
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay (applied to matrices, not to norms).")
    beta1: float = _f(0.9, "AdamW beta1.")
    beta2: float = _f(0.95, "AdamW beta2.")
    eps: float = _f(1e-8, "AdamW epsilon.")
    grad_clip: Optional[float] = _f(1.0, "Clip the global gradient norm to this value (null: no clipping).")
    z_loss_coef: float = _f(0.0, "Output-logit z-loss coefficient: coef * mean(logsumexp(logits)^2).")
    grad_accum: int = _f(1, "Gradient-accumulation micro-batches per step.")
    seed: int = _f(0, "Seed of the parameter init and of the data order.")
    eval_every: int = _f(0, "Evaluate every this many steps (0: only at the end); always at the end.")
    eval_tokens: int = _f(2**18, "Held-out tokens per evaluation: a fixed set of eval_tokens // seq_len windows (the same for every run with this data and seq_len, whatever its batch size), each scored once; the mean and its standard error are over windows. A smaller split is used whole, with a warning.")
    eval_batch_size: Optional[int] = _f(None, "Sequences per evaluation micro-batch (null: batch_size / grad_accum, the training micro-batch). Changes memory and speed, not the result.")
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
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"{where}.grad_clip must be > 0 or null, got {self.grad_clip}")


@dataclass(frozen=True)
class LogConfig:
    wandb: Literal["offline", "online", "disabled"] = _f("offline", "Weights & Biases mode; offline needs no account or network.")
    wandb_project: str = _f("scaling", "W&B project name.")
    wandb_group: Optional[str] = _f(None, "W&B group (sweeps set it to the sweep name).")
    wandb_tags: list = _f([], "W&B tags.")
    progress: bool = _f(True, "Show a progress bar on the terminal.")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = _f(ModelConfig(), "Model architecture.")
    data: DataConfig = _f(DataConfig(), "Training and evaluation data.")
    train: TrainConfig = _f(TrainConfig(), "Optimisation, budget and schedule.")
    log: LogConfig = _f(LogConfig(), "Logging.")
    name: Optional[str] = _f(None, "Optional human-readable run name.")

    def validate(self) -> "RunConfig":
        self.model.validate()
        self.data.validate()
        self.train.validate()
        if self.data.tokenizer == "byte" and self.data.source != "synthetic" and self.model.vocab_size < 256:
            raise ConfigError(f"model.vocab_size={self.model.vocab_size} is too small for data.tokenizer='byte' (needs >= 256)")
        if self.data.tokenizer == "bpe" and self.model.vocab_size < 260:
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
    def eval_batch_size(self) -> int:
        return self.train.eval_batch_size or self.train.batch_size // self.train.grad_accum

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------------------------
# Loading: dicts / YAML -> validated frozen dataclasses, errors naming the field.


def _positive(obj: Any, where: str, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if not v > 0:
            raise ConfigError(f"{where}.{name} must be > 0, got {v}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (ints to floats, dicts to dataclasses)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed; allowed values: {', '.join(repr(a) for a in allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping (section), got {value!r}")
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():  # 1e6 in YAML
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
            if f.is_integer():
                return int(f)
        if not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, str):  # YAML reads "3e-4" as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return list(value)
    return value


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a plain dict, naming the offending field on any error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    data = dict(data)
    if cls is ModelConfig:
        data = _expand_model_shortcuts(data, where)
    unknown = sorted(set(data) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown field {prefix}{unknown[0]}; allowed fields{' of ' + where if where else ''}: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], f"{where}.{f.name}" if where else f.name)
    return cls(**kwargs)


def _expand_model_shortcuts(data: dict, where: str) -> dict:
    """``preset: NAME`` starts from a named preset; ``target_params: N`` from the config sized for N parameters."""
    from scaling.model.presets import PRESETS, config_for_params

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


def set_by_path(tree: dict, dotted: str, value: Any) -> None:
    """``set_by_path(d, 'train.lr', 1e-3)``: set a nested dict entry, creating sections as needed."""
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"--set {dotted}: {p!r} is not a section")
        node = node[p]
    node[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. train.lr=1e-3), got {item!r}")
        k, v = item.split("=", 1)
        out.append((k.strip(), yaml.safe_load(v)))
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> RunConfig:
    """Load a run config from YAML (or ``base``), apply ``key=value`` overrides, validate, return it frozen."""
    raw: dict = {}
    if base is not None:
        raw = _deepcopy(base)
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping with sections model/data/train/log")
        raw = merge_dicts(raw, loaded)
    for k, v in parse_overrides(overrides):
        set_by_path(raw, k, v)
    return from_dict(RunConfig, raw).validate()


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def merge_dicts(a: dict, b: dict | None) -> dict:
    """Deep merge: ``b``'s entries override ``a``'s, nested sections merged; neither input is modified."""
    out = _deepcopy(a)
    for k, v in (b or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = _deepcopy(v)
    return out


def describe_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type and default, doc) for every field, sections expanded: the source of the --help text."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        sub = tp if dataclasses.is_dataclass(tp) else (inner[0] if inner else None)
        if sub is not None:
            rows.append((name, "section", f.metadata.get("doc", "")))
            rows.extend(describe_fields(sub, name + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((name, f"{_type_name(tp)} = {default!r}", f.metadata.get("doc", "")))
    return rows


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


__all__ = [
    "ConfigError",
    "DataConfig",
    "LogConfig",
    "MoEConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "describe_fields",
    "dump_yaml",
    "from_dict",
    "load_config",
    "merge_dicts",
    "replace",
]
