"""The paper's training protocol (section 2.2) with the reduced Mobile DeepLab, on synthetic data.

  python launch.py --config configs/default.py --workdir runs/default

512x512 inputs, batch 4 per device, Adam with SGDR, early stopping on validation JA, threshold
chosen on validation among 50 values in [0.5, 1]. Every other config starts from these values
(`lesion_jax.config.base_config`); this file exists to run them unchanged. Swap the data for a
real database with e.g. `--config.data.train=isic,ph2 --config.data.manual_dir=~/archives`.
Expected: test TJA above 0.9 on synthetic dermoscopic lesions (hours on a CPU; use a GPU).
"""
from lesion_jax.config import base_config


def get_config(arg: str | None = None):
  del arg
  return base_config()
