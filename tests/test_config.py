"""Bad configs fail early, with the key, the value and what is allowed."""
import os

import pytest

from lesion_jax import config as config_lib
from lesion_jax import spec
from lesion_jax import models as models_lib
from lesion_jax import train
from tests.conftest import launch_in_this_process, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("key,value,message", [
    ("model.name", "unet_9000", "Unknown model 'unet_9000'.*deeplab_mobilenetv2"),
    ("loss", "focal", "Unknown loss 'focal'.*ce_log_dice.*jaccard"),
    ("data.train", ("isic", "nope_db"), "Unknown dataset 'nope_db'.*ph2"),
    ("data.image_size", 100, "100"),
    ("model.output_stride", 12, "output_stride"),
    ("model.alpha", -1.0, "alpha"),
    ("batch_size_per_device", 0, "batch_size_per_device"),
    ("cpu_ynnpack", "maybe", r"cpu_ynnpack must be one of \('auto', 'on', 'off'\), got 'maybe'"),
    ("xla_gpu_command_buffer", "FUSION,GRAPHS",
     r"xla_gpu_command_buffer='FUSION,GRAPHS' is not accepted by XLA.*'GRAPHS' is not a valid"),
    ("training.steps_per_dispatch", 0, "steps_per_dispatch must be >= 1"),
    ("data.cache_gb", -1.0, "cache_gb must be >= 0"),
])
def test_validate_names_the_bad_value(key, value, message, tmp_path):
  config = tiny_config(str(tmp_path), **{key: value})
  with pytest.raises((ValueError, KeyError), match=message):
    spec.validate(config)
  # The same error comes from a run, before the workdir is even created.
  workdir = tmp_path / "run"
  with pytest.raises((ValueError, KeyError), match=message):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_locked_config_refuses_a_misspelt_key():
  config = config_lib.base_config()
  with pytest.raises(AttributeError, match="modle"):
    config.modle = 3


def test_unlocked_config_with_unknown_key_is_refused():
  config = config_lib.base_config()
  config.unlock()
  config.training.epochs = 5
  with pytest.raises(ValueError, match="training.epochs"):
    config_lib.check_known_keys(config)


