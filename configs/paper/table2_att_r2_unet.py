"""Table 2, row 4: AttR2U-Net, loss CE − log JA, ifC 64, trained on set M.

  python launch.py --config configs/paper/table2_att_r2_unet.py \
      --workdir runs/table2_att_r2_unet --config.data.manual_dir=~/lesion_archives
  python launch.py --config configs/paper/table2_att_r2_unet.py:runlocal \
      --workdir runs/table2_att_r2_unet_local

R2U-Net with attention gates; 96.51M parameters here.

Data: the Dermofit Image Library and SMARTSKINS archives in ~/lesion_archives/dermofit/ and
~/lesion_archives/smartskins/ (both licensed downloads; lesion_jax/data/builders/ says how).
Trained on their train splits, validated on their validation splits (threshold chosen there),
tested on each test split. runlocal: the same pipeline on synthetic_lesions/macroscopic (generated
on the fly) at 64x64, 60 images, 2 epochs (20 steps at about 7 s each on a busy 2-core CPU: about 4
minutes).

Paper (Table 2, validation subset of set M): P 96M, T 0.50, TJA 82.08, JA 82.08, DI 90.00, AC
93.98, SE 89.38, SP 96.18. Compare them with the "Validation subset" line of results.md
(results.json: "validation"); the test metrics per database are in the table above it.
"""
from configs.paper import common


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg)
  config = common.paper_config("att_r2_unet", "ce_log_jaccard", ifc=64)
  if variant == "runlocal":
    config = common.runlocal(config, num_images=60, num_epochs=2)
  return config
