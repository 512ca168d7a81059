"""The structure the scale-out, branched and stacked training build on: pinned step numerics, schedules at their
phase boundaries, separate seeds, logical axes on every parameter, checkpoints another run starts from, and an
import graph that only points downward."""

import ast
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling.config import TrainConfig, load_config
from scaling.data import build_dataset
from scaling.parallel import Parallel
from scaling.train import train
from scaling.train.optim import lr_table, make_schedule
from scaling.train.state import build, init_state
from scaling.train.step import make_train_step

from .conftest import ROOT, tiny_overrides

# One step from a fixed seed, on the tiny synthetic config (no warmup, so step 1 trains at the peak lr).
# Update these values only when the model, the loss, the data stream or the optimizer changes on purpose (say so
# in the commit); a change anywhere else that moves them is a bug.
GOLDEN = {
    "dense": [
        {"lm_loss": 5.55422830581665, "grad_norm": 0.6036537885665894, "lr": 0.009999999776482582},
        {"lm_loss": 5.4272871017456055, "grad_norm": 0.567258358001709, "lr": 0.009986127726733685},
    ],
    "moe": [
        {"lm_loss": 5.535338878631592, "loss": 5.547271251678467, "grad_norm": 0.6147279739379883},
        {"lm_loss": 5.422108173370361, "loss": 5.434078693389893, "grad_norm": 0.585782527923584},
    ],
}


def _steps(cfg, n: int):
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
    return state, out


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_golden_steps(kind):
    extra = {"model.moe.n_experts": 4, "model.moe.top_k": 2} if kind == "moe" else {}
    _, out = _steps(load_config(None, tiny_overrides(**{"train.warmup_fraction": 0.0, **extra})), 2)
    for got, want in zip(out, GOLDEN[kind]):
        for k, v in want.items():
            # float32 sums over 256 tokens x 256 logits and the parameters: another CPU may round differently by
            # ~1e-7 relative; 1e-5 is 100 x that and far below any change of the computation (>= 1e-3 here).
            assert got[k] == pytest.approx(v, rel=1e-5), (k, got[k], v)


def test_grad_accumulation_2_equals_1():
    one, _ = _steps(load_config(None, tiny_overrides(**{"train.batch_size": 8})), 3)
    two, _ = _steps(load_config(None, tiny_overrides(**{"train.batch_size": 8, "train.grad_accum": 2})), 3)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        # The mean of two half-batch means is the batch mean up to float32 reassociation (~1e-7 relative per
        # gradient); Adam's normalised update turns that into ~1e-7 x lr = 1e-9 per step on parameters ~0.02.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("shape", ["cosine", "wsd-linear", "wsd-1-sqrt", "constant"])
def test_schedules_at_their_phase_boundaries(shape):
    kind, _, decay_shape = shape.partition("-")
    cfg = TrainConfig(lr=1.0, schedule=kind, warmup_steps=10, decay_steps=20, min_lr_ratio=0.1, decay_shape=decay_shape or "linear")
    f = jax.jit(make_schedule(cfg, 100))
    lr = lambda s: float(f(jnp.int32(s), jnp.float32(2e-3)))  # noqa: E731
    eps = 2e-3 * 2**-22  # a few float32 ulps of the peak
    assert lr(0) == 0 and lr(5) == pytest.approx(1e-3, abs=eps) and lr(10) == pytest.approx(2e-3, abs=eps)
    if kind == "cosine":  # cosine from step 10 to 100: half-way at 55, the floor at the end
        assert lr(55) == pytest.approx(2e-3 * (0.1 + 0.9 * 0.5), abs=eps) and lr(100) == pytest.approx(2e-4, abs=eps)
    elif kind == "constant":
        assert lr(99) == pytest.approx(2e-3, abs=eps)
    else:  # stable until 80, then the decay over the last 20 steps
        assert lr(80) == pytest.approx(2e-3, abs=eps) and lr(100) == pytest.approx(2e-4, abs=eps)
        half = 0.5 if decay_shape != "1-sqrt" else np.sqrt(0.5)
        assert lr(90) == pytest.approx(2e-3 * (1 - 0.9 * half), abs=eps)


def test_init_and_data_seeds_are_separate():
    def params_of(**extra):
        cfg = load_config(None, tiny_overrides(**extra))
        return cfg, [np.asarray(x) for x in jax.tree.leaves(init_state(cfg, build(cfg, Parallel.create())[2]).params)]

    base, a = params_of()
    _, b = params_of(**{"train.init_seed": 1})
    d, c = params_of(**{"train.data_seed": 1})
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))  # init_seed changes the init
    assert all(np.array_equal(x, y) for x, y in zip(a, c))  # data_seed does not
    assert (base.init_seed, base.data_seed, d.init_seed, d.data_seed) == (0, 0, 0, 1)
    ds = build_dataset(base.data, base.model)
    assert not np.array_equal(ds.train_batch(0, 8, 32, base.data_seed), ds.train_batch(0, 8, 32, d.data_seed))


