"""Philox-4x32-10 behind the dropout masks: the published test vectors and a NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lesion_jax.models import philox

# Known-answer tests of Random123 (kat_vectors, philox4x32 with 10 rounds):
# counter (4 words), key (2 words) -> output (4 words).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_reproduces_the_random123_known_answers(counter, key, expected):
  words = philox.philox4x32(tuple(jnp.uint32(c) for c in counter),
                            tuple(jnp.uint32(k) for k in key))
  assert tuple(int(w) for w in words) == expected
  # Under jit too, with the counter as an array (as the dropout masks use it).
  jitted = jax.jit(lambda c, k: philox.philox4x32(tuple(c), tuple(k)))(
      jnp.asarray(counter, jnp.uint32)[:, None], jnp.asarray(key, jnp.uint32))
  assert tuple(int(w[0]) for w in jitted) == expected


def _numpy_philox(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
  """Philox-4x32-10 in NumPy uint64 arithmetic, written from the paper: (n, 4) -> (n, 4)."""
  mask = np.uint64(0xFFFFFFFF)
  c = [counters[:, i].astype(np.uint64) for i in range(4)]
  k0, k1 = np.uint64(key[0]), np.uint64(key[1])
  for round_index in range(10):
    if round_index:
      k0, k1 = (k0 + np.uint64(0x9E3779B9)) & mask, (k1 + np.uint64(0xBB67AE85)) & mask
    p0, p1 = c[0] * np.uint64(0xD2511F53), c[2] * np.uint64(0xCD9E8D57)
    c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & mask, (p0 >> np.uint64(32)) ^ c[3] ^ k1,
         p0 & mask]
  return np.stack(c, axis=1).astype(np.uint32)


@pytest.mark.parametrize("size", [1, 8, 37, 4096])
def test_uniform_uint16_is_philox_of_counters_0_1_2_laid_out_in_two_planes(size):
  key = jax.random.key(3)
  got = np.asarray(philox.uniform_uint16(key, size))
  assert got.shape == (size,) and got.dtype == np.uint16
  key_words = [int(w) for w in jax.random.bits(key, (2,), jnp.uint32)]
  num_counters = -(-size // 8)
  words = _numpy_philox(np.stack([np.arange(num_counters, dtype=np.uint32)] +
                                 [np.zeros(num_counters, np.uint32)] * 3, axis=1), key_words)
  # Plane A holds words 0 and 1 of every counter, plane B words 2 and 3; each 32-bit word
  # gives its low then its high 16 bits.
  planes = np.concatenate([words[:, :2].reshape(-1), words[:, 2:].reshape(-1)])
  expected = np.stack([planes & 0xFFFF, planes >> 16], axis=1).reshape(-1).astype(np.uint16)
  np.testing.assert_array_equal(got, expected[:size])


def test_uniform_uint16_is_uniform_and_depends_on_the_key():
  draws = np.asarray(philox.uniform_uint16(jax.random.key(0), 1 << 18)).astype(np.int64)
  # 16 equal bins of 16,384 expected draws: chi-square with 15 degrees of freedom stays far
  # below 40 (p ~ 0.0005) for a uniform generator.
  counts = np.bincount(draws >> 12, minlength=16)
  expected = draws.size / 16
  assert ((counts - expected) ** 2 / expected).sum() < 40
  assert abs(draws.mean() / 65535 - 0.5) < 0.005
  # Consecutive draws (lanes of one word, and words of one counter) are uncorrelated.
  assert abs(np.corrcoef(draws[:-1], draws[1:])[0, 1]) < 0.01
  other = np.asarray(philox.uniform_uint16(jax.random.key(1), 1 << 18))
  assert (other != draws).mean() > 0.99
  np.testing.assert_array_equal(philox.uniform_uint16(jax.random.key(0), 1 << 18), draws)
