"""The inference-side levers measured on one finished run: which model, which mask clean-up.

  python -m lesion_jax.levers WORKDIR [--out WORKDIR/levers] [--steps N ...] [--against VARIANT]

Each variant is a set of the run's checkpoints (one model, an ensemble, or an average), each
scored with and without `postprocess.largest_component`:
- `best`: the best validation checkpoint, as the run itself reports it;
- `last`: the checkpoint of the last step;
- `snapshots`: the snapshot ensemble of the SGDR cycles' last steps (averaging.py);
- `swa_cycle`, `swa_half`: SWA of the epoch checkpoints of the last cycle, or of its second
  half, with BatchNorm recomputed on the training images;
- `ema`, `ema_bn`: the exponential moving average of the last step (a run with
  `config.training.ema_decay`), with its averaged BatchNorm statistics or recomputed ones;
- `step_N` for each `--steps N`: that kept checkpoint alone (for example where a shorter
  schedule of the same run would have ended).
Each takes its own threshold on the run's validation split (the paper's search), then is scored
on every test split; the per-image differences against `best+none` (or `--against`, e.g.
`step_31500+largest_component`) get paired bootstrap 95% CIs (`vs_reference`).
The run must have kept its latest checkpoints (`--config.checkpoint.keep` >= the epochs).
Writes levers.json and levers.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import numpy as np

from lesion_jax import averaging, checkpoint as checkpoint_lib, metrics as metrics_lib
from lesion_jax import parallel, postprocess as postprocess_lib, runs, train
from lesion_jax.data import loading, pipeline
from lesion_jax.errors import ConfigError, LesionJaxError, MissingPathError
from lesion_jax.report.compare import bootstrap_mean_ci

POSTPROCESSING = ("none", "largest_component")


def _prepared(sources, size, cache_gb: float) -> tuple[np.ndarray, np.ndarray]:
  """(images, masks (N, H, W)) of raw examples at the run's size, as evaluation prepares them."""
  split = pipeline.decode_split(sources, size, cache_gb=cache_gb)
  arrays = split.gather(np.arange(len(split)))
  return arrays["image"], arrays["mask"][..., 0]


def checkpoint_plan(config, steps: list[int], steps_per_epoch: int, total_steps: int,
                    chosen_steps: tuple[int, ...] = ()) -> dict[str, list[int]]:
  """Variant name -> the latest/ steps it averages; variants whose steps are missing dropped.

  Each of `chosen_steps` is a variant `step_N` of its own, and must be a kept step.
  """
  missing = sorted(set(chosen_steps) - set(steps))
  if missing:
    kept = f"{steps[0]}-{steps[-1]}, {len(steps)} steps" if steps else "none"
    raise ConfigError(f"--steps {missing}: the run kept no such checkpoint in latest/ "
                      f"(kept: {kept})")
  ends = averaging.cycle_end_steps(config, steps_per_epoch, total_steps)
  last_start = ends[-2] if len(ends) > 1 else 0
  epochs = [s for s in steps if s > last_start and s % steps_per_epoch == 0]
  half = last_start + (total_steps - last_start) // 2
  plan = {"last": [total_steps], "snapshots": ends, "swa_cycle": epochs,
          "swa_half": [s for s in epochs if s > half]}
  plan = {name: chosen for name, chosen in plan.items()
          if chosen and all(s in steps for s in chosen) and (len(chosen) > 1 or name == "last")}
  return {**plan, **{f"step_{s}": [s] for s in chosen_steps}}


def _score(probs: np.ndarray, masks: np.ndarray, postprocess: str,
           threshold_index: int | None = None):
  counts = postprocess_lib.counts_at_thresholds(probs, masks, postprocess)
  if threshold_index is None:
    threshold, ja_curve = metrics_lib.select_threshold(counts, metrics_lib.THRESHOLDS)
    threshold_index = int(np.argmin(np.abs(metrics_lib.THRESHOLDS - threshold)))
    return threshold_index, float(ja_curve[threshold_index])
  return metrics_lib.isic_metrics(counts[:, threshold_index])


def _members(run, steps: list[int], train_images: np.ndarray, average: bool) -> list[dict]:
  target = runs.abstract_variables(run.model, run.config.data.image_size)
  members = [checkpoint_lib.restore_variables(run.workdir, target, step=s)[0] for s in steps]
  if not average:
    return members
  averaged = averaging.mean_variables(members)
  if averaged.get("batch_stats"):
    averaged["batch_stats"] = averaging.recompute_batch_stats(
        averaging.batch_stats_model(run.config), averaged, train_images)
  return [averaged]


