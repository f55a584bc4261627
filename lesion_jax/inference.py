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


def forward(apply_fn: Callable, variables: Mapping[str, Any],
            images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(B, H, W, 3) RGB pixels (uint8, 0-255) -> (logits, float32 sigmoid probabilities), each
  (B, H, W, 1); evaluation needs both (its loss takes the logits).

  Pure and jittable. The sigmoid is taken in float32: bfloat16 steps by 0.004 in [0.5, 1),
  which would blur the 0.01 grid of the threshold search.
  """
  logits = apply_fn(model_variables(variables), standardize(images), train=False)
  return logits, jax.nn.sigmoid(logits.astype(jnp.float32))


def probabilities(apply_fn: Callable, variables: Mapping[str, Any],
                  images: jax.Array) -> jax.Array:
  """(B, H, W, 3) RGB pixels -> (B, H, W, 1) float32 lesion probabilities."""
  return forward(apply_fn, variables, images)[1]


@functools.lru_cache(maxsize=16)
def jitted_probabilities(model) -> Callable:
  """`probabilities` of `model` as one jitted function of (variables, images).

  One per model setting (flax modules compare by their fields). The variables are an
  argument, not constants baked into the program: a 41M-parameter model would otherwise
  compile slowly.
  """
  return jax.jit(functools.partial(probabilities, model.apply))


def predict_probabilities(model, variables: Mapping[str, Any], images: np.ndarray,
                          batch_size: int | None = None,
                          compiled: Callable | None = None) -> np.ndarray:
  """(N, H, W, 3) uint8 RGB images at the model's size -> (N, H, W) float32 probabilities.

  With `batch_size`, images go through in batches of exactly that size, the last one padded
  with zero images (as evaluation pads), so any number of images costs one compilation.
  `compiled` is a `jitted_probabilities` of the caller's own, to count its compilations.
  """
  images = np.asarray(images)
  if batch_size is None or len(images) == 0:
    batch_size = max(1, len(images))
  apply = compiled or jitted_probabilities(model)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    padded = np.concatenate(
        [chunk, np.zeros((batch_size - len(chunk),) + images.shape[1:], images.dtype)])
    out.append(np.asarray(apply(variables, padded))[:len(chunk), ..., 0])
  return np.concatenate(out) if out else np.zeros(images.shape[:3], np.float32)


def predict_examples(model, variables: Mapping[str, Any], examples: Sequence[Mapping[str, Any]],
                     size) -> np.ndarray:
  """(N, H, W) probabilities of raw dataset examples, resized as evaluation resizes them."""
  from lesion_jax.data import pipeline

  height, width = pipeline.image_shape(size)
  if not examples:
    return np.zeros((0, height, width), np.float32)
  images = np.stack([pipeline.prepare_example(e, size)["image"] for e in examples])
  return predict_probabilities(model, variables, images)


__all__ = ["forward", "jitted_probabilities", "model_variables", "predict_examples",
           "predict_probabilities", "probabilities", "standardize"]
