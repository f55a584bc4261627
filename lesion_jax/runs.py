"""A finished (or running) training run read back from its workdir.

Evaluation, export, prediction and `init_from` transfer all start from the same three things: the
run's config (config.json), its model, and the variables of its best checkpoint (or of a given
step). `load_run` gives them together and fails with a clear message when the workdir is not a
run.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lesion_jax import checkpoint as checkpoint_lib
from lesion_jax import models as models_lib
from lesion_jax.data import pipeline
from lesion_jax.errors import MissingPathError


@dataclasses.dataclass
class Run:
  workdir: str
  config: ml_collections.ConfigDict
  model: Any  # flax.linen.Module
  variables: dict  # {'params': ..., 'batch_stats': ...}
  meta: dict  # checkpoint metadata (step, val_ja)
  results: dict | None  # results.json, when the run has finished

  @property
  def image_size(self) -> tuple[int, int]:
    """(height, width) of the model's inputs."""
    return pipeline.image_shape(self.config.data.image_size)

  @property
  def threshold(self) -> float:
    """The binarisation threshold chosen on validation; 0.5 before the run has finished."""
    return float(self.results["threshold"]) if self.results else 0.5


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise MissingPathError(f"{workdir!r} is not a training run: it has no config.json "
                            "(train one with launch.py first)")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


@functools.lru_cache(maxsize=16)  # tracing a model for its shapes takes ~0.5 s; loads repeat
def _variable_shapes(model, image_shape: tuple[int, int]) -> dict:
  return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                        jax.ShapeDtypeStruct((1, *image_shape, 3), jnp.float32))


def abstract_variables(model, image_size) -> dict:
  """Zero-filled {'params', 'batch_stats'} of the right shapes, as a restore target.

  NumPy zeros: the restore reads into host arrays anyway, and JAX zeros would compile one
  small program per parameter shape.
  """
  shapes = _variable_shapes(model, tuple(pipeline.image_shape(image_size)))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  return {"params": zeros["params"], "batch_stats": zeros.get("batch_stats", {})}


def _results(workdir: str) -> dict | None:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def from_trained(trained) -> Run:
  """A shipped model (`models.trained.TrainedModel`) as a `Run` without a workdir, for predict
  and export. The name and checksum in meta let them say which model they ran."""
  meta = {"step": trained.card["source"]["step"], "trained_model": trained.name,
          "sha256": trained.card["sha256"], "source": trained.card["source"]}
  return Run(workdir=None, config=trained.config, model=trained.model,
             variables=trained.variables, meta=meta, results={"threshold": trained.threshold})


def load_run(workdir: str, step: int | None = None) -> Run:
  """The run in `workdir` with its best checkpoint's variables (or those of `step`)."""
  workdir = os.path.expanduser(workdir)
  config = read_config(workdir)
  model = models_lib.from_config(config)
  target = abstract_variables(model, config.data.image_size)
  weights = config.get("evaluation", {}).get("weights", "best")
  results = _results(workdir)
  if weights == "ema" and step is None and results is not None:
    # The run reported its weight average at its last step: use what it was scored with.
    step = int(results["best_step"])
    variables, meta = checkpoint_lib.read_ema(workdir, step), {"step": step, "weights": "ema"}
  else:
    variables, meta = checkpoint_lib.restore_variables(workdir, target, step=step)
  return Run(workdir=workdir, config=config, model=model, variables=variables, meta=meta,
             results=results)