def evaluate_levers(workdir: str, steps: tuple[int, ...] = (),
                    against: str = "best+none") -> dict:
  """Every variant x post-processing: threshold, validation JA, test metrics and CIs against
  the variant `against`; `steps` adds the kept checkpoints `step_N`."""
  run = runs.load_run(workdir)
  config, size, tta = run.config, pipeline.image_shape(run.config.data.image_size), \
      run.config.evaluation.tta
  datasets = loading.load_datasets(config)
  # The run's global batch, on this machine's devices (as the run itself counted them).
  global_batch = config.batch_size_per_device * len(parallel.local_devices(config.num_devices))
  steps_per_epoch, total_steps, _ = train._step_plan(config, datasets.train_size, global_batch)
  manager = checkpoint_lib.RunCheckpoints(workdir, read_only=True)
  kept = sorted(manager.latest.all_steps())
  manager.close()
  plan = checkpoint_plan(config, kept, steps_per_epoch, total_steps, tuple(steps))
  ema = checkpoint_lib.read_ema(workdir, total_steps) if total_steps in kept else None
  check_reference(against, ["best", *plan] + (["ema", "ema_bn"] if ema is not None else []))
  logging.info("variants: %s", {k: [s // steps_per_epoch for s in v] for k, v in plan.items()})
  cache_gb = config.data.cache_gb
  val_images, val_masks = _prepared(datasets.validation, size, cache_gb)
  tests = {name: _prepared([source], size, cache_gb)
           for name, source in datasets.test.items() if len(source)}
  train_images = _prepared(datasets.train, size, cache_gb)[0]
  target = runs.abstract_variables(run.model, config.data.image_size)
  best, best_meta = checkpoint_lib.restore_variables(workdir, target)  # whatever the run reports
  members = {"best": [best]}
  for name, chosen in plan.items():
    members[name] = _members(run, chosen, train_images, average=name.startswith("swa"))
  if ema is not None:
    plan["ema"] = plan["ema_bn"] = [total_steps]
    members["ema"] = [ema]
    members["ema_bn"] = [dict(ema, batch_stats=averaging.recompute_batch_stats(
        averaging.batch_stats_model(config), ema, train_images))] if ema["batch_stats"] else [ema]
  results = {}
  for name, variant in members.items():
    val_probs = averaging.ensemble_probabilities(run.model, variant, val_images, tta)
    test_probs = {t: averaging.ensemble_probabilities(run.model, variant, images, tta)
                  for t, (images, _) in tests.items()}
    for post in POSTPROCESSING:
      t_index, val_ja = _score(val_probs, val_masks, post)
      results[f"{name}+{post}"] = {
          "members": len(variant), "steps": plan.get(name, [best_meta.get("step")]),
          "threshold": float(metrics_lib.THRESHOLDS[t_index]), "validation_ja": val_ja,
          "per_image": {t: {k: v.tolist() for k, v in
                            _score(test_probs[t], masks, post, t_index).items()}
                        for t, (_, masks) in tests.items()}}
  return with_differences(results, against)


def check_reference(against: str, names: list[str]) -> None:
  """Refuses, before any scoring, a reference that is not one of the variants `names` with a
  post-processing."""
  valid = [f"{name}+{post}" for name in names for post in POSTPROCESSING]
  if against not in valid:
    raise ConfigError(f"--against {against!r} is not a variant of this run; valid: "
                      f"{', '.join(valid)}")


def with_differences(results: dict, against: str = "best+none") -> dict:
  """Means of every metric per test split, and paired bootstrap CIs of each variant minus the
  variant `against` (`vs_reference`)."""
  base = results[against]["per_image"]
  for result in results.values():
    result["test"], result["vs_reference"], result["reference"] = {}, {}, against
    for split, per_image in result["per_image"].items():
      names = list(metrics_lib.METRIC_NAMES)
      values = np.stack([per_image[m] for m in names], axis=1)
      result["test"][split] = dict(zip(names, values.mean(axis=0).tolist()))
      diff = values - np.stack([base[split][m] for m in names], axis=1)
      mean, low, high = bootstrap_mean_ci(diff)
      result["vs_reference"][split] = {m: [float(mean[i]), float(low[i]), float(high[i])]
                                       for i, m in enumerate(names)}
  return results


def levers_table(results: dict) -> str:
  """One markdown row per variant and test split: JA, TJA, DI and the JA difference's CI."""
  reference = next(iter(results.values()))["reference"]
  lines = [f"| variant | models | T | val JA | test | JA | TJA | DI | JA - {reference} [95% CI] |",
           "|---|---|---|---|---|---|---|---|---|"]
  for name, r in results.items():
    for split, m in r["test"].items():
      d = r["vs_reference"][split]["ja"]
      lines.append(f"| {name} | {r['members']} | {r['threshold']:.2f} | "
                   f"{100 * r['validation_ja']:.2f} | {split} | {100 * m['ja']:.2f} | "
                   f"{100 * m['tja']:.2f} | {100 * m['di']:.2f} | "
                   f"{100 * d[0]:+.2f} [{100 * d[1]:+.2f}, {100 * d[2]:+.2f}] |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lesion_jax.levers", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdir", help="a finished run that kept its latest checkpoints")
  parser.add_argument("--out", help="folder for levers.json and levers.md (default WORKDIR/levers)")
  parser.add_argument("--steps", type=int, nargs="+", default=[],
                      help="also score these kept checkpoints alone (variants step_N)")
  parser.add_argument("--against", default="best+none",
                      help="the variant the CIs are differences from (default best+none)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  try:
    if not os.path.isdir(args.workdir):
      raise MissingPathError(f"{args.workdir!r} is not a folder; expected a run's workdir")
    results = evaluate_levers(args.workdir, tuple(args.steps), args.against)
  except LesionJaxError as error:
    print(f"error: {error}", file=sys.stderr)
    return error.exit_code
  out = args.out or os.path.join(args.workdir, "levers")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "levers.json"), "w") as f:
    json.dump(results, f, indent=1)
  table = levers_table(results)
  with open(os.path.join(out, "levers.md"), "w") as f:
    f.write(table)
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
