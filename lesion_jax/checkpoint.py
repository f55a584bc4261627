"""Orbax checkpoints of a run: the latest few to resume from, and the best to evaluate and transfer.

Layout under WORKDIR/checkpoints:
  latest/<step>/  state (params, batch_stats, opt_state, step, rng) + meta (loop state as JSON)
  best/<step>/    params + batch_stats of the best validation JA so far, + meta

States are saved unreplicated (host numpy), so a checkpoint restores on any number of devices.
Every process calls save/restore, as orbax requires for multi-host runs; orbax writes replicated
host arrays from the primary process only.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lesion_jax.errors import MissingPathError


def _manager(directory: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  # Training saves asynchronously: the state is copied to the host, then written while the
  # next steps run. A save finishes before the next one starts and before the run ends.
  # The latest and best managers can save at once; with several processes their barriers must
  # not share names ("Barrier _async_write_complete.3 is already ongoing", then a hang).
  prefix = os.path.basename(os.path.normpath(directory))
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=not read_only, read_only=read_only,
          enable_async_checkpointing=not read_only,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=prefix)),
      item_names=("state", "meta"))


def to_numpy(tree: Any) -> Any:
  """`tree` fetched from the devices as NumPy arrays."""
  return jax.tree.map(np.asarray, jax.device_get(tree))


def state_to_dict(state) -> dict:
  """The parts of a train state a latest checkpoint holds (everything but the functions)."""
  return {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
          "opt_state": state.opt_state, "rng": state.rng}


def state_from_dict(state, restored: dict):
  """`state` with the values of a restored `state_to_dict`."""
  return state.replace(step=restored["step"], params=restored["params"],
                       batch_stats=restored["batch_stats"], opt_state=restored["opt_state"],
                       rng=restored["rng"])


class RunCheckpoints:
  """The latest-N and best-1 checkpoint managers of one workdir."""

  def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
    root = os.path.join(workdir, "checkpoints")
    if read_only and not os.path.isdir(os.path.join(root, "best")):
      raise MissingPathError(
          f"{workdir!r} holds no checkpoints (no {root}/best); is it the workdir of a training "
          "run that has evaluated at least once?")
    self.latest = _manager(os.path.join(root, "latest"), keep, read_only)
    self.best = _manager(os.path.join(root, "best"), 1, read_only)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return self.best.latest_step()

  def save_latest(self, step: int, state: dict, meta: dict, wait: bool = False) -> None:
    """Starts saving the train state of `step`; with `wait`, returns once it is on disk."""
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(to_numpy(state)), meta=ocp.args.JsonSave(meta)))
    if wait:
      self.latest.wait_until_finished()

  def save_best(self, step: int, variables: dict, meta: dict) -> None:
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(to_numpy(variables)), meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    """Returns once every save started is on disk."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def restore_latest(self, target: dict, step: int | None = None) -> tuple[dict, dict]:
    step = self.latest.latest_step() if step is None else step
    return _restore(self.latest, step, target)

  def restore_best(self, target: dict) -> tuple[dict, dict]:
    self.best.wait_until_finished()
    step = self.best.latest_step()
    if step is None:
      raise MissingPathError("no best checkpoint in this workdir yet")
    return _restore(self.best, step, target)

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _restore(manager: ocp.CheckpointManager, step: int, target: dict | None):
  """(state, meta) at `step`; with a `target`, the state takes its structure and dtypes."""
  state_args = (ocp.args.PyTreeRestore() if target is None
                else ocp.args.StandardRestore(to_numpy(target)))
  restored = manager.restore(step, args=ocp.args.Composite(
      state=state_args, meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]


def restore_variables(workdir: str, target: dict, step: int | None = None) -> tuple[dict, dict]:
  """{'params', 'batch_stats'} of a finished or running run: its best checkpoint, or `step`.

  Used for evaluation, export and prediction. A step refers to the latest/ checkpoints.
  """
  if step is not None:
    variables, meta = read_variables(workdir, step)
    return {k: variables[k] for k in target}, meta
  checkpoints = RunCheckpoints(workdir, read_only=True)
  try:
    if checkpoints.best_step() is None:
      raise MissingPathError(
          f"{workdir!r} holds no checkpoint (expected {workdir}/checkpoints/best/<step>); "
          "train a run there first")
    return checkpoints.restore_best(target)
  finally:
    checkpoints.close()


def read_variables(workdir: str, step: int | None = None) -> tuple[dict, dict]:
  """{'params', 'batch_stats'} as stored, without a target: for `init_from`, where the shapes
  of the new model may differ and the mismatch must be reported by name."""
  checkpoints = RunCheckpoints(workdir, read_only=True)
  try:
    manager = checkpoints.best if step is None else checkpoints.latest
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
      where = "best checkpoint" if manager is checkpoints.best else f"checkpoint at step {step}"
      raise MissingPathError(
          f"{workdir!r} has no {where} (available steps: {sorted(checkpoints.latest.all_steps())})"
          "; train that run first, or choose an available step")
    state, meta = _restore(manager, step, None)
    state = to_numpy(state)
    return ({"params": state["params"], "batch_stats": state.get("batch_stats") or {}},
            dict(meta, step=int(step)))
  finally:
    checkpoints.close()
