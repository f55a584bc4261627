"""launch.py's training on the real ISIC 2017 + PH2 copies, mixed (paper's set D stand-in)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_builders_real_data import write_ph2_release

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = [pytest.mark.slow, pytest.mark.real_data]


def test_launch_trains_on_the_isic_ph2_mixture(real_data_dir, data_dir, tmp_path):
  ph2_release = tmp_path / "ph2_release"
  write_ph2_release(Path(real_data_dir) / "ph2", ph2_release)
  args = [
      sys.executable, "launch.py", "--config", "configs/quickstart.py",
      "--workdir", str(tmp_path / "run"),
      "--config.data.train=isic,ph2", "--config.data.test=ph2",
      f"--config.data.data_dir={data_dir}",
      f"--config.data.manual_dirs.isic={os.path.join(real_data_dir, 'isic2017')}",
      f"--config.data.manual_dirs.ph2={ph2_release}",
      "--config.data.image_size=32", "--config.training.max_steps=6",
      "--config.report.num_overlays=1",
  ]
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  # Both databases feed the mixture: 1935 + 144 training images.
  assert "train: isic, 1935 images" in result.stderr
  assert "train: ph2, 144 images" in result.stderr
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["test"]["ph2"]["n_images"] == 40
  assert results["validation"]["n_images"] == 215 + 16
  assert results["training"]["steps"] == 6
