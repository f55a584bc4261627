"""The one function `launch.py` calls: set up logging and hosts, then run the config's experiment.

`config.experiment` names what to do with the config ("train" for one run). The registry lists
the valid names when a config asks for an unknown one.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Mapping

import ml_collections

from lesion_jax import parallel
from lesion_jax.registry import Registry

# name -> fn(config, workdir, overwrite) -> result
EXPERIMENTS: Registry[Callable[..., Any]] = Registry("experiment")


@EXPERIMENTS.register("train")
def _train(config: ml_collections.ConfigDict, workdir: str, overwrite: bool):
  from lesion_jax import train
  return train.train_and_evaluate(config, workdir, overwrite=overwrite)


@EXPERIMENTS.register("benchmark")
def _benchmark(config: ml_collections.ConfigDict, workdir: str, overwrite: bool):
  from lesion_jax import benchmark
  return benchmark.run_benchmark(config, workdir, overwrite=overwrite)


@EXPERIMENTS.register("sweep")
def _sweep(config: ml_collections.ConfigDict, workdir: str, overwrite: bool):
  from lesion_jax import sweep
  return sweep.run_sweep(config, workdir, overwrite=overwrite)


@EXPERIMENTS.register("transfer")
def _transfer(config: ml_collections.ConfigDict, workdir: str, overwrite: bool):
  from lesion_jax import sweep
  return sweep.run_transfer(config, workdir, overwrite=overwrite)


def _enable_compilation_cache() -> None:
  """Reuse compiled steps across runs (a resumed or repeated run skips most compilation).

  JAX_COMPILATION_CACHE_DIR chooses the folder; by default ~/.cache/lesion_jax/xla.
  """
  import jax
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(os.path.join("~", ".cache", "lesion_jax", "xla")))


def default_workdir(config_path: str | None) -> str:
  name = os.path.splitext(os.path.basename(config_path or "run"))[0]
  return os.path.join("runs", name)


def run(config: ml_collections.ConfigDict, workdir: str | None, *, overwrite: bool = False,
        overrides: Mapping[str, Any] | None = None, config_path: str | None = None,
        coordinator_address: str | None = None, num_processes: int | None = None,
        process_id: int | None = None) -> Any:
  """Runs `config.experiment` in `workdir`, after logging the resolved config and overrides."""
  parallel.initialize_distributed(coordinator_address, num_processes, process_id)
  _enable_compilation_cache()
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  logging.getLogger().setLevel(logging.INFO)
  # orbax and tfds log every checkpoint and shard at INFO; keep the run's own log readable.
  logging.getLogger("absl").setLevel(logging.WARNING)
  experiment = EXPERIMENTS.get(config.experiment, where="config.experiment")
  workdir = workdir or default_workdir(config_path)
  if overrides:
    logging.info("Config overrides: %s", json.dumps(
        {k: v for k, v in overrides.items()}, default=str, sort_keys=True))
  logging.info("Resolved config:\n%s", config)
  return experiment(config, workdir, overwrite)
