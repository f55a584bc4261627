"""Table 2: the paper's grid of architectures, losses and sizes on set M, as one sweep.

  python launch.py --config configs/paper/table2_sweep.py --workdir runs/table2 \
      --config.data.manual_dir=~/lesion_archives
  python launch.py --config configs/paper/table2_sweep.py:runlocal --workdir runs/table2_local
  python launch.py --config configs/paper/table2_sweep.py:scratch --workdir runs/table2 \
      --config.data.manual_dir=~/lesion_archives

Experiment "sweep" (lesion_jax/sweep.py): one run per combination in WORKDIR/<its overrides>
(e.g. runs/table2/model-unet__ifc-32__loss-jaccard), each the paper's protocol on set M
(Dermofit + SMARTSKINS), chosen on validation. Running the command again skips the finished runs
and resumes an interrupted one. WORKDIR/table2.md and table2.csv list every run in the Table 2
layout (validation subset, as the paper; then each test database), U-Net family first.

The grid (120 runs, section 2.2 "Deep Learning Models" and "Model Optimization"):
- U-Net, AttU-Net, R2U-Net, AttR2U-Net x ifC 16/32/64 x the five losses (60 runs);
- DeepLabv3+ Xception-65 x OS 8/16 x PreT None/Pascal/Cityscapes x the five losses (30 runs);
- DeepLab MobileNetV2 α 1.0 x PreT None/Pascal/Cityscapes x the five losses (15 runs);
- DeepLab MobileNetV2 α 0.75/0.5/0.35 x the five losses, no pretraining (15 runs: the paper's
  second MobileNetV2 study; it does not list its α values, these are Keras's).
PreT: the TF DeepLab model-zoo checkpoints in $LESION_JAX_PRETRAINED (default
~/lesion_pretrained), untarred from http://download.tensorflow.org/models/:
deeplabv3_pascal_train_aug_2018_01_04, deeplabv3_cityscapes_train_2018_02_06,
deeplabv3_mnv2_pascal_train_aug_2018_01_29 and deeplabv3_mnv2_cityscapes_train_2018_02_05
(.tar.gz). Every run is validated before the first trains, so missing checkpoints stop the sweep
at once; `table2_sweep.py:scratch` is the grid without pretraining (90 runs, no downloads).

Data: ~/lesion_archives/dermofit/ and ~/lesion_archives/smartskins/. runlocal: 4 small runs on
synthetic_lesions/macroscopic at 64x64 (U-Net ifC 16 with 1 − DI and 1 − JA; MobileNetV2 α 0.35
and 1.0 with 1 − DI), 3 epochs each, about 5 minutes on a 2-core CPU.

Paper (Table 2, validation subset of set M, percent): the best run of each architecture,
  U-Net        1 − JA       ifC 32  P 8M    T 0.52  TJA 78.44  JA 80.80  DI 89.24
  AttU-Net     1 − DI       ifC 64  P 32M   T 0.50  TJA 76.55  JA 78.78  DI 87.91
  R2U-Net      1 − JA       ifC 16  P 6M    T 0.50  TJA 83.02  JA 83.02  DI 90.60
  AttR2U-Net   CE − log JA  ifC 64  P 96M   T 0.50  TJA 82.08  JA 82.08  DI 90.00
  Xception OS16     1 − JA  Pascal  P 41M   T 0.50  TJA 85.37  JA 85.37  DI 92.00
  MobileNetV2 α1.0  1 − JA  Pascal  P 2M    T 0.55  TJA 84.80  JA 84.80  DI 91.70
  MobileNetV2 α0.35 1 − DI  None    P 0.4M  T 0.50  TJA 82.85  JA 82.85  DI 90.52
"""
from configs.paper import common

UNETS = ["unet", "att_unet", "r2_unet", "att_r2_unet"]


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg, allowed=("runlocal", "scratch"))
  config = common.paper_config("deeplab_mobilenetv2", "dice", alpha=0.35, output_stride=16)
  config.experiment = "sweep"
  pretrained = {model: [None] if variant == "scratch" else
                [None, common.zoo_weights(model, "pascal"),
                 common.zoo_weights(model, "cityscapes")]
                for model in ("deeplabv3plus_xception65", "deeplab_mobilenetv2")}
  config.sweep.grids = (
      {"model.name": UNETS, "model.ifc": [16, 32, 64], "loss": common.PAPER_LOSSES},
      {"model.name": ["deeplabv3plus_xception65"], "model.output_stride": [8, 16],
       "model.init_from": pretrained["deeplabv3plus_xception65"],
       "loss": common.PAPER_LOSSES},
      {"model.name": ["deeplab_mobilenetv2"], "model.alpha": [1.0],
       "model.init_from": pretrained["deeplab_mobilenetv2"], "loss": common.PAPER_LOSSES},
      {"model.name": ["deeplab_mobilenetv2"], "model.alpha": [0.75, 0.5, 0.35],
       "loss": common.PAPER_LOSSES},
  )
  if variant == "runlocal":
    config = common.runlocal(config)
    config.training.num_epochs = 3  # four runs in minutes: 162 steps each
    config.optimizer.cycle_epochs = 1.0
    config.sweep.grids = (
        {"model.name": ["unet"], "model.ifc": [16], "loss": ["dice", "jaccard"]},
        {"model.name": ["deeplab_mobilenetv2"], "model.alpha": [0.35, 1.0], "loss": ["dice"]},
    )
  return config
