"""The training loop: one run directory in, ``record.json`` + metrics + checkpoints out; rerunning resumes.

Phases (``train``):

1. **preflight**: data, epochs, eval windows, whether an existing checkpoint may be resumed. A refusal here
   changes nothing on disk (a new run directory gets a record saying why).
2. **state layout**: the train state's shapes and logical axes (``jax.eval_shape``) and its shardings on the mesh.
3. **restore or init**: this run's newest checkpoint, else another run's (``train.init_from``, e.g. a WSD branch
   from its trunk), else a fresh init made in place with its shardings.
4. **steps**: the jitted step over the data, with logging, evaluation, checkpoints and a stop flag.
5. **finalize**: the final evaluation and the completed record.

Run directory layout::

    RUN_DIR/config.yaml     resolved config
    RUN_DIR/record.json     the run record (scaling.train.record), rewritten atomically
    RUN_DIR/metrics.jsonl   train / eval metrics, one JSON object per line
    RUN_DIR/checkpoints/    orbax checkpoints (train state + loop state)
    RUN_DIR/wandb/          the W&B run (offline by default)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import jax
from flax import nnx

from scaling.config import ConfigError, RunConfig
from scaling.model.layers import attention_implementation
from scaling.parallel import InFlight, Parallel, enable_compilation_cache, maybe_initialize_distributed
from scaling.train import record as rec
from scaling.train.checkpoint import Checkpointer
from scaling.train.state import TrainState, build, restore_state
from scaling.train.errors import DivergedError, MeasurementWarning, StopRequested  # noqa: F401  (re-exported: the loop's outcomes)
from scaling.train.member import Member, run_id_for
from scaling.train.step import make_eval_step, make_train_step


def _every(n: int, steps: int) -> int:
    return n if n > 0 else max(1, steps // 10)


def stack_key(cfg: RunConfig) -> str:
    """Runs with equal keys can train as one stack: their configs differ at most in the name, the seeds and the
    peak learning rate (``train.lr``), which the stacked step takes per member."""
    d = cfg.to_dict()
    d.pop("name", None)
    for k in ("seed", "init_seed", "data_seed", "lr", "init_from"):
        d["train"].pop(k, None)
    return rec.config_hash(d)


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    progress: Any = None,
    should_stop: Callable[[], bool] | None = None,
    run_id: str | None = None,
    resume_anyway: bool = False,
) -> dict:
    """Train (or resume) the run in ``run_dir``; returns the final record. Raises DivergedError on NaN/inf.

    A checkpoint in ``run_dir`` is resumed only if it was written under the same training config (the record's
    ``config`` minus logging, evaluation and checkpointing cadence): a different one raises ``ConfigError`` unless
    ``resume_anyway`` (then the record says so); a checkpoint past this config's steps is always an error."""
    return train_stack([cfg], [run_dir], progress=progress, should_stop=should_stop, run_ids=[run_id], resume_anyway=resume_anyway)[0]


def train_stack(
    cfgs: list[RunConfig],
    run_dirs: list[str | Path],
    *,
    progress: Any = None,
    should_stop: Callable[[], bool] | None = None,
    run_ids: list[str | None] | None = None,
    resume_anyway: bool = False,
) -> list[dict]:
    """Train (or resume) several runs of one shape in one compiled step (``scaling.train.step.make_train_step``);
    their configs may differ in seeds and peak lr only (``stack_key``). Each run keeps its own run directory,
    record, metrics, checkpoints and final evaluation, and its numbers are bit-identical to training it alone
    (``tests/test_train.py``). A member that is refused, diverges or fails is recorded so and the others go on;
    members resumed at different steps train in groups of equal step, one group after another. Returns the records
    (a member that did not complete: its record says why). One run (``train``) raises instead: ConfigError,
    DivergedError, StopRequested or the error that stopped it; a stack raises StopRequested after every member
    checkpointed."""
    maybe_initialize_distributed()  # before any other JAX call
    if len({stack_key(c) for c in cfgs}) > 1:
        raise ConfigError("runs of one stack must differ only in name, seeds and train.lr")
    solo = len(cfgs) == 1
    cfg0 = cfgs[0]
    enable_compilation_cache(cfg0.data.cache_dir)
    is_main = jax.process_index() == 0
    par = Parallel.create(cfg0.parallel)
    members = [Member(c, d, i, is_main) for c, d, i in zip(cfgs, run_dirs, run_ids or [None] * len(cfgs))]
    def drop(m: Member, e: Exception) -> None:
        """A stack member that failed alone: recorded (the others go on); one run raises instead."""
        if solo:
            raise e
        m.error = e
        if m.record.get("status") == "running":
            m.fail(e)  # written to its record.json
        else:  # refused before its record was rewritten: the disk stays as it was; the record returned says why
            m.record = {**m.record, "status": "failed", "error": f"{type(e).__name__}: {e}"}
        m.close(1)

    active = []
    for m in members:
        if m.finished:
            continue
        try:
            m.prepare(par, resume_anyway)
        except Exception as e:
            drop(m, e)
            continue
        active.append(m)
    if not active:
        return [m.record for m in members]  # already done (or every member refused): nothing to train
    states: dict[int, TrainState] = {}
    try:
        graphdef, target, shardings = build(cfg0, par)  # phase 2: layout only, nothing allocated
        eval_fn = make_eval_step(graphdef, par.replicated)
        for k, m in enumerate(active):  # phase 3
            try:
                states[k] = m.start(target, shardings, par, progress)
            except Exception as e:
                drop(m, e)
        groups: dict[int, list[int]] = {}
        for k in states:
            groups.setdefault(active[k].start_step, []).append(k)
        for g, (start, ks) in enumerate(sorted(groups.items())):
            if g and should_stop is not None and should_stop():  # a stop latched while an earlier group trained
                for k in ks:
                    active[k].record_stop(should_stop)
                status = getattr(should_stop, "status", "stopped")
                raise StopRequested(f"{status} before step {start + 1} ({getattr(should_stop, 'signal', None) or 'stop requested'})",
                                    start, status, getattr(should_stop, "signal", None))
            _drive([active[k] for k in ks], tuple(states[k] for k in ks), graphdef, shardings, eval_fn, par, should_stop, drop, solo)
    except BaseException as e:
        for m in active:
            if m.error is None and m.record.get("status") != "completed":
                m.fail(e)
        if solo or isinstance(e, StopRequested) or not isinstance(e, Exception):
            raise
    finally:
        for m in active:
            m.close(1)
    return [m.record for m in members]


