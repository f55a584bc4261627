"""ISIC 2018 Task 1 segmentation metrics from per-image confusion counts, and the threshold search.

The metrics follow the official challenge scorer (`isic-challenge-scoring` 5.6,
`isic_challenge_scoring.metrics.binary_*` and `segmentation.SegmentationScore`) exactly:
- ac = (TP + TN) / (TP + FP + FN + TN);
- se = TP / (TP + FN), and 1.0 when the truth has no lesion pixel (TP + FN = 0);
- sp = TN / (TN + FP), and 1.0 when the truth is all lesion (TN + FP = 0);
- ja = TP / (TP + FP + FN), and 1.0 when TP + FP + FN = 0 (empty truth, empty prediction);
- di = 2TP / (2TP + FP + FN), with the same 1.0 case;
- tja = ja if ja >= 0.65 else 0.
Every reported number is a macro average: the mean of the per-image values, never a metric of
counts pooled over pixels of all images (`macro_average`).

Binarisation:
- Predicted probabilities: lesion where `probs >= threshold`, so a threshold is the lowest
  probability still called lesion; the paper's thresholds 0.52..0.56 are points of THRESHOLDS.
- Ground truth: lesion where `masks > 0.5`, i.e. {0, 1} masks are taken as they are and a mask
  resized with interpolation is cut halfway.
- 0-255 PNG masks are scored by lesion_jax.score, which binarises `pixel > 128` as the official
  scorer does.

Device side (jnp, jit/pmap friendly): `confusion_counts`, `confusion_counts_at_thresholds` give
int32 counts [tp, fp, fn, tn] per image. Host side (NumPy): `isic_metrics`, `macro_average`,
`select_threshold` turn counts gathered over a whole evaluation set into metrics.

Padding: eval batches are padded to a fixed size, and a padded image must not count. Its counts
cannot be zeroed instead: an all-zero confusion matrix scores ja = 1. So counts are computed for
every example, and the host drops padded rows with `drop_padding(counts, valid)` before calling
`isic_metrics` / `macro_average` / `select_threshold`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# The paper's grid: "the JA was evaluated in 50 thresholds within the [0.5, 1] range".
THRESHOLDS = np.linspace(0.5, 1.0, 50)

# ISIC 2018: a Jaccard below this scores 0 in the thresholded Jaccard (the challenge metric).
TJA_CUTOFF = 0.65

METRIC_NAMES = ("tja", "ja", "di", "ac", "se", "sp")

# Column order of every counts array.
TP, FP, FN, TN = 0, 1, 2, 3


def _check_shapes(probs: jax.Array, masks: jax.Array) -> None:
  if probs.shape != masks.shape:
    raise ValueError(f"probs shape {probs.shape} != masks shape {masks.shape}; expected both "
                     "(batch, height, width[, 1])")
  if probs.ndim < 2:
    raise ValueError(f"expected (batch, ...) inputs, got shape {probs.shape}")


def _truth(masks: jax.Array) -> jax.Array:
  return jnp.asarray(masks) > 0.5


def confusion_counts(probs: jax.Array, masks: jax.Array, threshold: float | jax.Array) -> jax.Array:
  """Per-image [tp, fp, fn, tn] of `probs >= threshold` against `masks > 0.5`; (B, 4) int32.

  Args:
    probs: (B, H, W[, 1]) sigmoid probabilities, any float dtype (compared in float32). Take
      the sigmoid in float32: bfloat16 steps by 0.004 in [0.5, 1), which blurs the 0.01 grid.
    masks: same shape, {0, 1} ground truth, any numeric dtype.
    threshold: a scalar; may be traced.
  """
  _check_shapes(probs, masks)
  predicted = jnp.asarray(probs, jnp.float32) >= jnp.asarray(threshold, jnp.float32)
  truth = _truth(masks)
  axes = tuple(range(1, predicted.ndim))
  tp = jnp.sum(predicted & truth, axis=axes, dtype=jnp.int32)
  fp = jnp.sum(predicted & ~truth, axis=axes, dtype=jnp.int32)
  fn = jnp.sum(~predicted & truth, axis=axes, dtype=jnp.int32)
  pixels = int(np.prod(predicted.shape[1:]))
  return jnp.stack([tp, fp, fn, pixels - tp - fp - fn], axis=-1)


def confusion_counts_at_thresholds(probs: jax.Array, masks: jax.Array,
                                   thresholds: jax.Array | np.ndarray) -> jax.Array:
  """`confusion_counts` at every threshold at once; (B, T, 4) int32.

  Equal to stacking `confusion_counts(probs, masks, t)` over `thresholds`, but it never holds
  B*T*H*W values. Each pixel's probability is located once among the sorted thresholds
  (k = how many thresholds are <= p, so the pixel is lesion exactly at the k lowest thresholds).
  A histogram of k per image, split by the truth class, then gives every threshold's counts by a
  reverse cumulative sum. Memory: O(B*H*W + B*T).
  """
  _check_shapes(probs, masks)
  thresholds = jnp.asarray(thresholds, jnp.float32)
  if thresholds.ndim != 1:
    raise ValueError(f"thresholds must be 1-D, got shape {thresholds.shape}")
  num_thresholds = thresholds.shape[0]
  batch = probs.shape[0]
  # The caller's thresholds need not be sorted: sort them, and put the columns back at the end.
  order = jnp.argsort(thresholds)
  sorted_thresholds = thresholds[order]

  flat_probs = jnp.asarray(probs, jnp.float32).reshape(batch, -1)
  flat_truth = _truth(masks).reshape(batch, -1)
  pixels = flat_probs.shape[1]
  # side="right" counts thresholds t <= p, the same float32 comparison as `probs >= t`.
  k = jnp.searchsorted(sorted_thresholds, flat_probs, side="right")
  bins = num_thresholds + 1
  segment = (jnp.arange(batch)[:, None] * bins + k).reshape(-1)
  lesion_hist = jax.ops.segment_sum(flat_truth.reshape(-1).astype(jnp.int32), segment,
                                    num_segments=batch * bins).reshape(batch, bins)
  all_hist = jax.ops.segment_sum(jnp.ones_like(segment, jnp.int32), segment,
                                 num_segments=batch * bins).reshape(batch, bins)
  # Pixels called lesion at sorted threshold j are those with k > j: sum of bins j+1..T.
  lesion_above = jnp.cumsum(lesion_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
  all_above = jnp.cumsum(all_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
  lesion_pixels = jnp.sum(flat_truth, axis=1, dtype=jnp.int32)[:, None]

  tp = lesion_above
  fp = all_above - lesion_above
  fn = lesion_pixels - tp
  tn = (pixels - lesion_pixels) - fp
  counts_sorted = jnp.stack([tp, fp, fn, tn], axis=-1)
  return counts_sorted[:, jnp.argsort(order)]


def drop_padding(values: np.ndarray | jax.Array, valid: np.ndarray | jax.Array) -> np.ndarray:
  """The rows of the real examples only, as a host NumPy array (evaluation uses it for counts,
  losses and image indices alike).

  Args:
    values: (*lead, ...) per-example values, e.g. counts of shape (*lead, T, 4) with
      lead = (devices, per_device_batch) straight from a pmapped eval step, or (batch,).
    valid: (*lead) booleans (or 0/1), False where the example is padding.

  Returns:
    (N, ...) with N = the number of valid examples, in row-major order of `lead`.
  """
  values = np.asarray(values)
  valid = np.asarray(valid).astype(bool)
  if values.shape[:valid.ndim] != valid.shape:
    raise ValueError(f"valid shape {valid.shape} does not match the leading dims of "
                     f"{values.shape}")
  return values[valid]


def _ratio_or_one(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  # The official scorer scores an undefined ratio (0/0) as a perfect 1.0.
  safe = np.where(denominator == 0, 1, denominator)
  return np.where(denominator == 0, 1.0, numerator / safe)


def _as_counts(counts: np.ndarray | jax.Array) -> np.ndarray:
  counts = np.asarray(counts)
  if counts.ndim < 1 or counts.shape[-1] != 4:
    raise ValueError(f"expected counts of shape (..., 4) [tp, fp, fn, tn], got {counts.shape}")
  # int64 so that 2*TP and TP+TN+FP+FN cannot overflow on full-resolution images.
  return counts.astype(np.int64)


def isic_metrics(counts: np.ndarray | jax.Array) -> dict[str, np.ndarray]:
  """Per-image ISIC 2018 metrics from (..., 4) counts; float64 arrays of shape (...)."""
  counts = _as_counts(counts)
  tp, fp, fn, tn = (counts[..., i] for i in (TP, FP, FN, TN))
  ja = _ratio_or_one(tp, tp + fp + fn)
  # An image has pixels, so ac is always defined; a row of zeros (padding that was not dropped)
  # gets ac = NaN, which then shows in any mean instead of passing as a perfect score.
  with np.errstate(invalid="ignore"):
    accuracy = (tp + tn) / (tp + fp + fn + tn)
  return {
      "tja": np.where(ja >= TJA_CUTOFF, ja, 0.0),
      "ja": ja,
      "di": _ratio_or_one(2 * tp, 2 * tp + fp + fn),
      "ac": accuracy,
      "se": _ratio_or_one(tp, tp + fn),
      "sp": _ratio_or_one(tn, tn + fp),
  }


def macro_average(counts: np.ndarray | jax.Array) -> dict[str, float]:
  """The six metrics averaged over images (fractions in [0, 1]) from (N, 4) counts."""
  counts = _as_counts(counts)
  if counts.ndim != 2 or counts.shape[0] == 0:
    raise ValueError(f"expected (N, 4) counts with N >= 1 images, got shape {counts.shape}")
  return {name: float(np.mean(values)) for name, values in isic_metrics(counts).items()}


def select_threshold(counts_at_thresholds: np.ndarray | jax.Array,
                     thresholds: np.ndarray) -> tuple[float, np.ndarray]:
  """The paper's threshold search: the threshold with the best mean JA over images.

  Args:
    counts_at_thresholds: (N, T, 4) counts of the validation images, padding already dropped.
    thresholds: the T thresholds the counts were taken at (THRESHOLDS in the paper).

  Returns:
    (best_threshold, ja_per_threshold), ja_per_threshold of shape (T,). Ties, exact
    in floating point (e.g. the same binarisation at neighbouring thresholds), go to the lowest
    threshold: the most lesion-inclusive choice, and the same choice for any grid order.
  """
  counts = _as_counts(counts_at_thresholds)
  thresholds = np.asarray(thresholds, np.float64)
  if counts.ndim != 3 or counts.shape[0] == 0:
    raise ValueError(f"expected (N, T, 4) counts with N >= 1 images, got shape {counts.shape}")
  if thresholds.shape != (counts.shape[1],):
    raise ValueError(f"got {thresholds.shape} thresholds for counts at {counts.shape[1]}")
  ja_per_threshold = np.mean(isic_metrics(counts)["ja"], axis=0)
  best = ja_per_threshold == np.max(ja_per_threshold)
  return float(np.min(thresholds[best])), ja_per_threshold
