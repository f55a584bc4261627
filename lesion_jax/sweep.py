"""Experiments made of several training runs: grid sweeps (Table 2) and Exp 1 vs Exp 2 (Table 3).

Sweep (`config.experiment = "sweep"`). `config.sweep.grids` lists grids, each a mapping from a
dotted config key to a list of values:

    config.sweep.grids = (
        {"model.name": ["unet", "r2_unet"], "loss": ["dice", "jaccard"], "model.ifc": [16, 32]},
        {"model.name": ["deeplab_mobilenetv2"], "model.alpha": [0.35, 1.0], "loss": ["dice"]},
    )

A grid contributes the product of its lists (here 8 + 2 runs); a combination in several grids
runs once. Every value must be a list, even a single one; a tuple-valued key such as data.train
is written as a list of tuples: `{"data.train": [("isic", "ph2")]}`. Each run trains in
WORKDIR/<name>, the name made of its overrides (`model-unet__loss-dice__ifc-16`): stable, so a
sweep run again finds its finished runs and skips them, and resumes an interrupted one from its
checkpoints. Every run's config is built and validated before the first one trains. At the end
(and after every run) WORKDIR/table2.md and table2.csv hold the Table 2 layout of all runs.

Transfer (`config.experiment = "transfer"`, the paper's two experiments). The config describes
the target-domain training (Exp 1: set M); `config.transfer.pretrain_data` names the source
domain (set D). Three runs follow, each the same config but for the noted keys:
- WORKDIR/exp1: trained on the config's data alone (Exp 1);
- WORKDIR/pretrain: trained on `pretrain_data` and tested on `pretrain_test`;
- WORKDIR/finetune: trained on the config's data from the pretraining run's best checkpoint
  (`init_from`; the config's `dont_load`, `frozen` and `init_step` apply here only) (Exp 2);
then WORKDIR/report.md compares Exp 1 and Exp 2 in the Table 3 layout, with per-image paired
differences and bootstrap confidence intervals, and WORKDIR/fig1_<database>.png shows the best,
median and worst test images in the Fig. 1 colours. `transfer.baseline_workdir` and
`transfer.pretrain_workdir` reuse finished runs from elsewhere instead.

launch.py turns on JAX's persistent compilation cache (lesion_jax.experiment), so runs of one
model at one size compile their steps once: Exp 1, the pretraining and the fine-tuning differ only
in their data, and a resumed sweep run reloads what it compiled before.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
from typing import Any, Iterator, Mapping, Sequence

import ml_collections

from lesion_jax import config as config_lib
from lesion_jax import parallel, report, spec
from lesion_jax import workdir as workdir_lib
from lesion_jax import errors
from lesion_jax.errors import ConfigError, UnknownNameError
from lesion_jax.workdir import finished_results

# Keys a grid may not set: they describe the sweep itself, not one run.
_RESERVED_KEYS = ("experiment", "sweep", "transfer")
# Run names longer than this end in a hash of the overrides instead.
_MAX_NAME_LENGTH = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class SweepRunsFailed(errors.LesionJaxError, RuntimeError):
  """Some runs of a sweep failed (each logged with its traceback); the others finished."""
  exit_code = 1


@dataclasses.dataclass
class SweepRun:
  name: str  # folder below the sweep's workdir
  overrides: dict  # {dotted key: value}, in the grid's order
  config: ml_collections.ConfigDict  # the run's full config (experiment "train")


# ----------------------------------------------------------------------------------------------
# Grids -> runs.

def expand_grids(grids: Sequence[Mapping[str, Any]]) -> list[dict]:
  """Every combination of every grid, in order, each distinct combination once."""
  if isinstance(grids, Mapping):
    grids = (grids,)
  combinations, seen = [], set()
  for g, grid in enumerate(grids):
    if not isinstance(grid, Mapping):
      raise ConfigError(f"config.sweep.grids[{g}] must be a mapping {{dotted key: [values]}}, "
                       f"got {type(grid).__name__} {grid!r}")
    for key, values in grid.items():
      if not isinstance(values, list) or not values:
        hint = (f"; for one tuple value write [{values!r}]" if isinstance(values, tuple) else "")
        raise ConfigError(f"config.sweep.grids[{g}][{key!r}] must be a non-empty list of values "
                         f"(an axis of the sweep), got {values!r}{hint}")
      if key.split(".")[0] in _RESERVED_KEYS:
        raise ConfigError(f"config.sweep.grids[{g}][{key!r}]: a sweep cannot vary "
                         f"{', '.join(_RESERVED_KEYS)}")
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
      overrides = dict(zip(keys, values))
      identity = _canonical(overrides)
      if identity not in seen:
        seen.add(identity)
        combinations.append(overrides)
  return combinations


def _canonical(overrides: Mapping[str, Any]) -> str:
  return json.dumps({k: overrides[k] for k in sorted(overrides)}, sort_keys=True, default=str)


# Checkpoint files whose folder names them better (TF's model.ckpt-N, orbax's checkpoint).
_GENERIC_FILE = re.compile(r"^((model\.)?ckpt|checkpoint)", re.IGNORECASE)


def _format_path(value: str) -> str:
  """'deeplab_zoo:/w/deeplabv3_pascal_train_aug/model.ckpt-30000' -> 'deeplab_zoo:deeplabv3_...'.

  Where a file or folder lives says nothing about the run, and would change its name when moved.
  """
  kind, sep, path = value.partition(":") if ":" in value.split("/")[0] else ("", "", value)
  parts = [p for p in path.split("/") if p]
  name = parts[-1] if parts else ""
  if len(parts) > 1 and _GENERIC_FILE.match(name):
    name = parts[-2]
  return f"{kind}{sep}{name}"


def _format_value(value: Any) -> str:
  if isinstance(value, bool) or value is None:
    return str(value).lower()
  if isinstance(value, str) and "/" in value:
    return _format_path(value)
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return "+".join(_format_value(v) for v in value) or "empty"
  return str(value)


def run_name(overrides: Mapping[str, Any]) -> str:
  """A stable, filesystem-safe folder name for one run: `model-unet__loss-dice__ifc-16`.

  Keys are shortened to their last part ('model.ifc' -> 'ifc'; 'model.name' -> 'model') unless
  two keys would then clash; paths to their file or folder name (a checkpoint's folder); other
  characters than letters, digits and `._+-` become '-'.
  """
  if not overrides:
    return "base"

  def short(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]

  shorts = [short(k) for k in overrides]
  labels = [s if shorts.count(s) == 1 else k for s, k in zip(shorts, overrides)]
  name = "__".join(f"{label}-{_format_value(v)}" for label, v in zip(labels, overrides.values()))
  name = _UNSAFE.sub("-", name).strip(".")
  if len(name) > _MAX_NAME_LENGTH:
    digest = hashlib.sha1(_canonical(overrides).encode()).hexdigest()[:10]
    name = f"{name[:_MAX_NAME_LENGTH - 12]}__{digest}"
  return name


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    where: str = "overrides") -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` ({dotted key: value}) set; unknown keys are refused."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    try:
      for part in parents:
        node = node[part]
      current = node[leaf]
    except (KeyError, AttributeError, TypeError):
      raise UnknownNameError(f"{where}: {key!r} is not a config key (see lesion_jax.config."
                     "base_config for the valid ones)") from None
    if isinstance(current, ml_collections.ConfigDict) and not isinstance(value, Mapping):
      raise ConfigError(f"{where}: {key!r} is a config section; set one of its keys instead "
                       f"({', '.join(current.keys())})")
    if isinstance(current, tuple) and isinstance(value, list):
      value = tuple(value)
    try:
      node[leaf] = value
    except TypeError as error:
      raise ConfigError(f"{where}: {key!r} = {value!r}: {error}") from None
  return config


def _for_one_run(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` as a single training run: experiment 'train', no sweep or transfer settings."""
  config = copy.deepcopy(config)
  defaults = config_lib.base_config()
  config.experiment = "train"
  for section in ("sweep", "transfer"):
    for key, value in defaults[section].items():
      config[section][key] = value
  return config


@contextlib.contextmanager
def _context(where: str) -> Iterator[None]:
  """Re-raises a validation error with the run it concerns in front of its message."""
  try:
    yield
  except (KeyError, ValueError, TypeError, FileNotFoundError) as error:
    message = error.args[0] if len(error.args) == 1 else str(error)
    raise type(error)(f"{where}: {message}") from error


def sweep_runs(config: ml_collections.ConfigDict) -> list[SweepRun]:
  """The runs of `config.sweep.grids`, each config built and validated (nothing is trained)."""
  grids = config.sweep.grids
  if not grids:
    raise ConfigError("config.sweep.grids is empty: give at least one grid, e.g. "
                     "({'loss': ['dice', 'jaccard']},)")
  base = _for_one_run(config)
  runs, names, configs = [], {}, {}
  for overrides in expand_grids(grids):
    name = run_name(overrides)
    if name in names:
      raise ConfigError(f"sweep runs {names[name]} and {overrides} would share the folder "
                       f"{name!r}; make their values differ in more than punctuation")
    names[name] = overrides
    run_config = apply_overrides(base, overrides, where=f"sweep run {name}")
    identity = json.dumps(workdir_lib.config_json(run_config), sort_keys=True)
    if identity in configs:
      # e.g. a grid setting a key to its default: the run exists under the other name.
      logging.info("sweep run %s is the same config as %s; it runs once", name,
                   configs[identity])
      continue
    configs[identity] = name
    with _context(f"sweep run {name} ({overrides})"):
      spec.validate(run_config)
    runs.append(SweepRun(name=name, overrides=overrides, config=run_config))
  return runs


# ----------------------------------------------------------------------------------------------
# Running them.

def run_sweep(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False) -> dict:
  """Trains every run of the sweep not finished yet, then writes the Table 2-style table.

  Returns {'runs': {name: results}, 'failed': {name: error}, 'skipped': [names], 'table': md}.
  A run that fails (e.g. a NaN loss) is reported and the others go on; a RuntimeError naming
  the failed runs is raised at the end, after the table is written.
  """
  runs = sweep_runs(config)
  workdir_lib.check_workdir(workdir)
  # One sweep at a time in this folder (WORKDIR/.lock); each run locks its own folder as well.
  with workdir_lib.locked(workdir):
    return _run_sweep_locked(runs, workdir, overwrite)


def _run_sweep_locked(runs: list[SweepRun], workdir: str, overwrite: bool) -> dict:
  from lesion_jax import train  # imported here: the config checks before need no jax

  # Finished runs of other configs are found before anything trains.
  done = {}
  for run in runs:
    results = None if overwrite else finished_results(run.config, os.path.join(workdir,
                                                                               run.name))
    if results is not None:
      done[run.name] = results
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_main_process():
    with open(os.path.join(workdir, "sweep.json"), "w") as f:
      json.dump({"runs": [{"name": r.name, "overrides": r.overrides} for r in runs]}, f,
                indent=2, default=str)
  logging.info("Sweep of %d runs in %s: %d finished already, %d to train", len(runs), workdir,
               len(done), len(runs) - len(done))

  results_by_name, failed, skipped = dict(done), {}, sorted(done)
  table_path = None

  def write_table() -> str | None:
    if not parallel.is_main_process():
      return None
    entries = [report.table2_entry(r.name, r.config, results_by_name.get(r.name),
                                   "failed" if r.name in failed else
                                   ("finished" if r.name in results_by_name else "not run"))
               for r in runs]
    md_path, _ = report.write_table2(workdir, entries, title=os.path.basename(
        os.path.normpath(workdir)) or "Sweep")
    return md_path

  for i, run in enumerate(runs):
    if run.name in done:
      logging.info("[%d/%d] %s is finished; skipped", i + 1, len(runs), run.name)
      continue
    logging.info("[%d/%d] %s: %s", i + 1, len(runs), run.name, run.overrides)
    try:
      results_by_name[run.name] = train.train_validated(
          run.config, os.path.join(workdir, run.name), overwrite=overwrite)
    except Exception as error:  # one bad run (NaN loss, out of memory) must not stop the rest
      logging.exception("sweep run %s failed", run.name)
      failed[run.name] = f"{type(error).__name__}: {error}"
    table_path = write_table()
  table_path = write_table() or table_path
  if failed:
    raise SweepRunsFailed(f"{len(failed)} of {len(runs)} sweep runs failed: "
                       + "; ".join(f"{n}: {e}" for n, e in failed.items())
                       + f". The others are in {table_path}; run the sweep again to retry.")
  return {"runs": results_by_name, "failed": failed, "skipped": skipped, "table": table_path}


def sweep_end_summary(result: dict, workdir: str) -> str:
  """The last lines of a sweep on the console."""
  return "\n".join(["", f"Finished sweep: {workdir} ({len(result['runs'])} runs, "
                     f"{len(result['skipped'])} of them finished before)",
                     f"Table 2: {result['table']} (and table2.csv beside it)"])


# ----------------------------------------------------------------------------------------------
# Exp 1 vs Exp 2.

@dataclasses.dataclass
class TransferPlan:
  exp1: ml_collections.ConfigDict
  exp1_workdir: str
  pretrain: ml_collections.ConfigDict
  pretrain_workdir: str
  finetune: ml_collections.ConfigDict  # init_from is set once the pretraining run exists
  finetune_workdir: str


def transfer_plan(config: ml_collections.ConfigDict, workdir: str) -> TransferPlan:
  """The three runs of the transfer experiment, their configs validated (nothing is trained)."""
  settings = config.transfer
  pretrain_data = config_lib.dataset_names(settings.pretrain_data, "transfer.pretrain_data")
  if not pretrain_data:
    raise ConfigError("config.transfer.pretrain_data is empty: name the datasets to pretrain on "
                     "(the paper's set D: ('isic', 'ph2'))")
  if config.init_from:
    raise ConfigError(f"config.init_from={config.init_from!r}: the transfer experiment sets it "
                     "to its pretraining run; to reuse a finished pretraining run set "
                     "config.transfer.pretrain_workdir instead")
  if config.sweep.grids:
    raise ConfigError("config.sweep.grids is set: a transfer experiment does not sweep")
  base = _for_one_run(config)
  exp1 = copy.deepcopy(base)
  exp1.init_step = None
  exp1.dont_load = ()
  exp1.frozen = ()
  pretrain = copy.deepcopy(exp1)
  pretrain.data.train = pretrain_data
  pretrain.data.test = config_lib.dataset_names(settings.pretrain_test, "transfer.pretrain_test")
  finetune = copy.deepcopy(base)
  for name, run_config in (("exp1", exp1), ("pretrain", pretrain), ("finetune", finetune)):
    with _context(f"transfer experiment, {name} run"):
      spec.validate(run_config)
  return TransferPlan(
      exp1=exp1, exp1_workdir=settings.baseline_workdir or os.path.join(workdir, "exp1"),
      pretrain=pretrain,
      pretrain_workdir=settings.pretrain_workdir or os.path.join(workdir, "pretrain"),
      finetune=finetune, finetune_workdir=os.path.join(workdir, "finetune"))


def _train_or_reuse(config: ml_collections.ConfigDict, workdir: str, reuse: bool,
                    overwrite: bool, what: str) -> dict:
  from lesion_jax import train

  if reuse:
    # A finished run the user pointed at: used as it is, whatever its exact config.
    if os.path.exists(os.path.join(workdir, "results.json")):
      logging.info("%s: using the finished run in %s", what, workdir)
      return workdir_lib.read_results(workdir)
    logging.info("%s: %s has not finished; training it there", what, workdir)
    return train.train_validated(config, workdir)
  results = None if overwrite else finished_results(config, workdir)
  if results is not None:
    logging.info("%s: %s is finished; skipped", what, workdir)
    return results
  logging.info("%s: training in %s", what, workdir)
  return train.train_validated(config, workdir, overwrite=overwrite)


def run_transfer(config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False,
                 resamples: int = 10_000, seed: int = 0) -> dict:
  """Exp 1, pretraining and Exp 2 (each trained only when not finished), then the report.

  `overwrite` retrains the runs inside `workdir`; runs reused through config.transfer are never
  deleted.
  """
  plan = transfer_plan(config, workdir)
  workdir_lib.check_workdir(workdir)
  # One transfer experiment at a time in this folder; each run locks its own folder as well.
  with workdir_lib.locked(workdir):
    return _run_transfer_locked(config, plan, workdir, overwrite, resamples, seed)


def _run_transfer_locked(config: ml_collections.ConfigDict, plan: TransferPlan, workdir: str,
                         overwrite: bool, resamples: int, seed: int) -> dict:
  reuse_exp1 = bool(config.transfer.baseline_workdir)
  reuse_pretrain = bool(config.transfer.pretrain_workdir)
  exp1 = _train_or_reuse(plan.exp1, plan.exp1_workdir, reuse_exp1, overwrite, "Exp 1")
  pretrain = _train_or_reuse(plan.pretrain, plan.pretrain_workdir, reuse_pretrain, overwrite,
                             "Pretraining (Exp 2)")
  plan.finetune.init_from = plan.pretrain_workdir
  config_lib.check_init_from(plan.finetune)  # the rest was checked with the plan
  finetune = _train_or_reuse(plan.finetune, plan.finetune_workdir, False, overwrite,
                             "Fine-tuning (Exp 2)")
  # Every process builds the report (it reads checkpoints and data: collectives); one writes.
  target = ", ".join(config_lib.dataset_names(plan.exp1.data.train, "data.train"))
  source = ", ".join(plan.pretrain.data.train)
  notes = [
      f"- Exp 1 (`{plan.exp1_workdir}`): trained on {target} only.",
      f"- Pretraining (`{plan.pretrain_workdir}`): trained on {source}; "
      + report.run_summary(pretrain) + ". Its own test results are in its results.md.",
      f"- Exp 2 (`{plan.finetune_workdir}`): trained on {target} from the pretraining "
      "run's best checkpoint.",
  ]
  report_path = write_transfer_report(workdir, plan.exp1_workdir, plan.finetune_workdir,
                                      notes=notes, resamples=resamples, seed=seed,
                                      write=parallel.is_main_process())
  parallel.sync_hosts("transfer-report")
  return {"exp1": exp1, "pretrain": pretrain, "finetune": finetune, "report": report_path}


def transfer_end_summary(result: dict, workdir: str) -> str:
  """The last lines of the transfer experiment on the console."""
  lines = ["", f"Finished transfer experiment: {workdir}"]
  for name in ("exp1", "pretrain", "finetune"):
    test = result[name]["test"]
    tja = ", ".join(f"{subset} TJA {100 * m['tja']:.2f}" for subset, m in test.items())
    lines.append(f"  {name}: T {result[name]['threshold']:.2f}; {tja or 'no test split'}")
  lines.append(f"Report (Table 3 layout, paired differences, Fig. 1): {result['report']}")
  return "\n".join(lines)


def write_transfer_report(workdir: str, exp1_workdir: str, exp2_workdir: str,
                          notes: Sequence[str] = (), resamples: int = 10_000,
                          seed: int = 0, write: bool = True) -> str:
  """WORKDIR/report.md: Exp 1 vs Exp 2 in the Table 3 layout, differences, Fig. 1 grids."""
  title = "Exp 1 (target data only) vs Exp 2 (pretrained, then fine-tuned on the target data)"
  return report.write_comparison_report(
      workdir, [exp1_workdir, exp2_workdir], names=["Exp 1", "Exp 2"], title=title,
      resamples=resamples, seed=seed, figure=True, paper_reference=True, notes=notes,
      write=write)


__all__ = ["SweepRun", "TransferPlan", "apply_overrides", "expand_grids", "finished_results",
           "run_name", "run_sweep", "run_transfer", "sweep_end_summary", "sweep_runs",
           "transfer_end_summary",
           "transfer_plan", "write_transfer_report"]
