"""The paper's tables from run results: results.md (Table 3 layout) and Table 2 across runs.

Per run (`evaluation.write_reports` calls these at the end of a run):
- results.md: one row per test database (threshold included) and a one-line summary
  (parameters, training time, images/s), with the threshold and training curves below it;
- per_image.csv: every test image's six metrics, for paired comparisons between runs.

Across runs, `write_table2`: the Table 2 layout (architecture, loss, ifC/alpha, pretraining, P,
T, metrics) of a sweep, as markdown and CSV, U-Net family first, then the DeepLab encoders.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from lesion_jax.report import figures
from lesion_jax.workdir import read_results

METRIC_COLUMNS = ("tja", "ja", "di", "ac", "se", "sp")


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


def run_end_summary(results: Mapping[str, Any], workdir: str) -> str:
  """The last lines of a run on the console: where it is, its test table, where to look."""
  rows = ["| Test subset | T | TJA | JA | DI | images |", "|---|---|---|---|---|---|"]
  for name, metrics in results["test"].items():
    rows.append(f"| {name} | {results['threshold']:.2f} | {_percent(metrics['tja'])} | "
                f"{_percent(metrics['ja'])} | {_percent(metrics['di'])} | "
                f"{metrics['n_images']} |")
  if not results["test"]:
    rows.append("| (no test split) | | | | | |")
  figures_found = [name for name in ("threshold_curve.png", "training_curves.png", "overlays")
                   if os.path.exists(os.path.join(workdir, name))]
  lines = ["", f"Finished: {workdir}", run_summary(results), "", *rows, "",
           f"Results: {os.path.join(workdir, 'results.md')} (and results.json, per_image.csv)",
           "Figures: " + (", ".join(os.path.join(workdir, f) for f in figures_found) or "none")]
  lines += [f"WARNING: {warning}" for warning in results.get("warnings", [])]
  return "\n".join(lines)


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
  has_curves = figures.plot_training_curves(os.path.join(workdir, "training_curves.png"),
                                    figures.read_metrics(workdir), best_step=results.get("best_step"))
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
      *[f"**Warning:** {warning}\n" for warning in results.get("warnings", [])],
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
  figures.plot_threshold_curve(os.path.join(workdir, "threshold_curve.png"), thresholds, ja_curve,
                       results["threshold"])


VALIDATION_PER_IMAGE = "per_image_validation.csv"
VALIDATION_SUBSET = "validation"


def write_per_image(workdir: str,
                    per_dataset: Mapping[str, tuple[Sequence[str], Mapping[str, np.ndarray]]],
                    filename: str = "per_image.csv") -> str:
  """per_image.csv: one row per test image and its six metrics at the chosen threshold
  (per_image_validation.csv: the same for the validation images, which chose the run's
  checkpoint and threshold).

  Paired comparisons between runs (e.g. Exp 1 vs Exp 2) join these files on (dataset, image_id).
  """
  path = os.path.join(workdir, filename)
  with open(path, "w") as f:
    f.write("dataset,image_id," + ",".join(METRIC_COLUMNS) + "\n")
    for dataset, (ids, values) in per_dataset.items():
      for row, image_id in enumerate(ids):
        f.write(f"{dataset},{image_id}," +
                ",".join(f"{float(values[m][row]):.6f}" for m in METRIC_COLUMNS) + "\n")
  return path


def read_per_image(workdir: str, validation: bool = False
                   ) -> dict[str, dict[str, dict[str, float]]]:
  """per_image.csv as {dataset: {image_id: {metric: value}}}; with `validation`, also the
  validation images as dataset "validation" where the run wrote them."""
  path = os.path.join(workdir, "per_image.csv")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} has no per_image.csv; runs finished before it existed "
                            "cannot be compared image by image")
  paths = [path] + ([os.path.join(workdir, VALIDATION_PER_IMAGE)] if validation else [])
  out: dict[str, dict[str, dict[str, float]]] = {}
  for path in (p for p in paths if os.path.exists(p)):
    with open(path, newline="") as f:
      for row in csv.DictReader(f):
        out.setdefault(row["dataset"], {})[row["image_id"]] = {
            m: float(row[m]) for m in METRIC_COLUMNS}
  return out


def paper_table3() -> str:
  rows = [{"subset": subset, "experiment": experiment, "threshold": t,
           **{m: v / 100 for m, v in zip(METRIC_COLUMNS, values)}, "n_images": n}
          for (subset, experiment, t, values), n in zip(PAPER_TABLE3, (41, 41, 264, 264))]
  return results_table(rows)


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
