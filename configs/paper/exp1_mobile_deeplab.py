"""Exp 1: the reduced Mobile DeepLab (MobileNetV2, α 0.35, soft Dice loss) trained on set M only.

  python launch.py --config configs/paper/exp1_mobile_deeplab.py --workdir runs/exp1 \
      --config.data.manual_dir=~/lesion_archives
  python launch.py --config configs/paper/exp1_mobile_deeplab.py:runlocal --workdir runs/exp1_local

The model the first experiment selects (Table 2, last row; 0.44M parameters), trained from scratch
on the train splits of Dermofit and SMARTSKINS (set M), threshold chosen on their validation
splits, then tested on each database's test split separately (Table 3, "Exp 1" rows).
exp2_finetune.py trains this same config (into WORKDIR/exp1) for its comparison, or reuses this
run with --config.transfer.baseline_workdir=runs/exp1.

Data: the Dermofit Image Library and SMARTSKINS archives in ~/lesion_archives/dermofit/ and
~/lesion_archives/smartskins/. runlocal: 300 synthetic_lesions/macroscopic images at 64x64, 12
epochs of 54 steps (about 2 minutes on a busy 2-core CPU).

Paper (Table 3, Exp 1), test subsets, percent:
  SMARTSKINS  T 0.50  TJA 78.51  JA 82.64  DI 90.14  AC 98.96  SE 95.40  SP 99.15
  Dermofit    T 0.50  TJA 72.97  JA 80.26  DI 88.26  AC 93.51  SE 87.56  SP 96.86
"""
from configs.paper import common


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg)
  config = common.paper_config("deeplab_mobilenetv2", "dice", alpha=0.35, output_stride=16)
  if variant == "runlocal":
    config = common.runlocal(config)
  return config
