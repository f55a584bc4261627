"""Data parallelism: the only module that knows about pmap, axis names and replication.

The paper trained on three V100s; we replicate the train state on every local device, give each
device its slice of the global batch, average gradients with `pmean` and compute BatchNorm
statistics over the global batch (the models' BatchNorm layers name the same axis). Step functions
in `train.py` are written for one device and call `cross_replica_mean` where they need a
collective; everything here wraps them.

Several hosts join through `jax.distributed` (`initialize_distributed`); each host then feeds its
own local devices, and pmap's collectives span all hosts.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax
import numpy as np
from flax import jax_utils

from lesion_jax.errors import ConfigError

# The name of the mapped axis in every collective. Models receive it as `bn_axis_name`.
AXIS_NAME = "batch"


def local_devices(num_devices: int | None = None) -> list[jax.Device]:
  """The first `num_devices` local devices (all of them when None)."""
  devices = jax.local_devices()
  if num_devices is None:
    return devices
  if not 1 <= num_devices <= len(devices):
    raise ConfigError(f"config.num_devices={num_devices}, but this host has {len(devices)} "
                     f"local {devices[0].platform} device(s); use a value in 1..{len(devices)} "
                     "or leave it unset for all")
  return devices[:num_devices]


def cross_replica_mean(tree: Any) -> Any:
  """Mean over the devices of the current pmap (called inside step functions)."""
  return jax.lax.pmean(tree, axis_name=AXIS_NAME)


def replica_index() -> jax.Array:
  """This device's position along the mapped axis (inside step functions)."""
  return jax.lax.axis_index(AXIS_NAME)


def replicate(tree: Any, devices: Sequence[jax.Device]) -> Any:
  # The mesh axis must carry the pmap axis name, or pmap sees a different input sharding on the
  # second step (its own output) and compiles the step a second time. The copies are stacked
  # on the host: stacking device arrays compiles one small program per leaf shape and device
  # count (~40 for a MobileNetV2 train state, a second or two on a CPU, in every process).
  return jax_utils.replicate(jax.device_get(tree), devices=devices, axis_name=AXIS_NAME)


def unreplicate(tree: Any) -> Any:
  """The copy on the first device, fetched to the host (replicas are identical).

  Read from each array's first shard: indexing `x[0]` on the device would compile one small
  program per leaf shape (~40 for a MobileNetV2 train state, seconds on a CPU, at the first
  save of every run).
  """
  def first(x):
    if isinstance(x, jax.Array) and x.ndim and x.addressable_shards:
      return np.asarray(jax.device_get(x.addressable_shards[0].data))[0]
    return np.asarray(jax.device_get(x))[0]
  return jax.tree.map(first, tree)


def mapped_devices(devices: Sequence[jax.Device]) -> list[jax.Device]:
  """The devices a pmap spans: `devices` here, and as many local devices on every process.

  pmap's `devices` must name the same global list on every process; given only this host's
  devices, each host would average its gradients alone and the replicas would drift apart.
  """
  devices = list(devices)
  if jax.process_count() == 1:
    return devices
  if devices != jax.local_devices()[:len(devices)]:
    raise ValueError("with several processes, pmap over the first N local devices of each "
                     f"(parallel.local_devices); got {devices}")
  return [d for p in range(jax.process_count())
          for d in jax.local_devices(process_index=p)[:len(devices)]]


class CompiledStep:
  """A pmapped step, compiled ahead of time with XLA `compiler_options`, once per input signature.

  `jax.pmap` takes no compiler options, so the step is lowered and compiled explicitly; calls
  with the same shapes, dtypes and shardings reuse the executable (and XLA's persistent cache
  serves later runs). Without options, or across several processes, calls go through pmap
  itself. `compile(*args)` gives the executable itself (benchmark: cost and memory analyses).
  """

  def __init__(self, pmapped: Callable, compiler_options: dict[str, Any] | None = None):
    self._pmapped = pmapped
    self.compiler_options = dict(compiler_options or {})
    self._executables: dict[Any, Any] = {}
    if self.compiler_options and jax.process_count() > 1:
      logging.warning("XLA options %s are not applied: steps mapped over several processes "
                      "compile through pmap, which takes none", self.compiler_options)

  def lower(self, *args):
    return self._pmapped.lower(*args)

  def compile(self, *args):
    return self.lower(*args).compile(compiler_options=self.compiler_options or None)

  def __call__(self, *args):
    if not self.compiler_options or jax.process_count() > 1:
      # pmap's own dispatch. Several processes need it too: an ahead-of-time executable of a
      # multi-process pmap expects global shapes, while each process holds its local devices'.
      return self._pmapped(*args)
    leaves, treedef = jax.tree.flatten(args)
    # An array's own dtype: np.result_type(array) is deprecated in NumPy (it reads the array
    # as a dtype); Python scalars have none.
    key = (treedef, tuple((np.shape(x), x.dtype if hasattr(x, "dtype") else np.result_type(x),
                           getattr(x, "sharding", None)) for x in leaves))
    executable = self._executables.get(key)
    if executable is None:
      executable = self._executables[key] = self.compile(*args)
    return executable(*args)