def test_missing_workdir_parent_is_reported(tmp_path):
  config = tiny_config(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does_not_exist"):
    train.train_and_evaluate(config, str(tmp_path / "does_not_exist" / "run"))


def test_model_options_the_model_does_not_take_are_reported():
  config = config_lib.base_config()
  config.model.name = "unet"
  config.model.ifc = 16
  kwargs, ignored = models_lib.config_kwargs(config)
  assert kwargs["ifc"] == 16 and "alpha" in ignored and "output_stride" in ignored


def _parse_with_launch_flags(args):
  """The config as launch.py's flags would resolve it (same config_flags definition)."""
  from absl import flags
  from ml_collections import config_flags
  argv = ["launch.py", "--config", os.path.join(REPO, "configs", "quickstart.py")] + args
  values = flags.FlagValues()
  # config_flags reads the overrides from sys.argv unless given the argv explicitly.
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


@pytest.mark.parametrize("name,extra,params", [
    ("unet", ["--config.model.ifc=16"], 1_962_625),
    ("att_unet", ["--config.model.ifc=64"], 31_902_629),
    ("r2_unet", ["--config.model.ifc=16"], 6_003_041),
    ("att_r2_unet", ["--config.model.ifc=64"], 96_509_733),
    ("deeplabv3plus_xception65", ["--config.model.output_stride=8"], 41_050_273),
    ("deeplab_mobilenetv2", ["--config.model.alpha=1.0"], 2_108_417),
])
def test_every_registry_name_is_reachable_by_override(name, extra, params):
  from lesion_jax import models
  config = _parse_with_launch_flags([f"--config.model.name={name}"] + extra)
  spec.validate(config)
  model = models_lib.from_config(config)
  assert models.count_params(model) == params


@pytest.mark.slow
def test_launch_trains_a_unet_through_overrides(tmp_path, data_dir, capsys, restored_logging):
  """launch.py's flags and main in this process (tests/test_cli_errors.py starts it as one)."""
  assert launch_in_this_process([
      "--config", os.path.join(REPO, "configs", "quickstart.py"),
      "--workdir", str(tmp_path / "unet"), "--config.model.name=unet",
      "--config.model.ifc=16", "--config.loss=jaccard", f"--config.data.data_dir={data_dir}",
      "--config.data.synthetic.num_images=40", "--config.data.synthetic.image_size=48",
      "--config.data.image_size=32", "--config.training.num_epochs=1"]) == 0
  result = capsys.readouterr()
  import json
  results = json.loads((tmp_path / "unet" / "results.json").read_text())
  assert results["model"] == {"name": "unet", "params": 1_962_625}
  assert results["loss"] == "jaccard"
  assert "config.model.alpha=0.35 is ignored" in result.err
  # The resolved config is in the run's log, not on the console; the end says where things are.
  assert "Resolved config" not in result.err + result.out
  assert "Resolved config" in (tmp_path / "unet" / "log.txt").read_text()
  last = result.out.strip().splitlines()
  assert f"Finished: {tmp_path / 'unet'}" in last
  assert any(line.startswith("| synthetic_lesions/dermoscopic | ") for line in last)
  assert f"Results: {tmp_path / 'unet' / 'results.md'}" in result.out
  assert "Figures: " in result.out and "threshold_curve.png" in result.out


def test_only_our_own_errors_print_without_a_traceback(monkeypatch, capsys):
  import launch
  from lesion_jax import errors, experiment
  launch.FLAGS(["launch.py", "--config", os.path.join(REPO, "configs", "quickstart.py")])

  def fail(error):
    def run(*args, **kwargs):
      raise error
    monkeypatch.setattr(experiment, "run", run)

  fail(errors.ConfigError("config.loss: no such loss"))
  with pytest.raises(SystemExit) as exit_info:
    launch.main(["launch.py"])
  assert exit_info.value.code == errors.EXIT_BAD_INPUT
  assert capsys.readouterr().err == "error: config.loss: no such loss\n"
  fail(errors.TrainingDiverged("training diverged at step 3"))
  with pytest.raises(SystemExit) as exit_info:
    launch.main(["launch.py"])
  assert exit_info.value.code == errors.EXIT_DIVERGED
  # A ValueError from inside a library is a bug, not bad input: its traceback is kept.
  fail(ValueError("a bug"))
  with pytest.raises(ValueError, match="a bug"):
    launch.main(["launch.py"])


def test_gpu_command_buffers_are_compile_options_on_the_gpu_only(tmp_path):
  from lesion_jax import models
  config = tiny_config(str(tmp_path), xla_gpu_command_buffer="FUSION,CUBLAS")
  spec.validate(config)
  model = models.create_model("unet", ifc=16)
  assert train.compiler_options(config, model, "gpu") == {
      "xla_gpu_enable_command_buffer": "FUSION,CUBLAS", "xla_gpu_graph_min_graph_size": 1}
  assert "xla_gpu_enable_command_buffer" not in train.compiler_options(config, model, "cpu")
  config.xla_gpu_command_buffer = ""  # off
  assert train.compiler_options(config, model, "gpu") == {"xla_gpu_enable_command_buffer": ""}


class _Reached(Exception):
  """Raised where training would start: what comes before it is the path under test."""


def test_a_launch_validates_its_config_once(tmp_path, monkeypatch):
  from lesion_jax import experiment
  calls = []
  real_validate = spec.validate
  monkeypatch.setattr(spec, "validate", lambda config: calls.append(1) or real_validate(config))

  def setup_run(*args, **kwargs):
    raise _Reached

  monkeypatch.setattr(train, "setup_run", setup_run)
  with pytest.raises(_Reached):
    experiment.run(tiny_config(str(tmp_path)), str(tmp_path / "run"))
  assert len(calls) == 1
  # A library caller of train_and_evaluate gets the same single check.
  calls.clear()
  with pytest.raises(_Reached):
    train.train_and_evaluate(tiny_config(str(tmp_path)), str(tmp_path / "run2"))
  assert len(calls) == 1
