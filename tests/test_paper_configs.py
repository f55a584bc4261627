"""Every config in configs/paper/ loads, validates, documents its command, and matches the paper."""
import glob
import os
import sys

import pytest

from lesion_jax import spec
from lesion_jax import data, report, sweep
from tests.conftest import load_config_module

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # the paper configs import configs.paper.common
  sys.path.insert(0, REPO)
from configs.paper import common  # noqa: E402

PAPER_DIR = os.path.join(REPO, "configs", "paper")
HELPERS = ("common.py",)  # shared settings, not configs
CONFIG_FILES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(PAPER_DIR, "*.py"))
                      if os.path.basename(p) not in HELPERS)
SYNTHETIC = {common.SYNTHETIC_D, common.SYNTHETIC_M}


@pytest.fixture
def pretrained_weights(monkeypatch, tmp_path):
  """Stand-ins for the downloaded model-zoo checkpoints (validation only checks they exist)."""
  for folder in common.ZOO_FOLDERS.values():
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "model.ckpt-30000.index").write_text("")
  monkeypatch.setenv(common.PRETRAINED_ENV, str(tmp_path))
  return tmp_path


def load(filename: str):
  return load_config_module("paper", filename)


def test_the_paper_experiments_are_all_there():
  expected = {"exp1_mobile_deeplab.py", "exp2_pretrain.py", "exp2_finetune.py",
              "exp1_real_isic2017_ph2.py", "table2_sweep.py"}
  assert expected <= set(CONFIG_FILES)
  assert len([f for f in CONFIG_FILES if f.startswith("table2_") and f != "table2_sweep.py"]) == 7


@pytest.mark.parametrize("filename", CONFIG_FILES)
def test_config_loads_validates_and_documents_its_command(filename, pretrained_weights):
  module = load(filename)
  assert f"python launch.py --config configs/paper/{filename}" in module.__doc__
  assert f"configs/paper/{filename}:runlocal" in module.__doc__
  assert "Paper" in module.__doc__  # the number it should approach, or why there is none
  for arg in (None, "runlocal"):
    config = module.get_config(arg)
    spec.validate(config)
    if config.experiment == "sweep":
      assert sweep.sweep_runs(config)  # every run of the grid validates
    if config.experiment == "transfer":
      sweep.transfer_plan(config, "/nonexistent/workdir")
  with pytest.raises(ValueError, match="unknown config variant"):
    module.get_config("runlcoal")


@pytest.mark.parametrize("filename", CONFIG_FILES)
def test_runlocal_needs_only_synthetic_data(filename):
  config = load(filename).get_config("runlocal")
  names = set(config.data.train) | set(config.data.test) | set(config.transfer.pretrain_data) \
      | set(config.transfer.pretrain_test)
  assert names <= SYNTHETIC
  assert config.data.image_size <= 64


def test_common_sets_are_the_papers():
  assert common.SET_D == data.SET_D and common.SET_M == data.SET_M


# Table 2: the best configuration of each architecture (model, loss, size option).
TABLE2_ROWS = {
    "table2_unet.py": ("unet", "jaccard", {"ifc": 32}),
    "table2_att_unet.py": ("att_unet", "dice", {"ifc": 64}),
    "table2_r2_unet.py": ("r2_unet", "jaccard", {"ifc": 16}),
    "table2_att_r2_unet.py": ("att_r2_unet", "ce_log_jaccard", {"ifc": 64}),
    "table2_xception_os16.py": ("deeplabv3plus_xception65", "jaccard", {"output_stride": 16}),
    "table2_mobilenetv2_alpha100.py": ("deeplab_mobilenetv2", "jaccard", {"alpha": 1.0}),
    "table2_mobilenetv2_alpha035.py": ("deeplab_mobilenetv2", "dice", {"alpha": 0.35}),
}


TABLE2_PRETRAINING = {"table2_xception_os16.py": "Pascal",
                      "table2_mobilenetv2_alpha100.py": "Pascal"}


