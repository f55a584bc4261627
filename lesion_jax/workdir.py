"""A run's folder: what it holds, and the rule that nothing in it is overwritten unasked.

A workdir belongs to one config. `prepare_workdir` creates it, or finds there the same config
(the run resumes), the same config made longer (a larger training.num_epochs or max_steps: the
run is extended) or another one (refused, naming the keys that differ, unless `overwrite`).
`--overwrite` removes exactly the files a run writes (`RUN_OUTPUTS`), never the user's own.
`locked` keeps a second run out of a workdir in use (WORKDIR/.lock).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import json
import logging
import os
import shutil
import socket
from typing import Any, Iterator

import ml_collections

from lesion_jax import config as config_lib
from lesion_jax import parallel
from lesion_jax.errors import MissingPathError, WorkdirError, WorkdirInUseError

# Files a run writes in its workdir (glob patterns); `--overwrite` removes exactly these and
# nothing else. Not the lock file: removing it under a live run would let a second one in.
RUN_OUTPUTS = ("checkpoints", "config.json", "log.txt", "metrics.jsonl", "results.json",
               "results.prev*.json", "results.md", "overlays", "tensorboard",
               "threshold_curve.json", "threshold_curve.png", "per_image.csv",
               "per_image_validation.csv",
               "training_curves.png")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOCK_FILE = ".lock"
# Keys whose larger value makes a run longer rather than another run: raising them on a finished
# run extends it in place (it resumes from its latest checkpoint and evaluates again).
EXTENDABLE_KEYS = ("training.max_steps", "training.num_epochs")
# Keys that change only what a finished run's final evaluation reports, or where its archives
# are, never its training: a run whose config differs in them (and in longer EXTENDABLE_KEYS)
# keeps its checkpoints and is evaluated again (e.g. Exp 1 asked for another test database).
EVALUATION_KEYS = ("data.test", "data.manual_dirs.", "evaluation.", "report.", "checkpoint.keep")


def _evaluation_only(key: str) -> bool:
  return any(key == k or (k.endswith(".") and key.startswith(k)) for k in EVALUATION_KEYS)


def config_json(config: ml_collections.ConfigDict) -> dict:
  """The config as stored in config.json, the form two runs are compared in."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


_ABSENT = object()  # a key one config has and the other lacks (not the same as None)


def diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
  """Dotted keys whose values differ between two config.json dicts, keys only one has included."""
  if isinstance(a, dict) and isinstance(b, dict):
    return set().union(*(diff_keys(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{prefix}{k}.")
                         for k in set(a) | set(b)))
  return set() if a is b or a == b else {prefix.rstrip(".")}


def _added_at_default(stored: dict, key: str, defaults: dict) -> bool:
  """Whether `key` is missing from a stored config.json and has its default value now: a key
  added to base_config after that run started, which must not stop it from resuming."""
  node, default = stored, defaults
  for part in key.split("."):
    if not isinstance(node, dict) or not isinstance(default, dict) or part not in default:
      return False
    if part not in node:
      return True
    node, default = node[part], default[part]
  return False


def config_differences(stored: dict, current: dict) -> list[str]:
  """Keys in which a workdir's stored config and the current one differ, sorted; keys added to
  the code's base config since the stored run started, at their default, do not count."""
  defaults = config_json(config_lib.base_config())
  return sorted(key for key in diff_keys(stored, current)
                if not (_added_at_default(stored, key, defaults)
                        and _get(current, key) == _get(defaults, key)))


def _get(tree: dict, key: str) -> Any:
  for part in key.split("."):
    tree = tree.get(part, _ABSENT) if isinstance(tree, dict) else _ABSENT
  return tree


def read_stored_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def extension(stored: dict | None, current: dict, changed: list[str]) -> list[str]:
  """'key: old -> new' for each key in `changed`, when `current` is a longer run of `stored`
  or the same run evaluated otherwise; [] unless every key is a larger training.num_epochs or
  training.max_steps, or one of EVALUATION_KEYS."""
  if stored is None or not changed:
    return []
  lines = []
  for key in changed:
    old, new = _get(stored, key), _get(current, key)
    if not (_evaluation_only(key) or (key in EXTENDABLE_KEYS and _longer(old, new))):
      return []
    lines.append(f"{key}: {_shown(old)} -> {_shown(new)}")
  return lines


def _shown(value: Any) -> Any:
  return "(none)" if value is _ABSENT else value


def _longer(old: Any, new: Any) -> bool:
  # max_steps None is no cap: from a cap to none is longer, from none to a cap is not.
  if new is None:
    return isinstance(old, int)
  return isinstance(old, int) and isinstance(new, int) and new > old


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, overwrite: bool) -> None:
  """Creates the workdir, or checks it holds this same config (resume) or a shorter run of it
  (extended: its results.json is moved aside), unless `overwrite`; then writes config.json."""
  config_lib.check_workdir_parent(workdir)
  previous, current = read_stored_config(workdir), config_json(config)
  changed = config_differences(previous, current) if previous is not None else []
  extended = [] if overwrite else extension(previous, current, changed)
  if changed and not overwrite and not extended:
    raise WorkdirError(
        f"{workdir!r} holds a run with a different config (keys that differ: "
        f"{', '.join(changed)}). Use another --workdir, or pass --overwrite to delete that "
        "run's checkpoints and results and start again (a larger training.num_epochs or "
        "training.max_steps extends a run in place; test sets, evaluation and report "
        "settings evaluate it again).")
  if overwrite and parallel.is_main_process():
    _remove_run_outputs(workdir)
  if extended and parallel.is_main_process():
    _extend(workdir, extended)
  parallel.sync_hosts("workdir-cleared")
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_main_process():
    write_json_atomically(os.path.join(workdir, "config.json"), current)