def _drive(members, state_tuple, graphdef, shardings, eval_fn, par, should_stop, drop, solo) -> None:
    """Phases 4 and 5 for members that start at the same step: one compiled step trains them all."""
    m0 = members[0]
    cfg, steps, start = m0.cfg, m0.steps, m0.start_step
    step_fn = make_train_step(graphdef, cfg, par, shardings, k=len(members))

    def inputs(step: int):
        return tuple(m.batch(par, step) for m in members), tuple(m.lrs[min(step, steps - 1)] for m in members)

    t0 = time.perf_counter()
    with par.activation_rules():
        compiled = step_fn.lower(state_tuple, *inputs(start)).compile()
    compile_time = time.perf_counter() - t0
    # the kernel is passed explicitly to jax.nn.dot_product_attention, which runs it or raises: no fallback to hide
    for m in members:
        m.write_record(attention_kernel=attention_implementation(cfg.model), attention_requested=cfg.model.attention,
                       stack_size=len(members), parametrization=cfg.model.parametrization, mup_width_mult=cfg.model.width_mult)

    live = list(range(len(members)))  # members still training (a diverged one is dropped, the others go on)
    eval_every = cfg.train.eval_every or steps  # 0: only the final evaluation
    ckpt_every = _every(cfg.train.checkpoint_every, steps)
    keep_steps = set(cfg.train.keep_steps)
    log_every = cfg.train.log_every
    B, L = m0.B, m0.L

    def each(fn) -> None:
        """fn(i) for every live member; in a stack, a member that diverges or fails is recorded and dropped."""
        for i in list(live):
            try:
                fn(i)
            except Exception as e:
                drop(members[i], e)
                live.remove(i)

    in_flight = InFlight(par.max_in_flight)
    for step in range(start, steps):
        if not live:
            return
        t_step = time.perf_counter()
        batches, lrs = inputs(step)
        state_tuple, outs = compiled(state_tuple, batches, lrs)
        for i in live:
            members[i].pending.append((step, outs[i]))
        in_flight.add(outs[live[0]]["metrics"]["loss"])
        done = step + 1
        checkpoint_now = done % ckpt_every == 0 or done == steps or done in keep_steps
        if done % log_every == 0 or done == steps or checkpoint_now or done % eval_every == 0:
            each(lambda i: members[i].flush())  # syncs the device
        # a stack's step time is shared by its members: their train_time_s add up to the stack's
        dt = (time.perf_counter() - t_step) / len(members)
        for i in live:
            members[i].session_time += dt
            members[i].session_tokens += B * L
        if done % eval_every == 0 or done == steps:
            def ev(i):
                members[i].logger.log(done, {**members[i].evaluate(eval_fn, state_tuple[i], par),
                                             "flops": members[i].fpt * done * members[i].B * members[i].L}, kind="eval")
            each(ev)
        stopping = should_stop is not None and should_stop()
        if jax.process_count() > 1:
            # every process must stop at the same step (the checkpoint is a collective): agree at sync points
            sync_point = done % log_every == 0 or checkpoint_now
            stopping = par.any_process(stopping) if sync_point else False
        if checkpoint_now or stopping:
            each(lambda i: members[i].checkpoint(done, state_tuple[i]))
        if stopping and done < steps:
            status, sig = "stopped", None
            for i in live:
                status, sig = members[i].record_stop(should_stop)
            raise StopRequested(f"{status} at step {done}/{steps} ({sig or 'stop requested'}); rerun to resume", done, status, sig)
    each(lambda i: members[i].flush())
    each(lambda i: members[i].finalize(state_tuple[i], eval_fn, par, compile_time))


def load_params(run_dir: str | Path, cfg: RunConfig) -> nnx.Module:
    """The latest checkpointed model of a run (for inspection, evaluation and sampling)."""
    par = Parallel.create(cfg.parallel)
    graphdef, target, _ = build(cfg, par)
    ckpt = Checkpointer(Path(run_dir) / "checkpoints", cfg.train.keep_checkpoints, read_only=True)
    step = ckpt.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    state, _ = restore_state(ckpt, step, target)
    ckpt.close()
    return nnx.merge(graphdef, state.params, state.rest)


__all__ = ["DivergedError", "MeasurementWarning", "StopRequested", "load_params", "run_id_for", "stack_key", "train", "train_stack"]
