"""What runs leave for a reader: the paper's tables and figures, per run and across runs.

Per run (train.py calls these at the end of `train_and_evaluate`):
- results.md: the Table 3 layout (one row per test database, threshold included) and a one-line
  summary (parameters, training time, images/s);
- threshold_curve.png: validation JA against the binarisation threshold, the chosen one marked;
- training_curves.png: loss, validation JA and learning rate (SGDR restarts marked) per step;
- overlays/: best and worst test images in the Fig. 1 colours; per_image.csv: paired comparisons.

Across runs:
- `write_table2`: the Table 2 layout (architecture, loss, ifC/alpha, pretraining, P, T, metrics)
  of a sweep, as markdown and CSV, U-Net family first, then the DeepLab encoders;
- `write_comparison_report`: Exp 1 vs Exp 2 (or any runs) side by side in the Table 3 layout,
  per-image paired differences with bootstrap 95% confidence intervals, and a Fig. 1-style grid.

    python -m lesion_jax.report compare RUN_A RUN_B [--names "Exp 1" "Exp 2"] [--out DIR]
    python -m lesion_jax.report table SWEEP_OR_RUN [...] [--out DIR]

The Fig. 1 colours: yellow true positive, red false positive, green false negative, black true
negative.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

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

# The paper's Table 3 (test subsets of set M), in percent; shown beside reproductions.
PAPER_TABLE3 = (
    ("smartskins", "Exp 1", 0.50, (78.51, 82.64, 90.14, 98.96, 95.40, 99.15)),
    ("smartskins", "Exp 2", 0.56, (78.04, 82.21, 89.89, 98.90, 96.05, 99.09)),
    ("dermofit", "Exp 1", 0.50, (72.97, 80.26, 88.26, 93.51, 87.56, 96.86)),
    ("dermofit", "Exp 2", 0.56, (75.46, 81.03, 88.79, 93.78, 89.68, 96.13)),
)

# Table 2: how the paper names architectures and losses, and the order it lists them in.
ARCHITECTURES = {
    "unet": "U-Net",
    "att_unet": "AttU-Net",
    "r2_unet": "R2U-Net",
    "att_r2_unet": "AttR2U-Net",
    "deeplabv3plus_xception65": "Xception",
    "deeplab_mobilenetv2": "MobileNetV2",
}
UNET_FAMILY = ("unet", "att_unet", "r2_unet", "att_r2_unet")
LOSS_LABELS = {
    "ce": "CE",
    "dice": "1 − DI",
    "jaccard": "1 − JA",
    "ce_log_jaccard": "CE − log JA",
    "ce_log_dice": "CE − log DI",
}
PRETRAINING_ORDER = ("None", "Pascal", "Cityscapes", "ImageNet")
TABLE2_HEADER = ("Run", "Architecture", "L", "ifC / α", "PreT", "P", "T") + tuple(
    m.upper() for m in METRIC_COLUMNS)
TABLE2_CSV_FIELDS = ("run", "subset", "status", "model", "architecture", "loss", "ifc", "alpha",
                     "output_stride", "pretraining", "params", "threshold", *METRIC_COLUMNS,
                     "n_images")


def progress_bar(total: int, initial: int = 0, desc: str = ""):
  """A tqdm bar with ETA on the main process; silent elsewhere."""
  import jax
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr,
              disable=jax.process_index() != 0, mininterval=1.0)


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


def _percent(value: float) -> str:
  return f"{100 * value:.2f}"


def format_params(count: int) -> str:
  """Parameters as the paper writes them, to two decimals: 440417 -> '0.44M'."""
  return f"{count / 1e6:.2f}M"


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


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


def comparison_rows(named_results: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict]:
  """Table 3 rows of several runs, grouped by test subset (first-seen order), runs in order."""
  rows = [row for name, results in named_results for row in table_rows(results, name)]
  subsets = list(dict.fromkeys(row["subset"] for row in rows))
  return sorted(rows, key=lambda row: subsets.index(row["subset"]))


def run_summary(results: Mapping[str, Any], name: str | None = None) -> str:
  """One line: model, parameters, loss, threshold, training steps, time and images/s."""
  model = results["model"]
  training = results.get("training", {})
  line = (f"{model['name']} ({format_params(model['params'])}, {model['params']:,} parameters), "
          f"loss {results.get('loss')}, T = {results['threshold']:.2f}; "
          f"{training.get('steps', 0)} steps in {_duration(training.get('seconds', 0.0))}, "
          f"{training.get('images_per_second', 0.0):.1f} images/s (compilation excluded); "
          f"best step {results.get('best_step')}")
  init_from = results.get("init_from")
  if init_from:
    line += f"; initialised from {init_from.get('workdir')} (step {init_from.get('step')})"
  return f"{name}: {line}" if name else line


def _validation_line(results: Mapping[str, Any]) -> list[str]:
  """The validation metrics at T (the subset the paper's Table 2 reports), when recorded."""
  validation = results.get("validation", {})
  if not all(m in validation for m in METRIC_COLUMNS):
    return []
  metrics = ", ".join(f"{m.upper()} {_percent(validation[m])}" for m in METRIC_COLUMNS)
  return [f"Validation subset at T = {results['threshold']:.2f} ({validation.get('n_images')} "
          f"images; the paper's Table 2 reports this subset): {metrics}.", ""]


def write_run_report(workdir: str, results: Mapping[str, Any], ja_curve: np.ndarray,
                     thresholds: np.ndarray, experiment: str | None = None) -> None:
  """results.md, the validation JA-versus-threshold curve (JSON and PNG), the training curves."""
  experiment = experiment or os.path.basename(os.path.normpath(workdir))
  model = results["model"]
  training = results.get("training", {})
  has_curves = plot_training_curves(os.path.join(workdir, "training_curves.png"),
                                    read_metrics(workdir), best_step=results.get("best_step"))
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
      *_validation_line(results),
      f"Training: {training.get('steps', 0)} steps, {training.get('seconds', 0):.0f} s, "
      f"{training.get('images_per_second', 0):.1f} images/s (compilation excluded); "
      f"best checkpoint at step {results.get('best_step')}.",
      "",
      run_summary(results, experiment),
      "",
      "![validation JA against the threshold](threshold_curve.png)",
  ]
  if has_curves:
    text += ["![training curves](training_curves.png)"]
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("\n".join(text) + "\n")
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
    image_id = _text(example.get("image_id", b""))
    path = os.path.join(folder, f"{kind}{rank + 1}_{image_id}_ja{ja[position]:.3f}.png")
    Image.fromarray(panel).save(path)
    written.append(path)
  return written


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------------------------
# Paired comparisons: per-image differences and their bootstrap confidence intervals.

