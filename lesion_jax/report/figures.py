"""The paper's figures from run results: curves, overlays and Fig. 1 grids.

- threshold_curve.png: validation JA against the binarisation threshold, the chosen one marked;
- training_curves.png: loss, validation JA and learning rate (SGDR restarts marked) per step;
- overlays/: best and worst test images in the Fig. 1 colours;
- fig1_<database>.png: image, truth and each compared run's prediction for the best, median and
  worst test images.

The Fig. 1 colours: yellow true positive, red false positive, green false negative, black true
negative.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from lesion_jax import inference
from lesion_jax.data import pipeline

FIG1_COLOURS = {
    "tp": (255, 255, 0),  # yellow
    "fp": (255, 0, 0),  # red
    "fn": (0, 255, 0),  # green
    "tn": (0, 0, 0),  # black
}


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")  # files only: no display on training machines
  import matplotlib.pyplot as plt
  return plt


def comparison_image(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
  """HxW binary truth and prediction -> HxWx3 uint8 in the Fig. 1 colours."""
  truth, prediction = truth.astype(bool), prediction.astype(bool)
  out = np.zeros(truth.shape + (3,), np.uint8)
  out[truth & prediction] = FIG1_COLOURS["tp"]
  out[~truth & prediction] = FIG1_COLOURS["fp"]
  out[truth & ~prediction] = FIG1_COLOURS["fn"]
  return out


def plot_threshold_curve(path: str, thresholds, ja_curve, chosen: float) -> None:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
  ax.plot(thresholds, 100 * np.asarray(ja_curve), lw=1.5)
  ax.axvline(chosen, color="tab:red", ls="--", lw=1, label=f"T = {chosen:.2f}")
  ax.set_xlabel("binarisation threshold")
  ax.set_ylabel("validation JA (%)")
  ax.legend(loc="lower left")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Training curves.

def read_metrics(workdir: str) -> dict[str, list[dict]]:
  """metrics.jsonl by kind ('train', 'validation'), sorted by step, one line per step.

  A resumed run logs again the steps after its last checkpoint; the later line wins.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  by_kind: dict[str, dict[int, dict]] = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        try:
          entry = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut short by a kill
        by_kind.setdefault(entry.get("kind", ""), {})[int(entry["step"])] = entry
  return {kind: [steps[s] for s in sorted(steps)] for kind, steps in by_kind.items()}


def restart_steps(steps: Sequence[int], learning_rates: Sequence[float]) -> list[int]:
  """Steps where the logged learning rate rises: the warm restarts of SGDR."""
  lr = np.asarray(learning_rates, np.float64)
  rises = np.flatnonzero(lr[1:] > lr[:-1] * (1 + 1e-6)) + 1
  return [int(steps[i]) for i in rises]


def plot_training_curves(path: str, metrics: Mapping[str, Sequence[Mapping[str, float]]],
                         best_step: int | None = None) -> bool:
  """Loss, validation JA and learning rate against the step; False when nothing was logged."""
  train = [m for m in metrics.get("train", []) if "loss" in m]
  validation = [m for m in metrics.get("validation", []) if "ja" in m]
  if not train and not validation:
    return False
  plt = _pyplot()
  fig, axes = plt.subplots(3, 1, figsize=(6, 7), dpi=100, sharex=True)
  loss_ax, ja_ax, lr_ax = axes
  if train:
    loss_ax.plot([m["step"] for m in train], [m["loss"] for m in train], lw=1.2, label="train")
  if validation:
    loss_ax.plot([m["step"] for m in validation], [m["loss"] for m in validation], "o-", ms=3,
                 lw=1, label="validation")
    ja_ax.plot([m["step"] for m in validation], [100 * m["ja"] for m in validation], "o-", ms=3,
               lw=1.2, color="tab:green")
  if best_step is not None:
    ja_ax.axvline(best_step, color="tab:red", ls="--", lw=1, label=f"best (step {best_step})")
    ja_ax.legend(loc="lower right")
  with_lr = [m for m in train if "learning_rate" in m]
  restarts = []
  if with_lr:
    steps = [m["step"] for m in with_lr]
    rates = [m["learning_rate"] for m in with_lr]
    lr_ax.plot(steps, rates, lw=1.2, color="tab:purple")
    restarts = restart_steps(steps, rates)
  for ax in axes:
    for i, step in enumerate(restarts):
      ax.axvline(step, color="grey", ls=":", lw=1, label="warm restart" if i == 0 and
                 ax is lr_ax else None)
    ax.grid(alpha=0.3)
  loss_ax.set_ylabel("loss")
  loss_ax.legend(loc="upper right")
  ja_ax.set_ylabel("validation JA (%)")
  lr_ax.set_ylabel("learning rate")
  lr_ax.set_xlabel("step")
  if restarts:
    lr_ax.legend(loc="upper right")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return True


