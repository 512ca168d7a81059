"""One key for array shapes and logical axis names, used by every module of the model package.

Arrays carry a suffix of shape letters (``x_BLD`` is batch x sequence x d_model); parameters also carry the logical
names of their axes as ``out_sharding`` metadata (``nnx.Param(..., out_sharding=("embed", "mlp"))``).
``scaling.parallel`` maps logical names to mesh axes with one rule table, so changing the parallelism never
edits model code.

====== ============ ====================================================================
letter logical axis meaning
====== ============ ====================================================================
B      batch        sequences in a batch
L      seq          positions in a sequence
D      embed        residual-stream width (d_model)
N      heads        query heads
G      kv_heads     key/value heads (query heads share them in groups)
H      head_dim     width of one attention head
F      mlp          feed-forward hidden width (of one expert, in MoE layers)
V      vocab        vocabulary
E      expert       routed experts
K      -            the top-k choices of one token (activations only)
C      -            capacity slots of one expert in one routing group (activations only)
R      -            rotary frequencies, head_dim / 2 (activations only)
T      -            tokens flattened (batch x sequence) (activations only)
A      -            token-to-expert assignments, T x K (activations only)
S      -            expert slots flattened, E x C (activations only)
Q      -            query heads per key/value head, N / G (activations only)
I      -            query positions of one attention block (activations only)
J      -            key positions up to that block's end (activations only)
M      -            gradient-accumulation micro-batches (activations only)
====== ============ ====================================================================

A ``1`` after ``L`` means one more position: ``tokens_BL1`` holds L + 1 tokens per sequence (inputs and their
next-token targets).
"""

from __future__ import annotations

import contextlib

import jax

LOGICAL_AXES: dict[str, str] = {
    "B": "batch",
    "L": "seq",
    "D": "embed",
    "N": "heads",
    "G": "kv_heads",
    "H": "head_dim",
    "F": "mlp",
    "V": "vocab",
    "E": "expert",
}


def logical(letters: str) -> tuple[str, ...]:
    """``logical("DF") == ("embed", "mlp")``: the logical axis names of a parameter's shape letters."""
    return tuple(LOGICAL_AXES[c] for c in letters)


# -- activation sharding constraints ---------------------------------------------------------------------------
# Model code names activation axes logically too; the train loop installs a resolver (``scaling.parallel``) while
# it traces the step. Without one (a single device, or a model called eagerly) constraints are no-ops.

_resolver = None


@contextlib.contextmanager
def sharding_rules(resolver):
    """Within the block, ``constrain`` maps logical axis names to shardings with ``resolver(names, shape)``."""
    global _resolver
    old, _resolver = _resolver, resolver
    try:
        yield
    finally:
        _resolver = old


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """``jax.lax.with_sharding_constraint`` by logical axis names (a no-op outside ``sharding_rules``)."""
    if _resolver is None:
        return x
    return jax.lax.with_sharding_constraint(x, _resolver(names, x.shape))