def test_every_parameter_carries_logical_axes():
    from scaling.model.axes import LOGICAL_AXES
    from scaling.train.state import abstract_state

    cfg = load_config(None, tiny_overrides(**{"model.moe.n_experts": 4, "model.moe.n_shared_experts": 1, "model.qk_norm": True,
                                              "model.moe.bias_balancing": True, "model.n_layers": 2}))
    _, abstract = abstract_state(cfg)
    names = set(LOGICAL_AXES.values()) | {None}
    variables = jax.tree.leaves(abstract.params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert variables and all(isinstance(v, nnx.Param) for v in variables)
    for v in variables:
        axes = v.get_metadata()["out_sharding"]
        assert len(axes) == v.get_value().ndim and set(axes) <= names, (axes, v.get_value().shape)


def test_branch_from_a_kept_checkpoint_equals_the_standalone_wsd_run(tmp_path):
    """A WSD branch: a trunk at constant lr keeps its step-S checkpoint; a run starting there (init_from) that
    decays the lr over its last steps ends exactly where one uninterrupted WSD run of the same schedule ends."""
    S, decay, W = 40, 10, 5
    common = {"train.warmup_steps": W, "train.checkpoint_every": 1000, "train.keep_checkpoints": 1}
    trunk = load_config(None, tiny_overrides(**common, **{"train.schedule": "constant", "train.tokens": 8 * 32 * 60,
                                                           "train.keep_steps": f"[{S}]"}))
    train(trunk, tmp_path / "trunk")
    ckpts = sorted(int(p.name) for p in (tmp_path / "trunk" / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts == [S, 60]  # the kept branch point survives keep_checkpoints=1
    wsd = {**common, "train.schedule": "wsd", "train.decay_steps": decay, "train.tokens": 8 * 32 * (S + decay)}
    branch = train(load_config(None, tiny_overrides(**wsd, **{"train.init_from": f"{tmp_path / 'trunk'}@{S}"})), tmp_path / "branch")
    alone = train(load_config(None, tiny_overrides(**wsd)), tmp_path / "alone")
    assert branch["initialized_from"].startswith("init_from") and alone["initialized_from"] == "init"
    # Same lr at every step (the constant schedule is WSD's stable phase), same batches, same Adam state: the same
    # program on the same numbers, so bit-identical on one machine.
    assert branch["params_digest"] == alone["params_digest"]
    assert branch["final_eval_loss"] == alone["final_eval_loss"]
    with pytest.raises(Exception, match="no checkpoint at step 30"):
        train(load_config(None, tiny_overrides(**wsd, **{"train.init_from": f"{tmp_path / 'trunk'}@30"})), tmp_path / "bad")


def _module_files() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for pkg in ("scaling", "analysis") for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, modules: dict | None = None) -> set[str]:
    """Modules a file imports, at module level and inside functions. ``from pkg import sub`` of a submodule is an
    edge to ``pkg.sub`` only (the package's own code is not used)."""
    modules = modules if modules is not None else _module_files()
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            out |= subs if len(subs) == len(node.names) else subs | {node.module}
    return out


def _module_graph() -> dict[str, set[str]]:
    files = _module_files()
    return {m: {i for i in _imports(p, files) if i in files and i != m} for m, p in files.items()}


def test_the_import_graph_has_no_cycles():
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_analysis_never_imports_the_training_side_or_jax():
    for p in (ROOT / "analysis").rglob("*.py"):
        bad = {i for i in _imports(p) if i.split(".")[0] in ("scaling", "jax", "flax", "optax", "orbax")}
        assert not bad, (p, bad)


def test_the_command_line_starts_without_the_heavy_libraries():
    """Building the `scaling` parser (every command's --help, and every command before it runs) imports none of
    pandas, scipy, matplotlib, jax, flax, orbax or wandb: they load where a command needs them. Measured: --help
    0.21 s; with pandas pulled in at parser build (analysis.laws importing analysis.runs) it took 0.52-0.56 s."""
    import subprocess
    import sys

    code = ("import sys\nfrom scaling.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('pandas', 'scipy', 'matplotlib', 'jax', 'flax', 'orbax', 'wandb') if m in sys.modules), file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert p.returncode == 0 and p.stderr.strip().splitlines()[-1] == "[]", p.stderr[-2000:]
