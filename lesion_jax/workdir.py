"""A run's folder: what it holds, and the rule that nothing in it is overwritten unasked.

A workdir belongs to one config. `prepare_workdir` creates it, or finds there the same config
(the run resumes) or another one (refused, naming the keys that differ, unless `overwrite`).
`--overwrite` removes exactly the files a run writes (`RUN_OUTPUTS`), never the user's own.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from typing import Any, Iterator

import ml_collections

from lesion_jax import config as config_lib
from lesion_jax import parallel
from lesion_jax.errors import MissingPathError, WorkdirError

# Files a run writes in its workdir; `--overwrite` removes exactly these and nothing else.
RUN_OUTPUTS = ("checkpoints", "config.json", "log.txt", "metrics.jsonl", "results.json",
               "results.md", "overlays", "tensorboard", "threshold_curve.json",
               "threshold_curve.png", "per_image.csv", "training_curves.png")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, overwrite: bool) -> None:
  """Creates the workdir, or checks it holds this same config (resume) unless `overwrite`."""
  config_lib.check_workdir_parent(workdir)
  previous, current = read_stored_config(workdir), config_json(config)
  changed = config_differences(previous, current) if previous is not None else []
  if changed and not overwrite:
    raise WorkdirError(
        f"{workdir!r} holds a run with a different config (keys that differ: "
        f"{', '.join(changed)}). Use another --workdir, or pass --overwrite to delete that "
        "run's checkpoints and results and start again.")
  if overwrite and parallel.is_main_process():
    for name in RUN_OUTPUTS:
      target = os.path.join(workdir, name)
      if os.path.isdir(target):
        shutil.rmtree(target)
      elif os.path.exists(target):
        os.remove(target)
  parallel.sync_hosts("workdir-cleared")
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_main_process():
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(current, f, indent=2, sort_keys=True)


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
  changed = config_differences(read_stored_config(workdir), config_json(config))
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
  handler = logging.FileHandler(os.path.join(workdir, "log.txt"))
  handler.setFormatter(logging.Formatter(LOG_FORMAT))
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    yield
  finally:
    root.removeHandler(handler)
    handler.close()


def write_json_atomically(path: str, value: Any) -> None:
  """Writes `value` so that a reader never sees half a file (results.json marks a finished run)."""
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2)
  os.replace(path + ".tmp", path)