# ----------------------------------------------------------------------------------------------
# Overlays of one run's test images.

def safe_name(name: str) -> str:
  return name.replace("/", "_")


def overlay_picks(ja: np.ndarray, count: int) -> list[tuple[str, int, int]]:
  """(kind, rank, position) of the `count` best and worst images by JA, best first."""
  order = np.argsort(-np.asarray(ja), kind="stable")
  picks = [("best", r, int(order[r])) for r in range(min(count, len(order)))]
  picks += [("worst", r, int(order[len(order) - 1 - r])) for r in range(min(count, len(order)))]
  return picks


FIG1_LEGEND = (("tp", "true positive"), ("fp", "false positive"), ("fn", "false negative"),
               ("tn", "true negative"))


def colour_legend(ax) -> None:
  """The Fig. 1 colour key as a legend on `ax`."""
  from matplotlib.patches import Patch
  handles = [Patch(facecolor=np.array(FIG1_COLOURS[key]) / 255, edgecolor="grey", label=label)
             for key, label in FIG1_LEGEND]
  ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
            frameon=False)


def plot_overlay(path: str, image: np.ndarray, truth: np.ndarray, prediction: np.ndarray,
                 title: str, threshold: float) -> None:
  """Image | truth | prediction against truth in the Fig. 1 colours, titled, with the key."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(9.5, 3.2), dpi=100)
  panels = [(image, "image"), (np.repeat(truth[..., None].astype(np.uint8) * 255, 3, -1),
                               "truth (expert mask)"),
            (comparison_image(truth, prediction), f"prediction at T = {threshold:.2f}")]
  for ax, (panel, label) in zip(axes, panels):
    ax.imshow(panel, interpolation="nearest")
    ax.set_title(label, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  colour_legend(axes[-1])
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_overlays(workdir: str, dataset: str, picks: Sequence[tuple[str, int, int]],
                   examples: Sequence[Mapping[str, Any]], probs: np.ndarray, ja: np.ndarray,
                   image_size, threshold: float) -> list[str]:
  """Image | truth | Fig. 1 comparison for each picked test image (`overlay_picks`).

  `examples` are the picked images' raw dataset examples and `probs` their (N, S, S)
  probabilities, in the order of `picks`.
  """
  if not picks:
    return []
  folder = os.path.join(workdir, "overlays", safe_name(dataset))
  os.makedirs(folder, exist_ok=True)
  written = []
  for (kind, rank, position), example, prob in zip(picks, examples, probs):
    image, truth = pipeline.resize_pair(np.asarray(example["image"]),
                                        np.asarray(example["mask"]), image_size)
    image_id = _text(example.get("image_id", b""))
    # An image id may hold a "/" (waterloo: "dermquest/D19_2"), which a file name cannot.
    name = f"{kind}{rank + 1}_{safe_name(image_id)}_ja{ja[position]:.3f}.png"
    path = os.path.join(folder, name)
    title = (f"{dataset}: {kind} {rank + 1} of the test images by JA, {image_id} "
             f"(JA {100 * ja[position]:.1f}%)")
    plot_overlay(path, image, truth > 0, prob >= threshold, title, threshold)
    written.append(path)
  return written


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------------------------
# Fig. 1: image, truth and each run's prediction in the TP/FP/FN/TN colours.

def pick_cases(ja: np.ndarray) -> list[tuple[str, int]]:
  """Best, median and worst columns of `ja` (runs x images) by the mean JA over runs."""
  ja = np.asarray(ja, np.float64)
  order = np.argsort(-ja.mean(axis=0), kind="stable")
  picks = [("best", int(order[0])), ("median", int(order[len(order) // 2])),
           ("worst", int(order[-1]))]
  seen, unique = set(), []
  for label, position in picks:
    if position not in seen:
      seen.add(position)
      unique.append((label, position))
  return unique


def _test_source(config, dataset: str):
  from lesion_jax.data import loading
  return loading.load_datasets(config).test[dataset]


def _find_examples(source, image_ids: Sequence[str]) -> dict[str, dict]:
  wanted, found = set(image_ids), {}
  for i in range(len(source)):
    example = source[i]
    image_id = _text(example["image_id"])
    if image_id in wanted:
      found[image_id] = example
      if len(found) == len(wanted):
        break
  missing = sorted(wanted - set(found))
  if missing:
    raise KeyError(f"test images {missing} are not in the dataset any more; was it rebuilt "
                   "with other settings?")
  return found


def _resize_binary(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """A binary (H, W) mask at (height, width) `size`, nearest neighbour."""
  if mask.shape[:2] == tuple(size):
    return mask.astype(bool)
  image = Image.fromarray(mask.astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
  return np.asarray(image) > 127


def plot_fig1_grid(path: str, images: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                   predictions: Sequence[Sequence[np.ndarray]], run_labels: Sequence[str],
                   row_labels: Sequence[str], title: str = "") -> None:
  """Rows of image | truth | one Fig. 1 comparison per run (predictions[run][row], binary)."""
  plt = _pyplot()
  columns = 2 + len(run_labels)
  fig, axes = plt.subplots(len(images), columns, figsize=(2.1 * columns, 2.2 * len(images)),
                           dpi=100, squeeze=False)
  for r, (image, truth) in enumerate(zip(images, truths)):
    panels = [image, np.repeat(truth[..., None].astype(np.uint8) * 255, 3, -1)]
    panels += [comparison_image(truth, predictions[k][r]) for k in range(len(run_labels))]
    for c, panel in enumerate(panels):
      ax = axes[r, c]
      ax.imshow(panel, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title((["image", "truth (GT)"] + list(run_labels))[c], fontsize=9)
    axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
  fig.suptitle(title, fontsize=9)
  colour_legend(axes[0, -1])
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write_fig1(out_dir: str, runs: Sequence[Any], labels: Sequence[str],
               per_image: Sequence[Mapping[str, Mapping[str, Mapping[str, float]]]],
               write: bool = True) -> list[str]:
  """fig1_<dataset>.png for each test database all runs share: best, median and worst images.

  `runs` are runs.Run objects; each predicts at its own image size and threshold. The images are
  ranked by their JA averaged over the runs (per_image.csv). With `write=False` everything but
  the file is done: on multi-host runs every process opens the data (a collective), one writes.
  """
  written = []
  datasets = [d for d in per_image[0] if all(d in p for p in per_image[1:])]
  for dataset in datasets:
    ids = sorted(set.intersection(*(set(p[dataset]) for p in per_image)))
    if not ids:
      continue
    ja = np.array([[p[dataset][i]["ja"] for i in ids] for p in per_image])
    picks = pick_cases(ja)
    chosen = [ids[position] for _, position in picks]
    examples = _find_examples(_test_source(runs[0].config, dataset), chosen)
    size = max(run.image_size for run in runs)  # (height, width) of the largest
    images, truths = [], []
    for image_id in chosen:
      image, mask = pipeline.resize_pair(np.asarray(examples[image_id]["image"]),
                                         np.asarray(examples[image_id]["mask"]), size)
      images.append(image)
      truths.append(mask > 0)
    predictions = []
    for run in runs:
      probs = inference.predict_examples(run.model, run.variables,
                                         [examples[i] for i in chosen],
                                         run.image_size)
      predictions.append([_resize_binary(p >= run.threshold, size) for p in probs])
    row_labels = [f"{label}: {image_id}\nJA " + " / ".join(
        f"{100 * ja[k, position]:.1f}" for k in range(len(runs)))
        for (label, position), image_id in zip(picks, chosen)]
    run_labels = [f"{label} (T={run.threshold:.2f})" for label, run in zip(labels, runs)]
    path = os.path.join(out_dir, f"fig1_{safe_name(dataset)}.png")
    if write:
      plot_fig1_grid(path, images, truths, predictions, run_labels, row_labels, title=dataset)
    written.append(path)
  return written
