"""The training loop's decisions as functions: early stopping, the best checkpoint, resuming
them, divergence, the calls' plan and a collapsed model. Each is checked against a plain
reference written here, without training."""
import json
import math
import types

import numpy as np
import pytest

from lesion_jax import evaluation, loop, metrics


def keras_early_stopping(scores, patience):
  """The paper's rule (Keras EarlyStopping, mode max, min_delta 0), written plainly: per
  evaluation (improved, should stop), stopping once `patience` in a row brought no better score."""
  best, wait, out = -math.inf, 0, []
  for score in scores:
    improved = score > best
    if improved:
      best, wait = score, 0
    else:
      wait += 1
    out.append((improved, not improved and wait >= patience))
  return out


@pytest.mark.parametrize("patience", [0, 1, 2, 3, 5])
def test_early_stopping_matches_keras(patience):
  rng = np.random.default_rng(patience)
  for _ in range(20):
    # Plateaus and ties too: a score equal to the best is no improvement.
    scores = list(np.round(rng.uniform(0.5, 0.9, size=15), 1))
    state = loop.LoopState()
    reference = keras_early_stopping(scores, patience)
    for step, (score, (improved, stop)) in enumerate(zip(scores, reference), start=1):
      assert state.record_validation(float(score), step, patience) == improved
      assert state.should_stop == stop
      if stop:
        break
    seen = scores[:step]
    assert state.best_val_ja == max(seen)
    assert state.best_step == seen.index(max(seen)) + 1


def test_loop_state_resumes_its_decisions_through_the_checkpoint_meta():
  scores = [0.5, 0.7, 0.6, 0.65, 0.7, 0.8, 0.75, 0.74, 0.73]
  whole = loop.LoopState()
  for step, score in enumerate(scores, start=1):
    whole.record_validation(score, step, patience=3)
  for cut in range(len(scores) + 1):
    first = loop.LoopState()
    for step, score in enumerate(scores[:cut], start=1):
      first.record_validation(score, step, patience=3)
    resumed = loop.LoopState.from_meta(json.loads(json.dumps(first.to_meta())))
    for step, score in enumerate(scores[cut:], start=cut + 1):
      resumed.record_validation(score, step, patience=3)
    assert resumed.to_meta() == whole.to_meta()
  assert whole.best_val_ja == 0.8 and whole.best_step == 6 and whole.should_stop


def test_loop_state_reads_the_meta_of_earlier_versions():
  meta = {"best_val_ja": 0.61, "best_step": 40, "es_count": 2, "should_stop": False,
          "es_best": 0.61, "train_seconds": 12.5, "images_per_second": 30.0, "init_from": None}
  state = loop.LoopState.from_meta(meta)
  assert (state.best_val_ja, state.best_step, state.evaluations_without_improvement) == (
      0.61, 40, 2)
  assert not state.record_validation(0.6, 50, patience=3) and state.should_stop


def test_going_on_from_the_best_checkpoint_keeps_its_score():
  state = loop.LoopState.after_best(0.7, 120, None)
  assert state.best_val_ja == 0.7 and state.best_step == 120
  assert not state.record_validation(0.7, 140, patience=2)
  assert state.record_validation(0.71, 160, patience=2) and state.best_step == 160


def _training(factor=100.0, reference_steps=3):
  return types.SimpleNamespace(divergence_factor=factor,
                               divergence_reference_steps=reference_steps)


def reference_divergence(losses, factor, reference_steps):
  """The index of the first diverged loss (or None), and the reference mean, written plainly."""
  reference = []
  for i, loss in enumerate(losses):
    if not np.isfinite(loss):
      return i, None
    if factor and reference and loss > factor * np.mean(reference):
      return i, np.mean(reference)
    if len(reference) < reference_steps:
      reference.append(loss)
  return None, np.mean(reference)


@pytest.mark.parametrize("losses", [
    [1.0, 0.9, 0.8, 0.7, 0.6],  # a healthy run
    [1.0, 0.9, np.nan, 0.5],  # NaN
    [1.0, np.inf],  # infinite
    [1.0, 1.2, 0.9, 50.0, 200.0, 3e12],  # exploding: above 100x the mean of the first 3
    [1.0, 150.0],  # above 100x the first step alone
])
def test_divergence_matches_a_plain_reference(losses):
  state = loop.LoopState()
  found = None
  for i, loss in enumerate(losses):
    if loop.divergence(float(loss), state, _training()):
      found = i
      break
  expected, reference = reference_divergence(losses, 100.0, 3)
  assert found == expected
  if reference is not None and found is None:
    assert state.loss_reference == pytest.approx(reference)


def test_divergence_factor_zero_checks_only_finiteness():
  state = loop.LoopState()
  assert loop.divergence(1.0, state, _training(factor=0.0)) is None
  assert loop.divergence(1e9, state, _training(factor=0.0)) is None
  assert "nan" in loop.divergence(float("nan"), state, _training(factor=0.0))


def reference_plan(start, total, per_call, every):
  """One step at a time: a call ends after `per_call` steps or at a multiple of `every`."""
  plan, count = [], 0
  for step in range(start + 1, total + 1):
    count += 1
    if count == per_call or step == total or any(e and step % e == 0 for e in every):
      plan.append((step, count))
      count = 0
  return plan


@pytest.mark.parametrize("start,total,per_call,every", [
    (0, 50, 1, (20, 7, None)), (0, 50, 4, (20, 7, None)), (13, 61, 8, (10, 25, 6)),
    (0, 9, 16, (None, None, None)), (40, 40, 4, (20, 5, None))])
def test_dispatch_plan_matches_stepping_one_at_a_time(start, total, per_call, every):
  assert loop.dispatch_plan(start, total, per_call, every) == reference_plan(
      start, total, per_call, every)


def _evaluation_of(called_lesion, lesion):
  """An Evaluation whose every threshold predicts `called_lesion` of 100 pixels per image."""
  counts = []
  for called, truth in zip(called_lesion, lesion):
    tp = min(called, truth)
    row = np.zeros(4, np.int64)
    row[metrics.TP], row[metrics.FP] = tp, called - tp
    row[metrics.FN], row[metrics.TN] = truth - tp, 100 - called - (truth - tp)
    counts.append(np.repeat(row[None], len(metrics.THRESHOLDS), 0))
  return evaluation.Evaluation(counts=np.stack(counts), loss=np.zeros(len(counts)),
                               index=np.arange(len(counts)))


@pytest.mark.parametrize("called,warned", [
    ([100, 100, 100], "lesion at every pixel"), ([0, 0, 0], "background at every pixel"),
    ([100, 30, 0], None), ([40, 100, 100], None)])
def test_a_collapsed_model_is_named_in_a_warning(called, warned):
  warnings = evaluation.collapse_warnings(_evaluation_of(called, [30, 50, 20]), 0, 0.5)
  if warned is None:
    assert warnings == []
  else:
    assert len(warnings) == 1 and warned in warnings[0]
