"""Runs side by side (Table 3 layout) and their per-image paired differences.

`python -m lesion_jax.report compare RUN_A RUN_B` prints both runs' test metrics and, for two
runs, the mean per-image difference of every metric with a paired bootstrap 95% confidence
interval over the test images; `--out` also writes report.md, comparison.json and Fig. 1 grids.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from lesion_jax.report import figures as figures_lib
from lesion_jax.report.tables import (METRIC_COLUMNS, _percent, comparison_rows, paper_table3,
                                      read_per_image, results_table, run_summary)
from lesion_jax.workdir import read_results

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


def pairs(num_runs: int) -> list[tuple[int, int]]:
  """The paired comparisons of `num_runs` runs: every later run against every earlier one
  (Exp 0, Exp 1, Exp 2: 1-0, 2-0, 2-1), each later run as B."""
  return [(i, j) for j in range(1, num_runs) for i in range(j)]


def default_names(workdirs: Sequence[str]) -> list[str]:
  """Folder names, or the full paths when two folders share a name."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return names if len(set(names)) == len(names) else [os.path.normpath(w) for w in workdirs]


def comparison_text(workdirs: Sequence[str], names: Sequence[str] | None = None,
                    resamples: int = 10_000, seed: int = 0) -> tuple[str, dict]:
  """The side-by-side table and the paired differences of every pair of runs, as text."""
  names = list(names) if names else default_names(workdirs)
  if len(names) != len(workdirs):
    raise ValueError(f"{len(names)} names for {len(workdirs)} runs")
  results = [read_results(w) for w in workdirs]
  lines = [run_summary(r, n) for n, r in zip(names, results)]
  lines += ["", results_table(comparison_rows(list(zip(names, results))))]
  data: dict[str, Any] = {"runs": {n: {"workdir": w, "results": r}
                                   for n, w, r in zip(names, workdirs, results)}}
  # The validation images too, where both runs wrote them: a choice between two settings
  # (e.g. a lever's ablation) is made there, the test being kept for the report.
  per_image = ([read_per_image(w, validation=True) for w in workdirs] if len(workdirs) > 1
               else [])
  for i, j in pairs(len(workdirs)):
    differences = paired_differences(per_image[i], per_image[j], resamples=resamples, seed=seed)
    data.setdefault("paired_differences", []).extend(
        dict(row, a_name=names[i], b_name=names[j]) for row in differences)
    lines += ["", f"Per-image paired differences ({names[j]} − {names[i]}, percentage points), "
              f"bootstrap 95% CI over test images ({resamples:,} resamples, seed {seed}):", "",
              differences_table(differences, names[i], names[j])]
    unmatched = [r for r in differences if r["metric"] == "tja" and (r["only_a"] or r["only_b"])]
    for row in unmatched:
      lines.append(f"note: {row['subset']}: {row['only_a']} images only in {names[i]}, "
                   f"{row['only_b']} only in {names[j]}; they are left out of the differences")
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
    figures = figures_lib.write_fig1(out_dir, loaded, names, [read_per_image(w) for w in workdirs],
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
