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
