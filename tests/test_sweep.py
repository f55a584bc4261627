"""Sweeps (grids -> runs, resume, Table 2) and the Exp 1 / Exp 2 transfer experiment."""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from lesion_jax import report, sweep, train
from lesion_jax.config import base_config
from tests.conftest import load_config_module, with_tiny_steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # the paper configs import configs.paper.common
  sys.path.insert(0, REPO)


def load_paper_config(name: str, arg: str | None = None):
  return load_config_module("paper", f"{name}.py").get_config(arg)


# ----------------------------------------------------------------------------------------------
# Grids, names and overrides (no training).

def test_grids_expand_to_the_product_of_each_grid_without_duplicates():
  grids = ({"model.name": ["unet", "r2_unet"], "loss": ["dice", "jaccard", "ce"]},
           {"loss": ["dice"], "model.name": ["unet"]},  # already in the first grid
           {"model.name": ["deeplab_mobilenetv2"], "model.alpha": [0.35, 1.0]})
  runs = sweep.expand_grids(grids)
  assert len(runs) == 2 * 3 + 2
  assert runs[0] == {"model.name": "unet", "loss": "dice"}
  assert runs[-1] == {"model.name": "deeplab_mobilenetv2", "model.alpha": 1.0}


def test_grid_values_must_be_lists():
  with pytest.raises(ValueError, match=r"for one tuple value write \[\('isic', 'ph2'\)\]"):
    sweep.expand_grids(({"data.train": ("isic", "ph2")},))
  with pytest.raises(ValueError, match="non-empty list"):
    sweep.expand_grids(({"loss": "dice"},))
  with pytest.raises(ValueError, match="cannot vary"):
    sweep.expand_grids(({"sweep.grids": [()]},))


def test_run_names_are_stable_readable_and_filesystem_safe():
  assert sweep.run_name({"model.name": "att_unet", "loss": "ce_log_jaccard", "model.ifc": 64}) \
      == "model-att_unet__loss-ce_log_jaccard__ifc-64"
  assert sweep.run_name({"model.alpha": 0.35, "data.train": ("isic", "ph2"),
                         "init_from": None}) == "alpha-0.35__train-isic+ph2__init_from-none"
  # Keys whose short names clash keep their full path.
  assert sweep.run_name({"data.image_size": 64, "data.synthetic.image_size": 96}) == \
      "data.image_size-64__data.synthetic.image_size-96"
  # Paths: the file or folder that says what it is, not where it lives.
  assert sweep.run_name({"data.data_dir": "/tmp/my data"}) == "data_dir-my-data"
  assert sweep.run_name({"model.init_from": "deeplab_zoo:/home/u/w/deeplabv3_pascal_train_aug/"
                                            "model.ckpt-30000"}) == \
      "init_from-deeplab_zoo-deeplabv3_pascal_train_aug"
  long = sweep.run_name({"loss": "x" * 300})
  assert len(long) <= 120 and long != sweep.run_name({"loss": "x" * 301})
  assert sweep.run_name({}) == "base"


def test_overrides_refuse_unknown_keys_and_sections():
  config = base_config()
  changed = sweep.apply_overrides(config, {"model.ifc": 16, "data.train": ["isic", "ph2"]})
  assert changed.model.ifc == 16 and changed.data.train == ("isic", "ph2")
  assert config.model.ifc is None  # the original is untouched
  with pytest.raises(KeyError, match="'model.ifcc' is not a config key"):
    sweep.apply_overrides(config, {"model.ifcc": 16})
  with pytest.raises(ValueError, match="is a config section"):
    sweep.apply_overrides(config, {"model": "unet"})


def test_every_run_is_validated_before_any_training():
  config = base_config()
  config.sweep.grids = ({"model.name": ["unet", "unet_typo"], "model.ifc": [16]},)
  with pytest.raises(KeyError, match="sweep run model-unet_typo__ifc-16.*Valid model names"):
    sweep.sweep_runs(config)
  config.sweep.grids = ()
  with pytest.raises(ValueError, match="grids is empty"):
    sweep.sweep_runs(config)