def read_results(workdir: str) -> dict:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} is not a finished run: it has no results.json "
                            "(train it to the end first)")
  with open(path) as f:
    return json.load(f)


def read_per_image(workdir: str) -> dict[str, dict[str, dict[str, float]]]:
  """per_image.csv as {dataset: {image_id: {metric: value}}}."""
  path = os.path.join(workdir, "per_image.csv")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} has no per_image.csv; runs finished before it existed "
                            "cannot be compared image by image")
  out: dict[str, dict[str, dict[str, float]]] = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      out.setdefault(row["dataset"], {})[row["image_id"]] = {
          m: float(row[m]) for m in METRIC_COLUMNS}
  return out


def bootstrap_mean_ci(values: np.ndarray, resamples: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The mean of `values` over its first axis and a percentile bootstrap CI of that mean.

  Args:
    values: (N,) or (N, K); rows are the units resampled (test images), so the K columns (the
      metrics) share every resample, as a paired analysis should.
    resamples: bootstrap resamples; seed: fixes them, so a report is reproducible.
    level: the coverage, e.g. 0.95 for the 2.5th and 97.5th percentiles.

  Returns:
    (mean, low, high), each of shape values.shape[1:].
  """
  values = np.asarray(values, np.float64)
  if values.ndim not in (1, 2) or values.shape[0] == 0:
    raise ValueError(f"expected (N,) or (N, K) values with N >= 1, got shape {values.shape}")
  if resamples < 1 or not 0 < level < 1:
    raise ValueError(f"need resamples >= 1 and 0 < level < 1, got {resamples} and {level}")
  n = values.shape[0]
  rng = np.random.default_rng(seed)
  # Chunks of resamples keep the (resamples, N) index array to a few million entries.
  chunk = max(1, (1 << 22) // n)
  means = []
  for start in range(0, resamples, chunk):
    index = rng.integers(0, n, size=(min(chunk, resamples - start), n))
    means.append(values[index].mean(axis=1))
  means = np.concatenate(means)
  tail = (1 - level) / 2
  low, high = np.quantile(means, [tail, 1 - tail], axis=0)
  return values.mean(axis=0), low, high


def paired_differences(a: Mapping[str, Mapping[str, Mapping[str, float]]],
                       b: Mapping[str, Mapping[str, Mapping[str, float]]],
                       resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> list[dict]:
  """Per test database and metric: mean of B − A over the images both runs scored, with a CI.

  `a` and `b` are `read_per_image` results. Each image is scored at its own run's threshold, so
  the difference is the one between the two reported models, as in Table 3.
  """
  rows = []
  for dataset in [d for d in a if d in b]:
    ids = sorted(set(a[dataset]) & set(b[dataset]))
    if not ids:
      continue
    va = np.array([[a[dataset][i][m] for m in METRIC_COLUMNS] for i in ids])
    vb = np.array([[b[dataset][i][m] for m in METRIC_COLUMNS] for i in ids])
    mean, low, high = bootstrap_mean_ci(vb - va, resamples=resamples, seed=seed, level=level)
    for k, metric in enumerate(METRIC_COLUMNS):
      rows.append({"subset": dataset, "metric": metric, "a": float(va[:, k].mean()),
                   "b": float(vb[:, k].mean()), "difference": float(mean[k]),
                   "low": float(low[k]), "high": float(high[k]), "n_images": len(ids),
                   "only_a": len(set(a[dataset]) - set(ids)),
                   "only_b": len(set(b[dataset]) - set(ids))})
  return rows


def differences_table(rows: Sequence[Mapping[str, Any]], name_a: str, name_b: str,
                      level: float = 0.95) -> str:
  """Markdown: per subset and metric, both means, B − A and its CI, in percentage points."""
  lines = [f"| Test subset | Metric | {name_a} | {name_b} | {name_b} − {name_a} | "
           f"{100 * level:.0f}% CI | CI excludes 0 | images |",
           "|---|---|---|---|---|---|---|---|"]
  for row in rows:
    excludes = row["low"] > 0 or row["high"] < 0
    lines.append(
        f"| {row['subset']} | {row['metric'].upper()} | {_percent(row['a'])} | "
        f"{_percent(row['b'])} | {100 * row['difference']:+.2f} | "
        f"[{100 * row['low']:+.2f}, {100 * row['high']:+.2f}] | {'yes' if excludes else 'no'} | "
        f"{row['n_images']} |")
  return "\n".join(lines)


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
  from lesion_jax import train  # train imports this module: import it only when needed
  return train.load_datasets(config).test[dataset]


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


def predict_probabilities(run, examples: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """(N, S, S) sigmoid probabilities of `run` (runs.Run) at its own image size S."""
  import jax

  preprocess = pipeline.Preprocess(run.image_size)
  images = np.stack([pipeline.prepare_example(e, preprocess)["image"] for e in examples])
  variables = {k: v for k, v in run.variables.items() if v or k == "params"}
  apply = jax.jit(lambda v, x: jax.nn.sigmoid(run.model.apply(v, x, train=False)))
  return np.asarray(apply(variables, images), np.float32)[..., 0]


def _resize_binary(mask: np.ndarray, size: int) -> np.ndarray:
  if mask.shape[:2] == (size, size):
    return mask.astype(bool)
  image = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
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
  fig.suptitle((title + "\n" if title else "") + "yellow TP, red FP, green FN, black TN",
               fontsize=9)
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
    size = max(run.image_size for run in runs)
    images, truths = [], []
    for image_id in chosen:
      image, mask = pipeline.resize_pair(np.asarray(examples[image_id]["image"]),
                                         np.asarray(examples[image_id]["mask"]), size)
      images.append(image)
      truths.append(mask > 0)
    predictions = []
    for run in runs:
      probs = predict_probabilities(run, [examples[i] for i in chosen])
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


# ----------------------------------------------------------------------------------------------
# Several runs side by side (Table 3) and a comparison report.

def default_names(workdirs: Sequence[str]) -> list[str]:
  """Folder names, or the full paths when two folders share a name."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return names if len(set(names)) == len(names) else [os.path.normpath(w) for w in workdirs]


def paper_table3() -> str:
  rows = [{"subset": subset, "experiment": experiment, "threshold": t,
           **{m: v / 100 for m, v in zip(METRIC_COLUMNS, values)}, "n_images": n}
          for (subset, experiment, t, values), n in zip(PAPER_TABLE3, (41, 41, 264, 264))]
  return results_table(rows)


def comparison_text(workdirs: Sequence[str], names: Sequence[str] | None = None,
                    resamples: int = 10_000, seed: int = 0) -> tuple[str, dict]:
  """The side-by-side table (and for two runs the paired differences) as printable text."""
  names = list(names) if names else default_names(workdirs)
  if len(names) != len(workdirs):
    raise ValueError(f"{len(names)} names for {len(workdirs)} runs")
  results = [read_results(w) for w in workdirs]
  lines = [run_summary(r, n) for n, r in zip(names, results)]
  lines += ["", results_table(comparison_rows(list(zip(names, results))))]
  data: dict[str, Any] = {"runs": {n: {"workdir": w, "results": r}
                                   for n, w, r in zip(names, workdirs, results)}}
  if len(workdirs) == 2:
    differences = paired_differences(read_per_image(workdirs[0]), read_per_image(workdirs[1]),
                                     resamples=resamples, seed=seed)
    data["paired_differences"] = differences
    lines += ["", f"Per-image paired differences ({names[1]} − {names[0]}, percentage points), "
              f"bootstrap 95% CI over test images ({resamples:,} resamples, seed {seed}):", "",
              differences_table(differences, names[0], names[1])]
    unmatched = [r for r in differences if r["metric"] == "tja" and (r["only_a"] or r["only_b"])]
    for row in unmatched:
      lines.append(f"note: {row['subset']}: {row['only_a']} images only in {names[0]}, "
                   f"{row['only_b']} only in {names[1]}; they are left out of the differences")
  return "\n".join(lines), data


def write_comparison_report(out_dir: str, workdirs: Sequence[str],
                            names: Sequence[str] | None = None, title: str = "Comparison",
                            resamples: int = 10_000, seed: int = 0, figure: bool = True,
                            paper_reference: bool = False, notes: Sequence[str] = (),
                            write: bool = True) -> str:
  """report.md (Table 3 layout, paired differences, Fig. 1 grids) and comparison.json.

  Multi-host: call it on every process (reading checkpoints and data sets are collectives) with
  `write` true on one of them.
  """
  names = list(names) if names else default_names(workdirs)
  text, data = comparison_text(workdirs, names, resamples=resamples, seed=seed)
  path = os.path.join(out_dir, "report.md")
  if write:
    os.makedirs(out_dir, exist_ok=True)
  figures = []
  if figure:
    from lesion_jax import runs as runs_lib
    loaded = [runs_lib.load_run(w) for w in workdirs]
    figures = write_fig1(out_dir, loaded, names, [read_per_image(w) for w in workdirs],
                         write=write)
  if not write:
    return path
  body = [f"# {title}", ""] + list(notes) + ([""] if notes else []) + [text, ""]
  for figure_path in figures:
    body += [f"![Fig. 1-style grid]({os.path.basename(figure_path)})", ""]
  if paper_reference:
    body += ["The paper's Table 3 (reduced Mobile DeepLab, test subsets of set M), for "
             "reference:", "", paper_table3(), ""]
  with open(path, "w") as f:
    f.write("\n".join(body))
  with open(os.path.join(out_dir, "comparison.json"), "w") as f:
    json.dump({**data, "figures": [os.path.basename(p) for p in figures]}, f, indent=2)
  return path


# ----------------------------------------------------------------------------------------------
# Table 2: one row per run of a sweep.

def _config_get(config: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
  node: Any = config
  for part in dotted.split("."):
    if not hasattr(node, "get"):
      return default
    node = node.get(part, None)
    if node is None:
      return default
  return node


def _model_default(model_name: str, option: str) -> Any:
  import inspect

  from lesion_jax import models
  if model_name not in models.MODELS:
    return None
  parameter = inspect.signature(models.MODELS.get(model_name)).parameters.get(option)
  return None if parameter is None else parameter.default


def pretraining_label(config: Mapping[str, Any]) -> str:
  """The PreT column: the pretrained weights a run started from (config.model.init_from)."""
  source = _config_get(config, "model.init_from")
  if source:
    if str(source).startswith("keras_mobilenet_v2:"):
      return "ImageNet"  # the Keras application weights
    lowered = str(source).lower()
    for name in PRETRAINING_ORDER[1:]:
      if name.lower() in lowered:
        return name
    return os.path.basename(str(source).rstrip("/"))
  run = _config_get(config, "init_from")  # another run of this codebase (Exp 2)
  return f"run {os.path.basename(str(run).rstrip('/'))}" if run else "None"


def table2_entry(name: str, config: Mapping[str, Any], results: Mapping[str, Any] | None,
                 status: str = "finished") -> dict:
  """The Table 2 fields of one run: its settings from `config`, its numbers from `results`."""
  model = _config_get(config, "model.name")
  entry = {"run": name, "status": status, "model": model, "loss": _config_get(config, "loss"),
           "ifc": None, "alpha": None, "output_stride": None,
           "pretraining": pretraining_label(config), "results": results}
  if model in UNET_FAMILY:
    entry["ifc"] = _config_get(config, "model.ifc") or _model_default(model, "ifc")
  else:
    entry["output_stride"] = (_config_get(config, "model.output_stride")
                              or _model_default(model, "output_stride"))
    if model == "deeplab_mobilenetv2":
      entry["alpha"] = _config_get(config, "model.alpha") or _model_default(model, "alpha")
  return entry


def _architecture(entry: Mapping[str, Any]) -> str:
  name = ARCHITECTURES.get(entry["model"], entry["model"])
  if entry["output_stride"] is not None:
    return f"{name}, OS={entry['output_stride']}"
  return name


def _setting(entry: Mapping[str, Any]) -> str:
  if entry["ifc"] is not None:
    return f"ifC={entry['ifc']}"
  if entry["alpha"] is not None:
    return f"α={entry['alpha']}"
  return "–"


def table2_sort_key(entry: Mapping[str, Any]) -> tuple:
  """The paper's grouping: U-Net family, then DeepLab encoders (Xception, MobileNetV2 by α)."""
  families = UNET_FAMILY + ("deeplabv3plus_xception65", "deeplab_mobilenetv2")
  family = families.index(entry["model"]) if entry["model"] in families else len(families)
  pretraining = (PRETRAINING_ORDER.index(entry["pretraining"])
                 if entry["pretraining"] in PRETRAINING_ORDER else len(PRETRAINING_ORDER))
  losses = tuple(LOSS_LABELS)
  loss = losses.index(entry["loss"]) if entry["loss"] in losses else len(losses)
  return (family, entry["output_stride"] or 0, -(entry["alpha"] or 0), entry["ifc"] or 0,
          pretraining, loss, entry["run"])


def table2_subsets(entries: Sequence[Mapping[str, Any]]) -> list[str]:
  """'validation' (the paper's Table 2), then every test database in first-seen order."""
  tests = [d for e in entries if e["results"] for d in e["results"].get("test", {})]
  return ["validation"] + list(dict.fromkeys(tests))


def _subset_metrics(entry: Mapping[str, Any], subset: str) -> Mapping[str, Any] | None:
  results = entry["results"]
  if not results:
    return None
  return results.get("validation") if subset == "validation" else results["test"].get(subset)


def table2_markdown(entries: Sequence[Mapping[str, Any]], subset: str = "validation") -> str:
  """Table 2 layout for one subset: metrics in percent, a dash where a run has none."""
  lines = ["| " + " | ".join(TABLE2_HEADER) + " |", "|" + "---|" * len(TABLE2_HEADER)]
  for entry in sorted(entries, key=table2_sort_key):
    metrics = _subset_metrics(entry, subset)
    results = entry["results"]
    cells = [entry["run"], _architecture(entry), LOSS_LABELS.get(entry["loss"], entry["loss"]),
             _setting(entry), entry["pretraining"],
             format_params(results["model"]["params"]) if results else "–",
             f"{results['threshold']:.2f}" if results else "–"]
    if metrics:
      cells += [_percent(metrics[m]) if m in metrics else "–" for m in METRIC_COLUMNS]
    else:
      cells += [entry["status"]] + ["–"] * (len(METRIC_COLUMNS) - 1)
    lines.append("| " + " | ".join(str(c) for c in cells) + " |")
  return "\n".join(lines)


def write_table2(out_dir: str, entries: Sequence[Mapping[str, Any]], title: str = "Sweep",
                 basename: str = "table2") -> tuple[str, str]:
  """<basename>.md (one Table 2 per subset) and <basename>.csv (one row per run and subset)."""
  os.makedirs(out_dir, exist_ok=True)
  finished = sum(1 for e in entries if e["results"])
  text = [f"# {title}: Table 2 layout", "",
          f"{finished} of {len(entries)} runs finished. Metrics in percent, averaged over images, "
          "at each run's threshold T (chosen on validation). L: loss; P: parameters; PreT: "
          "pretrained weights.", ""]
  for subset in table2_subsets(entries):
    heading = ("Validation subset (the paper's Table 2)" if subset == "validation"
               else f"Test subset: {subset}")
    text += [f"## {heading}", "", table2_markdown(entries, subset), ""]
  md_path = os.path.join(out_dir, f"{basename}.md")
  with open(md_path, "w") as f:
    f.write("\n".join(text))
  csv_path = os.path.join(out_dir, f"{basename}.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=TABLE2_CSV_FIELDS)
    writer.writeheader()
    for entry in sorted(entries, key=table2_sort_key):
      results = entry["results"]
      for subset in table2_subsets(entries):
        metrics = _subset_metrics(entry, subset) or {}
        row = {k: entry[k] for k in ("run", "status", "model", "loss", "ifc", "alpha",
                                     "output_stride", "pretraining")}
        row.update(subset=subset, architecture=_architecture(entry),
                   params=results["model"]["params"] if results else "",
                   threshold=f"{results['threshold']:.4f}" if results else "",
                   n_images=metrics.get("n_images", ""),
                   **{m: f"{metrics[m]:.6f}" if m in metrics else "" for m in METRIC_COLUMNS})
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
  return md_path, csv_path


def run_folders(paths: Iterable[str]) -> list[str]:
  """Run folders among `paths`; a folder that is not a run (a sweep) gives the runs inside it."""
  folders = []
  for path in paths:
    if os.path.exists(os.path.join(path, "config.json")):
      folders.append(path)
    elif os.path.isdir(path):
      inside = sorted(os.path.join(path, n) for n in os.listdir(path)
                      if os.path.exists(os.path.join(path, n, "config.json")))
      if not inside:
        raise FileNotFoundError(f"{path!r} holds no training run (no config.json in it or in "
                                "its subfolders)")
      folders += inside
  return folders


def table2_from_workdirs(workdirs: Iterable[str]) -> list[dict]:
  """Table 2 entries of existing run folders (finished or not), or of the runs of sweeps."""
  from lesion_jax import runs as runs_lib
  entries = []
  for workdir in run_folders(workdirs):
    config = runs_lib.read_config(workdir)
    path = os.path.join(workdir, "results.json")
    results = read_results(workdir) if os.path.exists(path) else None
    entries.append(table2_entry(os.path.basename(os.path.normpath(workdir)), config, results,
                                "finished" if results else "unfinished"))
  return entries


# ----------------------------------------------------------------------------------------------
# Command line.

def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lesion_jax.report", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  compare = commands.add_parser(
      "compare", help="runs side by side (Table 3); for two runs, paired differences with CIs")
  compare.add_argument("workdirs", nargs="+", metavar="RUN")
  compare.add_argument("--names", nargs="+", help="row labels, one per run (default: folders)")
  compare.add_argument("--out", help="also write report.md, comparison.json and Fig. 1 grids here")
  compare.add_argument("--resamples", type=int, default=10_000)
  compare.add_argument("--seed", type=int, default=0)
  compare.add_argument("--no-figure", action="store_true", help="with --out: skip the Fig. 1 grid")
  table = commands.add_parser("table", help="Table 2 of run folders or sweeps (md + csv)")
  table.add_argument("workdirs", nargs="+", metavar="RUN_OR_SWEEP")
  table.add_argument("--out", help="write table2.md and table2.csv here (default: print only)")
  args = parser.parse_args(argv)

  try:
    if args.command == "compare":
      if args.names and len(args.names) != len(args.workdirs):
        parser.error(f"--names has {len(args.names)} labels for {len(args.workdirs)} runs")
      text, _ = comparison_text(args.workdirs, args.names, resamples=args.resamples,
                                seed=args.seed)
      print(text)
      if args.out:
        path = write_comparison_report(args.out, args.workdirs, args.names,
                                       resamples=args.resamples, seed=args.seed,
                                       figure=not args.no_figure)
        print(f"\nwrote {path}")
    else:
      entries = table2_from_workdirs(args.workdirs)
      for subset in table2_subsets(entries):
        print(f"{subset}:\n{table2_markdown(entries, subset)}\n")
      if args.out:
        print("wrote " + " and ".join(write_table2(args.out, entries)))
  except (FileNotFoundError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  # Run the imported module's main, so train.py and this command share one copy of the module.
  from lesion_jax import report as _report
  sys.exit(_report.main())
