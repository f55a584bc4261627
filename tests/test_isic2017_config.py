"""configs/isic2017.py and what its recipe needs: the protocols, non-square sizes, augmentation and
test-time augmentation in a real run."""
import json
import math

import pytest

from lesion_jax import spec
from lesion_jax import optim
from lesion_jax import train
from tests.conftest import load_config_module, tiny_config


def load():
  return load_config_module("isic2017.py")


def test_every_variant_validates_and_the_docstring_holds_the_commands():
  module = load()
  for variant in ("", "dev", "runlocal"):
    suffix = f":{variant}" if variant else ""
    assert f"python launch.py --config configs/isic2017.py{suffix} --workdir" in module.__doc__
  for arg in (None, "dev", "runlocal", "dev,paper", "dev,cpu", "dev,paper,cpu", "paper"):
    spec.validate(module.get_config(arg))
  with pytest.raises(ValueError, match="unknown or repeated variant"):
    module.get_config("dev,runlocal")
  with pytest.raises(ValueError, match="unknown or repeated variant"):
    module.get_config("test")


def test_protocols_sizes_and_the_recipe():
  module = load()
  benchmark, dev, paper = (module.get_config(a) for a in (None, "dev", "dev,paper"))
  assert benchmark.data.options.isic.protocol == "official"
  assert dev.data.options.isic.protocol == "official_dev"
  assert benchmark.model.name == "deeplab_mobilenetv2" and benchmark.model.alpha == 0.35
  # The recipe: the Jaccard loss and flip TTA; images stored once at the training size.
  assert dev.data.image_size == 256 and dev.data.stored_size == 256
  assert dev.loss == "jaccard" and dev.evaluation.tta == "flips"
  # The paper's recipe, the baseline of the ablation.
  assert paper.data.image_size == 256 and paper.evaluation.tta == "none" and paper.loss == "dice"
  assert paper.data.augment.scale == (1.0, 1.0) and paper.optimizer.cycle_epochs == 10.0
  assert module.get_config("dev,cpu").data.image_size == (128, 128)
  assert module.get_config("dev,paper,cpu").data.image_size == (128, 128)
  runlocal = module.get_config("runlocal")
  assert runlocal.data.train == ("synthetic_lesions/dermoscopic",)
  assert runlocal.data.image_size[0] != runlocal.data.image_size[1]  # exercises the aspect


def sgdr_by_hand(step, steps_per_epoch, opt):
  """The cosine's value at `step`: cycle k lasts cycle * 2**k steps and peaks at lr * decay**k."""
  cycle, k, start = opt.cycle_epochs * steps_per_epoch, 0, 0.0
  while step >= start + cycle * opt.cycle_mult**k:
    start += cycle * opt.cycle_mult**k
    k += 1
  peak = opt.learning_rate * opt.peak_decay**k
  position = (step - start) / (cycle * opt.cycle_mult**k)
  return opt.min_learning_rate + 0.5 * (peak - opt.min_learning_rate) * (1 + math.cos(math.pi * position))


@pytest.mark.parametrize("arg,steps_per_epoch", [(None, 500), ("dev,cpu", 450)])
def test_the_recipe_ends_its_run_as_a_cycle_anneals(arg, steps_per_epoch):
  """The recipe's SGDR ends at its floor on the last step; the paper's 50 epochs stop at half a peak."""
  module = load()
  for name, config in (("recipe", module.get_config(arg)), ("paper", module.get_config("paper"))):
    total = config.training.num_epochs * steps_per_epoch
    schedule = optim.sgdr_schedule(total, steps_per_epoch, config.optimizer)
    last = float(schedule(total - 1))
    assert last == pytest.approx(sgdr_by_hand(total - 1, steps_per_epoch, config.optimizer),
                                 rel=0.02, abs=2e-7), name
    if name == "recipe":
      assert last < 2 * config.optimizer.min_learning_rate
      assert config.training.patience >= config.training.num_epochs  # no stop inside a cycle
    else:
      assert last > 0.3 * config.optimizer.learning_rate


@pytest.mark.slow
def test_a_run_at_a_non_square_size_with_augmentation_and_tta(data_dir, tmp_path):
  """ISIC's 4:3 aspect, every augmentation and test-time augmentation, end to end."""
  config = tiny_config(data_dir, **{
      "data.image_size": (32, 48), "evaluation.tta": "dihedral", "training.num_epochs": 1,
      "data.augment.scale": (0.8, 1.25), "data.augment.rotation_degrees": 30.0,
      "data.augment.elastic_pixels": 2.0, "data.augment.brightness": 0.2,
      "data.augment.hue": 0.05})
  workdir = tmp_path / "wide"
  results = train.train_and_evaluate(config, str(workdir))
  assert results["test"]["synthetic_lesions/dermoscopic"]["n_images"] == 8
  from PIL import Image

  from lesion_jax import runs
  run = runs.load_run(str(workdir))
  assert run.image_size == (32, 48)
  assert json.loads((workdir / "config.json").read_text())["data"]["image_size"] == [32, 48]
  overlay = next((workdir / "overlays" / "synthetic_lesions_dermoscopic").iterdir())
  assert Image.open(overlay).size[0] > Image.open(overlay).size[1]
