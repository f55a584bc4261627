"""Training on the real ISIC 2017 + PH2 copies, mixed (paper's set D stand-in), in this process.

The run has the tiny runs' model and sizes, and SGDR cycles of 7 steps over 14 steps as theirs
(cycle_epochs = 7 of the mixture's 519 steps an epoch): its steps are their compiled ones. What
launch.py adds (flags, console, exit codes) is tested on synthetic data elsewhere.
"""
import logging
import os
from pathlib import Path

import pytest

from lesion_jax import train
from test_builders_real_data import write_ph2_release
from tests.conftest import tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.real_data]


def test_a_run_trains_on_the_isic_ph2_mixture(real_data_dir, data_dir, tmp_path, caplog):
  ph2_release = tmp_path / "ph2_release"
  write_ph2_release(Path(real_data_dir) / "ph2", ph2_release)
  config = tiny_config(data_dir, **{"data.train": ("isic", "ph2"), "data.test": ("ph2",),
                                    "training.max_steps": 14,
                                    "optimizer.cycle_epochs": 7 / 519})
  config.data.manual_dirs.isic = os.path.join(real_data_dir, "isic2017")
  config.data.manual_dirs.ph2 = str(ph2_release)
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
  # Both databases feed the mixture: 1935 + 144 training images, 519 steps of 4 an epoch.
  assert "train: isic, 1935 images" in caplog.text
  assert "train: ph2, 144 images" in caplog.text
  assert "519 steps per epoch of 4 images" in caplog.text
  assert results["test"]["ph2"]["n_images"] == 40
  assert results["validation"]["n_images"] == 215 + 16
  assert results["training"]["steps"] == 14
