"""Table 2, row 3: R2U-Net, loss 1 − JA, ifC 16, trained on set M.

  python launch.py --config configs/paper/table2_r2_unet.py \
      --workdir runs/table2_r2_unet --config.data.manual_dir=~/lesion_archives
  python launch.py --config configs/paper/table2_r2_unet.py:runlocal \
      --workdir runs/table2_r2_unet_local

Recurrent residual U-Net (two recurrent units of three convolutions); 6.00M parameters here.

Data: the Dermofit Image Library and SMARTSKINS archives in ~/lesion_archives/dermofit/ and
~/lesion_archives/smartskins/ (both licensed downloads; lesion_jax/data/builders/ says how).
Trained on their train splits, validated on their validation splits (threshold chosen there),
tested on each test split. runlocal: the same pipeline on synthetic_lesions/macroscopic (generated
on the fly) at 64x64, 300 images, 6 epochs (324 steps at about 0.3 s each on a busy 2-core CPU:
about 3 minutes).

Paper (Table 2, validation subset of set M): P 6M, T 0.50, TJA 83.02, JA 83.02, DI 90.60, AC 94.39,
SE 90.05, SP 96.48. Compare them with the "Validation subset" line of results.md (results.json:
"validation"); the test metrics per database are in the table above it.
"""
from configs.paper import common


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg)
  config = common.paper_config("r2_unet", "jaccard", ifc=16)
  if variant == "runlocal":
    config = common.runlocal(config, num_epochs=6)
  return config
