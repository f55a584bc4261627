"""`python -m lesion_jax.predict`: outputs per image, bad input, and agreement with evaluation."""
from __future__ import annotations

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from lesion_jax import data as data_lib
from lesion_jax import predict, runs, score
from lesion_jax.data import pipeline
from lesion_jax.report import figures, overlays

DATASET = "synthetic_lesions/dermoscopic"


@pytest.fixture(scope="module")
def finished_run(tiny_run):
  """The session's tiny run (tests/conftest.py): two epochs at a high learning rate, with BN
  statistics that follow them, give probabilities spread around a chosen threshold above 0.5
  and masks that hold both classes."""
  return tiny_run


@pytest.fixture(scope="module")
def split_as_files(finished_run, tmp_path_factory):
  """The run's test images and masks as PNG files at the training size (32x32).

  At that size predict's resizes are the identity, so its masks must score exactly as the
  in-training evaluation of the same images did.
  """
  workdir, _ = finished_run
  config = runs.read_config(workdir)
  builder = data_lib.get_builder(DATASET, data_dir=config.data.data_dir,
                                 options=config.data.synthetic.to_dict())
  source = builder.as_data_source("test")
  root = tmp_path_factory.mktemp("test_split")
  (root / "images").mkdir()
  (root / "truth").mkdir()
  for i in range(len(source)):
    example = source[i]
    image, mask = pipeline.resize_pair(np.asarray(example["image"]), np.asarray(example["mask"]),
                                       config.data.image_size)
    key = example["image_id"]
    key = key.decode() if isinstance(key, bytes) else str(key)
    Image.fromarray(image).save(root / "images" / f"{key}.png")
    Image.fromarray(((mask > 0) * 255).astype(np.uint8)).save(
        root / "truth" / f"{key}_segmentation.png")
  return root


def test_masks_score_exactly_as_the_training_evaluation(finished_run, split_as_files,
                                                        tmp_path, capsys):
  workdir, results = finished_run
  out = tmp_path / "out"
  assert predict.main(["--workdir", workdir, "--images", str(split_as_files / "images"),
                       "--out", str(out), "--truth", str(split_as_files / "truth")]) == 0
  printed = json.loads(capsys.readouterr().out.split("\n", 1)[1])
  # The scorer's command line, in this process (tests/test_score.py runs it as a process).
  assert score.main(["--truth", str(split_as_files / "truth"), "--pred", str(out)]) == 0
  scored = json.loads(capsys.readouterr().out)
  expected = results["test"][DATASET]
  assert expected["n_images"] == 8
  # The same confusion counts; the macro averages may differ in the last bit only, as the
  # images are averaged in another order (score sorts them by id).
  assert scored == pytest.approx(expected, rel=1e-12)
  assert printed == scored
  # With --truth, the overlays compare with the truth in the Fig. 1 colours.
  key = sorted(p.name.removesuffix(".png") for p in (split_as_files / "images").iterdir())[0]
  image = np.asarray(Image.open(split_as_files / "images" / f"{key}.png"))
  truth = np.asarray(Image.open(split_as_files / "truth" / f"{key}_segmentation.png")) > 128
  mask = np.asarray(Image.open(out / f"{key}_segmentation.png")) > 128
  drawn = np.asarray(Image.open(out / "overlay" / f"{key}_overlay.png"))
  np.testing.assert_array_equal(drawn, overlays.draw_overlay(image, mask, 0.5, truth))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
  """Images of several sizes and kinds, and two files that are not images at all."""
  folder = tmp_path_factory.mktemp("mixed")
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (50, 70, 3), np.uint8)).save(folder / "wide.png")
  Image.fromarray(rng.integers(0, 256, (33, 21, 3), np.uint8)).save(folder / "photo.jpg")
  Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(folder / "exact.png")
  Image.fromarray(rng.integers(0, 256, (40, 24), np.uint8)).save(folder / "grey.png")
  Image.fromarray(rng.integers(0, 256, (30, 30, 4), np.uint8)).save(folder / "alpha.png")
  (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
  (folder / "ATTRIBUTION.txt").write_text("not an image: skipped")  # not an image suffix
  return folder


SIZES = {"wide": (50, 70), "photo": (33, 21), "exact": (32, 32), "grey": (40, 24),
         "alpha": (30, 30)}


def test_mixed_folder_gives_masks_at_each_original_size(finished_run, mixed_folder, tmp_path,
                                                        capsys):
  workdir, results = finished_run
  out = tmp_path / "out"
  assert predict.main(["--workdir", workdir, "--images", str(mixed_folder),
                       "--out", str(out)]) == 0
  captured = capsys.readouterr()
  assert "segmented 5 of 6 image(s)" in captured.out
  assert f"error: {mixed_folder / 'broken.jpg'}: cannot be read as an image" in captured.err
  assert "grey.png: greyscale image (mode L) converted to RGB" in captured.err
  assert "alpha.png: image with an alpha channel (mode RGBA) converted to RGB" in captured.err
  assert "Traceback" not in captured.err
  # The header: what the model learnt from, and the warning for generated lesions only.
  assert ("trained on: synthetic_lesions/dermoscopic (generated dermoscopic lesions, 29 training "
          "images) at 32x32 pixels") in captured.err
  assert predict.SYNTHETIC_WARNING in captured.err
  for key, (height, width) in SIZES.items():
    mask = Image.open(out / f"{key}_segmentation.png")
    assert mask.mode == "L" and mask.size == (width, height)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}
    probability = np.asarray(Image.open(out / "probability" / f"{key}_probability.png"))
    assert probability.shape == (height, width)
    # The mask is the probability map at the run's threshold (8-bit rounding aside).
    mask_on = np.asarray(mask) == 255
    assert np.all(probability[mask_on] >= np.floor(results["threshold"] * 255))
    assert np.all(probability[~mask_on] <= np.ceil(results["threshold"] * 255))
    overlay = Image.open(out / "overlay" / f"{key}_overlay.png")
    # The image at its own size below the key strip (wider when the image is narrower).
    assert overlay.mode == "RGB" and overlay.size[0] >= width and overlay.size[1] > height
  assert not (out / "broken_segmentation.png").exists()


