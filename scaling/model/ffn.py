"""Feed-forward kinds (``model.mlp``): the one description of a block's MLP that the module, the parameter and
FLOPs counts and the memory planner all read.

A kind is ``h = act(x W_gate) * (x W_up)`` (gated) or ``h = act(x W_up)``, then ``y = h W_down``, without biases.
From that: the dense MLP and the MoE experts (``scaling.model.layers.MLP``, ``scaling.model.moe``) create a gate
matrix only for gated kinds and call ``hidden``; ``scaling.model.accounting`` counts ``n_matrices`` D x F matrices
per MLP; ``scaling.memory`` keeps ``saved_F`` F-sized arrays per token for the backward pass (``kept_F`` under
``remat=block``). Adding a kind is one ``register_feed_forward(FeedForwardKind(...))`` call (here or in a module
of its own) and a test that checks its counts against the built model and XLA (``tests/test_ffn_kinds.py``).

This module imports no JAX: configs validate ``model.mlp`` against the registry without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from scaling.configbase import not_allowed


@dataclass(frozen=True)
class FeedForwardKind:
    name: str
    gated: bool  # a gate matrix beside W_up: h = act(x W_gate) * (x W_up)
    activation: str | Callable  # a jax.nn function's name, or a function of one array
    default_d_ff: Callable[[int], int]  # d_ff when model.d_ff is null, from d_model
    saved_F: int  # F-sized arrays per token the backward pass reads (remat=none)
    kept_F: int  # of those, the matmul outputs kept under remat=block

    @property
    def n_matrices(self) -> int:
        """D x F matrices per MLP (gate, up, down or up, down)."""
        return 3 if self.gated else 2

    def act(self) -> Callable[[Any], Any]:
        if callable(self.activation):
            return self.activation
        import jax

        return getattr(jax.nn, self.activation)

    def hidden(self, up: Any, gate: Callable[[], Any] | None) -> Any:
        """The F-sized hidden activation from ``x W_up`` and, for gated kinds, ``gate()`` = ``x W_gate``."""
        if self.gated:
            return self.act()(gate()) * up
        return self.act()(up)


FEED_FORWARD: dict[str, FeedForwardKind] = {}


def register_feed_forward(kind: FeedForwardKind) -> FeedForwardKind:
    if kind.name in FEED_FORWARD and FEED_FORWARD[kind.name] != kind:
        raise ValueError(f"feed-forward kind {kind.name!r} is already registered")
    FEED_FORWARD[kind.name] = kind
    return kind


def feed_forward(name: str, where: str = "model.mlp") -> FeedForwardKind:
    try:
        return FEED_FORWARD[name]
    except (KeyError, TypeError):
        raise not_allowed(where, name, FEED_FORWARD) from None


def _swiglu_d_ff(d_model: int) -> int:
    # SwiGLU keeps the MLP's parameters at 8 d^2 (as GELU's 4d) with d_ff = 8d/3; rounding to the nearest
    # multiple of 8 (not up to a coarse multiple) keeps the ratio uniform across a sweep's widths.
    return max(8, 8 * round(d_model / 3))


# saved_F: the F-sized matmul outputs, the activation's outputs and one more for the gradient of the product fed to
# W_down (swiglu: gate, up, silu(gate), their product + 1 = 5; gelu: up, gelu(up) + 1 = 3); kept_F: the matmul
# outputs alone. Against XLA's buffer assignment on CPU (d_model 256 and 512, tests/test_ffn_kinds.py): swiglu
# 0.96/0.94 of XLA's bytes, gelu 0.96/0.94 (5 F-sized arrays, as swiglu's count, over-counted it: 1.17/1.14).
register_feed_forward(FeedForwardKind("swiglu", gated=True, activation="silu", default_d_ff=_swiglu_d_ff, saved_F=5, kept_F=2))
register_feed_forward(FeedForwardKind("gelu", gated=False, activation="gelu", default_d_ff=lambda d: 4 * d, saved_F=3, kept_F=1))
