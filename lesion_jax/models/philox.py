"""Philox-4x32-10, the counter-based generator behind the dropout masks, written in jnp.

Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) maps a
128-bit counter and a 64-bit key to 128 random bits in ten rounds of two 32x32->64-bit
multiplications; it passes TestU01's BigCrush, and cuRAND and PyTorch's CUDA dropout use it.

Why not `jax.random.bits`: on the CPU, XLA expands its RngBitGenerator (and JAX's threefry) into
loops it runs at ~5 ns per 32-bit word, and a U-Net step at 256x256 needs 7.6M words for its
dropout masks (~100 ms of a ~700 ms step). Written as jnp arithmetic, the generator becomes
vectorised loop fusions that take about a third of that time (docs/performance.md, entry 16).
Being plain arithmetic, its bits are the same on every backend and XLA version.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

# The round multipliers and the Weyl key increments of Philox-4x32 (Salmon et al.; Random123).
MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
KEY_INCREMENTS = (0x9E3779B9, 0xBB67AE85)
ROUNDS = 10


def _mulhilo(a: Array, multiplier: int) -> tuple[Array, Array]:
  """The high and low 32-bit halves of uint32 `a` times `multiplier` (inside enable_x64)."""
  product = a.astype(jnp.uint64) * jnp.uint64(multiplier)
  return (product >> jnp.uint64(32)).astype(jnp.uint32), product.astype(jnp.uint32)


def philox4x32(counter: tuple[Array, Array, Array, Array],
               key: tuple[Array, Array]) -> tuple[Array, Array, Array, Array]:
  """Philox-4x32-10 of uint32 `counter` words (arrays of one shape) under the uint32 `key` pair.

  Each element position is one 128-bit counter; returns the four uint32 output words.
  """
  c0, c1, c2, c3 = counter
  k0, k1 = key
  # The 64-bit products need uint64, which JAX allows only with x64 enabled; it is enabled
  # for these lines alone and every value leaving them is uint32.
  with jax.enable_x64(True):
    for round_index in range(ROUNDS):
      if round_index:
        k0 = k0 + jnp.uint32(KEY_INCREMENTS[0])
        k1 = k1 + jnp.uint32(KEY_INCREMENTS[1])
      hi0, lo0 = _mulhilo(c0, MULTIPLIERS[0])
      hi1, lo1 = _mulhilo(c2, MULTIPLIERS[1])
      c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
  return c0, c1, c2, c3


def uniform_uint16(key: Array, size: int) -> Array:
  """`size` independent uniform uint16 numbers from a JAX PRNG key (any implementation).

  The key gives Philox its 64-bit key; counters 0, 1, ... give 8 numbers each.
  """
  words = jax.random.bits(key, (2,), jnp.uint32)
  num_counters = max(1, -(-size // 8))
  index = lax.iota(jnp.uint32, num_counters)
  zero = jnp.zeros_like(index)
  c0, c1, c2, c3 = philox4x32((index, zero, zero, zero), (words[0], words[1]))
  with jax.enable_x64(True):
    # Two uint64 planes, joined: each plane's fusion runs the rounds for its own words (XLA's
    # CPU backend has no multi-output fusion, so four uint32 planes would run them four times),
    # and the concatenation is written to memory once. A single plane, with no concatenation,
    # was fused into every consumer of the mask instead, rounds and all: a U-Net step got ~5%
    # slower (docs/performance.md, entry 16).
    planes = [c0.astype(jnp.uint64) | (c1.astype(jnp.uint64) << jnp.uint64(32)),
              c2.astype(jnp.uint64) | (c3.astype(jnp.uint64) << jnp.uint64(32))]
    numbers = lax.bitcast_convert_type(jnp.concatenate(planes), jnp.uint16).reshape(-1)
  return numbers[:size] if numbers.shape[0] != size else numbers


__all__ = ["philox4x32", "uniform_uint16"]
