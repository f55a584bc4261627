"""Trained segmenters shipped with the package, in a single-file format that needs no orbax.

    from lesion_jax.models import load_trained
    segmenter = load_trained("macroscopic")  # = lesion_jax.models.trained.load
    probs = segmenter.probabilities(images)  # (N, H, W, 3) uint8 at segmenter.image_size

From the command line: `python -m lesion_jax.predict --model macroscopic --images photos/ --out
masks/` segments with it, `python -m lesion_jax.export --model macroscopic --out m.tflite`
exports it.

Each model NAME is two files in lesion_jax/models/trained_models/ (docs/models.md is their card),
or in the folder the environment variable LESION_JAX_TRAINED_MODELS names instead (tests point it
at models written from tiny runs):
- NAME.msgpack: the variables {'params', 'batch_stats'} as flax msgpack (flax.serialization);
- NAME.json: how to use them (the run's config, threshold, input size, test-time augmentation,
  standardisation), where they came from (workdir, weights, step, command, commit) and the
  SHA-256 of NAME.msgpack, checked at every load.

`python -m lesion_jax.shipping RUN_WORKDIR --name NAME` writes both from a finished run
(lesion_jax/shipping.py). This module only reads them: at import it needs lesion_jax.errors alone,
`load` lesion_jax.models; `probabilities` imports inference on the call. `runs.from_trained`
makes a loaded model a run for predict and export.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any

import ml_collections
import numpy as np
from flax import serialization

from lesion_jax.errors import DataError, UnknownNameError

FORMAT_VERSION = 1
SHIPPED_DIR = pathlib.Path(__file__).parent / "trained_models"
DIRECTORY_ENV = "LESION_JAX_TRAINED_MODELS"  # a folder read instead of SHIPPED_DIR
STANDARDIZATION = ("per image: zero mean and unit variance over all pixels and channels "
                   "(lesion_jax.inference.standardize)")


def models_dir() -> pathlib.Path:
  """Where the trained models are read from: $LESION_JAX_TRAINED_MODELS, else the package's."""
  return pathlib.Path(os.environ.get(DIRECTORY_ENV) or SHIPPED_DIR)


def names(directory: pathlib.Path | str | None = None) -> list[str]:
  """The shipped models: every NAME with both NAME.msgpack and NAME.json."""
  directory = models_dir() if directory is None else pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(p.stem for p in directory.glob("*.json") if p.with_suffix(".msgpack").is_file())


def listing(directory: pathlib.Path | str | None = None) -> str:
  """The names for an error message: 'trained models: a, b', or where none were found."""
  found = names(directory)
  if found:
    return f"trained models: {', '.join(found)}"
  return f"no trained models in {models_dir() if directory is None else directory}"


@dataclasses.dataclass
class TrainedModel:
  """A shipped segmenter: the module, its variables and how to feed it."""
  name: str
  model: Any  # flax.linen.Module
  variables: dict  # {'params', 'batch_stats'}
  threshold: float  # chosen on the run's validation split
  image_size: tuple[int, int]  # (height, width) the model takes; images are resized to it
  tta: str  # test-time augmentation (inference.TTA_CHOICES)
  standardization: str
  config: ml_collections.ConfigDict  # the producing run's config
  card: dict  # NAME.json

  def probabilities(self, images: np.ndarray, batch_size: int = 4) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB at `image_size` -> (N, H, W) float32 lesion probabilities."""
    from lesion_jax import inference
    return inference.predict_probabilities(self.model, self.variables, images,
                                           batch_size=batch_size, tta=self.tta)


def sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def load(name: str, directory: pathlib.Path | str | None = None) -> TrainedModel:
  """The shipped model `name` (in `directory`, default `models_dir()`); UnknownNameError lists
  the names, DataError a damaged file."""
  from lesion_jax.models import registry  # not the package, which imports this module

  directory = models_dir() if directory is None else pathlib.Path(directory)
  if name not in names(directory):
    raise UnknownNameError(f"Unknown trained model {name!r}. Trained models: "
                           f"{', '.join(names(directory)) or '(none in ' + str(directory) + ')'}")
  card = json.loads((directory / f"{name}.json").read_text())
  weights = directory / f"{name}.msgpack"
  if card.get("format") != FORMAT_VERSION:
    raise DataError(f"{name}.json: format {card.get('format')!r}, this lesion_jax reads "
                    f"{FORMAT_VERSION}")
  if sha256(weights) != card["sha256"]:
    raise DataError(f"{weights}: SHA-256 {sha256(weights)} does not match {card['sha256']} in "
                    f"{name}.json; the file is damaged or was replaced. Reinstall lesion_jax or "
                    "regenerate it (python -m lesion_jax.shipping --help)")
  config = ml_collections.ConfigDict(card["config"])
  model = registry.from_config(config)
  variables = serialization.msgpack_restore(weights.read_bytes())
  return TrainedModel(
      name=name, model=model, variables=variables, threshold=float(card["threshold"]),
      image_size=tuple(card["image_size"]), tta=card["tta"],
      standardization=card["standardization"], config=config, card=card)
