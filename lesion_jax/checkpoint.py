"""Orbax checkpoints of a run: the latest few to resume from, and the best to evaluate and transfer.

Layout under WORKDIR/checkpoints:
  latest/<step>/  state (params, batch_stats, opt_state, step, rng) + meta (loop state as JSON)
  best/<step>/    params + batch_stats of the best validation JA so far, + meta

States are saved unreplicated (host numpy), so a checkpoint restores on any number of devices.
Every process calls save/restore, as orbax requires for multi-host runs; orbax writes replicated
host arrays from the primary process only.

A step that cannot be restored on resume is moved aside to `<step>.damaged` (orbax ignores such
names), never deleted, and the step before it is tried. A save that fails for lack of space is a
DiskFullError naming the last checkpoint that was written whole (orbax writes a step under a
temporary name and renames it once complete, so a failed save leaves the earlier ones intact).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from lesion_jax import parallel
from lesion_jax.errors import DiskFullError, MissingPathError

# What orbax raises for a step it cannot read (each reproduced on a real checkpoint): truncated
# or missing data files (ValueError from tensorstore: OUT_OF_RANGE, NOT_FOUND), a missing
# _METADATA (ValueError: the tree read without it does not match the state), an empty step
# folder (KeyError: no item "meta"), a broken meta JSON (ValueError), an unreadable file (OSError).
RESTORE_ERRORS = (ValueError, KeyError, OSError)
DAMAGED_SUFFIX = ".damaged"
# tensorstore reports a full disk as a ValueError holding the OS's words.
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


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
  parts = {"step": state.step, "params": state.params, "batch_stats": state.batch_stats,
           "opt_state": state.opt_state, "rng": state.rng}
  if getattr(state, "ema", None) is not None:
    parts["ema"] = state.ema  # the weight average (config.training.ema_decay), kept exactly
  return parts


def state_from_dict(state, restored: dict):
  """`state` with the values of a restored `state_to_dict`."""
  state = state.replace(step=restored["step"], params=restored["params"],
                        batch_stats=restored["batch_stats"], opt_state=restored["opt_state"],
                        rng=restored["rng"])
  return state.replace(ema=restored["ema"]) if "ema" in restored else state


class RunCheckpoints:
  """The latest-N and best-1 checkpoint managers of one workdir."""

  def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
    root = os.path.join(workdir, "checkpoints")
    if read_only and not os.path.isdir(os.path.join(root, "best")):
      raise MissingPathError(
          f"{workdir!r} holds no checkpoints (no {root}/best); is it the workdir of a training "
          "run that has evaluated at least once?")
    self.root = root
    _quiet_closed_event_loops()
    self.latest = _manager(os.path.join(root, "latest"), keep, read_only)
    self.best = _manager(os.path.join(root, "best"), 1, read_only)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return self.best.latest_step()

  def save_latest(self, step: int, state: dict, meta: dict, wait: bool = False) -> None:
    """Starts saving the train state of `step`; with `wait`, returns once it is on disk."""
    with self._disk_full_is_an_error(step):
      self.latest.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(to_numpy(state)), meta=ocp.args.JsonSave(meta)))
      if wait:
        self.latest.wait_until_finished()

  def save_best(self, step: int, variables: dict, meta: dict) -> None:
    with self._disk_full_is_an_error(step):
      self.best.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(to_numpy(variables)), meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    """Returns once every save started is on disk."""
    with self._disk_full_is_an_error(None):
      self.latest.wait_until_finished()
      self.best.wait_until_finished()

  @contextlib.contextmanager
  def _disk_full_is_an_error(self, step: int | None) -> Iterator[None]:
    """A save that fails for lack of space becomes one DiskFullError naming what is kept.

    Saves are asynchronous: a failed write surfaces at the next save or wait, so the step being
    saved then may not be the one that failed.
    """
    try:
      yield
    except (OSError, ValueError) as error:
      if not _is_disk_full(error):
        raise
      with contextlib.suppress(Exception):
        self.latest.wait_until_finished()  # an earlier save still in flight counts if it ends
      with contextlib.suppress(Exception):
        self.latest.reload()  # only steps written whole are listed
      kept = self.latest.latest_step()
      where = f"{self.root}/latest"
      what = f"the checkpoint of step {step}" if step is not None else "checkpoints"
      kept_text = (f"the last good checkpoint, step {kept}, is kept in {where}; free some space "
                   "and run the same command again to resume there" if kept is not None else
                   "no checkpoint had been written yet; free some space and start again")
      raise DiskFullError(f"no space left on device while saving {what} in {self.root}: "
                          f"{kept_text}") from None

  def restore_latest(self, target: dict, step: int | None = None) -> tuple[dict, dict]:
    step = self.latest.latest_step() if step is None else step
    return _restore(self.latest, step, target)

  def restore_latest_intact(self, target: dict) -> tuple[dict, dict] | None:
    """(state, meta) of the newest latest/ step that restores; None when none does. Each step
    that does not is moved aside with one warning line."""
    for step in sorted(self.latest.all_steps(), reverse=True):
      restored = _restore_or_move_aside(self.latest, step, target)
      if restored is not None:
        return restored
    return None

  def restore_best_intact(self, target: dict) -> tuple[dict, dict] | None:
    """(variables, meta) of the best checkpoint; None when there is none or it does not restore
    (then it is moved aside with one warning line)."""
    step = self.best.latest_step()
    return None if step is None else _restore_or_move_aside(self.best, step, target)

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


def _quiet_closed_event_loops() -> None:
  """Drops tensorstore's 'Event loop is closed' reports, and only those.

  orbax runs each batch of reads or writes on an event loop that it closes as soon as one of
  them fails (a damaged step, a full disk); the others then report through sys.unraisablehook,
  dozens of tracebacks after the error that matters has been raised or handled.
  """
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_event_loops", False):
    return

  def hook(unraisable) -> None:
    value = unraisable.exc_value
    if not (isinstance(value, RuntimeError) and str(value) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_closed_event_loops = True
  sys.unraisablehook = hook


def _is_disk_full(error: BaseException) -> bool:
  if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
    return True
  return any(phrase in str(error) for phrase in _DISK_FULL_TEXT)


def _restore_or_move_aside(manager: ocp.CheckpointManager, step: int,
                           target: dict) -> tuple[dict, dict] | None:
  """(state, meta) at `step`, or None after moving a step that does not restore aside."""
  try:
    restored, failure = _restore(manager, step, target), None
  except RESTORE_ERRORS as error:
    restored, failure = None, error
  # Every process must decide alike; they read the same files, and process 0's view counts.
  if not parallel.broadcast_from_main(failure is not None):
    if failure is not None:
      raise failure  # readable on process 0 but not here: not a damaged step
    return restored
  path = os.path.join(str(manager.directory), str(step))
  moved = _move_aside(path) if parallel.is_main_process() else path + DAMAGED_SUFFIX
  parallel.sync_hosts(f"checkpoint-moved-aside-{step}")
  manager.reload()
  reason = _one_line(failure) if failure is not None else "process 0 could not read it"
  logging.warning("checkpoint %s cannot be restored (%s); skipped, and moved to %s for "
                  "inspection", path, reason, os.path.basename(moved))
  return None


def _move_aside(path: str) -> str:
  """Renames a damaged step folder to `<step>.damaged` (`.damaged-2`, ... if taken)."""
  moved, n = path + DAMAGED_SUFFIX, 1
  while os.path.exists(moved):
    n += 1
    moved = f"{path}{DAMAGED_SUFFIX}-{n}"
  os.rename(path, moved)
  return moved


def _one_line(error: BaseException, limit: int = 160) -> str:
  """The start of an error's first line: orbax's messages run to pages of tensorstore specs."""
  text = (str(error).strip().splitlines() or [""])[0]
  text = text if len(text) <= limit else text[:limit - 3] + "..."
  return f"{type(error).__name__}: {text}"


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


def read_ema(workdir: str, step: int) -> dict | None:
  """The weight average {'params', 'batch_stats'} kept in the latest/ checkpoint of `step`
  (config.training.ema_decay); None when that run kept none."""
  checkpoints = RunCheckpoints(workdir, read_only=True)
  try:
    if step not in checkpoints.latest.all_steps():
      raise MissingPathError(f"{workdir!r} has no latest checkpoint at step {step} (available: "
                             f"{sorted(checkpoints.latest.all_steps())})")
    state, _ = _restore(checkpoints.latest, step, None)
    ema = state.get("ema")
    return None if ema is None else to_numpy(
        {"params": ema["params"], "batch_stats": ema.get("batch_stats") or {}})
  finally:
    checkpoints.close()
