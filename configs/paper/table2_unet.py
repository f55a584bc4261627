"""Table 2, row 1: U-Net, loss 1 − JA, ifC 32, trained on set M.

  python launch.py --config configs/paper/table2_unet.py \
      --workdir runs/table2_unet --config.data.manual_dir=~/lesion_archives
  python launch.py --config configs/paper/table2_unet.py:runlocal \
      --workdir runs/table2_unet_local

The baseline U-Net (dropout 0.2, zero padding); 7.85M parameters here.

Data: the Dermofit Image Library and SMARTSKINS archives in ~/lesion_archives/dermofit/ and
~/lesion_archives/smartskins/ (both licensed downloads; lesion_jax/data/builders/ says how).
Trained on their train splits, validated on their validation splits (threshold chosen there),
tested on each test split. runlocal: the same pipeline on synthetic_lesions/macroscopic (generated
on the fly) at 64x64, 300 images, 6 epochs (324 steps at about 0.5 s each on a busy 2-core CPU:
about 4 minutes).

Paper (Table 2, validation subset of set M): P 8M, T 0.52, TJA 78.44, JA 80.80, DI 89.24, AC 93.16,
SE 90.42, SP 94.65. Compare them with the "Validation subset" line of results.md (results.json:
"validation"); the test metrics per database are in the table above it.
"""
from configs.paper import common


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg)
  config = common.paper_config("unet", "jaccard", ifc=32)
  if variant == "runlocal":
    config = common.runlocal(config, num_epochs=6)
  return config
