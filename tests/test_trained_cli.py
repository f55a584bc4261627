"""Shipped trained models by name: `predict --model NAME` and `export --model NAME`.

The models are written from the session's tiny finished run into a folder that
$LESION_JAX_TRAINED_MODELS points at, as the package's own models would be read.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lesion_jax import export, predict, shipping
from lesion_jax.data import synthesis
from lesion_jax.models import load_trained, trained

pytestmark = pytest.mark.slow

NAME = "tiny"
# (height, width): the training size, and two others that predict resizes to it and back.
SIZES = ((32, 32), (40, 56), (64, 48))


@pytest.fixture(scope="module")
def models_dir(averaged_run, tmp_path_factory):
  workdir, _ = averaged_run
  directory = tmp_path_factory.mktemp("trained_models")
  shipping.write(workdir, NAME, "best", directory)
  return directory


@pytest.fixture(autouse=True)
def _read_models_from(models_dir, monkeypatch):
  monkeypatch.setenv(trained.DIRECTORY_ENV, str(models_dir))


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
  """Generated lesion photographs and their masks: images/ID.png, truth/ID_segmentation.png."""
  root = tmp_path_factory.mktemp("lesions")
  (root / "images").mkdir()
  (root / "truth").mkdir()
  for i, size in enumerate(SIZES):
    image, mask, _ = synthesis.render_lesion(i, "dermoscopic", size)
    Image.fromarray(image).save(root / "images" / f"lesion{i}.png")
    Image.fromarray(mask * 255).save(root / "truth" / f"lesion{i}_segmentation.png")
  return root


def _pixels(path) -> np.ndarray:
  return np.asarray(Image.open(path))


def test_predict_by_name_writes_the_masks_of_its_run(averaged_run, lesions, tmp_path, capsys):
  workdir, _ = averaged_run
  images = ["--images", str(lesions / "images")]
  assert predict.main(images + ["--workdir", workdir, "--out", str(tmp_path / "run")]) == 0
  by_run = capsys.readouterr().err
  assert predict.main(images + ["--model", NAME, "--out", str(tmp_path / "named"),
                               "--truth", str(lesions / "truth")]) == 0
  captured = capsys.readouterr()
  # The header comes from the model's card: the same as from its run's workdir.
  header = ("trained on: synthetic_lesions/dermoscopic (generated dermoscopic lesions, 29 "
            "training images) at 32x32 pixels")
  assert header in by_run and header in captured.err
  assert predict.SYNTHETIC_WARNING in captured.err
  assert f"of the shipped model {NAME} (checkpoint step" in captured.err
  assert "Traceback" not in captured.err
  scores = json.loads(captured.out.split("\n", 1)[1])  # --truth: the ISIC metrics
  assert scores["n_images"] == len(SIZES)
  for i, (height, width) in enumerate(SIZES):
    for name in (f"lesion{i}_segmentation.png", f"probability/lesion{i}_probability.png"):
      named = _pixels(tmp_path / "named" / name)
      assert named.shape == (height, width)
      np.testing.assert_array_equal(named, _pixels(tmp_path / "run" / name))


def test_unknown_names_are_one_error_line_listing_the_models(averaged_run, lesions, tmp_path,
                                                             capsys):
  workdir, _ = averaged_run
  common = ["--images", str(lesions / "images" / "lesion0.png"), "--out", str(tmp_path / "p")]
  assert predict.main(common + ["--model", "tiyn"]) == 2
  assert capsys.readouterr().err == ("error: --model tiyn: no trained model of that name "
                                     f"(trained models: {NAME}) and no such file\n")
  assert predict.main(common + ["--model", NAME, "--workdir", workdir]) == 2
  assert capsys.readouterr().err == (
      f"error: --model {NAME} is a trained model shipped with lesion_jax, with its own "
      "threshold and input size: leave out --workdir\n")
  out = ["--out", str(tmp_path / "m.tflite")]
  assert export.main(out + ["--model", "tiyn"]) == 2
  assert capsys.readouterr().err == ("error: --model tiyn: no trained model of that name "
                                     f"(trained models: {NAME})\n")
  assert export.main(out + ["--model", NAME, "--step", "2"]) == 2
  assert "--step chooses a checkpoint of a --workdir" in capsys.readouterr().err
  assert not (tmp_path / "p").exists() and not (tmp_path / "m.tflite").exists()


def test_no_models_says_where_it_looked(lesions, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv(trained.DIRECTORY_ENV, str(tmp_path / "none"))
  assert predict.main(["--model", "dermoscopic", "--images", str(lesions / "images"),
                       "--out", str(tmp_path / "p")]) == 2
  assert capsys.readouterr().err == (
      f"error: --model dermoscopic: no trained model of that name (no trained models in "
      f"{tmp_path / 'none'}) and no such file\n")


def test_load_trained_is_the_python_api(averaged_run):
  _, results = averaged_run
  model = load_trained(NAME)
  assert model.name == NAME and model.threshold == results["threshold"]


def test_export_by_name_checks_parity_on_generated_lesions(models_dir, lesions, tmp_path,
                                                           capsys):
  pytest.importorskip("tensorflow",
                      reason="TFLite export needs the export extra: pip install -e .[export]")
  out = tmp_path / "tiny.tflite"
  assert export.main(["--model", NAME, "--out", str(out), "--parity_images", "2",
                      "--latency_runs", "0"]) == 0
  printed = capsys.readouterr().out
  assert "parity on 2 generated dermoscopic lesion images" in printed and "passed" in printed
  sidecar = json.loads((tmp_path / "tiny.tflite.json").read_text())
  card = json.loads((models_dir / f"{NAME}.json").read_text())
  assert sidecar["source"]["trained_model"] == NAME
  assert sidecar["source"]["sha256"] == card["sha256"]
  assert sidecar["source"]["step"] == card["source"]["step"]
  assert sidecar["threshold"] == card["threshold"] and sidecar["image_size"] == 32
  assert sidecar["parity"]["passed"] and sidecar["parity"]["max_abs_diff"] < 1e-4
  assert sidecar["parity_images"].startswith("generated dermoscopic lesion images")
  assert export.read_embedded_metadata(str(out))["source"]["trained_model"] == NAME
  # Predicting with the export, the header still comes from the shipped model's card.
  assert predict.main(["--model", str(out), "--images", str(lesions / "images" / "lesion0.png"),
                       "--out", str(tmp_path / "p")]) == 0
  assert "trained on: synthetic_lesions/dermoscopic" in capsys.readouterr().err