def _remove_run_outputs(workdir: str) -> None:
  for name in RUN_OUTPUTS:
    for target in glob.glob(os.path.join(glob.escape(workdir), name)):
      if os.path.isdir(target):
        shutil.rmtree(target)
      else:
        os.remove(target)


def _extend(workdir: str, extended: list[str]) -> None:
  """Logs the extension; a finished run's results.json becomes results.prev.json (then
  results.prev2.json, ...): the final evaluation is done again at the new end."""
  logging.info("Continuing the run in %s (%s): it resumes from its latest checkpoint and "
               "evaluates again at its end", workdir, "; ".join(extended))
  results = os.path.join(workdir, "results.json")
  if not os.path.exists(results):
    return
  n, moved = 1, os.path.join(workdir, "results.prev.json")
  while os.path.exists(moved):
    n += 1
    moved = os.path.join(workdir, f"results.prev{n}.json")
  os.replace(results, moved)
  logging.info("The results of its earlier end are now in %s", moved)


def read_results(workdir: str) -> dict:
  """results.json of a finished run; FileNotFoundError saying so when the run has not finished."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise MissingPathError(f"{workdir!r} is not a finished run: it has no results.json "
                            "(train it to the end first)")
  with open(path) as f:
    return json.load(f)


def finished_results(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
  """The results of a finished run of this same config in `workdir`; None if unfinished.

  Raises FileExistsError when `workdir` holds a finished run of another config.
  """
  if not os.path.exists(os.path.join(workdir, "results.json")):
    return None
  stored, current = read_stored_config(workdir), config_json(config)
  changed = config_differences(stored, current)
  if changed and extension(stored, current, changed):
    return None  # a longer run of it: trained on by train_and_evaluate
  if changed:
    raise WorkdirError(
        f"{workdir!r} holds a finished run of another config (keys that differ: "
        f"{', '.join(changed)}). Move it away, use another workdir, or pass --overwrite.")
  return read_results(workdir)


@contextlib.contextmanager
def run_log(workdir: str) -> Iterator[None]:
  """Everything logged while a run is in progress also goes to WORKDIR/log.txt (appended)."""
  if not parallel.is_main_process():
    yield
    return
  handler = _RunLogHandler(os.path.join(workdir, "log.txt"))
  handler.setFormatter(logging.Formatter(LOG_FORMAT))
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    yield
  finally:
    root.removeHandler(handler)
    handler.close()


class _RunLogHandler(logging.FileHandler):
  """log.txt. A write that fails (a full disk) silences it instead of printing a traceback for
  every later line: the error the run then ends with says what happened."""

  def handleError(self, record: logging.LogRecord) -> None:
    self.setLevel(logging.CRITICAL + 1)


def write_json_atomically(path: str, value: Any) -> None:
  """Writes `value` so that a reader never sees half a file (results.json marks a finished run;
  config.json is read by the next launch)."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2)
  os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------------------------
# One run at a time in a workdir.

# This process's locks: real path of a lock file -> [file descriptor or None, depth]. A sweep
# locks its folder and each of its runs their own; a run may be locked again from within.
_held: dict[str, list] = {}


def check_workdir(workdir: str) -> None:
  """A workdir that can be a run's folder: its parent exists, and it is not a file."""
  config_lib.check_workdir_parent(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir {workdir!r} is a file, not a folder; name a folder (it is "
                       "created if missing)")


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/.lock while the block runs; a second run into the workdir is refused at once.

  An flock, not the file's existence: the kernel releases it when its holder dies (SIGKILL, a
  crash), so a lock left behind never blocks a rerun. The file names the holder (host, pid) for
  the message the second run prints. Only process 0 of a multi-host run takes it, and tells the
  others whether it got it. Creates the workdir.
  """
  error, path = None, None
  if parallel.is_main_process():
    try:
      path = _acquire(workdir)
    except WorkdirError as failure:
      error = failure
  if not parallel.broadcast_from_main(error is None):
    raise error or WorkdirInUseError(f"--workdir {workdir!r}: process 0 could not lock it "
                                     "(its output says why)")
  try:
    yield
  finally:
    if path is not None:
      _release(path)


def _acquire(workdir: str) -> str:
  check_workdir(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.realpath(os.path.join(workdir, LOCK_FILE))
    if path in _held:
      _held[path][1] += 1
      return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as error:
    raise WorkdirError(f"--workdir {workdir!r} cannot be written ({error.strerror}); name a "
                       "folder this user can write in") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _read_holder(fd)
    os.close(fd)
    raise WorkdirInUseError(
        f"--workdir {workdir!r} is in use by another run ({holder}; lock file {path}): wait "
        "for it to end, or use another --workdir") from None
  except OSError as error:  # a filesystem without locks (some network mounts): go on unlocked
    logging.warning("cannot lock %s (%s): a second run in this workdir would not be stopped",
                    path, error.strerror)
    os.close(fd)
    fd = None
  if fd is not None:
    _write_holder(fd)
  _held[path] = [fd, 1]
  return path


def _write_holder(fd: int) -> None:
  holder = {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.datetime.now().isoformat(timespec="seconds")}
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
  except OSError:
    pass  # a full disk: the lock holds all the same, only the holder goes unnamed


def _read_holder(fd: int) -> str:
  try:
    holder = json.loads(os.pread(fd, 4096, 0).decode())
    return f"pid {holder['pid']} on host {holder['host']}, since {holder['since']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "a process that has not named itself yet"


def _release(path: str) -> None:
  entry = _held[path]
  entry[1] -= 1
  if entry[1]:
    return
  del _held[path]
  if entry[0] is not None:
    with contextlib.suppress(OSError):
      os.ftruncate(entry[0], 0)  # the next reader finds no stale holder
    os.close(entry[0])  # releases the flock
