"""Evaluation: every image of a split once, per-image confusion counts, the paper's protocol.

`evaluate` runs the pmapped eval step over a split and gathers per-image confusion counts at
every threshold of the grid (metrics.THRESHOLDS). `final_evaluation` is the end of a run (paper,
section 2.2): the best checkpoint, the binarisation threshold chosen on validation, the ISIC
metrics of every test database at it, then results.json and the reports.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import numpy as np

from lesion_jax import inference
from lesion_jax import metrics as metrics_lib
from lesion_jax import parallel, report, workdir as workdir_lib
from lesion_jax.data import pipeline


@dataclasses.dataclass
class Evaluation:
  """Per-image results of one pass over a split."""
  counts: np.ndarray  # (N, T, 4) confusion counts at every threshold
  loss: np.ndarray  # (N,)
  index: np.ndarray  # (N,) position in the source, to draw an image again

  def ja_at(self, threshold_index: int) -> float:
    return metrics_lib.macro_average(self.counts[:, threshold_index])["ja"]


def evaluate(p_eval_step: Callable, replicated_state, source, size, *,
             batch_size_per_device: int, num_devices: int, num_threads: int) -> Evaluation:
  """Every image of `source` through the eval step once; padding dropped after the gather."""
  counts, losses, indices, valid = [], [], [], []
  for batch in pipeline.evaluation_batches(
      source, size, batch_size_per_device=batch_size_per_device, num_devices=num_devices,
      num_threads=num_threads, process_index=parallel.process_index(),
      process_count=parallel.process_count()):
    out = parallel.to_host(p_eval_step(replicated_state,
                                       {"image": batch["image"], "mask": batch["mask"]}))
    counts.append(out["counts"])
    losses.append(out["loss"])
    indices.append(batch["index"].reshape(-1))
    valid.append(batch["valid"].reshape(-1))
  arrays = [np.concatenate(x) for x in (counts, losses, indices, valid)]
  if parallel.process_count() > 1:
    # The padding is dropped only after the gather: every process sends arrays of one shape
    # (as many batches each), while their counts of real images may differ by one.
    arrays = parallel.gather_from_processes(arrays)
  *arrays, keep = arrays
  return Evaluation(*(metrics_lib.drop_padding(a, keep) for a in arrays))


# ----------------------------------------------------------------------------------------------
# The end of a run.

def evaluate_on_host(model, variables, source, size, *, tta: str = "none",
                     postprocess: str = "none",
                     batch_size: int = inference.HOST_BATCH) -> Evaluation:
  """`evaluate` with the masks post-processed (lesion_jax/postprocess.py) before they are
  counted, which binarises at every threshold on the host. The losses are not computed (NaN)."""
  from lesion_jax import postprocess as postprocess_lib

  read = ((lambda i: source[i]) if isinstance(source, pipeline.DecodedSplit)
          else (lambda i: pipeline.prepare_example(source[i], size)))
  counts = []
  compiled = inference.jitted_probabilities(model, tta)
  for start in range(0, len(source), 64):  # a bounded share of the split in memory at once
    examples = [read(i) for i in range(start, min(start + 64, len(source)))]
    probs = inference.predict_probabilities(
        model, variables, np.stack([e["image"] for e in examples]), batch_size=batch_size,
        compiled=compiled)
    masks = np.stack([e["mask"][..., 0] for e in examples])
    counts.append(postprocess_lib.counts_at_thresholds(probs, masks, postprocess))
  counts = np.concatenate(counts)
  return Evaluation(counts=counts, loss=np.full(len(counts), np.nan),
                    index=np.arange(len(counts)))


def score_test_splits(evaluate_split: Callable, test_sources: dict,
                      t_index: int) -> tuple[dict, dict]:
  """Per test database: the macro-averaged metrics at threshold index `t_index`, and the
  per-image (Evaluation, metrics) pairs the reports need. `evaluate_split(source)` gives a
  split's Evaluation."""
  results, per_image = {}, {}
  for name, source in test_sources.items():
    if len(source) == 0:
      logging.warning("%s has an empty test split; it is not reported", name)
      continue
    evaluation = evaluate_split(source)
    counts = evaluation.counts[:, t_index]
    results[name] = {**metrics_lib.macro_average(counts), "n_images": int(len(counts))}
    per_image[name] = (evaluation, metrics_lib.isic_metrics(counts))
  return results, per_image


