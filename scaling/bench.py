"""Benchmark a config: compile time, step time, training tokens/s and, where the device's peak is known, MFU.

MFU = (training FLOPs per token under ``scaling.model.accounting``) x tokens/s / (peak dense bf16 FLOP/s x devices).
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np

from scaling.devices import PEAK_FLOPS, peak_flops  # noqa: F401  (re-exported: the benchmark's MFU)


def bench_config(cfg, steps: int = 20, warmup: int = 2) -> dict:
    """Time ``steps`` train steps of ``cfg`` on random tokens (after compile and ``warmup`` steps)."""
    from scaling.model.accounting import count_params, flops_per_token
    from scaling.model import compute_dtype
    from scaling.parallel import Parallel
    from scaling.train.state import build, init_state
    from scaling.train.step import make_train_step

    par = Parallel.create(cfg.parallel)
    B, L = cfg.train.batch_size, cfg.model.seq_len
    par.check_batch(B // cfg.train.grad_accum)
    graphdef, _, shardings = build(cfg, par)
    state = init_state(cfg, shardings)
    peak_lr = jax.numpy.asarray(cfg.train.lr, jax.numpy.float32)
    rng = np.random.default_rng(0)
    batch = par.put_batch(rng.integers(0, cfg.model.vocab_size, (B, L + 1), dtype=np.int32), (B, L + 1))
    t0 = time.perf_counter()
    step = make_train_step(graphdef, cfg, par, shardings).lower(state, batch, peak_lr).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, out = step(state, batch, peak_lr)
    jax.block_until_ready(out)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, out = step(state, batch, peak_lr)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    tps = B * L / step_s
    fpt = flops_per_token(cfg.model, cfg.train.flops_attention)
    kind = jax.devices()[0].device_kind
    peak = peak_flops(kind)
    counts = count_params(cfg.model)
    return {
        "device_kind": kind,
        "device_count": jax.device_count(),
        "n_params": counts.total,
        "n_params_active": counts.active,
        "batch_size": B,
        "seq_len": L,
        "compute_dtype": jax.numpy.dtype(compute_dtype(cfg.model)).name,
        "compile_time_s": compile_s,
        "step_time_s": step_s,
        "step_time_p90_s": float(np.percentile(times, 90)),
        "tokens_per_sec": tps,
        "model_tflops_per_sec": fpt * tps / 1e12,
        "mfu": fpt * tps / (peak * jax.device_count()) if peak else None,
    }


def matched_moe(cfg, n_experts: int = 8, top_k: int = 2):
    """(moe config, dense config of equal active parameters): experts of d_ff / top_k, so k experts = one dense MLP."""
    from dataclasses import replace

    from scaling.config import MoEConfig

    moe = replace(cfg, model=replace(cfg.model, moe=MoEConfig(n_experts=n_experts, top_k=top_k, granularity=top_k)))
    return moe, cfg


def main(args) -> int:
    from scaling.config import ConfigError, load_config

    base = {"model": {"preset": args.preset}} if args.preset else None
    try:
        cfg = load_config(args.config, args.set, base=base)
    except ConfigError as e:
        print(f"config error: {e}")
        return 2
    results = {"dense": bench_config(cfg, args.steps)}
    if args.moe:
        moe_cfg, _ = matched_moe(cfg)
        results["moe"] = bench_config(moe_cfg, args.steps)
        results["moe_over_dense_step_time"] = results["moe"]["step_time_s"] / results["dense"]["step_time_s"]
    if args.json:
        print(json.dumps(results))
        return 0
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (peak unknown for this device)"
        print(
            f"{name:5s} N={r['n_params']:,} (active {r['n_params_active']:,}) B={r['batch_size']} L={r['seq_len']} "
            f"on {r['device_count']}x {r['device_kind']} [{r['compute_dtype']}]: compile {r['compile_time_s']:.2f}s, "
            f"step {1e3 * r['step_time_s']:.1f} ms, {r['tokens_per_sec']:,.0f} tok/s, "
            f"{r['model_tflops_per_sec']:.3f} TFLOP/s, MFU {mfu}"
        )
    if "moe_over_dense_step_time" in results:
        print(f"MoE / dense (equal active params) step time: {results['moe_over_dense_step_time']:.2f}x")
    return 0
