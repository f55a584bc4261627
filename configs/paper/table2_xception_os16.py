"""Table 2, row 5: DeepLabv3+ with the modified aligned Xception-65, OS 16, loss 1 − JA, PreT
Pascal, trained on set M.

  python launch.py --config configs/paper/table2_xception_os16.py \
      --workdir runs/table2_xception_os16 --config.data.manual_dir=~/lesion_archives
  python launch.py --config configs/paper/table2_xception_os16.py:runlocal \
      --workdir runs/table2_xception_os16_local

DeepLabv3+ (ASPP and decoder) on Xception-65; 41.05M parameters here. OS 16 beat OS 8.

Data: the Dermofit Image Library and SMARTSKINS archives in ~/lesion_archives/dermofit/ and
~/lesion_archives/smartskins/ (both licensed downloads; lesion_jax/data/builders/ says how).
Trained on their train splits, validated on their validation splits (threshold chosen there),
tested on each test split. runlocal: the same pipeline on synthetic_lesions/macroscopic (generated
on the fly) at 64x64, 60 images, 3 epochs (30 steps at about 1.3 s each on a busy 2-core CPU: about
2 minutes).

Pretrained weights (PreT Pascal): the TF DeepLab model zoo's Pascal VOC 2012 checkpoint, loaded
through config.model.init_from (the 21-class logits stay fresh). Download
http://download.tensorflow.org/models/deeplabv3_pascal_train_aug_2018_01_04.tar.gz and untar it in
$LESION_JAX_PRETRAINED (default ~/lesion_pretrained); validation refuses to start before that.
runlocal trains from scratch (no download).

Paper (Table 2, validation subset of set M): P 41M, T 0.50, TJA 85.37, JA 85.37, DI 92.00, AC
95.54, SE 91.46, SP 97.05. Compare them with the "Validation subset" line of results.md
(results.json: "validation"); the test metrics per database are in the table above it.
"""
from configs.paper import common


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg)
  config = common.paper_config("deeplabv3plus_xception65", "jaccard", output_stride=16)
  config.model.init_from = common.zoo_weights("deeplabv3plus_xception65", "pascal")
  if variant == "runlocal":
    config = common.runlocal(config, num_images=60, num_epochs=3)
  return config
