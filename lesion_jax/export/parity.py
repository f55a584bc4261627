"""The parity check of an export: the exported file against the JAX model, before it is written.

Quantisation (`--quantize`) and the parity bound each export must pass on validation images.
A quantised model's probabilities stray from JAX's; a pixel whose JAX probability lies within
the quantisation's tolerance of the threshold is "undecided" (that error alone may flip it), so
the mask agreement JA(exported mask, JAX mask) counts the decided pixels only; the agreement
over all pixels is reported beside it. Without the band an undertrained model, whose
probabilities all sit within a few 1e-3 of the threshold, would fail any quantisation for
being undecided rather than for a bad conversion. The bounds are in `tflite.QUANTIZATIONS`.

The reference is the run's network as evaluation computes it (`inference`), after
`inference.standardize`, in float32 with its default depthwise form: so the check covers the
preprocessing inside the exported model and the depthwise rewrite, not only the conversion.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import numpy as np

from lesion_jax import config as config_lib
from lesion_jax import models as models_lib
from lesion_jax import inference
from lesion_jax import metrics as metrics_lib
from lesion_jax.data import pipeline
from lesion_jax.export.tflite import ExportError, Quantization, run_interpreter

class ParityError(ExportError):
  """The exported model disagrees with the JAX model beyond the stated bound."""


def reference_model(config) -> Any:
  """The run's network as JAX evaluates it (default depthwise form), in float32."""
  return models_lib.from_config(config, dtype="float32")


def jax_probabilities(run, images: np.ndarray) -> np.ndarray:
  """(N, S, S, 1) probabilities of uint8 `images` as evaluation computes them (the reference)."""
  return inference.predict_probabilities(reference_model(run.config), run.variables,
                                         images)[..., None]


@dataclasses.dataclass
class Parity:
  """How the exported model agrees with the JAX model on a few validation images."""
  quantization: str
  n_images: int
  max_abs_diff: float | None  # probabilities; None for a mask model
  mean_mask_ja: float  # JA(exported mask, JAX mask) over decided pixels, mean over images
  min_mask_ja: float
  mean_mask_ja_all_pixels: float  # the same over every pixel, for information
  undecided_fraction: float  # pixels within the tolerance of the threshold
  flipped_decided_pixels: int
  bound: str
  passed: bool

  def summary(self) -> str:
    diff = "" if self.max_abs_diff is None else f"max |diff| {self.max_abs_diff:.2e}; "
    verdict = "passed" if self.passed else "FAILED"
    return (f"parity on {self.n_images} validation images: {diff}mask JA {self.mean_mask_ja:.4f} "
            f"(min {self.min_mask_ja:.4f}; {self.mean_mask_ja_all_pixels:.4f} counting the "
            f"{100 * self.undecided_fraction:.1f}% undecided pixels); bound {self.bound}: "
            f"{verdict}")


def mask_agreement(masks: np.ndarray, reference: np.ndarray,
                   counted: np.ndarray | None = None) -> np.ndarray:
  """Per-image JA of binary `masks` against `reference` over the `counted` pixels, (N,).

  An image with no lesion pixel in either mask (among those counted) scores 1.0, as in the
  ISIC metrics.
  """
  n = len(masks)
  masks = masks.reshape(n, -1).astype(bool)
  reference = reference.reshape(n, -1).astype(bool)
  counted = np.ones_like(masks) if counted is None else counted.reshape(n, -1).astype(bool)
  tp = np.count_nonzero(masks & reference & counted, axis=1)
  fp = np.count_nonzero(masks & ~reference & counted, axis=1)
  fn = np.count_nonzero(~masks & reference & counted, axis=1)
  tn = np.count_nonzero(counted, axis=1) - tp - fp - fn
  return metrics_lib.isic_metrics(np.stack([tp, fp, fn, tn], axis=-1))["ja"]


