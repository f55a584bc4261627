"""What a run is before its first step: the one check of a config, and the immutable `RunSpec`.

`validate` is called once per config, where it enters: `experiment.run` (launch.py) for the
config given, `sweep` for each run it derives, and `train.train_and_evaluate` for a caller of
the library. It checks the schema (`config.check_values`), then every name against its registry
and the model's own arguments, before any data is read or anything compiles.

`RunSpec` is everything `train.setup_run` builds from a validated config that stays fixed for
the run (model, data, step plan, compiled steps, checkpoints). The loop and the final evaluation
read it; what changes between steps is the `TrainState` and the loop's `LoopState`. It lives
here so that `loop` and `train` share it without importing each other.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import ml_collections

from lesion_jax import augment, inference, losses, postprocess, transfer
from lesion_jax import config as config_lib
from lesion_jax import data as data_lib
from lesion_jax import models as models_lib
from lesion_jax.data import pipeline
from lesion_jax.errors import ConfigError


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every key, name and size of `config`; raises before anything expensive happens."""
  config_lib.check_values(config)
  models_lib.MODELS.get(config.model.name, where="config.model.name")
  losses.LOSSES.get(config.loss, where="config.loss")
  for name in (config_lib.dataset_names(config.data.train, "data.train")
               + config_lib.dataset_names(config.data.test, "data.test")):
    data_lib.DATASETS.get(name, where="config.data.train / config.data.test")
  try:
    augment.AugmentOptions.from_config(config)
  except (ValueError, TypeError) as error:
    raise ConfigError(f"config.data.augment: {error}") from None
  if config.evaluation.tta not in inference.TTA_CHOICES:
    raise ConfigError(f"config.evaluation.tta must be one of {inference.TTA_CHOICES}, got "
                      f"{config.evaluation.tta!r}")
  postprocess.POSTPROCESS.get(config.evaluation.postprocess, "config.evaluation.postprocess")
  if config.cpu_ynnpack not in models_lib.CPU_YNNPACK_CHOICES:
    raise ConfigError(f"config.cpu_ynnpack must be one of {models_lib.CPU_YNNPACK_CHOICES}, "
                      f"got {config.cpu_ynnpack!r}")
  if config.xla_gpu_command_buffer is not None:
    _check_xla_option("xla_gpu_enable_command_buffer", config.xla_gpu_command_buffer,
                      "config.xla_gpu_command_buffer")
  if config.model.init_from:
    transfer.parse_pretrained(config.model.init_from)
  _check_model(config)


def _check_model(config: ml_collections.ConfigDict) -> None:
  """Builds the module (cheap: no parameters yet), which checks the model's own arguments and
  that the input size suits its stride."""
  height, width = pipeline.image_shape(config.data.image_size)
  if config.data.stored_size is not None:
    pipeline.image_shape(config.data.stored_size, "config.data.stored_size")
  try:
    models_lib.check_input_size(models_lib.from_config(config), height, width)
  except ValueError as error:
    if isinstance(error, ConfigError):
      raise
    raise ConfigError(f"config.model ({config.model.name}): {error}") from None


def _check_xla_option(name: str, value, key: str) -> None:
  """XLA parses its options when a program compiles: compile a tiny one to check `value`."""
  import jax
  import jax.numpy as jnp
  try:
    jax.jit(lambda x: x + 1).lower(jnp.zeros(())).compile(compiler_options={name: value})
  except Exception as error:  # XLA reports a bad value as a plain runtime error
    raise ConfigError(f"{key}={value!r} is not accepted by XLA: {error}") from None


class StepFunctions(NamedTuple):
  """A run's compiled (pmapped) steps."""
  train: Callable  # one step per call
  train_k: Callable  # k steps per call (lax.scan), for steps_per_dispatch > 1
  eval: Callable  # validation during training
  eval_final: Callable  # the threshold search and the test metrics: config.evaluation.tta


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Everything a run needs besides its changing state, built from its config before step 1."""
  config: ml_collections.ConfigDict
  workdir: str
  devices: tuple
  model: Any
  image_size: tuple[int, int]  # (height, width) of the model's inputs
  datasets: Any  # data.loading.Datasets
  validation: Any  # the validation splits read as one source (decoded once when they fit)
  train_batches: Any  # step-indexed grain dataset of uint8 batches
  global_batch: int
  steps_per_epoch: int
  total_steps: int
  eval_every: int  # steps
  steps_per_dispatch: int
  learning_rate: Callable[[int], Any]  # the SGDR schedule, jitted once, for logging
  num_params: int
  steps: StepFunctions
  checkpoints: Any  # checkpoint.RunCheckpoints

  @property
  def eval_kwargs(self) -> dict:
    return dict(batch_size_per_device=self.config.batch_size_per_device,
                num_devices=len(self.devices), num_threads=self.config.data.num_threads)


__all__ = ["RunSpec", "StepFunctions", "validate"]
