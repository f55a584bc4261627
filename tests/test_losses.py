"""The five losses against NumPy, their gradients, and the registry's error."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lesion_jax import losses
from lesion_jax.registry import UnknownNameError

NAMES = ("ce", "dice", "jaccard", "ce_log_jaccard", "ce_log_dice")


def _batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """4 images of 16x24: random, empty mask, full mask, a blob."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(0.0, 3.0, size=(4, 16, 24, 1)).astype(np.float32)
  masks = np.zeros((4, 16, 24, 1), np.uint8)
  masks[0] = rng.random((16, 24, 1)) < 0.3
  masks[2] = 1
  masks[3, 4:12, 6:18] = 1
  return logits, masks


def _numpy_loss(name: str, logits: np.ndarray, masks: np.ndarray) -> np.ndarray:
  x = logits.astype(np.float64).reshape(len(logits), -1)
  y = masks.astype(np.float64).reshape(len(masks), -1)
  p = 1.0 / (1.0 + np.exp(-x))
  ce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p), axis=1)
  inter = np.sum(p * y, axis=1)
  dice = (2 * inter + 1.0) / (p.sum(1) + y.sum(1) + 1.0)
  jac = (inter + 1.0) / (p.sum(1) + y.sum(1) - inter + 1.0)
  return {"ce": ce, "dice": 1 - dice, "jaccard": 1 - jac,
          "ce_log_jaccard": ce - np.log(jac), "ce_log_dice": ce - np.log(dice)}[name]


def test_registry_holds_the_five_losses():
  assert losses.LOSSES.names() == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_loss_matches_numpy_per_image(name):
  logits, masks = _batch()
  got = jax.jit(losses.get_loss(name))(logits, masks)
  assert got.shape == (4,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _numpy_loss(name, logits, masks), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_logits_and_float_masks(name):
  logits, masks = _batch(1)
  got = losses.get_loss(name)(jnp.asarray(logits, jnp.bfloat16), masks.astype(np.float32))
  assert got.dtype == jnp.float32
  rounded = np.asarray(jnp.asarray(logits, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(got, _numpy_loss(name, rounded, masks), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_for_empty_masks_and_saturated_logits(name):
  logits, masks = _batch()
  logits[1] = -40.0  # empty mask, confidently empty prediction
  logits[2, :4] = 40.0  # full mask, saturated
  grad = jax.grad(lambda x: jnp.mean(losses.get_loss(name)(x, masks)))(logits)
  assert np.all(np.isfinite(grad))
  assert np.any(grad != 0)


@pytest.mark.parametrize("name", ["dice", "jaccard", "ce_log_jaccard", "ce_log_dice"])
def test_empty_mask_with_empty_prediction_is_near_zero(name):
  logits = np.full((1, 16, 24, 1), -20.0, np.float32)
  masks = np.zeros((1, 16, 24, 1), np.uint8)
  loss = losses.get_loss(name)(logits, masks)
  assert np.isfinite(loss).all() and float(loss[0]) < 1e-4


def test_soft_overlap_of_a_perfect_prediction_is_one():
  _, masks = _batch()
  logits = np.where(masks > 0, 30.0, -30.0).astype(np.float32)
  np.testing.assert_allclose(losses.soft_dice(logits, masks), 1.0, atol=1e-6)
  np.testing.assert_allclose(losses.soft_jaccard(logits, masks), 1.0, atol=1e-6)


def test_unknown_loss_lists_valid_names():
  with pytest.raises(UnknownNameError) as info:
    losses.get_loss("focal")
  message = str(info.value)
  assert "'focal'" in message
  for name in NAMES:
    assert name in message


def test_shape_mismatch_is_a_clear_error():
  logits, masks = _batch()
  with pytest.raises(ValueError, match=r"logits shape \(4, 16, 24, 1\) != masks shape"):
    losses.get_loss("dice")(logits, masks[..., 0])
