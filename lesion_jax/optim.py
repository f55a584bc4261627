"""The paper's optimiser: Adam with a cyclic learning rate, cosine annealing with warm restarts.

The paper (section 2.2) trains with Adam and "a cyclic learning rate ... the cosine annealing
variation with periodic restarts [8]" (SGDR). Cycle k lasts `cycle_steps * cycle_mult**k` steps
and peaks at `learning_rate * peak_decay**k`; within a cycle the rate follows half a cosine from
the peak down to `min_learning_rate`. optax.sgdr_schedule joins the cycles.
"""
from __future__ import annotations

from typing import Any, Callable

import optax


def sgdr_cycles(total_steps: int, cycle_steps: int, cycle_mult: float, learning_rate: float,
                peak_decay: float, min_learning_rate: float,
                warmup_steps: int = 0) -> list[dict[str, Any]]:
  """The cycles, as optax.sgdr_schedule takes them, until they cover `total_steps`."""
  if total_steps < 1 or cycle_steps < 1:
    raise ValueError(f"need total_steps >= 1 and cycle_steps >= 1, got {total_steps}, {cycle_steps}")
  cycles, covered, k = [], 0, 0
  while covered < total_steps:
    length = max(1, int(round(cycle_steps * cycle_mult**k)))
    peak = learning_rate * peak_decay**k
    warmup = min(warmup_steps, length - 1)
    cycles.append(dict(init_value=min_learning_rate if warmup else peak, peak_value=peak,
                       warmup_steps=warmup, decay_steps=length,
                       end_value=min(min_learning_rate, peak)))
    covered += length
    k += 1
  return cycles


def sgdr_schedule(total_steps: int, steps_per_epoch: int, opt_config) -> optax.Schedule:
  """SGDR from `config.optimizer` (cycle lengths in epochs) for a run of `total_steps`."""
  cycle_steps = max(1, int(round(opt_config.cycle_epochs * steps_per_epoch)))
  return optax.sgdr_schedule(sgdr_cycles(
      total_steps=total_steps, cycle_steps=cycle_steps, cycle_mult=opt_config.cycle_mult,
      learning_rate=opt_config.learning_rate, peak_decay=opt_config.peak_decay,
      min_learning_rate=opt_config.min_learning_rate, warmup_steps=opt_config.warmup_steps))


def adam(schedule: Callable[[int], Any] | float,
         flatten: bool = False) -> optax.GradientTransformation:
  """Adam on `schedule`; with `flatten`, on one vector that concatenates every parameter.

  Adam is elementwise, so both forms compute the same update. The flat form runs it as one
  fused operation instead of a few small ones per parameter tensor (164 tensors in the reduced
  Mobile DeepLab), which matters where a step is bound by launching kernels (a GPU at batch 4),
  at the cost of concatenating the gradients and splitting the updates. Its optimiser state is
  one vector per moment, so a checkpoint of one form does not restore into the other.
  """
  tx = optax.adam(learning_rate=schedule)
  return optax.flatten(tx) if flatten else tx
