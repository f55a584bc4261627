"""The PH2 and ISIC builders on the real files (LESION_JAX_REAL_DATA, e.g. ../shared/data).

PH2 is built twice: from the shared flattened copy in place, and from its official release
layout rebuilt in a temporary folder (BMPs from the real images, the real PH2_dataset.xlsx); the
two must agree. ISIC reads the real ISIC 2017 training and validation zips in place. A run then
trains on the two built datasets, mixed (the paper's set D stand-in).
"""
from __future__ import annotations

import logging
import os
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import fixtures_archives as fx
from lesion_jax import train
from lesion_jax.data.builders import isic, ph2
from tests.conftest import tiny_config

REAL_DATA_ENV = "LESION_JAX_REAL_DATA"
REAL_DATA = os.environ.get(REAL_DATA_ENV)
if not REAL_DATA:
  pytest.skip(f"{REAL_DATA_ENV} is unset: point it at a folder holding ph2/ and isic2017/ "
              "(e.g. LESION_JAX_REAL_DATA=../shared/data)", allow_module_level=True)

pytestmark = pytest.mark.real_data
SPLITS = ("train", "validation", "test")


def labels_by_split(builder) -> dict[str, list[str]]:
  names = builder.info.features["label"].names
  out = {}
  for split in SPLITS:
    if split not in builder.info.splits:
      out[split] = []
      continue
    skip = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}
    source = builder.as_data_source(split, decoders=skip)  # labels only: leave pixels encoded
    out[split] = [names[int(source[i]["label"])] for i in range(len(source))]
  return out


def write_ph2_release(real_ph2: Path, root: Path) -> None:
  """The official PH2Dataset tree from the real copies: BMP images and BMP {0, 255} masks."""
  images = root / fx.PH2_IMAGES
  for jpeg in sorted((real_ph2 / "images").glob("IMD*.jpg")):
    image_id = jpeg.stem
    folder = images / image_id
    (folder / f"{image_id}_Dermoscopic_Image").mkdir(parents=True)
    (folder / f"{image_id}_lesion").mkdir()
    Image.open(jpeg).convert("RGB").save(folder / f"{image_id}_Dermoscopic_Image/{image_id}.bmp")
    Image.open(real_ph2 / "masks" / f"{image_id}_lesion.png").convert("L").save(
        folder / f"{image_id}_lesion/{image_id}_lesion.bmp")
  shutil.copy(real_ph2 / "PH2_dataset.xlsx", root / "PH2Dataset" / "PH2_dataset.xlsx")


@pytest.fixture(scope="module")
def built_root(tmp_path_factory) -> Path:
  """Where this module's builds go: `data/` (their tfds data dir) and PH2's release `manual/`."""
  return tmp_path_factory.mktemp("real_builds")


@pytest.fixture(scope="module")
def ph2_release_build(built_root):
  """The builder prepared from the release layout rebuilt from the shared copy (built once)."""
  write_ph2_release(Path(REAL_DATA) / "ph2", built_root / "manual")
  return fx.build(ph2.Ph2, built_root / "manual", built_root / "data")


@pytest.fixture(scope="module")
def isic_build(built_root):
  """(builder, log) of ISIC from the real 2017 zips, read in place, never copied (built once)."""
  with fx.captured_logs() as logs:
    builder = fx.build(isic.Isic, Path(REAL_DATA) / "isic2017", built_root / "data")
  return builder, logs


def split_of(builder) -> dict[str, str]:
  """{image_id: split}, read without decoding the pixels."""
  skip = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}
  out = {}
  for split in SPLITS:
    if split in builder.info.splits:
      source = builder.as_data_source(split, decoders=skip)
      out.update({source[i]["image_id"].decode(): split for i in range(len(source))})
  return out


