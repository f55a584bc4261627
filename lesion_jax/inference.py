"""Images to lesion probabilities: the one path every prediction takes.

Training and evaluation (inside the pmapped steps), the reports' overlays and Fig. 1 grids,
TensorBoard images, `python -m lesion_jax.predict` and the exported TFLite model all start from
RGB pixels at the training size and `standardize` them here, so a model is trained, judged,
drawn, used and exported through the same computation.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def standardize(images: jax.Array) -> jax.Array:
  """Per-image standardisation of (B, H, W, C) pixels: zero mean, unit variance over all pixels
  and channels of each image, in float32 (the paper's preprocessing).

  The standard deviation is floored at 1/sqrt(N), as tf.image.per_image_standardization does,
  so a flat image does not divide by zero.
  """
  images = images.astype(jnp.float32)
  count = math.prod(images.shape[1:])
  axes = tuple(range(1, images.ndim))
  mean = jnp.mean(images, axis=axes, keepdims=True)
  std = jnp.maximum(jnp.std(images, axis=axes, keepdims=True), 1.0 / math.sqrt(count))
  return (images - mean) / std


def model_variables(variables: Mapping[str, Any]) -> dict:
  """{'params', 'batch_stats'} as `model.apply` takes them; no empty batch_stats collection."""
  out = {"params": variables["params"]}
  if variables.get("batch_stats"):
    out["batch_stats"] = variables["batch_stats"]
  return out


# Test-time augmentation: the probabilities averaged over transformed copies of each image,
# each mapped back first. 'flips': the 4 flips; 'dihedral': the 8 symmetries of the square (the
# 4 flips for images that are not square, since a quarter turn would change their shape).
TTA_CHOICES = ("none", "flips", "dihedral")


def tta_transforms(tta: str, square: bool) -> list[tuple[bool, bool, bool]]:
  """(flip rows, flip columns, transpose) of each copy; the identity first."""
  if tta not in TTA_CHOICES:
    raise ValueError(f"tta must be one of {TTA_CHOICES}, got {tta!r}")
  if tta == "none":
    return [(False, False, False)]
  flips = [(rows, columns, False) for rows in (False, True) for columns in (False, True)]
  if tta == "flips" or not square:
    return flips
  return flips + [(rows, columns, True) for rows, columns, _ in flips]


def transform(x, flip_rows: bool, flip_columns: bool, transpose: bool):
  """A (B, H, W, ...) batch flipped, then transposed (works on jnp and NumPy arrays)."""
  x = x[:, :, ::-1] if flip_columns else x
  x = x[:, ::-1] if flip_rows else x
  return x.swapaxes(1, 2) if transpose else x


def untransform(x, flip_rows: bool, flip_columns: bool, transpose: bool):
  """The inverse of `transform`."""
  x = x.swapaxes(1, 2) if transpose else x
  x = x[:, ::-1] if flip_rows else x
  return x[:, :, ::-1] if flip_columns else x


def forward(apply_fn: Callable, variables: Mapping[str, Any], images: jax.Array,
            tta: str = "none") -> tuple[jax.Array, jax.Array]:
  """(B, H, W, 3) RGB pixels (uint8, 0-255) -> (logits, float32 sigmoid probabilities), each
  (B, H, W, 1); evaluation needs both (its loss takes the logits of the image as it is).

  Pure and jittable. The sigmoid is taken in float32: bfloat16 steps by 0.004 in [0.5, 1),
  which would blur the 0.01 grid of the threshold search. With `tta`, the probabilities are
  the mean over the transformed copies (standardisation does not depend on the pixels' order).
  The copies go through the model one after another in a `lax.map` (all have the image's shape:
  quarter turns are used on square images only), so the program holds one model, not one per
  copy: it compiles as quickly as without TTA, and runs at the caller's batch size (one batch of
  all the copies ran 50% slower on the CPU, and would take as many times the memory).
  """
  variables, standardized = model_variables(variables), standardize(images)
  copies = tta_transforms(tta, images.shape[1] == images.shape[2])
  if len(copies) == 1:
    logits = apply_fn(variables, standardized, train=False)
    return logits, jax.nn.sigmoid(logits.astype(jnp.float32))
  stacked = jnp.stack([transform(standardized, *choice) for choice in copies])
  logits = jax.lax.map(lambda x: apply_fn(variables, x, train=False), stacked)
  probs = jax.nn.sigmoid(logits.astype(jnp.float32))
  total = sum(untransform(probs[i], *choice) for i, choice in enumerate(copies))
  return logits[0], total / len(copies)


def probabilities(apply_fn: Callable, variables: Mapping[str, Any], images: jax.Array,
                  tta: str = "none") -> jax.Array:
  """(B, H, W, 3) RGB pixels -> (B, H, W, 1) float32 lesion probabilities."""
  return forward(apply_fn, variables, images, tta)[1]


@functools.lru_cache(maxsize=16)
def jitted_probabilities(model, tta: str = "none") -> Callable:
  """`probabilities` of `model` as one jitted function of (variables, images).

  One per model setting (flax modules compare by their fields). The variables are an
  argument, not constants baked into the program: a 41M-parameter model would otherwise
  compile slowly.
  """
  return jax.jit(functools.partial(probabilities, model.apply, tta=tta))


def predict_probabilities(model, variables: Mapping[str, Any], images: np.ndarray,
                          batch_size: int | None = None, compiled: Callable | None = None,
                          tta: str = "none") -> np.ndarray:
  """(N, H, W, 3) uint8 RGB images at the model's size -> (N, H, W) float32 probabilities.

  With `batch_size`, images go through in batches of exactly that size, the last one padded
  with zero images (as evaluation pads), so any number of images costs one compilation.
  `compiled` is a `jitted_probabilities` of the caller's own, to count its compilations.
  """
  images = np.asarray(images)
  if batch_size is None or len(images) == 0:
    batch_size = max(1, len(images))
  apply = compiled or jitted_probabilities(model, tta)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate(
        [chunk, np.zeros((batch_size - len(chunk),) + images.shape[1:], images.dtype)])
    out.append(np.asarray(apply(variables, padded))[:len(chunk), ..., 0])
  return np.concatenate(out) if out else np.zeros(images.shape[:3], np.float32)


# Images per call of the predictions made on the host (overlays, TensorBoard images, evaluation
# with post-processing): one batch size, padded, so they share one compiled program per model.
HOST_BATCH = 4


def predict_examples(model, variables: Mapping[str, Any], examples: Sequence[Mapping[str, Any]],
                     size, tta: str = "none", batch_size: int = HOST_BATCH) -> np.ndarray:
  """(N, H, W) probabilities of raw dataset examples, resized as evaluation resizes them."""
  from lesion_jax.data import pipeline

  height, width = pipeline.image_shape(size)
  if not examples:
    return np.zeros((0, height, width), np.float32)
  images = np.stack([pipeline.prepare_example(e, size)["image"] for e in examples])
  return predict_probabilities(model, variables, images, batch_size=batch_size, tta=tta)


__all__ = ["HOST_BATCH", "TTA_CHOICES", "forward", "jitted_probabilities", "model_variables",
           "predict_examples", "predict_probabilities", "probabilities", "standardize",
           "transform", "tta_transforms", "untransform"]