@pytest.mark.parametrize("filename", sorted(TABLE2_ROWS))
def test_table2_rows_are_the_papers_best_settings_on_set_m(filename, pretrained_weights):
  model, loss, options = TABLE2_ROWS[filename]
  for arg in (None, "runlocal"):
    config = load(filename).get_config(arg)
    assert (config.model.name, config.loss) == (model, loss)
    assert all(config.model[k] == v for k, v in options.items())
  full = load(filename).get_config()
  assert full.data.train == data.SET_M and full.data.test == data.SET_M
  assert full.data.image_size == 512 and full.batch_size_per_device == 4
  assert report.pretraining_label(full) == TABLE2_PRETRAINING.get(filename, "None")
  assert load(filename).get_config("runlocal").model.init_from is None  # no downloads


def test_exp1_and_exp2_use_the_reduced_mobile_deeplab_and_the_papers_sets():
  exp1 = load("exp1_mobile_deeplab.py").get_config()
  pretrain = load("exp2_pretrain.py").get_config()
  finetune = load("exp2_finetune.py").get_config()
  for config in (exp1, pretrain, finetune):
    assert (config.model.name, config.model.alpha, config.loss) == \
        ("deeplab_mobilenetv2", 0.35, "dice")
  assert exp1.data.train == data.SET_M and pretrain.data.train == data.SET_D
  assert finetune.experiment == "transfer" and finetune.transfer.pretrain_data == data.SET_D
  # The pretraining run that exp2_finetune trains is exp2_pretrain.py's config.
  plan = sweep.transfer_plan(finetune, "/nonexistent/workdir")
  assert plan.pretrain.to_json_best_effort(sort_keys=True) == \
      pretrain.to_json_best_effort(sort_keys=True)


def test_table2_sweep_covers_the_papers_grid(pretrained_weights):
  runs = sweep.sweep_runs(load("table2_sweep.py").get_config())
  settings = {(r.config.model.name, r.config.loss, r.config.model.ifc, r.config.model.alpha,
               r.config.model.output_stride, r.config.model.init_from) for r in runs}
  assert len(runs) == len(settings) == 120
  unets = [r for r in runs if r.config.model.name in ("unet", "att_unet", "r2_unet",
                                                      "att_r2_unet")]
  assert len(unets) == 4 * 3 * 5
  xception = [r for r in runs if r.config.model.name == "deeplabv3plus_xception65"]
  assert {r.config.model.output_stride for r in xception} == {8, 16}
  assert {report.pretraining_label(r.config) for r in xception} == \
      {"None", "Pascal", "Cityscapes"}
  mobilenet = [r for r in runs if r.config.model.name == "deeplab_mobilenetv2"]
  assert {(r.config.model.alpha, report.pretraining_label(r.config)) for r in mobilenet} == {
      (1.0, "None"), (1.0, "Pascal"), (1.0, "Cityscapes"), (0.75, "None"), (0.5, "None"),
      (0.35, "None")}
  # Without the downloads: the whole sweep stops before training, or runs without them.
  scratch = sweep.sweep_runs(load("table2_sweep.py").get_config("scratch"))
  assert len(scratch) == 90 and all(r.config.model.init_from is None for r in scratch)


def test_pretrained_configs_refuse_to_start_without_the_checkpoints(monkeypatch, tmp_path):
  monkeypatch.setenv(common.PRETRAINED_ENV, str(tmp_path))
  config = load("table2_mobilenetv2_alpha100.py").get_config()
  assert config.model.init_from == \
      f"deeplab_zoo:{tmp_path}/deeplabv3_mnv2_pascal_train_aug/model.ckpt"
  with pytest.raises(FileNotFoundError, match="deeplabv3_mnv2_pascal_train_aug"):
    spec.validate(config)
  with pytest.raises(FileNotFoundError, match="init_from"):
    sweep.sweep_runs(load("table2_sweep.py").get_config())


def test_real_data_config_reads_the_shared_copies(monkeypatch, tmp_path):
  monkeypatch.setenv("LESION_JAX_REAL_DATA", str(tmp_path))
  monkeypatch.setenv("LESION_JAX_PH2_RELEASE", str(tmp_path / "release"))
  config = load("exp1_real_isic2017_ph2.py").get_config()
  assert config.data.train == ("isic",) and config.data.test == ("ph2",)
  assert config.data.manual_dirs.isic == str(tmp_path / "isic2017")
  assert config.data.manual_dirs.ph2 == str(tmp_path / "release")
  smoke = load("exp1_real_isic2017_ph2.py").get_config("smoke")
  spec.validate(smoke)
  assert smoke.data.train == ("isic",) and smoke.training.num_epochs == 1
