"""Checkpoint-based transfer: start a run from another run's best weights (paper, Exp 2).

The paper pretrains the reduced Mobile DeepLab on the dermoscopic set D, then fine-tunes it on the
macroscopic set M. Here the fine-tuning config names the pretraining run's workdir in
`config.init_from` (and optionally `config.init_step`); training then starts from that run's
best parameters and BatchNorm statistics, with a fresh optimiser and schedule.

`config.dont_load` lists regular expressions of variable paths (e.g. `params/.*/logits/.*`) that
start from their fresh initialisation instead; `config.frozen` lists those whose parameters must
not change (optax.partition gives them zero updates and no optimiser state). Paths join the nested
keys with '/', starting with the collection: `params/encoder/Conv1/kernel`, `batch_stats/...`.

Pretrained weights from outside this codebase (the paper's "PreT" column) come in through
`config.model.init_from = "KIND:PATH"`: `keras_mobilenet_v2:<file.h5>` (Keras ImageNet weights into
the MobileNetV2 encoder) or `deeplab_zoo:<model.ckpt-N>` (a TF DeepLab model-zoo checkpoint, Pascal
VOC or Cityscapes, into the whole network; the logits are skipped when the class count differs).

Every mismatch is an error that lists the names, never a silent partial load (as big_vision does).
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import numpy as np
import optax
from flax import traverse_util

from lesion_jax.errors import ConfigError, MissingPathError
from lesion_jax.registry import Registry

# KIND -> loader(variables, path, dont_load) -> (variables, report), for config.model.init_from.
PRETRAINED_KINDS: Registry = Registry("pretrained weights kind")


@PRETRAINED_KINDS.register("keras_mobilenet_v2")
def _keras_mobilenet_v2(variables, path, dont_load):
  from lesion_jax.models import pretrained
  return pretrained.load_keras_mobilenet_v2(variables, path, dont_load=dont_load)


@PRETRAINED_KINDS.register("deeplab_zoo")
def _deeplab_zoo(variables, path, dont_load):
  from lesion_jax.models import pretrained
  return pretrained.load_deeplab_checkpoint(variables, path, dont_load=dont_load)


def parse_pretrained(spec: str) -> tuple[str, str]:
  """'KIND:PATH' -> (kind, path), checking the kind and that the path exists."""
  import os
  kind, sep, path = spec.partition(":")
  if not sep or not path:
    raise ConfigError(f"config.model.init_from={spec!r}: expected 'KIND:PATH' with KIND one of "
                     f"{PRETRAINED_KINDS.names()}")
  PRETRAINED_KINDS.get(kind, where="config.model.init_from")
  path = os.path.expanduser(path)
  # A TF1 checkpoint is a prefix: model.ckpt-N names model.ckpt-N.index and .data-* files.
  if not (os.path.exists(path) or os.path.exists(path + ".index")):
    raise MissingPathError(f"config.model.init_from: {path!r} does not exist (nor "
                            f"{path + '.index'!r} for a TF1 checkpoint prefix)")
  return kind, path


def load_pretrained(variables: Mapping[str, Any], spec: str,
                    dont_load: Iterable[str] = ()) -> dict:
  """`variables` with the pretrained weights named by `spec` ('KIND:PATH') loaded into them."""
  kind, path = parse_pretrained(spec)
  loaded, _ = PRETRAINED_KINDS.get(kind)(dict(variables), path, tuple(dont_load))
  return loaded


def flatten(variables: Mapping[str, Any]) -> dict[str, Any]:
  """{'collection/module/.../name': array}: the paths `dont_load` and `frozen` match."""
  return traverse_util.flatten_dict(dict(variables), sep="/")


def unflatten(flat: Mapping[str, Any]) -> dict:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def _matcher(patterns: Iterable[str], key: str):
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as error:
      raise ConfigError(f"config.{key}: {pattern!r} is not a valid regular expression "
                       f"({error})") from error
  return lambda path: any(p.fullmatch(path) for p in compiled)


def merge_variables(fresh: Mapping[str, Any], loaded: Mapping[str, Any],
                    dont_load: Iterable[str] = (), source: str = "the checkpoint") -> dict:
  """`fresh` with every variable taken from `loaded`, except the `dont_load` ones.

  Raises ValueError listing the variables that are missing from `loaded`, that `loaded` has in
  excess, and those whose shapes differ.
  """
  skip = _matcher(dont_load, "dont_load")
  fresh_flat, loaded_flat = flatten(fresh), flatten(loaded)
  missing, mismatched, merged = [], [], {}
  for path, value in fresh_flat.items():
    if skip(path):
      merged[path] = value
    elif path not in loaded_flat:
      missing.append(path)
    elif np.shape(loaded_flat[path]) != np.shape(value):
      mismatched.append(f"{path}: model {np.shape(value)} vs checkpoint "
                        f"{np.shape(loaded_flat[path])}")
    else:
      merged[path] = np.asarray(loaded_flat[path]).astype(np.asarray(value).dtype)
  unexpected = [p for p in loaded_flat if p not in fresh_flat and not skip(p)]
  problems = []
  if missing:
    problems.append(f"missing from {source}: {', '.join(sorted(missing))}")
  if unexpected:
    problems.append(f"in {source} but not in the model: {', '.join(sorted(unexpected))}")
  if mismatched:
    problems.append(f"shape mismatch: {'; '.join(sorted(mismatched))}")
  if problems:
    raise ConfigError("Cannot initialise from " + source + ":\n  " + "\n  ".join(problems) +
                     "\nAdd patterns to config.dont_load for variables that should start fresh.")
  return unflatten(merged)


def freeze(tx: optax.GradientTransformation,
           patterns: Iterable[str]) -> optax.GradientTransformation:
  """`tx` on the parameters that do not match `patterns`; the others get zero updates.

  optax.partition (formerly optax.multi_transform) runs `tx` on the trained parameters only, so
  the frozen ones hold no Adam moments: a frozen encoder costs no optimiser memory. It wraps
  `optim.adam(..., flatten=True)` as well, the flat vector then joining only the trained ones.
  """
  patterns = tuple(patterns)
  if not patterns:
    # `tx` itself: runs without freezing keep their optimiser state layout, their checkpoints
    # and their compiled steps.
    return tx
  is_frozen = _matcher(patterns, "frozen")  # fail early on a bad pattern

  def labels(params):
    flat = {path: "frozen" if is_frozen("params/" + path) else "trained"
            for path in flatten(params)}
    if flat and "trained" not in flat.values():
      # A run that trains nothing is a mistake; with config.optimizer.flatten optax.flatten would
      # also fail on the empty vector, with an error that names neither setting.
      raise ConfigError(f"config.frozen={list(patterns)} matches every parameter: nothing would "
                        "train (and config.optimizer.flatten cannot flatten no parameters)")
    return unflatten(flat)

  return optax.partition({"trained": tx, "frozen": optax.set_to_zero()}, labels)


def check_patterns_match(variables: Mapping[str, Any], patterns: Iterable[str],
                         key: str) -> None:
  """A pattern that matches no variable is almost always a typo: say so."""
  paths = list(flatten(variables))
  for pattern in patterns:
    if not any(_matcher([pattern], key)(p) for p in paths):
      raise ConfigError(f"config.{key}: pattern {pattern!r} matches no variable; variable paths "
                       f"look like {paths[:3]}")

