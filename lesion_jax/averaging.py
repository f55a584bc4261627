"""Weight averaging and snapshot ensembles: more than one checkpoint of a run, at no training cost.

- **Snapshot ensemble** (Huang et al. 2017, "Train 1, get M for free"): the checkpoints at the end
  of each SGDR cycle, where the learning rate is at its floor, each a model of its own; their
  probabilities are averaged. It costs one forward pass per snapshot at inference.
- **SWA** (Izmailov et al. 2018): the parameters of several checkpoints averaged into ONE model,
  so it costs nothing at inference and exports to a phone as any model. The averaged weights
  have activations of their own, so BatchNorm's statistics are recomputed on training images
  (`recompute_batch_stats`, as PyTorch's `update_bn` does): the mean over batches of each
  batch's mean and variance.

`python -m lesion_jax.averaging WORKDIR` evaluates these on a finished run whose latest/
checkpoints were kept (`--config.checkpoint.keep` at least the number of epochs); see
lesion_jax/levers.py.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lesion_jax import models as models_lib
from lesion_jax import inference, optim


def cycle_end_steps(config: ml_collections.ConfigDict, steps_per_epoch: int,
                    total_steps: int) -> list[int]:
  """The steps at which the run's SGDR cycles end (the last one cut at `total_steps`)."""
  opt = config.optimizer
  cycles = optim.sgdr_cycles(
      total_steps=total_steps,
      cycle_steps=max(1, int(round(opt.cycle_epochs * steps_per_epoch))),
      cycle_mult=opt.cycle_mult, learning_rate=opt.learning_rate, peak_decay=opt.peak_decay,
      min_learning_rate=opt.min_learning_rate, warmup_steps=opt.warmup_steps)
  ends = np.cumsum([c["decay_steps"] for c in cycles])
  return sorted({int(min(end, total_steps)) for end in ends})


def mean_variables(trees: Sequence[Any]) -> Any:
  """The leafwise mean of several variable trees of one structure (accumulated in float64)."""
  if not trees:
    raise ValueError("mean_variables needs at least one tree")
  return jax.tree.map(
      lambda *leaves: np.mean(np.stack([np.asarray(x, np.float64) for x in leaves]),
                              axis=0).astype(np.asarray(leaves[0]).dtype), *trees)


def batch_stats_model(config: ml_collections.ConfigDict):
  """The run's model with BatchNorm momentum 0: a train-mode pass leaves each layer's running
  statistics at the batch's own, which `recompute_batch_stats` averages."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.bn_momentum = 0.0
  return models_lib.from_config(config)


def recompute_batch_stats(model, variables: dict, images: np.ndarray,
                          batch_size: int = 16) -> dict:
  """BatchNorm statistics of `variables` over (N, H, W, 3) uint8 training images.

  `model` has BatchNorm momentum 0 (`batch_stats_model`). Each layer's mean and variance are
  averaged over the batches; only whole batches count, so every batch weighs the same.
  """

  @jax.jit
  def batch_stats_of(params, stats, batch):
    _, updated = model.apply({"params": params, "batch_stats": stats},
                             inference.standardize(batch), train=True,
                             mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)})
    return updated["batch_stats"]

  count = len(images) // batch_size
  if count == 0:
    raise ValueError(f"need at least {batch_size} images to recompute BatchNorm, got "
                     f"{len(images)}")
  total = None
  for b in range(count):
    stats = batch_stats_of(variables["params"], variables["batch_stats"],
                           jnp.asarray(images[b * batch_size:(b + 1) * batch_size]))
    stats = jax.tree.map(lambda x: np.asarray(x, np.float64), stats)
    total = stats if total is None else jax.tree.map(np.add, total, stats)
  return jax.tree.map(lambda x, ref: (x / count).astype(np.asarray(ref).dtype), total,
                      variables["batch_stats"])


def ensemble_probabilities(model, members: Sequence[dict], images: np.ndarray,
                           tta: str = "none", batch_size: int = 8) -> np.ndarray:
  """(N, H, W) probabilities averaged over the ensemble's members (each with `tta`)."""
  if not members:
    raise ValueError("an ensemble needs at least one member")
  compiled = inference.jitted_probabilities(model, tta)
  total = None
  for variables in members:
    probs = inference.predict_probabilities(model, variables, images, batch_size=batch_size,
                                            compiled=compiled)
    total = probs if total is None else total + probs
  return total / len(members)


__all__ = ["batch_stats_model", "cycle_end_steps", "ensemble_probabilities", "mean_variables",
           "recompute_batch_stats"]
