"""Table 2, row 7: the reduced Mobile DeepLab: MobileNetV2, α 0.35, loss 1 − DI, no pretraining,
trained on set M.

  python launch.py --config configs/paper/table2_mobilenetv2_alpha035.py \
      --workdir runs/table2_mobilenetv2_alpha035 --config.data.manual_dir=~/lesion_archives
  python launch.py --config configs/paper/table2_mobilenetv2_alpha035.py:runlocal \
      --workdir runs/table2_mobilenetv2_alpha035_local

The model the paper selects (0.44M parameters here); exp1_mobile_deeplab.py reports it on the test
subsets (Table 3).

Data: the Dermofit Image Library and SMARTSKINS archives in ~/lesion_archives/dermofit/ and
~/lesion_archives/smartskins/ (both licensed downloads; lesion_jax/data/builders/ says how).
Trained on their train splits, validated on their validation splits (threshold chosen there),
tested on each test split. runlocal: the same pipeline on synthetic_lesions/macroscopic (generated
on the fly) at 64x64, 300 images, 12 epochs (648 steps: about 2 minutes on a busy 2-core CPU).

Paper (Table 2, validation subset of set M): P 0.4M, T 0.50, TJA 82.85, JA 82.85, DI 90.52, AC
94.65, SE 88.31, SP 97.27. Compare them with the "Validation subset" line of results.md
(results.json: "validation"); the test metrics per database are in the table above it.
"""
from configs.paper import common


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg)
  config = common.paper_config("deeplab_mobilenetv2", "dice", alpha=0.35, output_stride=16)
  if variant == "runlocal":
    config = common.runlocal(config)
  return config