def test_sweep_runs_are_single_training_runs():
  config = load_paper_config("table2_sweep", "runlocal")
  runs = sweep.sweep_runs(config)
  assert len(runs) >= 4
  for run in runs:
    assert run.config.experiment == "train" and run.config.sweep.grids == ()
  assert {r.config.model.name for r in runs} == {"unet", "deeplab_mobilenetv2"}


def test_a_finished_run_of_another_config_is_reported(tmp_path):
  config = base_config()
  workdir = tmp_path / "run"
  workdir.mkdir()
  assert sweep.finished_results(config, str(workdir)) is None
  other = base_config()
  other.loss = "jaccard"
  (workdir / "config.json").write_text(other.to_json_best_effort(sort_keys=True))
  (workdir / "results.json").write_text('{"threshold": 0.5}')
  with pytest.raises(FileExistsError, match="keys that differ: loss"):
    sweep.finished_results(config, str(workdir))
  assert sweep.finished_results(other, str(workdir)) == {"threshold": 0.5}


def test_transfer_plan_derives_exp1_pretraining_and_finetuning(tmp_path):
  config = load_paper_config("exp2_finetune")
  config.dont_load = (r"params/.*logits.*",)
  plan = sweep.transfer_plan(config, str(tmp_path))
  assert plan.exp1.data.train == ("dermofit", "smartskins")
  assert plan.pretrain.data.train == ("isic", "ph2") and plan.pretrain.data.test == ("isic", "ph2")
  assert plan.exp1.dont_load == () and plan.pretrain.dont_load == ()
  assert plan.finetune.dont_load == (r"params/.*logits.*",)  # fine-tuning only
  for run_config in (plan.exp1, plan.pretrain, plan.finetune):
    assert run_config.experiment == "train" and run_config.transfer.pretrain_data == ()
  assert plan.exp1_workdir == os.path.join(str(tmp_path), "exp1")
  # Exp 1 is the plain Exp 1 config: the same config.json, so that run can be reused as it is.
  exp1 = load_paper_config("exp1_mobile_deeplab")
  assert plan.exp1.to_json_best_effort(sort_keys=True) == exp1.to_json_best_effort(sort_keys=True)


def test_transfer_needs_pretraining_data_and_no_init_from(tmp_path):
  config = load_paper_config("exp2_finetune")
  config.transfer.pretrain_data = ()
  with pytest.raises(ValueError, match="pretrain_data is empty"):
    sweep.transfer_plan(config, str(tmp_path))
  config = load_paper_config("exp2_finetune")
  config.init_from = str(tmp_path)
  with pytest.raises(ValueError, match="pretrain_workdir"):
    sweep.transfer_plan(config, str(tmp_path))


# ----------------------------------------------------------------------------------------------
# End to end on tiny synthetic data. Every run below compiles the same programs (same model,
# loss, sizes and schedule), so the persistent compilation cache (tests/conftest.py) makes all
# but the first one cheap.

def tiny_paper_config(data_dir: str):
  """exp2_finetune.py:runlocal shrunk to seconds: its experiment, datasets and runs, with the
  tiny runs' model, optimiser and sizes (40 images at 32x32, 2 epochs of 7 steps), whose
  compilations its runs reuse."""
  return with_tiny_steps(load_paper_config("exp2_finetune", "runlocal"), data_dir)


class TrainSpy:
  """Wraps train.train_validated (where every run trains, a sweep's included) and records the
  workdirs it is called for."""

  def __init__(self, monkeypatch):
    self.workdirs = []
    real = train.train_validated

    def spy(config, workdir, overwrite=False):
      self.workdirs.append(os.path.basename(workdir))
      return real(config, workdir, overwrite=overwrite)

    monkeypatch.setattr(train, "train_validated", spy)


