"""Quickstart: the paper's chosen model, trained on synthetic dermoscopic lesions on a CPU.

  python launch.py --config configs/quickstart.py --workdir runs/quickstart
  (or `make demo`, which also installs everything)

The reduced Mobile DeepLab (MobileNetV2 encoder, alpha = 0.35, 0.44M parameters) with the soft
Dice loss: the model the paper selects (Table 2, last row; Table 3). The synthetic_lesions builder
generates 300 dermoscopic-style images with exact masks (about 10 s), training runs at 128x128 for
about a minute, then the threshold is chosen on validation and the test metrics are reported.

Expected on a 2-core CPU (fresh clone, 2026-12-04): `make demo` about 2 minutes in all, of which
~70 s training; test TJA 91.40, JA 91.40, DI 95.49 on the 60 test images (results.md in the
workdir). The run is deterministic: the same machine gives the same digits.
"""
from lesion_jax.config import base_config


def get_config(arg: str | None = None):
  del arg
  config = base_config()
  config.model.name = "deeplab_mobilenetv2"
  config.model.alpha = 0.35
  config.model.output_stride = 16
  config.loss = "dice"
  # A few hundred steps: with Keras's BN momentum (0.999) the running statistics would still be
  # half their initial values at the end, and evaluation would suffer.
  config.model.bn_momentum = 0.99

  config.data.train = ("synthetic_lesions/dermoscopic",)
  config.data.image_size = 128  # the paper uses 512; 128 keeps the demo to minutes on a CPU
  config.data.synthetic.num_images = 300
  config.data.synthetic.image_size = 256

  config.training.num_epochs = 12
  config.training.patience = 6
  config.training.log_every_steps = 10
  config.optimizer.learning_rate = 3e-3
  config.optimizer.cycle_epochs = 4.0
  config.optimizer.cycle_mult = 2.0
  return config
