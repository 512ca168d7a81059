"""The train state and the phases that produce it: abstract init -> shardings -> sharded init, or a restore.

``TrainState`` is everything a step reads and writes: an explicit step counter (what the lr schedule reads), the
parameters, the model's other variables (MoE router biases) and the optimizer state. It is a pytree, so it is
donated to the step, checkpointed by orbax and sharded by ``scaling.parallel`` as one object.

No parameter is ever materialised on one device: ``jax.eval_shape`` gives the shapes and logical axes,
``Parallel.state_shardings`` the shardings, and ``jax.jit(init, out_shardings=...)`` creates every array in place.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.config import ConfigError, RunConfig
from scaling.model import Transformer
from scaling.parallel import Parallel
from scaling.train.checkpoint import Checkpointer
from scaling.train.optim import make_optimizer


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar: optimizer steps taken so far
    params: nnx.State
    rest: nnx.State  # non-parameter variables (MoE router biases); updated outside the gradient
    opt: Any

    def as_dict(self) -> dict:
        return self._asdict()


def _init_fn(cfg: RunConfig):
    tx = make_optimizer(cfg.train)

    def init() -> TrainState:
        model = Transformer(cfg.model, rngs=nnx.Rngs(cfg.init_seed))
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params))

    return init


def abstract_state(cfg: RunConfig) -> tuple[nnx.GraphDef, TrainState]:
    """The model's graph definition and the train state's shapes, dtypes and logical axes, computing nothing."""
    graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: Transformer(cfg.model, rngs=nnx.Rngs(cfg.init_seed))), nnx.Param, ...)
    return graphdef, jax.eval_shape(_init_fn(cfg))


def init_state(cfg: RunConfig, shardings: TrainState) -> TrainState:
    """A fresh train state, each array created directly with its sharding."""
    return jax.jit(_init_fn(cfg), out_shardings=shardings)()


def with_shardings(abstract: TrainState, shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs that carry the target shardings: what a restore fills in place."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def restore_state(ckpt: Checkpointer, step: int, target: TrainState) -> tuple[TrainState, dict]:
    state, meta = ckpt.restore(step, target.as_dict())
    return TrainState(**state), meta


def parse_init_from(spec: str):
    from pathlib import Path

    path, _, step = spec.rpartition("@")
    return Path(path), int(step)


def restore_init_from(cfg: RunConfig, target: TrainState) -> tuple[TrainState, dict]:
    """The state another run checkpointed (``train.init_from = RUN_DIR@STEP``), resharded onto this mesh."""
    run_dir, step = parse_init_from(cfg.train.init_from)
    ckdir = run_dir / "checkpoints"
    if not ckdir.exists():
        raise ConfigError(f"train.init_from={cfg.train.init_from!r}: {run_dir} has no checkpoints")
    import logging

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that a read-only manager saves nothing: true, and what we want
    try:
        src = Checkpointer(ckdir, keep=1, read_only=True)
    finally:
        absl.setLevel(level)
    try:
        if step not in src.all_steps():
            raise ConfigError(
                f"train.init_from={cfg.train.init_from!r}: no checkpoint at step {step} (it has {sorted(src.all_steps())}); "
                "the source run must list it in train.keep_steps"
            )
        try:
            return restore_state(src, step, target)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"train.init_from={cfg.train.init_from!r}: its checkpoint does not fit this model ({e})") from None
    finally:
        src.close()


def build(cfg: RunConfig, par: Parallel) -> tuple[nnx.GraphDef, TrainState, TrainState]:
    """(graphdef, abstract state with shardings, shardings): phases 1 and 2, no arrays allocated."""
    graphdef, abstract = abstract_state(cfg)
    shardings = par.state_shardings(abstract)
    return graphdef, with_shardings(abstract, shardings), shardings
