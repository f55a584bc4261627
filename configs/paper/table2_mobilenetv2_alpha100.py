"""Table 2, row 6: DeepLab with MobileNetV2, α 1.0, loss 1 − JA, PreT Pascal, trained on set M.

  python launch.py --config configs/paper/table2_mobilenetv2_alpha100.py \
      --workdir runs/table2_mobilenetv2_alpha100 --config.data.manual_dir=~/lesion_archives
  python launch.py --config configs/paper/table2_mobilenetv2_alpha100.py:runlocal \
      --workdir runs/table2_mobilenetv2_alpha100_local

DeepLab with the MobileNetV2 encoder and TF DeepLab's MobileNetV2 head; 2.11M parameters here.

Data: the Dermofit Image Library and SMARTSKINS archives in ~/lesion_archives/dermofit/ and
~/lesion_archives/smartskins/ (both licensed downloads; lesion_jax/data/builders/ says how).
Trained on their train splits, validated on their validation splits (threshold chosen there),
tested on each test split. runlocal: the same pipeline on synthetic_lesions/macroscopic (generated
on the fly) at 64x64, 300 images, 12 epochs (648 steps at about 0.1 s each on a busy 2-core CPU:
about 2 minutes).

Pretrained weights (PreT Pascal): the TF DeepLab model zoo's Pascal VOC 2012 checkpoint, loaded
through config.model.init_from (the 21-class logits stay fresh). Download
http://download.tensorflow.org/models/deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz and untar
it in $LESION_JAX_PRETRAINED (default ~/lesion_pretrained); validation refuses to start before
that. runlocal trains from scratch (no download).

Paper (Table 2, validation subset of set M): P 2M, T 0.55, TJA 84.80, JA 84.80, DI 91.70, AC 95.18,
SE 91.60, SP 96.55. Compare them with the "Validation subset" line of results.md (results.json:
"validation"); the test metrics per database are in the table above it.
"""
from configs.paper import common


def get_config(arg: str | None = None):
  variant = common.parse_arg(arg)
  config = common.paper_config("deeplab_mobilenetv2", "jaccard", alpha=1.0, output_stride=16)
  config.model.init_from = common.zoo_weights("deeplab_mobilenetv2", "pascal")
  if variant == "runlocal":
    config = common.runlocal(config)
  return config