def test_images_of_every_size_share_one_compilation(finished_run, mixed_folder, tmp_path):
  workdir, _ = finished_run
  segmenter, _ = predict.load_segmenter(workdir, None, batch_size=2)
  files = predict.collect_images([mixed_folder])
  summary = predict.predict(segmenter, files, tmp_path, batch_size=2, report=lambda line: None)
  assert len(summary.written) == 5 and len(summary.failed) == 1
  assert segmenter.predict._cache_size() == 1  # 3 batches (2, 2, 1 padded), 5 sizes


def test_identity_resize_keeps_probabilities_and_upsampling_is_bilinear():
  probs = np.random.default_rng(1).random((4, 4)).astype(np.float32)
  assert predict.resize_probability(probs, 4, 4) is probs
  doubled = predict.resize_probability(probs, 8, 8)
  # Half-pixel centres: output pixel 1 sits at input 0.25, between pixels 0 and 1.
  np.testing.assert_allclose(doubled[1, 1], np.interp(0.25, [0, 1], [
      np.interp(0.25, [0, 1], probs[0, :2]), np.interp(0.25, [0, 1], probs[1, :2])]),
      rtol=1e-5)


def test_only_corrupt_files_exit_1(finished_run, tmp_path, capsys):
  workdir, _ = finished_run
  folder = tmp_path / "corrupt"
  folder.mkdir()
  (folder / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  (folder / "b.jpg").write_bytes(b"")
  assert predict.main(["--workdir", workdir, "--images", str(folder),
                       "--out", str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  assert err.count("cannot be read as an image") == 2
  assert "error: no image could be segmented" in err and "Traceback" not in err


def test_empty_folder_exits_2_before_loading_anything(tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  assert predict.main(["--workdir", str(tmp_path / "no_run"), "--images", str(empty),
                       "--out", str(tmp_path / "out")]) == 2
  assert f"--images folder {empty} holds no images" in capsys.readouterr().err


def test_workdir_without_checkpoint_or_config_exits_2(finished_run, mixed_folder, tmp_path,
                                                      capsys):
  workdir, _ = finished_run
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  args = ["--images", str(mixed_folder / "exact.png"), "--out", str(tmp_path / "out")]
  assert predict.main(["--workdir", str(fresh)] + args) == 2
  assert "is not a training run: it has no config.json" in capsys.readouterr().err
  shutil.copy(os.path.join(workdir, "config.json"), fresh / "config.json")
  assert predict.main(["--workdir", str(fresh)] + args) == 2
  err = capsys.readouterr().err
  assert "holds no checkpoint" in err and "Traceback" not in err


def test_model_for_another_input_size_is_refused(finished_run, mixed_folder, tmp_path, capsys):
  workdir, _ = finished_run
  model = tmp_path / "model.tflite"
  model.write_bytes(b"not read: the sidecar is checked first")
  (tmp_path / "model.tflite.json").write_text(json.dumps(
      {"image_size": 64, "threshold": 0.5, "thresholded_output": False}))
  assert predict.main(["--workdir", workdir, "--model", str(model), "--images",
                       str(mixed_folder / "exact.png"), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "takes 64x64 images" in err and "trained at 32x32" in err


def test_overlay_outlines_and_tints_the_lesion_in_blue():
  image = np.full((12, 12, 3), 100, np.uint8)
  mask = np.zeros((12, 12), bool)
  mask[3:9, 3:9] = True
  drawn = overlays.overlay(image, mask)
  np.testing.assert_array_equal(drawn[3, 5], overlays.PREDICTION_COLOUR)  # border: the outline
  assert drawn[5, 5, 2] > 100 and drawn[5, 5, 0] < 100  # inside: tinted blue
  np.testing.assert_array_equal(drawn[0, 0], image[0, 0])  # background untouched
  # Not one of the Fig. 1 colours, where green means a false negative.
  assert overlays.PREDICTION_COLOUR not in figures.FIG1_COLOURS.values()


def test_overlay_file_holds_the_image_below_its_key():
  image = np.random.default_rng(2).integers(0, 256, (21, 33, 3), np.uint8)
  mask = np.zeros((21, 33), bool)
  mask[5:15, 8:20] = True
  drawn = overlays.draw_overlay(image, mask, 0.6)
  strip = drawn.shape[0] - 21
  assert strip > 10 and drawn.shape[1] > 33  # a key wider than this small image
  np.testing.assert_array_equal(drawn[strip:, :33], overlays.overlay(image, mask))
  key = drawn[:strip].reshape(-1, 3)
  assert np.any(np.all(key == overlays.PREDICTION_COLOUR, axis=-1))  # the swatch
  assert np.any(key.max(axis=-1) < 100)  # the label's dark (antialiased) text


def test_overlay_with_truth_blends_the_fig1_colours():
  image = np.full((8, 8, 3), 100, np.uint8)
  truth, mask = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
  truth[:, :4], mask[:4, :] = True, True  # TP top left, FP top right, FN bottom left
  drawn = overlays.comparison_overlay(image, truth, mask)
  for (row, col), kind in (((0, 0), "tp"), ((0, 7), "fp"), ((7, 0), "fn")):
    expected = 0.5 * 100 + 0.5 * np.array(figures.FIG1_COLOURS[kind])
    np.testing.assert_array_equal(drawn[row, col], np.round(expected))
  np.testing.assert_array_equal(drawn[7, 7], image[7, 7])  # TN: the image as it is
  with_key = overlays.draw_overlay(image, mask, 0.5, truth)
  np.testing.assert_array_equal(with_key[-8:, :8], drawn)


def _fake_run(folder: pathlib.Path, train: list[str], init_from: str | None = None) -> str:
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(
      {"data": {"train": train, "image_size": 64}, "init_from": init_from}))
  return str(folder)


def test_training_lines_follow_init_from(tmp_path):
  # Runs whose data dir is not here: the number of training images is left out.
  synthetic = _fake_run(tmp_path / "pre", ["synthetic_lesions/dermoscopic"])
  lines = predict.training_lines(synthetic)
  assert lines == ["trained on: synthetic_lesions/dermoscopic (generated dermoscopic lesions) "
                   "at 64x64 pixels", predict.SYNTHETIC_WARNING]
  tuned = _fake_run(tmp_path / "tuned", ["isic", "ph2"], init_from=synthetic)
  lines = predict.training_lines(tuned)
  assert lines == [f"trained on: isic (dermoscopic photographs) + ph2 (dermoscopic "
                   f"photographs) at 64x64 pixels, starting from the run {synthetic} trained "
                   "on synthetic_lesions/dermoscopic (generated dermoscopic lesions) at 64x64 "
                   "pixels"]
  waterloo = _fake_run(tmp_path / "waterloo", ["waterloo"])
  assert predict.training_lines(waterloo) == [
      "trained on: waterloo (macroscopic photographs) at 64x64 pixels"]
  assert predict.training_lines(None)[0].startswith("trained on: unknown")


def test_large_photo_keeps_its_size_and_outputs_are_not_overwritten(finished_run, tmp_path,
                                                                    capsys):
  workdir, _ = finished_run
  photo = tmp_path / "large.jpg"  # the size of a phone photograph, not square
  Image.fromarray(np.random.default_rng(3).integers(0, 256, (1043, 1640, 3), np.uint8)).save(
      photo, quality=90)
  out = tmp_path / "out"
  args = ["--workdir", workdir, "--images", str(photo), "--out", str(out)]
  assert predict.main(args) == 0
  for name in ("large_segmentation.png", "probability/large_probability.png"):
    assert Image.open(out / name).size == (1640, 1043)
  overlay_before = (out / "overlay" / "large_overlay.png").read_bytes()
  capsys.readouterr()
  # Refused before the model is even looked for: a workdir that is not a run gives this error.
  assert predict.main(["--workdir", str(tmp_path / "no_run")] + args[2:]) == 2
  err = capsys.readouterr().err
  assert err == (f"error: --out {out} already holds the outputs of 1 of these images "
                 "(large_segmentation.png); pass --overwrite to replace them, or choose "
                 "another --out\n")
  assert predict.main(args + ["--overwrite"]) == 0
  assert (out / "overlay" / "large_overlay.png").read_bytes() == overlay_before
