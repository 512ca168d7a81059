"""Train a config for a few steps in memory, as the train loop does (the same data stream, lr table and compiled
step), without its records, checkpoints or evaluation: for tests of the step's numbers."""

from __future__ import annotations


def train_steps(cfg, n: int):
    """``(graphdef, state, metrics)`` after ``n`` steps: the parameters equal a ``train`` run's bit for bit."""
    from scaling.data import build_dataset
    from scaling.parallel import Parallel
    from scaling.train.optim import lr_table
    from scaling.train.state import build, init_state
    from scaling.train.step import make_train_step

    par = Parallel.create(cfg.parallel)
    graphdef, _, shardings = build(cfg, par)
    state = init_state(cfg, shardings)
    ds = build_dataset(cfg.data, cfg.model)
    step = make_train_step(graphdef, cfg, par, shardings)
    B, L = cfg.train.batch_size, cfg.model.seq_len
    lrs = lr_table(cfg.train, cfg.steps, cfg.train.lr)  # the learning rate enters each step, as in the train loop
    out = []
    for s in range(n):
        state, res = step(state, par.put_batch(ds.train_batch(s, B, L, cfg.data_seed), (B, L + 1)), lrs[s])
        out.append({k: float(v) for k, v in res["metrics"].items()})
    return graphdef, state, out
