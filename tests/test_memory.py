"""The memory planner against XLA's own accounting of the compiled step, remat, and the command line."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from scaling.config import load_config
from scaling.memory import plan_memory

from .conftest import ROOT, run_cli, tiny_overrides, xla_env

BASE = ["data.source=synthetic", "log.wandb=disabled", "model.d_model=256", "model.n_heads=4", "model.seq_len=256",
        "train.batch_size=16", "model.n_layers=4"]
COMPARE = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from scaling.config import load_config
from scaling.memory import plan_memory, xla_memory
import jax
out = {}
for name, over in json.loads(sys.argv[1]).items():
    cfg = load_config(None, over)
    out[name] = {"planner": plan_memory(cfg, "cpu", jax.device_count()).total, "xla": xla_memory(cfg)["total"]}
print(json.dumps(out))
"""


def _compare(cases: dict, devices: int) -> dict:
    env = xla_env(devices)
    p = subprocess.run([sys.executable, "-c", COMPARE, json.dumps(cases)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_planner_is_within_20_percent_of_xla():
    """XLA's argument + temp bytes of the compiled step (per device) against the planner, which never compiles."""
    got = _compare({"dense": BASE, "moe 8 experts top-2": BASE + ["model.moe.n_experts=8", "model.moe.top_k=2"]}, 1)
    got |= _compare({"fsdp=4": BASE + ["parallel.fsdp=4", "parallel.data=1"]}, 4)
    for name, r in got.items():
        # measured: dense 1.03, MoE 1.01, fsdp=4 0.90 (benchmarks/RESULTS.md); the target is 20%
        assert 0.8 <= r["planner"] / r["xla"] <= 1.2, (name, r)


def test_remat_recomputes_the_same_numbers_and_plans_less_memory():
    from .support.steps import train_steps

    losses = {}
    for remat in ("none", "block", "full"):
        _, state, out = train_steps(load_config(None, tiny_overrides(**{"train.remat": remat})), 3)
        losses[remat] = out[-1]["lm_loss"]
        leaves = [np.asarray(x) for x in jax.tree.leaves(state.params)]
        if remat == "none":
            ref = leaves
        else:
            # recomputation runs the same float32 ops on the same inputs; XLA may fuse (and, on a multi-device
            # mesh, reduce) them in another order: a few ulps (~1e-7 relative) in the gradients. AdamW normalises
            # each update to ~lr, so a component whose gradient sits near that rounding floor can move its update
            # by a relative ~1e-5: |diff| <= steps * lr * 1e-5 = 3 * 1e-2 * 1e-5 = 3e-7 absolute (measured on 8
            # devices: 1.4e-8 on a parameter of 2.2e-4).
            for a, b in zip(ref, leaves):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=3e-7)
    assert losses["block"] == pytest.approx(losses["none"], rel=1e-6) and losses["full"] == pytest.approx(losses["none"], rel=1e-6)
    acts = plan_memory(load_config(None, BASE), "h100", 1).activations
    assert acts["full"] < acts["block"] < acts["none"]


def test_memory_command(tmp_path):
    p = run_cli("memory", "--set", "model.preset=1b", "--set", "parallel.fsdp=8", "--device", "h100", "--json")
    out = json.loads(p.stdout)
    assert out["n_devices"] == 8 and out["mesh"]["fsdp"] == 8 and out["fits"] is True
    assert out["optimizer"] == 2 * out["params"] and out["params"] * 8 == pytest.approx(plan_memory(
        load_config(None, ["model.preset=1b"]), "h100", 1).params, rel=1e-3)  # 1b: every weight divides by 8
    big = run_cli("memory", "--set", "model.preset=1b", "--set", "train.batch_size=256", "--device", "a100-40", "--devices", "1")
    assert "DOES NOT FIT" in big.stdout
    bad = run_cli("memory", "--device", "tpu-v9", check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "known: h100" in bad.stderr
