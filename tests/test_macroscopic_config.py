"""configs/macroscopic.py: Exp 0 (scratch), Exp 1 and Exp 2 on Waterloo, and their `:runlocal`
chain end to end (Exp 2 starting from Exp 1's checkpoint), compared in one Table 3."""
import json

import pytest

from lesion_jax import spec
from lesion_jax import report, train
from tests.conftest import load_config_module, with_tiny_steps


def load():
  return load_config_module("macroscopic.py")


def test_every_variant_validates_and_the_docstring_holds_the_commands(tmp_path):
  module = load()
  for variant in module.VARIANTS:
    assert f"python launch.py --config configs/macroscopic.py:{variant} --workdir" in (
        module.__doc__)
  for arg in ("scratch", "exp1", "scratch,color", "scratch,runlocal", "exp1,runlocal"):
    spec.validate(module.get_config(arg))
  for arg in ("exp2", "exp2,color", "exp2,runlocal"):
    config = module.get_config(arg)
    assert config.init_from in (module.EXP1_WORKDIR, module.EXP1_LOCAL_WORKDIR)
    config.init_from = str(tmp_path)  # validate checks that the Exp 1 run exists
    spec.validate(config)
  for bad in ("", "exp3", "exp1,exp2", "scratch,blue"):
    with pytest.raises(ValueError, match="expected one variant"):
      module.get_config(bad)


def test_exp1_is_the_isic_recipe_tested_on_waterloo_and_exp2_fine_tunes_on_it():
  module = load()
  isic = load_config_module("isic2017.py").get_config()
  exp1, exp2, scratch = (module.get_config(v) for v in ("exp1", "exp2", "scratch"))
  # Exp 1's run differs from the ISIC recipe's only in what its final evaluation reports, so
  # a finished ISIC run is evaluated again rather than trained (workdir.EVALUATION_KEYS).
  from lesion_jax import workdir
  changed = workdir.config_differences(workdir.config_json(isic), workdir.config_json(exp1))
  assert changed and workdir.extension(workdir.config_json(isic), workdir.config_json(exp1),
                                       changed)
  assert exp1.data.train == ("isic",) and "waterloo" in exp1.data.test
  assert exp2.data.train == scratch.data.train == ("waterloo",)
  assert exp2.data.test[0] == "waterloo" and exp2.init_from == module.EXP1_WORKDIR
  for config in (exp2, scratch):  # the recipe of Exp 1, at the same size
    assert (config.loss, config.evaluation.tta, config.data.image_size) == (
        exp1.loss, exp1.evaluation.tta, exp1.data.image_size)
  color = module.get_config("exp2,color")
  assert color.data.augment.hue > 0 and color.data.augment.brightness > 0


def _tiny(config, data_dir):
  """A runlocal variant's datasets, chain and evaluation (Exp 1's mask clean-up included) with
  the tiny runs' model, loss, optimiser and sizes: the three runs reuse their compilations."""
  return with_tiny_steps(config, data_dir)


@pytest.mark.slow
def test_the_runlocal_chain_writes_a_table3_of_the_three(data_dir, tmp_path):
  module = load()
  workdirs = {v: str(tmp_path / v) for v in module.VARIANTS}
  for variant in ("exp1", "exp2", "scratch"):
    config = _tiny(module.get_config(f"{variant},runlocal"), data_dir)
    if variant == "exp2":
      config.init_from = workdirs["exp1"]
    results = train.train_and_evaluate(config, workdirs[variant])
    assert results["test"], variant
  assert json.load(open(f"{workdirs['exp2']}/results.json"))["init_from"]["workdir"] == (
      workdirs["exp1"])
  out = tmp_path / "table3"
  report.write_comparison_report(str(out), [workdirs[v] for v in ("scratch", "exp1", "exp2")],
                                 ["Exp 0", "Exp 1", "Exp 2"], resamples=100, figure=False)
  text = (out / "report.md").read_text()
  # The three share the (generated) macroscopic test split: paired differences with CIs.
  assert "Per-image paired differences (Exp 2 − Exp 1" in text
  assert "| synthetic_lesions/macroscopic | JA |" in text
