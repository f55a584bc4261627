"""The export of a run: convert, check, describe, then write the file and its sidecar."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING

import jax
import numpy as np

from lesion_jax import __version__
from lesion_jax.export import parity as parity_lib
from lesion_jax.export.parity import Parity, ParityError
from lesion_jax.export.tflite import (INPUT_NAME, MASK_OUTPUT, METADATA_NAME, PROBABILITY_OUTPUT,
                                      QUANTIZATIONS, SIGNATURE_KEY, ExportError, Quantization,
                                      convert_to_tflite, embed_metadata, export_model,
                                      inference_function, load_interpreter, require_tensorflow,
                                      sidecar_path)

if TYPE_CHECKING:  # imported where used: runs brings in orbax (checkpoint.py)
  from lesion_jax import runs

VALIDATION_IMAGES = "validation images"
GENERATED_SEED = 20240101  # the generated lesions of a trained model's parity check


@dataclasses.dataclass
class ExportReport:
  path: str
  sidecar: str
  size_bytes: int
  parity: Parity | None
  latency_ms: float | None
  metadata: dict
  parity_images: str = VALIDATION_IMAGES  # what the parity check ran on

  def summary(self) -> str:
    lines = [f"wrote {self.path} ({self.size_bytes / 1e6:.3f} MB) and {self.sidecar}"]
    if self.parity is not None:
      lines.append(_parity_text(self.parity, self.parity_images))
    else:
      lines.append("parity NOT checked (--parity_images 0)")
    if self.latency_ms is not None:
      lines.append(f"CPU latency: {self.latency_ms:.2f} ms per image (median, 1 thread)")
    return "\n".join(lines)


def _parity_text(parity: Parity, images: str) -> str:
  # Parity.summary names validation images, which a shipped model may not have here.
  return parity.summary().replace(VALIDATION_IMAGES, images, 1)


def _versions() -> dict:
  versions = {"lesion_jax": __version__, "jax": jax.__version__}
  try:
    import tensorflow as tf
    versions["tensorflow"] = tf.__version__
  except ImportError:
    pass
  return versions


def trained_run(name: str) -> runs.Run:
  """The trained model shipped as `name` (lesion_jax.models.trained) as a `runs.Run` to export.

  Raises:
    UnknownNameError: no such model; the message lists those there are.
  """
  from lesion_jax.errors import UnknownNameError
  from lesion_jax import runs
  from lesion_jax.models import trained

  if name not in trained.names():
    raise UnknownNameError(f"--model {name}: no trained model of that name "
                           f"({trained.listing()})")
  return runs.from_trained(trained.load(name))


def _source(run, step: int | None) -> dict:
  """Where the exported weights come from: the run's checkpoint, or a shipped model's file."""
  if run.workdir is None:  # a shipped model (runs.from_trained)
    card_source = run.meta.get("source") or {}
    return {"trained_model": run.meta.get("trained_model"), "sha256": run.meta.get("sha256"),
            "step": int(run.meta["step"]), "weights": card_source.get("weights"),
            "trained_in": card_source.get("workdir")}  # on the machine that trained it
  return {"workdir": os.path.abspath(run.workdir),
          "checkpoint": "best" if step is None else "latest",
          "step": int(run.meta["step"]) if step is None else int(step),
          "val_ja": run.meta.get("val_ja") if step is None else None}


def _threshold_source(run, step: int | None) -> str:
  if run.workdir is None:
    return (f"the trained model's card {run.meta.get('trained_model')}.json (chosen on its "
            "run's validation split)")
  if not run.results:
    return "default 0.5: the run has no results.json yet"
  if step is None:
    return "results.json (chosen on validation)"
  return (f"results.json (chosen on validation for the best checkpoint, step "
          f"{run.results.get('best_step')}, not for step {step})")


def describe_export(run, quantization: Quantization, thresholded: bool, model_file: str,
                    step: int | None = None) -> dict:
  """The sidecar / embedded description of an export of `run` (its best checkpoint, or `step`)."""
  height, width = run.image_size
  output = {
      "name": MASK_OUTPUT, "shape": [1, height, width, 1], "dtype": "uint8",
      "meaning": "1 where the lesion probability >= threshold, else 0",
  } if thresholded else {
      "name": PROBABILITY_OUTPUT, "shape": [1, height, width, 1], "dtype": "float32",
      "meaning": "sigmoid lesion probability in [0, 1]",
  }
  return {
      "format": "tflite",
      "file": os.path.basename(model_file),
      "signature": SIGNATURE_KEY,
      # S for a square model (as before non-square inputs existed), else [height, width].
      "image_size": height if height == width else [height, width],
      "input": {"name": INPUT_NAME, "shape": [1, height, width, 3], "dtype": "uint8",
                "layout": "NHWC", "channels": "RGB, 0-255"},
      "output": output,
      "preprocessing": {
          "resize": f"the app resizes the image to {width}x{height} (width x height), bilinear "
                    "(as in training)",
          "standardization": "inside the model: per image, (x - mean) / max(std, 1/sqrt(N)) "
                             f"over all N = {height}*{width}*3 values (inference.standardize)",
      },
      "postprocessing": "resize the probability map back to the image size (bilinear), then "
                        "lesion where probability >= threshold",
      "threshold": run.threshold,
      "threshold_source": _threshold_source(run, step),
      "thresholded_output": thresholded,
      "model": {"name": run.config.model.name,
                "params": int(sum(np.size(x) for x in jax.tree.leaves(run.variables["params"]))),
                "settings": run.config.model.to_dict()},
      "source": _source(run, step),
      "quantization": quantization.name,
      "quantization_description": quantization.description,
      "exported_with": _versions(),
  }


def _parity_images(run, count: int) -> tuple[np.ndarray, str]:
  """(the images of the parity check, what they are in words).

  A run's own validation images; for a shipped model, whose training data is rarely prepared
  where it is exported (and preparing it may mean downloads), generated lesions of its kind.
  """
  from lesion_jax import config as config_lib
  from lesion_jax import data as data_lib
  from lesion_jax.data import synthesis

  if run.workdir is not None:
    return parity_lib.validation_images(run.config, count), VALIDATION_IMAGES
  names = config_lib.dataset_names(run.config.data.train, "data.train")
  domain = "dermoscopic" if any(n in data_lib.SET_D or n.endswith("/dermoscopic")
                                for n in names) else "macroscopic"
  images = [synthesis.render_lesion(synthesis.image_seed(GENERATED_SEED, i), domain,
                                    run.image_size)[0] for i in range(count)]
  return np.stack(images), f"generated {domain} lesion images (synthesis.render_lesion)"


def export_run(source: str | runs.Run, out: str, *, step: int | None = None, quantize: str = "none",
               with_threshold: bool = False, parity_images: int = 4,
               latency_runs: int = 20) -> ExportReport:
  """Exports a run to `out` (.tflite) and its sidecar, after checking it.

  `source` is the run's workdir (its best checkpoint, or `step`), or a `runs.Run`, such as a
  shipped model's (`trained_run(name)`), exported as it is.

  Raises:
    ExportError: a missing extra, bad arguments, or a parity failure (then nothing is written).
    FileNotFoundError: the workdir is not a run, or has no (such) checkpoint.
  """
  from lesion_jax import runs

  quantization = QUANTIZATIONS.get(quantize, where="--quantize")
  if parity_images < 0:
    raise ExportError(f"--parity_images must be >= 0, got {parity_images}")
  if step is not None and isinstance(source, runs.Run):
    raise ExportError("--step chooses a checkpoint of a --workdir; a loaded run or a trained "
                      "model is exported as it is")
  out_dir = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(out_dir):
    raise ExportError(f"--out {out!r}: folder {out_dir!r} does not exist")
  require_tensorflow()  # before the checkpoint is read: the cheap check first
  run = source if isinstance(source, runs.Run) else runs.load_run(source, step=step)
  threshold = run.threshold if with_threshold else None
  infer = inference_function(export_model(run.config), run.variables)
  metadata = describe_export(run, quantization, with_threshold, out, step)
  model_bytes = convert_to_tflite(infer, run.image_size,
                                  MASK_OUTPUT if with_threshold else PROBABILITY_OUTPUT,
                                  quantization, threshold)
  model_bytes = embed_metadata(model_bytes, METADATA_NAME, metadata)
  interpreter = load_interpreter(model_bytes, num_threads=1)

  parity, described = None, VALIDATION_IMAGES
  if parity_images:
    images, described = _parity_images(run, parity_images)
    parity = parity_lib.check_parity(interpreter, parity_lib.jax_probabilities(run, images),
                                     images, quantization, run.threshold, with_threshold)
    if not parity.passed:
      raise ParityError(f"{out} was not written: the exported model disagrees with the JAX "
                        f"model. {_parity_text(parity, described)}")
  latency = (parity_lib.median_latency_ms(interpreter, run.image_size, latency_runs)
             if latency_runs else None)

  with open(out, "wb") as f:
    f.write(model_bytes)
  sidecar = {**metadata, "size_bytes": len(model_bytes),
             "parity": dataclasses.asdict(parity) if parity else None,
             "parity_images": described if parity else None,
             "latency_ms_median_1_thread": latency}
  with open(sidecar_path(out), "w") as f:
    json.dump(sidecar, f, indent=2)
  return ExportReport(path=out, sidecar=sidecar_path(out), size_bytes=len(model_bytes),
                      parity=parity, latency_ms=latency, metadata=sidecar,
                      parity_images=described)