def compare_outputs(outputs: np.ndarray, reference_probs: np.ndarray,
                    quantization: Quantization, threshold: float, thresholded: bool) -> Parity:
  """Exported outputs against JAX probabilities of the same images; both (N, S, S, 1).

  float32 probability models: max |diff| < tolerance. float32 mask models: no decided pixel
  (JAX probability more than the tolerance from the threshold) may change label. Quantised
  models: mean JA over decided pixels >= the quantisation's bound.
  """
  reference_probs = np.asarray(reference_probs, np.float32)
  reference_masks = reference_probs >= np.float32(threshold)
  if thresholded:
    masks, max_abs_diff = np.asarray(outputs).astype(bool), None
  else:
    outputs = np.asarray(outputs, np.float32)
    masks = outputs >= np.float32(threshold)
    max_abs_diff = float(np.max(np.abs(outputs - reference_probs)))
  decided = np.abs(reference_probs - np.float32(threshold)) > quantization.tolerance
  ja = mask_agreement(masks, reference_masks, decided)
  flipped = int(np.count_nonzero((masks != reference_masks) & decided))
  if quantization.min_mask_ja is not None:
    bound = (f"mean mask JA >= {quantization.min_mask_ja} over pixels more than "
             f"{quantization.tolerance:g} from the threshold")
    passed = float(ja.mean()) >= quantization.min_mask_ja
  elif thresholded:
    bound = f"same label wherever |probability - threshold| > {quantization.tolerance:g}"
    passed = flipped == 0
  else:
    bound = f"max |diff| < {quantization.tolerance:g}"
    passed = max_abs_diff < quantization.tolerance
  return Parity(quantization=quantization.name, n_images=len(reference_probs),
                max_abs_diff=max_abs_diff, mean_mask_ja=float(ja.mean()),
                min_mask_ja=float(ja.min()),
                mean_mask_ja_all_pixels=float(mask_agreement(masks, reference_masks).mean()),
                undecided_fraction=float(1 - decided.mean()), flipped_decided_pixels=flipped,
                bound=bound, passed=bool(passed))


def check_parity(interpreter, reference_probs: np.ndarray, images: np.ndarray,
                 quantization: Quantization, threshold: float, thresholded: bool) -> Parity:
  """Runs `images` (N, S, S, 3) uint8 through the interpreter and compares with the JAX model.

  Args:
    reference_probs: (N, S, S, 1) JAX probabilities of the same images.
    thresholded: the model outputs {0, 1} masks rather than probabilities.
  """
  outputs = np.concatenate([run_interpreter(interpreter, image[None]) for image in images])
  return compare_outputs(outputs, reference_probs, quantization, threshold, thresholded)


def median_latency_ms(interpreter, image_size, runs: int = 20, warmup: int = 2) -> float:
  """Median wall time of one invocation, in ms, after `warmup` untimed ones."""
  shape = (1, *pipeline.image_shape(image_size), 3)
  image = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
  (input_detail,) = interpreter.get_input_details()
  interpreter.set_tensor(input_detail["index"], image)
  for _ in range(warmup):
    interpreter.invoke()
  times = []
  for _ in range(max(1, runs)):
    start = time.perf_counter()
    interpreter.invoke()
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def validation_images(config, count: int) -> np.ndarray:
  """The first `count` validation images of the run's training datasets, (N, S, S, 3) uint8.

  The builders are opened as `loading.load_datasets` opens them (same options), but only the
  validation splits are read; images are resized as evaluation resizes them.
  """
  from lesion_jax.data import loading

  size = pipeline.image_shape(config.data.image_size)
  images = []
  for name in config_lib.dataset_names(config.data.train, "data.train"):
    if len(images) >= count:
      break
    builder = loading.get_builder(config, name)
    if "validation" not in builder.info.splits:
      continue
    source = builder.as_data_source("validation")
    for i in range(min(count - len(images), len(source))):
      example = source[i]
      image, _ = pipeline.resize_pair(np.asarray(example["image"]), np.asarray(example["mask"]),
                                      size)
      images.append(image)
  if not images:
    raise ExportError(f"the run's datasets {tuple(config.data.train)} have no validation images "
                      "for the parity check")
  return np.stack(images).astype(np.uint8)
