"""The one function `launch.py` calls: check the config, set up hosts and logs, run, summarise.

`config.experiment` names what to do with the config ("train" for one run); the registry lists
the valid names when a config asks for an unknown one. The console gets our own progress lines,
warnings from everywhere, and at the end a summary of what was written where; the resolved
config goes to the run's config.json and log.txt, never to the console.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import sys
from typing import Any, Callable, Mapping

import ml_collections

from lesion_jax import parallel
from lesion_jax import workdir as workdir_lib
from lesion_jax.registry import Registry

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What `launch.py` runs for one value of `config.experiment`."""
  run: str  # "module:function", imported when run: fn(config, workdir, overwrite=...) -> result
  summary: str  # "module:function": fn(result, workdir) -> the lines printed at the end

  def __call__(self, config: ml_collections.ConfigDict, workdir: str, overwrite: bool) -> Any:
    return _function(self.run)(config, workdir, overwrite=overwrite)

  def summarize(self, result: Any, workdir: str) -> str:
    return _function(self.summary)(result, workdir)


def _function(path: str) -> Callable:
  # Imported only when used: a config check must not pay for TensorFlow or every model.
  module, name = path.split(":")
  return getattr(importlib.import_module(f"lesion_jax.{module}"), name)


EXPERIMENTS: Registry[Experiment] = Registry("experiment")
EXPERIMENTS.add("train", Experiment("train:train_validated", "report.tables:run_end_summary"))
EXPERIMENTS.add("benchmark", Experiment("benchmark:run_benchmark", "benchmark:end_summary"))
EXPERIMENTS.add("sweep", Experiment("sweep:run_sweep", "sweep:sweep_end_summary"))
EXPERIMENTS.add("transfer", Experiment("sweep:run_transfer", "sweep:transfer_end_summary"))


# Library warnings that say nothing a user can act on; the run's log.txt still has them.
QUIET_LIBRARY_WARNINGS = ("OpenCV is not installed", "Using custom data configuration",
                          # orbax, of a damaged checkpoint step, which we report in one line;
                          # asyncio, of orbax's other reads once one of them failed
                          "Metadata file does not exist", "Task exception was never retrieved",
                          "Future exception was never retrieved")
# How orbax's writers (tensorstore) and the OS word a full disk.
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


class _ConsoleFilter(logging.Filter):
  """Our own messages from INFO up (except those meant for the log file), others from WARNING."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not getattr(record, "console", True):
      return False
    if record.pathname.startswith(PACKAGE_DIR):
      return record.levelno >= logging.INFO
    return (record.levelno >= logging.WARNING
            and not str(record.msg).startswith(QUIET_LIBRARY_WARNINGS)
            and not _about_a_full_disk(record))


def _about_a_full_disk(record: logging.LogRecord) -> bool:
  # orbax logs each failed background write with its traceback; the run then ends with one
  # `error:` line saying the disk is full (errors.DiskFullError), which is all the user needs.
  text = str(record.msg) + (str(record.exc_info[1]) if record.exc_info else "")
  return any(phrase in text for phrase in DISK_FULL_TEXT)


class _ConsoleFormatter(logging.Formatter):

  def format(self, record: logging.LogRecord) -> str:
    message = super().format(record)
    return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def configure_console_logging() -> None:
  """One stderr handler instead of absl's (which prefixes every line with time and source)."""
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  for handler in list(root.handlers):
    root.removeHandler(handler)
  console = logging.StreamHandler(sys.stderr)
  console.addFilter(_ConsoleFilter())
  console.setFormatter(_ConsoleFormatter("%(message)s"))
  root.addHandler(console)
  # orbax and tfds log every checkpoint and shard at INFO: the run's log file keeps them out.
  logging.getLogger("absl").setLevel(logging.WARNING)


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


def overrides_line(overrides: Mapping[str, Any] | None) -> str:
  if not overrides:
    return "no overrides"
  return "overrides: " + ", ".join(f"{k}={json.dumps(v, default=str)}"
                                   for k, v in sorted(overrides.items()))


def run(config: ml_collections.ConfigDict, workdir: str | None, *, overwrite: bool = False,
        overrides: Mapping[str, Any] | None = None, config_path: str | None = None,
        coordinator_address: str | None = None, num_processes: int | None = None,
        process_id: int | None = None) -> Any:
  """Checks `config`, runs `config.experiment` in `workdir` and prints where the results are."""
  configure_console_logging()
  # Before anything touches a JAX backend (choosing a model's kernels does).
  parallel.initialize_distributed(coordinator_address, num_processes, process_id)
  experiment = EXPERIMENTS.get(config.experiment, where="config.experiment")
  # A bad config or workdir is reported before anything else is printed. The one check of the
  # config: the experiments run it as it is (a sweep checks each run it derives from it).
  # Imported here: the registries bring flax and tfds, which launch.py's flag errors do not need.
  from lesion_jax import spec
  spec.validate(config)
  workdir = workdir or default_workdir(config_path)
  workdir_lib.check_workdir(workdir)
  _enable_compilation_cache()
  logging.info("lesion_jax: %s %s in %s (%s)", config.experiment, config_path or "config",
               workdir, overrides_line(overrides))
  result = experiment(config, workdir, overwrite)
  if parallel.is_main_process():
    print(experiment.summarize(result, workdir), flush=True)
  return result


__all__ = ["EXPERIMENTS", "Experiment", "configure_console_logging", "default_workdir", "run"]