@pytest.mark.slow
def test_transfer_runs_exp1_pretraining_and_finetuning_then_reports(
    data_dir, tmp_path, monkeypatch):
  workdir = tmp_path / "exp2"
  config = tiny_paper_config(data_dir)
  results = sweep.run_transfer(config, str(workdir), resamples=2000)

  exp1 = json.load(open(workdir / "exp1" / "config.json"))
  assert exp1["experiment"] == "train" and exp1["init_from"] is None
  assert exp1["data"]["train"] == ["synthetic_lesions/macroscopic"]
  pretrain = json.load(open(workdir / "pretrain" / "config.json"))
  assert pretrain["data"]["train"] == ["synthetic_lesions/dermoscopic"]
  assert results["finetune"]["init_from"]["workdir"] == os.path.abspath(workdir / "pretrain")

  text = (workdir / "report.md").read_text()
  assert "| synthetic_lesions/macroscopic | Exp 1 |" in text
  assert "| synthetic_lesions/macroscopic | Exp 2 |" in text
  assert "bootstrap 95% CI" in text and "fig1_synthetic_lesions_macroscopic.png" in text
  figure = Image.open(workdir / "fig1_synthetic_lesions_macroscopic.png")
  assert figure.size[0] > figure.size[1]  # 4 panels wide, 3 (best, median, worst) high
  for run in ("exp1", "pretrain", "finetune"):
    assert (workdir / run / "training_curves.png").exists()

  # The reported difference is the mean of the per-image differences of the two runs.
  a = report.read_per_image(str(workdir / "exp1"))["synthetic_lesions/macroscopic"]
  b = report.read_per_image(str(workdir / "finetune"))["synthetic_lesions/macroscopic"]
  expected = np.mean([b[i]["ja"] - a[i]["ja"] for i in a])
  comparison = json.load(open(workdir / "comparison.json"))
  ja = next(r for r in comparison["paired_differences"] if r["metric"] == "ja")
  assert ja["difference"] == pytest.approx(expected, abs=1e-9)
  assert ja["low"] <= ja["difference"] <= ja["high"]

  # Run again: every run is finished, nothing trains, the results are the stored ones.
  spy = TrainSpy(monkeypatch)
  again = sweep.run_transfer(config, str(workdir), resamples=2000)
  assert spy.workdirs == []
  assert again["finetune"] == results["finetune"] and again["exp1"] == results["exp1"]


@pytest.mark.slow
def test_sweep_trains_each_run_once_and_resumes_only_the_unfinished(
    data_dir, tmp_path, monkeypatch):
  config = tiny_paper_config(data_dir)
  config.experiment = "sweep"
  config.transfer.pretrain_data = ()
  # Axes that change neither the model nor the compiled steps, so the runs share them (a grid's
  # product is test_grids_expand_to_the_product_of_each_grid_without_duplicates's).
  config.sweep.grids = ({"seed": [0, 1], "training.patience": [10]},)
  workdir = tmp_path / "sweep"
  first = sweep.run_sweep(config, str(workdir))
  names = ["seed-0__patience-10", "seed-1__patience-10"]
  assert sorted(first["runs"]) == sorted(names)
  for name in names:
    assert (workdir / name / "results.json").exists()

  table = (workdir / "table2.md").read_text()
  validation = table.split("## Test subset")[0]
  assert sum(f"| {n} | MobileNetV2, OS=16 | 1 − DI | α=0.35 | None | 0.44M |" in validation
             for n in names) == 2
  csv_rows = (workdir / "table2.csv").read_text().strip().splitlines()
  assert len(csv_rows) == 1 + 2 * 2  # validation and the synthetic test set, per run

  # An interrupted sweep: one run lost its results. Only that run trains again (from its
  # checkpoints: no step is repeated), the others are skipped without being touched.
  mtimes = {n: (workdir / n / "results.json").stat().st_mtime for n in names}
  os.remove(workdir / names[1] / "results.json")
  spy = TrainSpy(monkeypatch)
  second = sweep.run_sweep(config, str(workdir))
  assert spy.workdirs == [names[1]]
  assert second["skipped"] == sorted(set(names) - {names[1]})
  assert second["runs"][names[1]]["test"] == first["runs"][names[1]]["test"]
  for name in set(names) - {names[1]}:
    assert (workdir / name / "results.json").stat().st_mtime == mtimes[name]

  # Nothing left to do: a third call trains nothing.
  spy.workdirs.clear()
  sweep.run_sweep(config, str(workdir))
  assert spy.workdirs == []
