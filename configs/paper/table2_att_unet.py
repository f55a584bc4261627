"""Table 2, row 2: AttU-Net, loss 1 − DI, ifC 64, trained on set M.

  python launch.py --config configs/paper/table2_att_unet.py \
      --workdir runs/table2_att_unet --config.data.manual_dir=~/lesion_archives
  python launch.py --config configs/paper/table2_att_unet.py:runlocal \
      --workdir runs/table2_att_unet_local

U-Net with an attention gate on every skip connection; 31.90M parameters here.

Data: the Dermofit Image Library and SMARTSKINS archives in ~/lesion_archives/dermofit/ and
~/lesion_archives/smartskins/ (both licensed downloads; lesion_jax/data/builders/ says how).
Trained on their train splits, validated on their validation splits (threshold chosen there),
tested on each test split. runlocal: the same pipeline on synthetic_lesions/macroscopic (generated
on the fly) at 64x64, 60 images, 3 epochs (30 steps at about 2 s each on a busy 2-core CPU: about 2
minutes).

Paper (Table 2, validation subset of set M): P 32M, T 0.50, TJA 76.55, JA 78.78, DI 87.91, AC
93.27, SE 88.27, SP 95.69. Compare them with the "Validation subset" line of results.md
(results.json: "validation"); the test metrics per database are in the table above it.
"""
from configs.paper import common


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg)
  config = common.paper_config("att_unet", "dice", ifc=64)
  if variant == "runlocal":
    config = common.runlocal(config, num_images=60, num_epochs=3)
  return config
