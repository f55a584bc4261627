"""The paper's five training losses ("Model Optimization"), selectable by name.

Every loss maps `(logits, masks) -> (B,)`, one value per image; the caller averages (and can
weight or mask padded examples first). `logits` are the model's pre-sigmoid outputs, shape
(B, H, W, 1), any float dtype (bfloat16 included); `masks` hold {0, 1} in any numeric dtype with
the same shape. Everything is computed in float32.

The soft Dice (DI) and soft Jaccard (JA) coefficients use the sigmoid probabilities in place of a
binary prediction and are computed *per image*, as the paper motivates them: each sample's score
is normalised by its own lesion size, which reduces the effect of the foreground/background
imbalance within each sample.

Smoothing: soft DI and JA add `SMOOTH = 1.0` (one pixel's worth) to numerator and denominator.
- An empty mask with an empty prediction scores DI = JA = 1 (loss 0) instead of 0/0 = NaN.
- `-log JA` and `-log DI` stay finite, and so do their gradients, because the coefficient can
  never reach 0.
- One pixel is negligible against lesion areas of hundreds or thousands of pixels, so the
  coefficient of a real lesion is essentially unchanged. This is the value used by the common
  Keras implementations of these losses of the paper's time.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from lesion_jax.registry import Registry

LossFn = Callable[[jax.Array, jax.Array], jax.Array]

# One pixel of smoothing; see the module docstring for why.
SMOOTH = 1.0

LOSSES: Registry[LossFn] = Registry("loss")


def _as_float32(logits: jax.Array, masks: jax.Array) -> tuple[jax.Array, jax.Array]:
  # Shapes are static under jit, so this check costs nothing at run time and turns a silent
  # broadcast (e.g. (B,H,W) against (B,H,W,1)) into a clear error.
  if logits.shape != masks.shape:
    raise ValueError(f"logits shape {logits.shape} != masks shape {masks.shape}; expected both "
                     "(batch, height, width, 1)")
  if logits.ndim < 2:
    raise ValueError(f"expected (batch, ...) inputs, got shape {logits.shape}")
  return jnp.asarray(logits, jnp.float32), jnp.asarray(masks, jnp.float32)


def _per_image_sum(x: jax.Array) -> jax.Array:
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def soft_dice(logits: jax.Array, masks: jax.Array, smooth: float = SMOOTH) -> jax.Array:
  """Per-image soft DI = (2 sum(p*y) + s) / (sum(p) + sum(y) + s), p = sigmoid(logits); (B,)."""
  logits, masks = _as_float32(logits, masks)
  probs = jax.nn.sigmoid(logits)
  intersection = _per_image_sum(probs * masks)
  total = _per_image_sum(probs) + _per_image_sum(masks)
  return (2.0 * intersection + smooth) / (total + smooth)


def soft_jaccard(logits: jax.Array, masks: jax.Array, smooth: float = SMOOTH) -> jax.Array:
  """Per-image soft JA = (sum(p*y) + s) / (sum(p) + sum(y) - sum(p*y) + s); (B,)."""
  logits, masks = _as_float32(logits, masks)
  probs = jax.nn.sigmoid(logits)
  intersection = _per_image_sum(probs * masks)
  union = _per_image_sum(probs) + _per_image_sum(masks) - intersection
  return (intersection + smooth) / (union + smooth)


@LOSSES.register("ce")
def cross_entropy_loss(logits: jax.Array, masks: jax.Array) -> jax.Array:
  """Sigmoid binary cross-entropy (CE), mean over the pixels of each image; (B,)."""
  logits, masks = _as_float32(logits, masks)
  # optax computes it from the logits (log-sigmoid form), so saturated logits give no inf/NaN.
  per_pixel = optax.sigmoid_binary_cross_entropy(logits, masks)
  return jnp.mean(per_pixel, axis=tuple(range(1, per_pixel.ndim)))


@LOSSES.register("dice")
def soft_dice_loss(logits: jax.Array, masks: jax.Array) -> jax.Array:
  """1 - soft DI per image; (B,)."""
  return 1.0 - soft_dice(logits, masks)


@LOSSES.register("jaccard")
def soft_jaccard_loss(logits: jax.Array, masks: jax.Array) -> jax.Array:
  """1 - soft JA per image; (B,)."""
  return 1.0 - soft_jaccard(logits, masks)


@LOSSES.register("ce_log_jaccard")
def ce_minus_log_jaccard_loss(logits: jax.Array, masks: jax.Array) -> jax.Array:
  """CE - log(soft JA) per image; (B,)."""
  return cross_entropy_loss(logits, masks) - jnp.log(soft_jaccard(logits, masks))


@LOSSES.register("ce_log_dice")
def ce_minus_log_dice_loss(logits: jax.Array, masks: jax.Array) -> jax.Array:
  """CE - log(soft DI) per image; (B,)."""
  return cross_entropy_loss(logits, masks) - jnp.log(soft_dice(logits, masks))


def get_loss(name: str) -> LossFn:
  """The per-image loss registered as `name`; an unknown name lists the valid ones."""
  return LOSSES.get(name)
