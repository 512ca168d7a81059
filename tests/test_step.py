"""The train step's numbers: pinned golden steps, gradient accumulation, the lr schedules at their phase
boundaries, and init and data seeds that are separate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling.config import TrainConfig, load_config
from scaling.data import build_dataset
from scaling.parallel import Parallel
from scaling.train.optim import make_schedule
from scaling.train.state import build, init_state

from .conftest import tiny_overrides
from .support.steps import train_steps


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


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_golden_steps(kind):
    extra = {"model.moe.n_experts": 4, "model.moe.top_k": 2} if kind == "moe" else {}
    _, _, out = train_steps(load_config(None, tiny_overrides(**{"train.warmup_fraction": 0.0, **extra})), 2)
    for got, want in zip(out, GOLDEN[kind]):
        for k, v in want.items():
            # float32 sums over 256 tokens x 256 logits and the parameters: another CPU may round differently by
            # ~1e-7 relative; 1e-5 is 100 x that and far below any change of the computation (>= 1e-3 here).
            assert got[k] == pytest.approx(v, rel=1e-5), (k, got[k], v)


def test_grad_accumulation_2_equals_1():
    _, one, _ = train_steps(load_config(None, tiny_overrides(**{"train.batch_size": 8})), 3)
    _, two, _ = train_steps(load_config(None, tiny_overrides(**{"train.batch_size": 8, "train.grad_accum": 2})), 3)
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
