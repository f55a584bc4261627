"""The SGDR schedule (cosine annealing with warm restarts) against a NumPy formula."""
import ml_collections
import numpy as np
import pytest

from lesion_jax import optim


def reference_sgdr(step, first_cycle, mult, peak, decay, floor):
  """Loshchilov & Hutter's SGDR written out directly."""
  start, length, k = 0, first_cycle, 0
  while step >= start + length:
    start += length
    length = int(round(first_cycle * mult ** (k + 1)))
    k += 1
  top = peak * decay ** k
  t = (step - start) / length
  return floor + 0.5 * (top - floor) * (1 + np.cos(np.pi * t))


@pytest.mark.parametrize("mult,decay", [(1.0, 1.0), (2.0, 0.9), (1.5, 0.5)])
def test_sgdr_matches_reference(mult, decay):
  opt = ml_collections.ConfigDict(dict(cycle_epochs=2.0, cycle_mult=mult, learning_rate=1e-3,
                                       peak_decay=decay, min_learning_rate=1e-6,
                                       warmup_steps=0))
  schedule = optim.sgdr_schedule(total_steps=200, steps_per_epoch=5, opt_config=opt)
  for step in range(200):
    expected = reference_sgdr(step, 10, mult, 1e-3, decay, 1e-6)
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9), step


def test_restarts_jump_back_to_the_decayed_peak():
  opt = ml_collections.ConfigDict(dict(cycle_epochs=1.0, cycle_mult=2.0, learning_rate=0.01,
                                       peak_decay=0.5, min_learning_rate=0.0, warmup_steps=0))
  schedule = optim.sgdr_schedule(total_steps=70, steps_per_epoch=10, opt_config=opt)
  # Cycles of 10, 20, 40 steps; each starts at its peak and has decayed almost to 0 at its end.
  assert float(schedule(0)) == pytest.approx(0.01)
  assert float(schedule(9)) < 0.0005
  assert float(schedule(10)) == pytest.approx(0.005)
  assert float(schedule(30)) == pytest.approx(0.0025)


def test_cycles_cover_the_run():
  cycles = optim.sgdr_cycles(total_steps=1000, cycle_steps=100, cycle_mult=2.0,
                             learning_rate=1.0, peak_decay=1.0, min_learning_rate=0.0)
  assert [c["decay_steps"] for c in cycles] == [100, 200, 400, 800]
  with pytest.raises(ValueError, match="cycle_steps"):
    optim.sgdr_cycles(10, 0, 1.0, 1.0, 1.0, 0.0)


def numpy_adam(params, grads_per_step, learning_rates, b1=0.9, b2=0.999, eps=1e-8):
  """Kingma & Ba's Adam with bias correction, written out per array."""
  params = {k: v.astype(np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  nu = {k: np.zeros_like(v) for k, v in params.items()}
  for t, (grads, lr) in enumerate(zip(grads_per_step, learning_rates), start=1):
    for k, g in grads.items():
      mu[k] = b1 * mu[k] + (1 - b1) * g
      nu[k] = b2 * nu[k] + (1 - b2) * g * g
      params[k] -= lr * (mu[k] / (1 - b1**t)) / (np.sqrt(nu[k] / (1 - b2**t)) + eps)
  return params


@pytest.mark.parametrize("flatten", [False, True])
def test_adam_per_tensor_and_on_one_flat_vector_match_numpy(flatten):
  import jax
  import optax

  rng = np.random.default_rng(0)
  shapes = {"conv": (3, 3, 2, 4), "bias": (4,), "dense": (5, 1), "scale": ()}
  params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
           for _ in range(6)]
  opt = ml_collections.ConfigDict(dict(cycle_epochs=1.0, cycle_mult=2.0, learning_rate=1e-2,
                                       peak_decay=0.9, min_learning_rate=1e-4,
                                       warmup_steps=0))
  schedule = optim.sgdr_schedule(total_steps=6, steps_per_epoch=2, opt_config=opt)
  tx = optim.adam(schedule, flatten=flatten)
  state, current = tx.init(params), params
  for g in grads:
    updates, state = tx.update(g, state, current)
    current = optax.apply_updates(current, updates)
  expected = numpy_adam(params, grads, [float(schedule(t)) for t in range(6)])
  for k in shapes:
    np.testing.assert_allclose(np.asarray(current[k]), expected[k], rtol=1e-5, atol=1e-6)
  # The flat form keeps each moment as one vector of all 82 parameters; the other, one per array.
  moments = [x for x in jax.tree.leaves(state) if x.dtype == np.float32]
  assert sorted(np.size(x) for x in moments) == ([82, 82] if flatten else
                                                 sorted(2 * [72, 4, 5, 1]))