def test_ph2_builds_160_40_with_the_diagnosis_proportions(ph2_release_build):
  real_ph2 = Path(REAL_DATA) / "ph2"
  builder = ph2_release_build
  labels = labels_by_split(builder)
  assert [len(labels[s]) for s in SPLITS] == [144, 16, 40]
  totals = Counter(l for s in SPLITS for l in labels[s])
  assert totals == {"common_nevus": 80, "atypical_nevus": 80, "melanoma": 40}
  test = Counter(labels["test"])
  pool = Counter(labels["train"] + labels["validation"])
  for label, n in totals.items():  # 80/80/40 kept within one image per class.
    assert abs(test[label] - 0.2 * n) <= 1 and abs(pool[label] - 0.8 * n) <= 1
  # The stored mask is the real one, binarised.
  example = next(iter(fx.read_split(builder, "test").values()))
  image_id = example["image_id"].decode()
  real_mask = np.asarray(Image.open(real_ph2 / "masks" / f"{image_id}_lesion.png"))
  np.testing.assert_array_equal(example["mask"][..., 0], (real_mask > 0).astype(np.uint8))


def test_ph2_flattened_copy_builds_in_place_with_the_release_split(ph2_release_build, tmp_path):
  real_ph2 = Path(REAL_DATA) / "ph2"
  with fx.captured_logs() as logs:
    builder = fx.build(ph2.Ph2, real_ph2, tmp_path / "data")  # read in place, never copied
  assert any("flattened copy (200 images)" in l for l in logs)
  labels = labels_by_split(builder)
  assert [len(labels[s]) for s in SPLITS] == [144, 16, 40]
  flat_split = split_of(builder)
  assert len(flat_split) == 200 and flat_split == split_of(ph2_release_build)
  # The release BMPs hold the JPEGs' decoded pixels, so images and masks match exactly.
  released = fx.read_split(ph2_release_build, "test")
  for image_id, example in fx.read_split(builder, "test").items():
    np.testing.assert_array_equal(example["mask"], released[image_id]["mask"])
    np.testing.assert_array_equal(example["image"], released[image_id]["image"])
    assert example["label"] == released[image_id]["label"]


def test_isic_builds_from_the_real_2017_training_and_validation_zips(isic_build):
  manual = Path(REAL_DATA) / "isic2017"
  ids = set()
  for name in ("ISIC-2017_Training_Data.zip", "ISIC-2017_Validation_Data.zip"):
    with zipfile.ZipFile(manual / name) as z:
      ids |= {Path(n).stem for n in z.namelist() if n.endswith(".jpg")}
  builder, logs = isic_build
  labels = labels_by_split(builder)
  pool = len(labels["train"]) + len(labels["validation"])
  assert pool == len(ids) == 2150  # 2000 training + 150 validation, no shared ids
  assert labels["test"] == [] and "test" not in builder.info.splits
  assert abs(len(labels["validation"]) - 0.1 * pool) < 1
  assert "unknown" not in labels["train"]  # every 2017 image has a Part 3 label
  log = "\n".join(logs)
  for missing in ("ISBI2016_ISIC_Part1_Training_Data.zip", "ISIC2018_Task1-2_Training_Input.zip",
                  "ISIC-2017_Test_v2_Data.zip", "ISIC-2017_Test_v2_Part1_GroundTruth.zip"):
    assert missing in log


@pytest.mark.slow
def test_a_run_trains_on_the_isic_ph2_mixture(ph2_release_build, isic_build, built_root,
                                              tmp_path, caplog):
  """On the datasets built above (not built again). The run has the tiny runs' model and sizes,
  and SGDR cycles of 7 steps over 14 steps as theirs (cycle_epochs = 7 of the mixture's 519
  steps an epoch): its steps are their compiled ones."""
  config = tiny_config(str(built_root / "data"), **{
      "data.train": ("isic", "ph2"), "data.test": ("ph2",), "training.max_steps": 14,
      "optimizer.cycle_epochs": 7 / 519})
  # Room for the 231 validation images decoded at 32x32, not for the 2079 training ones: those
  # 14 steps read 56 of them, decoded as they are read, instead of all of them up front.
  config.data.cache_gb = 0.002
  config.data.manual_dirs.isic = os.path.join(REAL_DATA, "isic2017")
  config.data.manual_dirs.ph2 = str(built_root / "manual")
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
  # Both databases feed the mixture: 1935 + 144 training images, 519 steps of 4 an epoch.
  assert "train: isic, 1935 images" in caplog.text
  assert "train: ph2, 144 images" in caplog.text
  assert "519 steps per epoch of 4 images" in caplog.text
  assert "train: 2079 images take 0.0 GB decoded" in caplog.text
  assert results["test"]["ph2"]["n_images"] == 40
  assert results["validation"]["n_images"] == 215 + 16
  assert results["training"]["steps"] == 14
