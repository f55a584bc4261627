"""ISIC metrics against the official scorer and NumPy; counts at many thresholds; the search."""
from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest
from isic_challenge_scoring import metrics as isic
from isic_challenge_scoring.confusion import create_binary_confusion_matrix

from lesion_jax import metrics

H, W = 16, 24
# Our key -> the official scorer's function (SegmentationScore uses these with threshold 0.65).
OFFICIAL = {
    "tja": lambda cm: isic.binary_threshold_jaccard(cm, threshold=0.65),
    "ja": isic.binary_jaccard,
    "di": isic.binary_dice,
    "ac": isic.binary_accuracy,
    "se": isic.binary_sensitivity,
    "sp": isic.binary_specificity,
}


def _edge_case_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Probabilities and {0,1} masks (B, H, W, 1) covering the ISIC edge cases."""
  rng = np.random.default_rng(seed)
  probs = rng.random((9, H, W, 1)).astype(np.float32)
  masks = (rng.random((9, H, W, 1)) < 0.4).astype(np.uint8)
  masks[0] = 0; probs[0] = 0.1          # empty truth, empty prediction -> ja = di = se = 1
  masks[1] = 0                          # empty truth, some prediction -> ja = 0, se = 1
  masks[2] = 1                          # full truth -> sp = 1
  masks[3] = 1; probs[3] = 0.9          # full truth, full prediction
  masks[4, :, :12] = 1; masks[4, :, 12:] = 0
  probs[4] = 0.2                        # lesion, empty prediction -> ja = 0, sp = 1
  masks[5] = 0; masks[5, 4:12, 4:20] = 1
  probs[5] = np.where(masks[5] > 0, 0.8, 0.3)  # perfect
  probs[5, 4:12, 4:8] = 0.3             # ja = 0.75 -> tja kept
  masks[6] = 0; masks[6, 2:14, 2:22] = 1
  probs[6] = 0.3; probs[6, 2:8, 2:22] = 0.8    # ja = 0.5 -> tja = 0
  return probs, masks


def _official_per_image(probs, masks, threshold) -> dict[str, np.ndarray]:
  rows = [create_binary_confusion_matrix(truth_binary_values=m > 0.5,
                                         prediction_binary_values=p >= threshold)
          for p, m in zip(probs, masks)]
  return {key: np.array([fn(cm) for cm in rows]) for key, fn in OFFICIAL.items()}


def _numpy_counts(probs, masks, threshold) -> np.ndarray:
  pred = (probs >= threshold).reshape(len(probs), -1)
  truth = (masks > 0.5).reshape(len(masks), -1)
  return np.stack([(pred & truth).sum(1), (pred & ~truth).sum(1),
                   (~pred & truth).sum(1), (~pred & ~truth).sum(1)], axis=1)


def test_confusion_counts_match_numpy_and_official_matrix():
  probs, masks = _edge_case_batch()
  counts = jax.jit(metrics.confusion_counts)(probs, masks, 0.5)
  assert counts.shape == (9, 4) and counts.dtype == np.int32
  np.testing.assert_array_equal(counts, _numpy_counts(probs, masks, 0.5))
  official = create_binary_confusion_matrix(truth_binary_values=masks[6] > 0.5,
                                            prediction_binary_values=probs[6] >= 0.5)
  assert list(np.asarray(counts[6])) == [official.TP, official.FP, official.FN, official.TN]


def test_threshold_is_inclusive():
  probs = np.full((1, 2, 2), 0.5, np.float32)
  masks = np.ones((1, 2, 2), np.uint8)
  assert np.asarray(metrics.confusion_counts(probs, masks, 0.5)).tolist() == [[4, 0, 0, 0]]


@pytest.mark.parametrize("threshold", [0.5, 0.75])
def test_per_image_metrics_match_official_scorer_and_numpy(threshold):
  probs, masks = _edge_case_batch()
  got = metrics.isic_metrics(metrics.confusion_counts(probs, masks, threshold))
  official = _official_per_image(probs, masks, threshold)
  assert set(got) == set(metrics.METRIC_NAMES)
  for key in metrics.METRIC_NAMES:
    np.testing.assert_allclose(got[key], official[key], rtol=0, atol=1e-12, err_msg=key)

  # Plain NumPy, written from the ISIC 2018 definitions.
  tp, fp, fn, tn = _numpy_counts(probs, masks, threshold).T.astype(float)
  with np.errstate(invalid="ignore", divide="ignore"):
    ja = np.where(tp + fp + fn == 0, 1.0, tp / (tp + fp + fn))
    np.testing.assert_allclose(got["ja"], ja)
    di = np.where(tp + fp + fn == 0, 1.0, 2 * tp / (2 * tp + fp + fn))
    np.testing.assert_allclose(got["di"], di)
    np.testing.assert_allclose(got["se"], np.where(tp + fn == 0, 1.0, tp / (tp + fn)))
    np.testing.assert_allclose(got["sp"], np.where(tn + fp == 0, 1.0, tn / (tn + fp)))
  np.testing.assert_allclose(got["ac"], (tp + tn) / (H * W))
  np.testing.assert_allclose(got["tja"], np.where(ja >= 0.65, ja, 0.0))


def test_edge_case_values():
  probs, masks = _edge_case_batch()
  m = metrics.isic_metrics(metrics.confusion_counts(probs, masks, 0.5))
  assert (m["ja"][0], m["di"][0], m["se"][0], m["sp"][0], m["ac"][0]) == (1, 1, 1, 1, 1)
  assert (m["ja"][1], m["di"][1], m["se"][1]) == (0, 0, 1)
  assert m["sp"][2] == 1 and m["sp"][3] == 1 and m["ja"][3] == 1
  assert (m["ja"][4], m["se"][4], m["sp"][4]) == (0, 0, 1)
  assert m["ja"][5] == pytest.approx(0.75) and m["tja"][5] == pytest.approx(0.75)
  assert m["ja"][6] == pytest.approx(0.5) and m["tja"][6] == 0


def test_macro_average_matches_official_segmentation_score_and_differs_from_pooled():
  probs, masks = _edge_case_batch()
  counts = np.asarray(metrics.confusion_counts(probs, masks, 0.5))
  got = metrics.macro_average(counts)
  official = pd.DataFrame(_official_per_image(probs, masks, 0.5)).mean(axis="index")
  for key in metrics.METRIC_NAMES:
    assert got[key] == pytest.approx(official[key], abs=1e-12)
    assert isinstance(got[key], float) and 0.0 <= got[key] <= 1.0



def test_macro_average_is_not_pooled():
  # A large lesion found perfectly and a 2-pixel lesion missed: per image ja = 1 and 0, so the
  # macro average is 0.5, while pooling the pixels would give 96/98.
  masks = np.zeros((2, H, W, 1), np.uint8)
  masks[0, 4:12, 6:18] = 1
  masks[1, 0, :2] = 1
  probs = np.where(masks > 0, 0.9, 0.1).astype(np.float32)
  probs[1] = 0.1
  counts = np.asarray(metrics.confusion_counts(probs, masks, 0.5))
  got = metrics.macro_average(counts)
  assert got["ja"] == pytest.approx(0.5) and got["tja"] == pytest.approx(0.5)
  assert got["se"] == pytest.approx(0.5)
  tp, fp, fn, _ = counts.sum(axis=0)
  assert tp / (tp + fp + fn) == pytest.approx(96 / 98)


def test_macro_average_rejects_no_images():
  with pytest.raises(ValueError, match="N >= 1"):
    metrics.macro_average(np.zeros((0, 4), np.int32))


@pytest.mark.parametrize("thresholds", [metrics.THRESHOLDS, np.array([0.9, 0.2, 0.6, 0.6, 0.0])])
def test_counts_at_thresholds_equal_the_loop(thresholds):
  probs, masks = _edge_case_batch(3)
  # Put probabilities exactly on grid points too, where >= vs > matters.
  probs[7].flat[:len(thresholds)] = np.asarray(thresholds, np.float32)
  got = jax.jit(metrics.confusion_counts_at_thresholds)(probs, masks, thresholds)
  assert got.shape == (9, len(thresholds), 4) and got.dtype == np.int32
  loop = np.stack([metrics.confusion_counts(probs, masks, t) for t in thresholds], axis=1)
  np.testing.assert_array_equal(got, loop)


def test_counts_at_thresholds_accepts_bfloat16_probs_and_3d_masks():
  probs, masks = _edge_case_batch(4)
  probs = jax.numpy.asarray(probs[..., 0], jax.numpy.bfloat16)
  got = metrics.confusion_counts_at_thresholds(probs, masks[..., 0], metrics.THRESHOLDS)
  loop = np.stack([metrics.confusion_counts(probs, masks[..., 0], t)
                   for t in metrics.THRESHOLDS], axis=1)
  np.testing.assert_array_equal(got, loop)


def test_thresholds_grid_is_the_papers():
  assert len(metrics.THRESHOLDS) == 50
  assert metrics.THRESHOLDS[0] == 0.5 and metrics.THRESHOLDS[-1] == 1.0
  # The paper reports T = 0.52, 0.55 and 0.56: all on the grid to two decimals.
  for t in (0.52, 0.55, 0.56):
    assert np.min(np.abs(metrics.THRESHOLDS - t)) < 0.005


def test_select_threshold_picks_the_known_best():
  # Image 0's lesion pixels have probability 0.7 and its background 0.6, so every threshold in
  # (0.6, 0.7] separates it perfectly. Image 1 is a lesion at 0.8 on background 0.4: perfect for
  # (0.4, 0.8]. Only thresholds in (0.6, 0.7] are perfect on both; the lowest grid point there
  # is THRESHOLDS[11] = 0.6122...
  masks = np.zeros((2, H, W, 1), np.uint8)
  masks[:, 4:12, 6:18] = 1
  probs = np.where(masks > 0, 0.7, 0.6).astype(np.float32)
  probs[1] = np.where(masks[1] > 0, 0.8, 0.4)
  counts = np.asarray(metrics.confusion_counts_at_thresholds(probs, masks, metrics.THRESHOLDS))
  best, ja = metrics.select_threshold(counts, metrics.THRESHOLDS)
  assert ja.shape == (50,)
  expected = metrics.THRESHOLDS[(metrics.THRESHOLDS > 0.6) & (metrics.THRESHOLDS <= 0.7)]
  assert best == pytest.approx(expected.min())
  np.testing.assert_allclose(ja[np.isin(metrics.THRESHOLDS, expected)], 1.0)
  assert np.all(ja[~np.isin(metrics.THRESHOLDS, expected)] < 1.0)
  # The same search with the grid given in reverse order picks the same threshold.
  best_rev, ja_rev = metrics.select_threshold(counts[:, ::-1], metrics.THRESHOLDS[::-1])
  assert best_rev == best
  np.testing.assert_allclose(ja_rev, ja[::-1])


def test_select_threshold_checks_shapes():
  with pytest.raises(ValueError, match="thresholds for counts at 50"):
    metrics.select_threshold(np.zeros((2, 50, 4), np.int32), np.linspace(0.5, 1, 10))


def test_drop_padding_removes_padded_examples_from_pmapped_layout():
  probs, masks = _edge_case_batch()
  counts = np.asarray(metrics.confusion_counts_at_thresholds(probs, masks, metrics.THRESHOLDS))
  # As a pmapped eval step returns them: 2 devices x 5 examples, the last one padding.
  padded = np.concatenate([counts, np.zeros((1, 50, 4), counts.dtype)]).reshape(2, 5, 50, 4)
  valid = np.arange(10).reshape(2, 5) < 9
  kept = metrics.drop_padding(padded, valid)
  np.testing.assert_array_equal(kept, counts)
  # Zero counts would score a perfect ja = 1 had they been kept.
  assert metrics.isic_metrics(padded[1, 4, 0])["ja"] == 1.0
  with pytest.raises(ValueError, match="does not match"):
    metrics.drop_padding(padded, valid.reshape(-1))
