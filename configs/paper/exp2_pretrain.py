"""Exp 2, first half: the reduced Mobile DeepLab trained on the dermoscopic set D (ISIC + PH2).

  python launch.py --config configs/paper/exp2_pretrain.py --workdir runs/exp2_pretrain \
      --config.data.manual_dir=~/lesion_archives
  python launch.py --config configs/paper/exp2_pretrain.py:runlocal \
      --workdir runs/exp2_pretrain_local

"The same training procedure and network parameters were used" (paper 3.2): exp1_mobile_deeplab.py
with set D as data. Its best checkpoint starts the fine-tuning on set M (exp2_finetune.py, which
trains this run itself into WORKDIR/pretrain, or reuses this one with
--config.transfer.pretrain_workdir=runs/exp2_pretrain).

Data: ISIC 2016/2017/2018 archives in ~/lesion_archives/isic/ (the 2017 test images held out as
the test split) and the PH2 release in ~/lesion_archives/ph2/. runlocal:
300 synthetic_lesions/dermoscopic images at 64x64, 12 epochs of 54 steps.

Paper: no numbers for this run on its own; it counts through the fine-tuned model (Table 3,
"Exp 2" rows; see exp2_finetune.py).
"""
from configs.paper import common


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg)
  config = common.paper_config("deeplab_mobilenetv2", "dice", alpha=0.35, output_stride=16)
  config.data.train = common.SET_D
  config.data.test = common.SET_D
  if variant == "runlocal":
    config = common.runlocal(config)
  return config
