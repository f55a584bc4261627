"""Ship a finished run as a trained model: NAME.msgpack and NAME.json (lesion_jax.models.trained).

    python -m lesion_jax.shipping RUN_WORKDIR --name macroscopic [--weights ema] [--out DIR]
        [--overwrite]

`--weights best` (the default) ships the weights the run reports: its best checkpoint or, with
config.evaluation.weights 'ema', its weight average. `--weights ema` ships the weight average of
its last step with the threshold lesion_jax/levers.py chose for it (run the levers first). The
files go to the package's lesion_jax/models/trained_models/ unless `--out` names another folder.
A model of that name already there is replaced only with `--overwrite`.

The writer lives outside lesion_jax.models because it reads runs, checkpoints and reports, which
themselves import lesion_jax.models; the loader there needs none of them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import subprocess
import sys
from typing import Any

import numpy as np
from flax import serialization

from lesion_jax import checkpoint, runs
from lesion_jax.data import pipeline
from lesion_jax.errors import (DataError, LesionJaxError, MissingPathError, UnknownNameError,
                               WorkdirError)
from lesion_jax.metrics import METRIC_NAMES
from lesion_jax.models import trained
from lesion_jax.report.compare import bootstrap_mean_ci
from lesion_jax.report.tables import read_per_image

WEIGHTS = ("best", "ema")


def _commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=pathlib.Path(__file__).parent, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _weights_of(workdir: str, weights: str) -> tuple[dict, int, float, dict]:
  """(variables, step, threshold, metrics) of the run's `weights`."""
  run = runs.load_run(workdir)
  if run.results is None:
    raise MissingPathError(f"{workdir!r} has no results.json: ship only a finished run")
  if weights == "best":
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
  out = {}
  for split, values in per_image.items():
    mean, low, high = bootstrap_mean_ci(np.stack([values[m] for m in METRIC_NAMES], axis=1))
    out[split] = {m: [float(mean[i]), float(low[i]), float(high[i])]
                  for i, m in enumerate(METRIC_NAMES)}
  return out


def write(workdir: str, name: str, weights: str = "best",
          directory: pathlib.Path | str = trained.SHIPPED_DIR,
          overwrite: bool = False) -> pathlib.Path:
  """NAME.msgpack and NAME.json from the finished run in `workdir`; an existing model of that
  name in `directory` is replaced only with `overwrite` (checked before the run is read)."""
  if weights not in WEIGHTS:
    raise UnknownNameError(f"Unknown weights {weights!r}. Valid: {', '.join(WEIGHTS)}")
  directory = pathlib.Path(directory)
  path = directory / f"{name}.msgpack"
  existing = [p for p in (path, path.with_suffix(".json")) if p.exists()]
  if existing and not overwrite:
    raise WorkdirError(f"{directory} already holds a model named {name!r} "
                       f"({', '.join(p.name for p in existing)}); pass --overwrite to replace it, "
                       "or choose another --name or --out")
  config = runs.read_config(workdir)
  variables, step, threshold, metrics = _weights_of(workdir, weights)
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}
  directory.mkdir(parents=True, exist_ok=True)
  path.write_bytes(serialization.msgpack_serialize(checkpoint.to_numpy(variables)))
  card = {
      "format": trained.FORMAT_VERSION, "name": name, "sha256": trained.sha256(path),
      "threshold": threshold, "image_size": list(pipeline.image_shape(config.data.image_size)),
      "tta": config.evaluation.tta, "standardization": trained.STANDARDIZATION,
      "training_data": list(config.data.train), "metrics": metrics,
      "source": {"workdir": os.path.abspath(workdir), "weights": weights, "step": step,
                 "command": shlex.join([os.path.basename(sys.executable), "-m",
                                        "lesion_jax.shipping", workdir, "--name", name,
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
      prog="python -m lesion_jax.shipping", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdir", help="a finished training run")
  parser.add_argument("--name", required=True, help="the shipped model's name, e.g. macroscopic")
  parser.add_argument("--weights", default="best", choices=WEIGHTS)
  parser.add_argument("--out", default=str(trained.SHIPPED_DIR),
                      help="folder (default: the package's)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace a model of the same name in the folder")
  args = parser.parse_args(argv)
  try:
    path = write(args.workdir, args.name, args.weights, args.out, args.overwrite)
  except LesionJaxError as error:
    print(f"error: {error}", file=sys.stderr)
    return error.exit_code
  print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.with_suffix('.json')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
