"""What a run leaves for a reader: Table 3-style markdown, the threshold curve and Fig. 1 overlays.

The overlays use the paper's Fig. 1 colours: yellow true positive, red false positive, green false
negative, black true negative.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from lesion_jax.data import pipeline

METRIC_COLUMNS = ("tja", "ja", "di", "ac", "se", "sp")
FIG1_COLOURS = {
    "tp": (255, 255, 0),  # yellow
    "fp": (255, 0, 0),  # red
    "fn": (0, 255, 0),  # green
    "tn": (0, 0, 0),  # black
}


def progress_bar(total: int, initial: int = 0, desc: str = ""):
  """A tqdm bar with ETA on the main process; silent elsewhere."""
  import jax
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr,
              disable=jax.process_index() != 0, mininterval=1.0)


def comparison_image(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
  """HxW binary truth and prediction -> HxWx3 uint8 in the Fig. 1 colours."""
  truth, prediction = truth.astype(bool), prediction.astype(bool)
  out = np.zeros(truth.shape + (3,), np.uint8)
  out[truth & prediction] = FIG1_COLOURS["tp"]
  out[~truth & prediction] = FIG1_COLOURS["fp"]
  out[truth & ~prediction] = FIG1_COLOURS["fn"]
  return out


def _percent(value: float) -> str:
  return f"{100 * value:.2f}"


def results_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """Table 3 layout: test subset, experiment, T, then the six metrics in percent."""
  lines = ["| Test subset | Experiment | T | TJA | JA | DI | AC | SE | SP | images |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    cells = [row["subset"], row["experiment"], f"{row['threshold']:.2f}"]
    cells += [_percent(row[m]) for m in METRIC_COLUMNS] + [str(row["n_images"])]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def table_rows(results: Mapping[str, Any], experiment: str) -> list[dict]:
  return [{"subset": name, "experiment": experiment, "threshold": results["threshold"],
           **{m: metrics[m] for m in METRIC_COLUMNS}, "n_images": metrics["n_images"]}
          for name, metrics in results["test"].items()]


def write_run_report(workdir: str, results: Mapping[str, Any], ja_curve: np.ndarray,
                     thresholds: np.ndarray, experiment: str | None = None) -> None:
  """results.md and the validation JA-versus-threshold curve (JSON and PNG)."""
  experiment = experiment or os.path.basename(os.path.normpath(workdir))
  model = results["model"]
  training = results.get("training", {})
  text = [
      f"# Results: {experiment}",
      "",
      f"Model `{model['name']}` ({model['params']:,} parameters), loss `{results.get('loss')}`. "
      f"Binarisation threshold T = {results['threshold']:.2f}, chosen on the validation subset "
      f"(JA {_percent(results['validation']['ja'])}%) among 50 values in [0.5, 1].",
      "",
      "Metrics are the ISIC 2018 ones in percent, averaged over images; TJA counts an image's "
      "JA as 0 when it is below 0.65.",
      "",
      results_table(table_rows(results, experiment)),
      "",
      f"Training: {training.get('steps', 0)} steps, {training.get('seconds', 0):.0f} s, "
      f"{training.get('images_per_second', 0):.1f} images/s (compilation excluded); "
      f"best checkpoint at step {results.get('best_step')}.",
      "",
  ]
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("\n".join(text))
  curve = {"thresholds": [float(t) for t in thresholds], "ja": [float(j) for j in ja_curve],
           "chosen": float(results["threshold"])}
  with open(os.path.join(workdir, "threshold_curve.json"), "w") as f:
    json.dump(curve, f, indent=2)
  plot_threshold_curve(os.path.join(workdir, "threshold_curve.png"), thresholds, ja_curve,
                       results["threshold"])


def write_per_image(workdir: str,
                    per_dataset: Mapping[str, tuple[Sequence[str], Mapping[str, np.ndarray]]]
                    ) -> str:
  """per_image.csv: one row per test image and its six metrics at the chosen threshold.

  Paired comparisons between runs (e.g. Exp 1 vs Exp 2) join these files on (dataset, image_id).
  """
  path = os.path.join(workdir, "per_image.csv")
  with open(path, "w") as f:
    f.write("dataset,image_id," + ",".join(METRIC_COLUMNS) + "\n")
    for dataset, (ids, values) in per_dataset.items():
      for row, image_id in enumerate(ids):
        f.write(f"{dataset},{image_id}," +
                ",".join(f"{float(values[m][row]):.6f}" for m in METRIC_COLUMNS) + "\n")
  return path


def plot_threshold_curve(path: str, thresholds, ja_curve, chosen: float) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
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


def safe_name(name: str) -> str:
  return name.replace("/", "_")


def write_overlays(workdir: str, dataset: str, source, indices: np.ndarray, ja: np.ndarray,
                   predict: Callable[[np.ndarray], np.ndarray], preprocess,
                   threshold: float, count: int) -> list[str]:
  """Image | truth | Fig. 1 comparison, for the `count` best and worst test images by JA."""
  if count <= 0 or len(indices) == 0:
    return []
  order = np.argsort(-ja, kind="stable")
  picks = [("best", r, order[r]) for r in range(min(count, len(order)))]
  picks += [("worst", r, order[len(order) - 1 - r]) for r in range(min(count, len(order)))]
  folder = os.path.join(workdir, "overlays", safe_name(dataset))
  os.makedirs(folder, exist_ok=True)
  written = []
  for kind, rank, position in picks:
    example = source[int(indices[position])]
    image, truth = pipeline.resize_pair(np.asarray(example["image"]),
                                        np.asarray(example["mask"]), preprocess.image_size)
    prob = predict(pipeline.prepare_example(example, preprocess)["image"][None])[0]
    panel = np.concatenate([image, np.repeat((truth > 0)[..., None] * 255, 3, -1).astype(
        np.uint8), comparison_image(truth > 0, prob >= threshold)], axis=1)
    image_id = example.get("image_id", b"")
    image_id = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
    path = os.path.join(folder, f"{kind}{rank + 1}_{image_id}_ja{ja[position]:.3f}.png")
    Image.fromarray(panel).save(path)
    written.append(path)
  return written
