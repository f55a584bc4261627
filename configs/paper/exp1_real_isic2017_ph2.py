"""A real-data stand-in for Exp 1: the reduced Mobile DeepLab trained on ISIC 2017, tested on PH2.

  python launch.py --config configs/paper/exp1_real_isic2017_ph2.py --workdir runs/exp1_real
  python launch.py --config configs/paper/exp1_real_isic2017_ph2.py:smoke \
      --workdir runs/exp1_real_smoke
  python launch.py --config configs/paper/exp1_real_isic2017_ph2.py:runlocal \
      --workdir runs/exp1_real_local

Substitution: set M (Dermofit, SMARTSKINS) is licensed and not in this repository's shared data,
so this config runs the Exp 1 pipeline on the real databases that are: the ISIC 2017 training and
validation archives stand in for the training set (2150 images pooled, 10% of them validation,
where the threshold is chosen), and PH2 stands in for the test database (its 40-image test
split, stratified by diagnosis). Same model, loss and protocol as exp1_mobile_deeplab.py (the
paper's section 2.2) at 256x256, the size of the shared ISIC copies (256x192), instead of 512.

Data ($LESION_JAX_REAL_DATA, default ../shared/data):
- isic2017/: the official ISIC-2017_{Training,Validation}_{Data,Part1_GroundTruth}.zip and
  Part3 CSVs, read in place (no ISIC 2017 test archives: the isic test split is empty).
- ph2/: the flattened shared copy (images/IMDxxx.jpg, masks/IMDxxx_lesion.png,
  PH2_dataset.xlsx), read in place; the builder gives it the same split as the official release.
  $LESION_JAX_PH2_RELEASE, if set, points at another PH2 folder instead (e.g. the extracted
  PH2Dataset.rar release).
Variants: `smoke` is the same real data at 64x64 for one epoch (checks the data path in minutes);
`cpu` trains at 128x128 for 3 epochs (the README's worked example, 2.5 minutes on 2 idle cores);
`runlocal` swaps both databases for synthetic_lesions/dermoscopic (no real data needed).

Paper: no number applies directly (it trains on set M and tests on Dermofit and SMARTSKINS:
Table 3, Exp 1, TJA 72.97 and 78.51). This run measures how the same recipe transfers across two
dermoscopic databases. Measured with `:cpu` (128x128, 3 epochs, 2 idle x86 cores, 2 min 21 s):
PH2 test T 0.64, TJA 66.21, JA 75.84, DI 85.58 (40 images); validation JA 71.59.
"""
import os

from configs.paper import common

REAL_DATA_ENV = "LESION_JAX_REAL_DATA"
PH2_RELEASE_ENV = "LESION_JAX_PH2_RELEASE"


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg, allowed=("runlocal", "smoke", "cpu"))
  config = common.paper_config("deeplab_mobilenetv2", "dice", alpha=0.35, output_stride=16)
  config.data.train = ("isic",)
  config.data.test = ("ph2",)
  root = os.path.expanduser(os.environ.get(REAL_DATA_ENV, "../shared/data"))
  config.data.manual_dirs.isic = os.path.join(root, "isic2017")
  config.data.manual_dirs.ph2 = os.path.expanduser(
      os.environ.get(PH2_RELEASE_ENV, os.path.join(root, "ph2")))
  config.data.image_size = 256
  config.data.stored_size = 256
  if variant == "runlocal":
    config = common.runlocal(config)
  elif variant == "smoke":
    config.data.image_size = 64
    config.data.stored_size = 64
    config.training.num_epochs = 1
    config.training.log_every_steps = 20
    config.model.bn_momentum = 0.99
  elif variant == "cpu":
    # The worked example of the README: the same data at 128x128 for 3 epochs, about 2.5
    # minutes on an idle 2-core CPU. BN momentum 0.99, as for every run of a few thousand steps.
    config.data.image_size = 128
    config.data.stored_size = 128
    config.training.num_epochs = 3
    config.training.log_every_steps = 50
    config.optimizer.learning_rate = 3e-3
    config.optimizer.cycle_epochs = 1.0
    config.model.bn_momentum = 0.99
  return config
