"""Settings shared by the paper's experiment configs in configs/paper/ (this file is not a config).

`paper_config` is the paper's protocol (section 2.2: 512x512 inputs, batch 4, Adam with cosine
annealing and warm restarts, early stopping on validation JA, threshold chosen on validation) for
one model and loss, trained on set M (Dermofit + SMARTSKINS) and tested on each of its databases.

`runlocal` turns any of these configs into a run of minutes on a CPU: the same pipeline on
synthetic stand-ins (synthetic_lesions/dermoscopic for set D, synthetic_lesions/macroscopic for
set M), 64x64 inputs and a few epochs. Its numbers say the pipeline works, not what the paper got.
"""
from __future__ import annotations

import glob
import os

import ml_collections

from lesion_jax.config import base_config

# The paper's sets (Table 1); the same tuples as lesion_jax.data.SET_D / SET_M, written out so
# that loading a config does not import tensorflow_datasets.
SET_D = ("isic", "ph2")
SET_M = ("dermofit", "smartskins")
SYNTHETIC_D = "synthetic_lesions/dermoscopic"
SYNTHETIC_M = "synthetic_lesions/macroscopic"
STAND_INS = {"isic": SYNTHETIC_D, "ph2": SYNTHETIC_D, "dermofit": SYNTHETIC_M,
             "smartskins": SYNTHETIC_M}

# The five losses of "Model Optimization", in the paper's order.
PAPER_LOSSES = ["ce", "dice", "jaccard", "ce_log_jaccard", "ce_log_dice"]

# The paper's "PreT" weights: TF DeepLab model-zoo checkpoints, each untarred from
# http://download.tensorflow.org/models/<folder>_<date>.tar.gz into $LESION_JAX_PRETRAINED.
PRETRAINED_ENV = "LESION_JAX_PRETRAINED"
ZOO_FOLDERS = {
    ("deeplabv3plus_xception65", "pascal"): "deeplabv3_pascal_train_aug",  # _2018_01_04
    ("deeplabv3plus_xception65", "cityscapes"): "deeplabv3_cityscapes_train",  # _2018_02_06
    ("deeplab_mobilenetv2", "pascal"): "deeplabv3_mnv2_pascal_train_aug",  # _2018_01_29
    ("deeplab_mobilenetv2", "cityscapes"): "deeplabv3_mnv2_cityscapes_train",  # _2018_02_05
}


def paper_config(model_name: str, loss: str, **model_options) -> ml_collections.ConfigDict:
  """base_config with this model and loss, trained on set M and tested on each database."""
  config = base_config()
  config.model.name = model_name
  for key, value in model_options.items():
    config.model[key] = value
  config.loss = loss
  config.data.train = SET_M
  config.data.test = SET_M
  # Store the real databases at the training size once, instead of decoding the originals
  # every epoch; the paper resizes every image to 512x512 anyway.
  config.data.stored_size = config.data.image_size
  return config


def zoo_weights(model_name: str, dataset: str) -> str:
  """config.model.init_from for the model-zoo checkpoint of `model_name` trained on `dataset`.

  The checkpoint prefix is the one `*.index` file in the untarred folder (the zoo names it
  model.ckpt or model.ckpt-N); before the download it is <folder>/model.ckpt, which
  lesion_jax.spec.validate reports as missing.
  """
  root = os.path.expanduser(os.environ.get(PRETRAINED_ENV, "~/lesion_pretrained"))
  folder = os.path.join(root, ZOO_FOLDERS[(model_name, dataset)])
  indexes = sorted(glob.glob(os.path.join(folder, "*.index")))
  prefix = indexes[-1][:-len(".index")] if indexes else os.path.join(folder, "model.ckpt")
  return f"deeplab_zoo:{prefix}"


def stand_ins(names) -> tuple[str, ...]:
  """Real database names -> their synthetic stand-ins (others are kept), each once."""
  if isinstance(names, str):
    names = (names,)
  return tuple(dict.fromkeys(STAND_INS.get(n, n) for n in names))


def runlocal(config: ml_collections.ConfigDict, num_images: int = 300,
             num_epochs: int = 12) -> ml_collections.ConfigDict:
  """The same experiment on synthetic stand-ins at 64x64: minutes on a CPU.

  The defaults (300 images, 12 epochs of 54 steps) suit the small models; the large U-Nets and
  Xception take seconds per step on a CPU, so their configs ask for fewer images and epochs.
  """
  config.data.train = stand_ins(config.data.train)
  config.data.test = stand_ins(config.data.test)
  config.transfer.pretrain_data = stand_ins(config.transfer.pretrain_data)
  config.transfer.pretrain_test = stand_ins(config.transfer.pretrain_test)
  config.data.stored_size = None
  config.model.init_from = None  # no downloads: the pretrained configs train from scratch here
  config.data.image_size = 64
  config.data.synthetic.num_images = num_images  # 300: 216 train, 24 validation, 60 test
  config.data.synthetic.image_size = 96
  config.training.num_epochs = num_epochs
  config.training.patience = 6
  config.training.log_every_steps = 10
  config.training.tensorboard_images = 2
  config.optimizer.learning_rate = 3e-3
  config.optimizer.cycle_epochs = 3.0  # restarts after epochs 3 and 9: visible in the curves
  # A few hundred steps: the architectures' slow BN running averages would not settle.
  config.model.bn_momentum = 0.99
  config.report.num_overlays = 2
  return config


def parse_arg(arg: str | None, allowed: tuple[str, ...] = ("runlocal",)) -> str | None:
  """The variant asked for after `file.py:`, or None for the full experiment."""
  if arg in (None, ""):
    return None
  if arg not in allowed:
    raise ValueError(f"unknown config variant {arg!r}; valid: {', '.join(allowed)} (or none)")
  return arg