def threshold_search(validation: Evaluation) -> tuple[float, int, np.ndarray]:
  """(threshold, its index in metrics.THRESHOLDS, validation JA at every threshold)."""
  threshold, ja_curve = metrics_lib.select_threshold(validation.counts, metrics_lib.THRESHOLDS)
  t_index = int(np.argmin(np.abs(metrics_lib.THRESHOLDS - threshold)))
  return threshold, t_index, ja_curve


def validation_summary(validation: Evaluation, t_index: int, ja_curve: np.ndarray) -> dict:
  """All six metrics at T on validation: the paper's Table 2 reports these."""
  return {**metrics_lib.macro_average(validation.counts[:, t_index]),
          "ja": float(ja_curve[t_index]), "ja_at_0.5": float(ja_curve[0]),
          "n_images": int(len(validation.counts))}


def collapse_warnings(validation: Evaluation, t_index: int, threshold: float) -> list[str]:
  """A warning when the model calls every validation pixel lesion, or none: a constant mask.

  Such a model still gets metrics (an all-lesion mask scores JA = lesion area / image area),
  but they describe no segmentation; a too high learning rate is the usual cause.
  """
  counts = validation.counts[:, t_index]
  called_lesion = counts[:, metrics_lib.TP] + counts[:, metrics_lib.FP]
  pixels = counts.sum(axis=-1)
  n = len(counts)
  if n and np.all(called_lesion == pixels):
    what = "lesion at every pixel"
  elif n and np.all(called_lesion == 0):
    what = "background at every pixel"
  else:
    return []
  return [f"the model predicts {what} of all {n} validation images at T = {threshold:.2f}: it "
          "has collapsed to a constant mask, and its metrics describe no segmentation. Check "
          "config.optimizer.learning_rate and the loss."]


def image_ids(source, indices: np.ndarray) -> list[str]:
  ids = []
  for i in indices:
    image_id = source[int(i)]["image_id"]
    ids.append(image_id.decode() if isinstance(image_id, bytes) else str(image_id))
  return ids


def write_reports(workdir: str, results: dict, ja_curve: np.ndarray, per_image: dict,
                  test_sources: dict, model, variables, size, num_overlays: int,
                  tta: str = "none", postprocess: str = "none",
                  validation: tuple[Evaluation, int, str] | None = None) -> None:
  """results.md, the curves, per_image.csv and the overlays of the best and worst test images.

  `validation` (its Evaluation, the threshold's index and its databases' names) also writes
  per_image_validation.csv, its images named `<databases>#<position>`: a decoded split keeps no
  ids, and the position is the same in every run that validates on the same databases.
  """
  report.write_run_report(workdir, results, ja_curve=ja_curve,
                          thresholds=metrics_lib.THRESHOLDS)
  report.write_per_image(workdir, {
      name: (image_ids(test_sources[name], evaluation.index), image_metrics)
      for name, (evaluation, image_metrics) in per_image.items()})
  if validation is not None:
    evaluation, t_index, databases = validation
    ids = [f"{databases}#{i}" for i in evaluation.index]
    report.write_per_image(workdir, {report.VALIDATION_SUBSET: (
        ids, metrics_lib.isic_metrics(evaluation.counts[:, t_index]))},
        report.VALIDATION_PER_IMAGE)
  for name, (evaluation, image_metrics) in per_image.items():
    picks = report.overlay_picks(image_metrics["ja"], num_overlays)
    examples = [test_sources[name][int(evaluation.index[p])] for _, _, p in picks]
    probs = inference.predict_examples(model, variables, examples, size, tta)
    if postprocess != "none":  # drawn as scored: the cleaned mask, at the threshold
      from lesion_jax import postprocess as postprocess_lib
      probs = postprocess_lib.binarize(probs, results["threshold"], postprocess).astype(
          np.float32)
    report.write_overlays(workdir, name, picks, examples, probs, image_metrics["ja"],
                          size, results["threshold"])


def write_results(workdir: str, results: dict) -> None:
  if parallel.is_main_process():
    # results.json marks a finished run, so it is written last and whole.
    workdir_lib.write_json_atomically(os.path.join(workdir, "results.json"), results)


__all__ = ["Evaluation", "collapse_warnings", "evaluate", "evaluate_on_host", "image_ids",
           "score_test_splits", "threshold_search", "validation_summary", "write_reports",
           "write_results"]
