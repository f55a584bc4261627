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

One command writes both from a finished run (`--weights`: `best`, the weights the run reports,
its best checkpoint or, with config.evaluation.weights 'ema', its weight average; or `ema`, the
weight average of its last step with the threshold lesion_jax/levers.py chose for it):

    python -m lesion_jax.models.trained RUN_WORKDIR --name macroscopic [--weights ema]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import shlex
import subprocess
import sys
from typing import Any

import ml_collections
import numpy as np
from flax import serialization

from lesion_jax.errors import DataError, LesionJaxError, MissingPathError, UnknownNameError
from lesion_jax.metrics import METRIC_NAMES

FORMAT_VERSION = 1
SHIPPED_DIR = pathlib.Path(__file__).parent / "trained_models"
DIRECTORY_ENV = "LESION_JAX_TRAINED_MODELS"  # a folder read instead of SHIPPED_DIR
STANDARDIZATION = ("per image: zero mean and unit variance over all pixels and channels "
                   "(lesion_jax.inference.standardize)")
WEIGHTS = ("best", "ema")


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

  def as_run(self):
    """The model as a `runs.Run` without a workdir, for predict and export."""
    from lesion_jax import runs
    # The name and checksum in meta let predict and export say which model they ran.
    meta = {"step": self.card["source"]["step"], "trained_model": self.name,
            "sha256": self.card["sha256"], "source": self.card["source"]}
    return runs.Run(workdir=None, config=self.config, model=self.model,
                    variables=self.variables, meta=meta, results={"threshold": self.threshold})


def sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def load(name: str, directory: pathlib.Path | str | None = None) -> TrainedModel:
  """The shipped model `name` (in `directory`, default `models_dir()`); UnknownNameError lists
  the names, DataError a damaged file."""
  from lesion_jax import config as config_lib

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
                    "regenerate it (python -m lesion_jax.models.trained --help)")
  config = ml_collections.ConfigDict(card["config"])
  model = config_lib.models_from_config(config)
  variables = serialization.msgpack_restore(weights.read_bytes())
  return TrainedModel(
      name=name, model=model, variables=variables, threshold=float(card["threshold"]),
      image_size=tuple(card["image_size"]), tta=card["tta"],
      standardization=card["standardization"], config=config, card=card)


def _commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).parent, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _weights_of(workdir: str, weights: str) -> tuple[dict, int, float, dict]:
  """(variables, step, threshold, metrics) of the run's `weights`."""
  from lesion_jax import checkpoint, runs

  run = runs.load_run(workdir)
  if run.results is None:
    raise MissingPathError(f"{workdir!r} has no results.json: ship only a finished run")
  if weights == "best":
    from lesion_jax.report.tables import read_per_image
    per_image = {split: {m: [v[m] for v in images.values()] for m in METRIC_NAMES}
                 for split, images in read_per_image(workdir).items()}
    return run.variables, int(run.meta["step"]), float(run.results["threshold"]), {
        "validation": run.results["validation"], "test": run.results["test"],
        "test_ci": confidence_intervals(per_image)}
  levers_path = os.path.join(workdir, "levers", "levers.json")
  if not os.path.exists(levers_path):
    raise MissingPathError(f"{levers_path} is missing: run `python -m lesion_jax.levers "
                           f"{workdir}` first, which chooses the average's threshold")
  with open(levers_path) as f:
    lever = json.load(f).get(f"{weights}+none")
  if lever is None:
    raise DataError(f"{levers_path} has no {weights!r} variant (a run with "
                    "config.training.ema_decay keeps one)")
  step = int(lever["steps"][-1])
  return checkpoint.read_ema(workdir, step), step, float(lever["threshold"]), {
      "validation": {"ja": lever["validation_ja"]}, "test": lever["test"],
      "test_ci": confidence_intervals(lever["per_image"])}


def confidence_intervals(per_image: dict) -> dict:
  """{split: {metric: [mean, low, high]}}: bootstrap 95% CIs of the mean over the test images
  (report.compare.bootstrap_mean_ci, 10,000 resamples, seed 0)."""
  from lesion_jax.report.compare import bootstrap_mean_ci
  out = {}
  for split, values in per_image.items():
    mean, low, high = bootstrap_mean_ci(np.stack([values[m] for m in METRIC_NAMES], axis=1))
    out[split] = {m: [float(mean[i]), float(low[i]), float(high[i])]
                  for i, m in enumerate(METRIC_NAMES)}
  return out


def write(workdir: str, name: str, weights: str = "best",
          directory: pathlib.Path | str = SHIPPED_DIR) -> pathlib.Path:
  """NAME.msgpack and NAME.json from the finished run in `workdir`."""
  from lesion_jax import checkpoint, runs
  from lesion_jax.data import pipeline

  if weights not in WEIGHTS:
    raise UnknownNameError(f"Unknown weights {weights!r}. Valid: {', '.join(WEIGHTS)}")
  config = runs.read_config(workdir)
  variables, step, threshold, metrics = _weights_of(workdir, weights)
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"{name}.msgpack"
  path.write_bytes(serialization.msgpack_serialize(
      checkpoint.to_numpy(variables)))
  card = {
      "format": FORMAT_VERSION, "name": name, "sha256": sha256(path),
      "threshold": threshold, "image_size": list(pipeline.image_shape(config.data.image_size)),
      "tta": config.evaluation.tta, "standardization": STANDARDIZATION,
      "training_data": list(config.data.train), "metrics": metrics,
      "source": {"workdir": os.path.abspath(workdir), "weights": weights, "step": step,
                 "command": shlex.join([os.path.basename(sys.executable), "-m",
                                        "lesion_jax.models.trained", workdir, "--name", name,
                                        "--weights", weights]),
                 "commit": _commit(),
                 "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
      "config": config.to_dict(),
  }
  (directory / f"{name}.json").write_text(json.dumps(card, indent=1, default=_jsonable) + "\n")
  return path


def _jsonable(value: Any) -> Any:
  if isinstance(value, (np.generic,)):
    return value.item()
  if isinstance(value, tuple):
    return list(value)
  raise TypeError(f"cannot write {type(value).__name__} to JSON")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m lesion_jax.models.trained", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdir", help="a finished training run")
  parser.add_argument("--name", required=True, help="the shipped model's name, e.g. macroscopic")
  parser.add_argument("--weights", default="best", choices=WEIGHTS)
  parser.add_argument("--out", default=str(SHIPPED_DIR), help="folder (default: the package's)")
  args = parser.parse_args(argv)
  try:
    path = write(args.workdir, args.name, args.weights, args.out)
  except LesionJaxError as error:
    print(f"error: {error}", file=sys.stderr)
    return error.exit_code
  print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.with_suffix('.json')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
