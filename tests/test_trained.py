"""Shipped trained segmenters: the single-file format, its checksum, loading by name."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lesion_jax import inference, runs, shipping
from lesion_jax.errors import EXIT_BAD_INPUT, DataError, UnknownNameError
from lesion_jax.models import trained


@pytest.mark.parametrize("name", trained.names())
def test_each_shipped_model_loads_and_its_checksum_matches(name):
  model = trained.load(name)
  assert trained.sha256(trained.SHIPPED_DIR / f"{name}.msgpack") == model.card["sha256"]
  assert model.image_size == (256, 256) and 0.5 <= model.threshold <= 1.0
  height, width = model.image_size
  probs = model.probabilities(np.zeros((1, height, width, 3), np.uint8))
  assert probs.shape == (1, height, width) and np.isfinite(probs).all()


def test_the_package_ships_the_dermoscopic_and_macroscopic_models():
  assert {"dermoscopic", "macroscopic"} <= set(trained.names())


def test_the_loader_imports_no_writer_nor_what_imports_the_models():
  # In a fresh process: the writer (lesion_jax.shipping) reads runs, checkpoints and reports,
  # which import lesion_jax.models; the loader must not, or the packages import each other.
  code = ("import sys, lesion_jax.models\n"
          "before = set(sys.modules)\n"
          "from lesion_jax.models import trained\n"
          "trained.load('dermoscopic')\n"
          "print(sorted(m for m in set(sys.modules) - before if m.startswith('lesion_jax')))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.stdout.strip().splitlines()[-1] == "['lesion_jax.models.trained']"


@pytest.mark.slow
def test_a_written_model_predicts_as_its_run_and_refuses_a_damaged_file(
    averaged_run, averaged_run_levers, tmp_path, capsys):
  workdir, results = averaged_run
  out = tmp_path / "zoo"
  assert shipping.main([workdir, "--name", "tiny", "--out", str(out)]) == 0
  # A second write of the same name replaces nothing unless asked.
  (out / "tiny.json").write_text("{}")
  assert shipping.main([workdir, "--name", "tiny", "--out", str(out)]) == EXIT_BAD_INPUT
  assert (f"{out} already holds a model named 'tiny' (tiny.msgpack, tiny.json); pass "
          "--overwrite") in capsys.readouterr().err
  assert (out / "tiny.json").read_text() == "{}"
  assert shipping.main([workdir, "--name", "tiny", "--out", str(out), "--overwrite"]) == 0
  model = trained.load("tiny", out)
  run = runs.load_run(workdir)
  assert model.threshold == results["threshold"] and model.image_size == run.image_size
  images = np.random.default_rng(0).integers(0, 256, (3, *run.image_size, 3), dtype=np.uint8)
  expected = inference.predict_probabilities(run.model, run.variables, images,
                                             tta=run.config.evaluation.tta)
  np.testing.assert_array_equal(model.probabilities(images), expected)
  card = json.loads((out / "tiny.json").read_text())
  for split, metrics in results["test"].items():  # the card's CIs are about the run's means
    low, high = card["metrics"]["test_ci"][split]["ja"][1:]
    assert card["metrics"]["test_ci"][split]["ja"][0] == pytest.approx(metrics["ja"])
    assert low <= metrics["ja"] <= high
  assert card["source"]["weights"] == "best" and card["training_data"] == list(
      run.config.data.train)
  assert " -m lesion_jax.shipping " in card["source"]["command"]
  # The weight average, with the threshold levers chose on validation.
  assert shipping.main([workdir, "--name", "tiny_ema", "--weights", "ema", "--out",
                        str(out)]) == 0
  assert trained.load("tiny_ema", out).card["source"]["weights"] == "ema"
  with pytest.raises(UnknownNameError, match="tiny, tiny_ema"):
    trained.load("tiyn", out)
  damaged = tmp_path / "damaged"
  shutil.copytree(out, damaged)
  data = bytearray((damaged / "tiny.msgpack").read_bytes())
  data[-1] ^= 1
  (damaged / "tiny.msgpack").write_bytes(bytes(data))
  with pytest.raises(DataError, match="SHA-256"):
    trained.load("tiny", damaged)


# The shipped models on real test splits reach their cards' figures: the same weights, threshold,
# TTA and clean-up through the host evaluation path, on datasets built afresh from the archives.
# Tolerance: 0.5 JA points (JPEG decoding and resizing may differ across library versions).
@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("name, database", [("dermoscopic", "ph2"), ("macroscopic", "waterloo")])
def test_a_shipped_model_reaches_its_card_on_real_data(name, database, real_data_dir, tmp_path):
  import os

  from lesion_jax import data, evaluation, metrics

  model = trained.load(name)
  builder = data.get_builder(database, data_dir=str(tmp_path),
                             manual_dir=os.path.join(real_data_dir, database),
                             options={"image_size": model.image_size[0]})
  source = builder.as_data_source("test")
  scored = evaluation.evaluate_on_host(
      model.model, model.variables, source, model.image_size, tta=model.tta,
      postprocess=model.config.evaluation.postprocess)
  t_index = int(np.argmin(np.abs(metrics.THRESHOLDS - model.threshold)))
  ja = metrics.macro_average(scored.counts[:, t_index])["ja"]
  card = model.card["metrics"]["test"][database]
  assert len(source) == card["n_images"]
  assert ja == pytest.approx(card["ja"], abs=0.005)
