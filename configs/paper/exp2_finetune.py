"""Exp 2: pretrain on set D, fine-tune on set M, and compare with Exp 1 (Table 3 and Fig. 1).

  python launch.py --config configs/paper/exp2_finetune.py --workdir runs/exp2 \
      --config.data.manual_dir=~/lesion_archives
  python launch.py --config configs/paper/exp2_finetune.py:runlocal --workdir runs/exp2_local

One command runs the whole comparison (experiment "transfer", lesion_jax/sweep.py), training only
what is not finished in WORKDIR yet:
- WORKDIR/exp1: the reduced Mobile DeepLab on set M from scratch (= exp1_mobile_deeplab.py);
- WORKDIR/pretrain: the same on set D, ISIC + PH2 (= exp2_pretrain.py);
- WORKDIR/finetune: the same on set M, starting from the pretraining run's best checkpoint;
- WORKDIR/report.md: Exp 1 vs Exp 2 per test database in the Table 3 layout, per-image paired
  differences with bootstrap 95% CIs, and WORKDIR/fig1_<database>.png (best, median and worst
  test images: image, truth, Exp 1 and Exp 2 predictions in the Fig. 1 colours).
Finished runs from elsewhere are reused with --config.transfer.baseline_workdir=runs/exp1 and
--config.transfer.pretrain_workdir=runs/exp2_pretrain.

Data: set M (~/lesion_archives/dermofit/, ~/lesion_archives/smartskins/) and set D
(~/lesion_archives/isic/, ~/lesion_archives/ph2/). runlocal: 300 synthetic_lesions/macroscopic
images for M and 300 synthetic_lesions/dermoscopic for D, 64x64, 12 epochs each. Measured on a
2-core CPU: 2.3 minutes (4.5 while other jobs shared it), the three runs sharing compiled steps.
There the pretrained model also wins: Exp 1 test TJA 50.1%, Exp 2 64.1% (+14.0, 95% CI
[+4.1, +24.4] over the 60 test images).

Paper (Table 3), test subsets, percent:
  SMARTSKINS  Exp 1  T 0.50  TJA 78.51  JA 82.64  DI 90.14  AC 98.96  SE 95.40  SP 99.15
              Exp 2  T 0.56  TJA 78.04  JA 82.21  DI 89.89  AC 98.90  SE 96.05  SP 99.09
  Dermofit    Exp 1  T 0.50  TJA 72.97  JA 80.26  DI 88.26  AC 93.51  SE 87.56  SP 96.86
              Exp 2  T 0.56  TJA 75.46  JA 81.03  DI 88.79  AC 93.78  SE 89.68  SP 96.13
Transfer helped on Dermofit (+2.49 TJA) and cost a little on SMARTSKINS (-0.47 TJA); with 41
SMARTSKINS test images, report.md's confidence intervals say whether a difference is more than
noise.
"""
from configs.paper import common


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg)
  config = common.paper_config("deeplab_mobilenetv2", "dice", alpha=0.35, output_stride=16)
  config.experiment = "transfer"
  config.transfer.pretrain_data = common.SET_D
  config.transfer.pretrain_test = common.SET_D
  if variant == "runlocal":
    config = common.runlocal(config)
  return config
