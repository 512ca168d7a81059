"""A blocked causal attention in plain JAX, for CPUs (``model.attention: blocked``; ``auto`` on a CPU from
``BLOCKED_MIN_SEQ`` on, ``scaling.model.layers.attention_implementation``).

``blocked`` splits the queries into blocks of ``block`` rows; query block i attends to the keys of blocks 0..i
only, with an exact softmax over that prefix. The score blocks above the diagonal, which causal masking throws
away, are never computed (the L^2/2 the FLOPs convention already counts), and each block's scores stay small
enough to live in cache. The arithmetic of one row is jax.nn.dot_product_attention's own XLA path (float32 logits,
the same scale and mask value, float32 softmax, probabilities cast to the value dtype), so the output agrees with it
to float rounding (``tests/test_model.py`` holds it to a float64 reference and to the XLA kernel).

Measured on 2 CPU cores (``benchmarks/RESULTS.md``, "Attention on CPU"): at B 16, L 256, 4 heads of 64, forward and
backward take half the time of the XLA kernel; at L 64 it does not pay, so ``auto`` takes it from seq_len 128 on.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

BLOCKED_MIN_SEQ = 128  # auto on a CPU: the blocked kernel from this sequence length on (below, XLA's is as fast)
BLOCK = 64  # query rows per block (measured at L 256: 64 and 128 beat 32; blocks capped at MAX_BLOCKS per layer)
MAX_BLOCKS = 16  # longer sequences get longer blocks, so the unrolled program stays small


def block_size(L: int) -> int:
    return max(BLOCK, BLOCK * math.ceil(L / (BLOCK * MAX_BLOCKS)))


def blocked_causal_heads_first(q_BNLH: jax.Array, k_BGLH: jax.Array, v_BGLH: jax.Array, block: int | None = None) -> jax.Array:
    """Causal (grouped-query) attention over query blocks, heads ahead of positions: (B, N, L, H) queries, (B, G, L, H)
    keys and values, (B, N, L, H) out. Each block's two matmuls are plain batched matmuls over (B, G, Q)."""
    B, N, L, H = q_BNLH.shape
    G = k_BGLH.shape[1]
    Q = N // G  # query heads per key/value head
    block = block or block_size(L)
    dt = q_BNLH.dtype
    precision = jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if dt == jnp.bfloat16 else None
    scale = jnp.float32(1.0 / math.sqrt(H))
    big_negative = jnp.float32(-0.7 * np.finfo(np.float32).max)  # jax.nn's mask value
    q_BGQLH = q_BNLH.reshape(B, G, Q, L, H)
    outs = []
    for start in range(0, L, block):
        end = min(start + block, L)
        logits_BGQIJ = jnp.einsum("bgqih,bgjh->bgqij", q_BGQLH[:, :, :, start:end], k_BGLH[:, :, :end],
                                  precision=precision, preferred_element_type=jnp.float32) * scale
        causal_IJ = jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :]
        probs_BGQIJ = jax.nn.softmax(jnp.where(causal_IJ, logits_BGQIJ, big_negative), axis=-1).astype(v_BGLH.dtype)
        outs.append(jnp.einsum("bgqij,bgjh->bgqih", probs_BGQIJ, v_BGLH[:, :, :end]))
    return jnp.concatenate(outs, axis=3).reshape(B, N, L, H)


def blocked_causal(q_BLNH: jax.Array, k_BLGH: jax.Array, v_BLGH: jax.Array, block: int | None = None) -> jax.Array:
    """``blocked_causal_heads_first`` in jax.nn.dot_product_attention's layout: (B, L, N, H) in and out."""
    t = lambda x: jnp.transpose(x, (0, 2, 1, 3))
    return t(blocked_causal_heads_first(t(q_BLNH), t(k_BLGH), t(v_BLGH), block))