def pmap_train_step(step: Callable, devices: Sequence[jax.Device],
                    compiler_options: dict[str, Any] | None = None) -> CompiledStep:
  """pmaps `step(state, batch) -> (state, metrics)`, donating the state to halve its memory."""
  return CompiledStep(jax.pmap(step, axis_name=AXIS_NAME, devices=mapped_devices(devices),
                               donate_argnums=(0,)), compiler_options)


def pmap_eval_step(step: Callable, devices: Sequence[jax.Device],
                   compiler_options: dict[str, Any] | None = None) -> CompiledStep:
  return CompiledStep(jax.pmap(step, axis_name=AXIS_NAME, devices=mapped_devices(devices)),
                      compiler_options)


def shard(array: np.ndarray, num_devices: int) -> np.ndarray:
  """(global_batch, ...) -> (num_devices, global_batch // num_devices, ...).

  Kept instead of flax.training.common_utils.shard, which splits over all local devices: a run
  may use fewer (config.num_devices), and an uneven batch must fail with its sizes.
  """
  if array.shape[0] % num_devices:
    raise ValueError(f"batch of {array.shape[0]} does not split over {num_devices} devices")
  return array.reshape((num_devices, array.shape[0] // num_devices) + array.shape[1:])


def prefetch_to_devices(batches: Iterable[dict], devices: Sequence[jax.Device],
                        size: int = 2) -> Iterator[dict]:
  """Puts the next `size` batches on the devices while the current step runs.

  Each batch leaf is already shaped (len(devices), per_device, ...); leaf i goes to device i.
  """
  return jax_utils.prefetch_to_device(iter(batches), size, devices=devices,
                                      axis_name=AXIS_NAME)


def to_host(tree: Any) -> Any:
  """Fetches per-device outputs and merges the device axis into the batch axis."""
  host = jax.device_get(tree)
  return jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), host)


# ----------------------------------------------------------------------------------------------
# Several hosts.

def _slurm_spans_processes() -> bool:
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_NODELIST" in os.environ


def _mpi_spans_processes() -> bool:
  return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins the processes of a multi-host run; returns whether this run spans several processes.

  Explicit flags win; otherwise SLURM and Open MPI environments are detected, and
  `jax.distributed.initialize()` reads the rest from them. A single process does nothing.
  """
  explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
  if explicit:
    missing = [n for n, v in (("--coordinator_address", coordinator_address),
                              ("--num_processes", num_processes),
                              ("--process_id", process_id)) if v is None]
    if missing:
      raise ConfigError(f"a multi-process run needs all of --coordinator_address, --num_processes "
                       f"and --process_id; missing {', '.join(missing)}")
    if num_processes == 1:
      return False
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _slurm_spans_processes() or _mpi_spans_processes():
    jax.distributed.initialize()
  else:
    return False
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def is_main_process() -> bool:
  """Only process 0 writes logs, reports and metrics files."""
  return jax.process_index() == 0


def gather_from_processes(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Each array concatenated over the processes along its first axis (same shape on each)."""
  from jax.experimental import multihost_utils
  return [np.asarray(multihost_utils.process_allgather(a, tiled=True)) for a in arrays]


def broadcast_from_main(value: bool) -> bool:
  """Process 0's `value` on every process (a decision they must all take alike)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int32)))


def sync_hosts(name: str) -> None:
  """A barrier across processes (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def assert_replicas_equal(tree: Any) -> None:
  """Debug check that every device holds the same values (used by tests)."""
  host = jax.device_get(tree)
  for leaf in jax.tree.leaves(host):
    leaf = np.asarray(leaf)
    if not np.all(leaf == leaf[:1]):
      raise AssertionError("replicas diverged")


__all__ = [
    "AXIS_NAME", "local_devices", "mapped_devices", "cross_replica_mean", "replica_index",
    "replicate", "unreplicate", "CompiledStep", "pmap_train_step", "pmap_eval_step", "shard",
    "prefetch_to_devices", "to_host", "initialize_distributed", "process_index",
    "process_count", "is_main_process", "gather_from_processes", "broadcast_from_main",
    "sync_hosts",
    "assert_replicas_equal",
]
