"""`isic`: the ISIC 2016, 2017 and 2018 segmentation challenges combined (paper 2.1, Table 1).

The paper combines the training sets of ISIC 2016, 2017 and 2018 and the ISIC 2017 validation
set, removes duplicate images, and holds out the ISIC 2017 test images as the test split. The
full archives give 2594 unique images: 1994 train/validation and 600 test.

- Duplicates are decided by ISIC id. Where an id is in several releases, the newest release's
  image and mask are kept (2016 < 2017 training < 2017 validation < 2018); ids whose masks
  differ between releases are logged.
- The ISIC 2017 test ids come from the ISIC 2017 test archives, else from its Part 3 CSV. The test
  split is written from the 2017 test archives when present, else from whichever pool release
  holds those ids (ISIC 2018 training holds all 600). Either way those ids never enter
  train/validation. With no ISIC 2017 test file at all the test split is empty, is not written
  (tfds cannot write empty splits), and the build logs and records it in `info.metadata`.
- Any subset of the releases builds; missing ones are logged and recorded in `info.metadata`.
  A release with only its images or only its masks is an error.
- Labels come from the ISIC 2017 Part 3 CSVs (melanoma / seborrheic keratosis / nevus);
  images without one (ISIC 2016/2018 only) are 'unknown'. Validation is 10% of the pool,
  stratified by label.

`protocol` chooses the splits (a builder option; each protocol is its own tfds config):
- "pooled" (default): the paper's protocol above.
- "official": the ISIC 2017 challenge's own splits: train = its 2000 training images,
  validation = its 150 validation images (they choose the checkpoint and the threshold),
  test = its 600 test images when their archives are present. Other years are not read.
- "official_dev": for recipe work without the test set: train and validation are 90% and 10%
  of the ISIC 2017 training images (stratified by label), and the 150 official validation
  images are the test split.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import re
from pathlib import Path

import numpy as np

from lesion_jax import errors
from lesion_jax.data import splits as splits_lib
from lesion_jax.data.builders import common

logger = logging.getLogger(__name__)

LABEL_NAMES = ("melanoma", "seborrheic_keratosis", "nevus", "unknown")
_IMAGE = re.compile(r"^(ISIC_\d+)\.jpe?g$", re.IGNORECASE)
# ISIC 2016 names masks `_Segmentation.png`, later years `_segmentation.png`.
_MASK = re.compile(r"^(ISIC_\d+)_segmentation\.png$", re.IGNORECASE)
_SUPERPIXELS = re.compile(r"_superpixels\.png$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class IsicRelease:
  """One official image archive and its ground-truth archive."""
  name: str
  images: str  # archive stem: `<stem>.zip` or the extracted folder `<stem>/`
  masks: str
  labels_csv: str | None = None

  @property
  def archives(self) -> tuple[str, str]:
    return self.images + ".zip", self.masks + ".zip"


# The training pool, oldest first: on duplicate ids, later releases win.
POOL_RELEASES = (
    IsicRelease("ISIC 2016 training", "ISBI2016_ISIC_Part1_Training_Data",
                "ISBI2016_ISIC_Part1_Training_GroundTruth"),
    IsicRelease("ISIC 2017 training", "ISIC-2017_Training_Data",
                "ISIC-2017_Training_Part1_GroundTruth", "ISIC-2017_Training_Part3_GroundTruth.csv"),
    IsicRelease("ISIC 2017 validation", "ISIC-2017_Validation_Data",
                "ISIC-2017_Validation_Part1_GroundTruth",
                "ISIC-2017_Validation_Part3_GroundTruth.csv"),
    IsicRelease("ISIC 2018 training", "ISIC2018_Task1-2_Training_Input",
                "ISIC2018_Task1_Training_GroundTruth"),
)
TEST_RELEASE = IsicRelease("ISIC 2017 test", "ISIC-2017_Test_v2_Data",
                           "ISIC-2017_Test_v2_Part1_GroundTruth",
                           "ISIC-2017_Test_v2_Part3_GroundTruth.csv")

PROTOCOLS = ("pooled", "official", "official_dev")
ISIC2017_TRAINING, ISIC2017_VALIDATION = POOL_RELEASES[1], POOL_RELEASES[2]


@dataclasses.dataclass(eq=False)
class IsicConfig(common.LesionConfig):
  """A stored size and one of PROTOCOLS."""
  protocol: str = "pooled"


def isic_config(image_size, protocol: str) -> common.LesionConfig:
  """The tfds config of `protocol` at `image_size` ("pooled" keeps the shared names)."""
  if protocol not in PROTOCOLS:
    raise errors.ConfigError(f"isic: protocol must be one of {PROTOCOLS}, got {protocol!r} "
                             "(config.data.options.isic.protocol)")
  sized = common.config_for_size(image_size)
  if protocol == "pooled":
    return sized
  return IsicConfig(name=f"{sized.name}_{protocol}", image_size=sized.image_size,
                    protocol=protocol, description=f"{sized.description} Splits: {protocol}.")


_INSTRUCTIONS = """\
Download the ISIC challenge archives from https://challenge.isic-archive.com/data/ and put them,
zipped or extracted (an extra top-level folder is fine), in the manual directory
(`--manual_dir`, or `<manual_dir>/isic/`):

  ISIC 2016 (Part 1):   ISBI2016_ISIC_Part1_Training_Data.zip
                        ISBI2016_ISIC_Part1_Training_GroundTruth.zip
  ISIC 2017 (Part 1):   ISIC-2017_Training_Data.zip, ISIC-2017_Training_Part1_GroundTruth.zip
                        ISIC-2017_Validation_Data.zip, ISIC-2017_Validation_Part1_GroundTruth.zip
                        ISIC-2017_Test_v2_Data.zip, ISIC-2017_Test_v2_Part1_GroundTruth.zip
  ISIC 2017 (Part 3, labels; optional):
                        ISIC-2017_Training_Part3_GroundTruth.csv
                        ISIC-2017_Validation_Part3_GroundTruth.csv
                        ISIC-2017_Test_v2_Part3_GroundTruth.csv
  ISIC 2018 (Task 1):   ISIC2018_Task1-2_Training_Input.zip
                        ISIC2018_Task1_Training_GroundTruth.zip

Any subset of the years builds (missing ones are logged); the paper's Table 1 (1994 train/val,
600 test) needs all of them. Without the ISIC 2017 test archives or CSV the test split is empty.
"""


def read_isic2017_labels(data: bytes, location: str, problems: common.Problems) -> dict[str, str]:
  """{id: label} from an ISIC 2017 Part 3 CSV (image_id,melanoma,seborrheic_keratosis)."""
  rows = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
  needed = {"image_id", "melanoma", "seborrheic_keratosis"}
  if not needed <= set(rows.fieldnames or ()):
    problems.add(location, f"expected the columns {sorted(needed)}, found {rows.fieldnames}")
    return {}
  labels = {}
  for line, row in enumerate(rows, start=2):
    try:
      melanoma, keratosis = float(row["melanoma"]), float(row["seborrheic_keratosis"])
    except (TypeError, ValueError):
      problems.add(f"{location} line {line}", f"non-numeric diagnosis {row}")
      continue
    if melanoma and keratosis:
      problems.add(f"{location} line {line}", f"{row['image_id']} is both melanoma and "
                   "seborrheic keratosis")
      continue
    labels[row["image_id"]] = ("melanoma" if melanoma else
                               "seborrheic_keratosis" if keratosis else "nevus")
  return labels


def _index_release(release: IsicRelease, images_path: Path, masks_path: Path,
                   problems: common.Problems) -> tuple[dict, dict]:
  """{id: image file}, {id: mask file} of one release; superpixels and metadata are skipped."""
  unexpected = []
  image_files, mask_files = [], []
  for f in common.open_archive(images_path):
    if match := _IMAGE.match(f.name):
      image_files.append((match.group(1), f))
    elif f.suffix in common.IMAGE_SUFFIXES and not _SUPERPIXELS.search(f.name):
      unexpected.append(f.location)
  for f in common.open_archive(masks_path):
    if match := _MASK.match(f.name):
      mask_files.append((match.group(1), f))
    elif f.suffix in common.IMAGE_SUFFIXES:
      unexpected.append(f.location)
  if unexpected:
    logger.warning("%s: ignored %d image files that are neither ISIC_<id>.jpg nor "
                   "ISIC_<id>_segmentation.png: %s", release.name, len(unexpected),
                   ", ".join(unexpected))
  return (common.index_by_id(image_files, problems, "image"),
          common.index_by_id(mask_files, problems, "mask"))


class Isic(common.LesionBuilder):
  """The combined ISIC 2016-2018 segmentation data (tfds name `isic`)."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  LABEL_NAMES = LABEL_NAMES
  DOMAIN = "dermoscopic"
  DESCRIPTION = ("ISIC 2016, 2017 and 2018 training sets and the ISIC 2017 validation set, "
                 "deduplicated by ISIC id; the ISIC 2017 test set is the test split.")
  HOMEPAGE = "https://challenge.isic-archive.com/data/"
  CITATION = """\
@article{gutman2016isic,
  title={Skin lesion analysis toward melanoma detection: A challenge at ISBI 2016, hosted by
         the ISIC}, author={Gutman, David and others}, journal={arXiv:1605.01397}, year={2016}}
@inproceedings{codella2018isic,
  title={Skin lesion analysis toward melanoma detection: A challenge at the 2017 ISBI},
  author={Codella, Noel CF and others}, booktitle={ISBI}, year={2018}}
@article{codella2019isic2018,
  title={Skin lesion analysis toward melanoma detection 2018: A challenge hosted by the ISIC},
  author={Codella, Noel and others}, journal={arXiv:1902.03368}, year={2019}}"""

  def __init__(self, *, protocol: str = "pooled", image_size=None, config=None, **kwargs):
    if protocol != "pooled":
      config, image_size = isic_config(image_size, protocol), None
    super().__init__(image_size=image_size, config=config, **kwargs)

  @property
  def protocol(self) -> str:
    return getattr(self.builder_config, "protocol", "pooled")

  def _locate(self, manual_dir: Path):
    """(present [(release, images path, masks path)], absent releases, found label CSVs)."""
    releases = POOL_RELEASES + (TEST_RELEASE,)
    names = [n for r in releases for n in (r.images + ".zip", r.images, r.masks + ".zip", r.masks)]
    found = common.find_named(manual_dir, names + [r.labels_csv for r in releases if r.labels_csv])

    def locate(stem: str) -> Path | None:
      return found.get(stem + ".zip") or found.get(stem)

    present, absent, half_missing = [], [], []
    for release in releases:
      images, masks = locate(release.images), locate(release.masks)
      if images and masks:
        present.append((release, images, masks))
      elif images or masks:  # half a release is a download gone wrong, not a choice.
        half_missing.append(release.masks + ".zip" if images else release.images + ".zip")
      else:
        absent.append(release)
    if half_missing:
      raise self._missing(manual_dir, half_missing)
    if not any(r in POOL_RELEASES for r, _, _ in present):
      raise self._missing(manual_dir, [n for r in POOL_RELEASES for n in r.archives])
    csvs = {r.labels_csv: found[r.labels_csv] for r in releases if r.labels_csv in found}
    for release, _, _ in present:
      if release.labels_csv and release.labels_csv not in csvs:
        logger.warning("isic: %s not found; %s images get the label 'unknown'",
                       release.labels_csv, release.name)
    return present, absent, csvs

  def _find_records(self, manual_dir: Path, problems: common.Problems) -> list[common.LesionRecord]:
    if self.protocol != "pooled":
      return self._official_records(manual_dir, problems)
    present, absent, csvs = self._locate(manual_dir)
    missing_archives = [n for r in absent for n in r.archives]
    if absent:
      logger.warning("isic: building without %s (not in %s): %s",
                     ", ".join(r.name for r in absent), manual_dir, ", ".join(missing_archives))
    labels: dict[str, str] = {}
    test_labels: dict[str, str] = {}
    for release in POOL_RELEASES + (TEST_RELEASE,):
      if release.labels_csv in csvs:
        path = csvs[release.labels_csv]
        parsed = read_isic2017_labels(path.read_bytes(), str(path), problems)
        (test_labels if release is TEST_RELEASE else labels).update(parsed)

    # The pool: newest release wins; remember what it replaced to compare the masks.
    pool: dict[str, tuple[IsicRelease, common.SourceFile, common.SourceFile]] = {}
    replaced = []
    test_files = None
    for release, images_path, masks_path in present:
      images, masks = _index_release(release, images_path, masks_path, problems)
      ids = common.pair_files(images, masks, problems,
                              mask_hint=lambda i: f"{i}_segmentation.png in {masks_path}",
                              image_hint=lambda i: f"{i}.jpg in {images_path}")
      if release is TEST_RELEASE:
        test_files = {i: (release, images[i], masks[i]) for i in ids}
        continue
      for i in ids:
        if i in pool:
          replaced.append((i, pool[i], (release, images[i], masks[i])))
        pool[i] = (release, images[i], masks[i])
    self._log_duplicates(replaced, problems)

    # The held-out ISIC 2017 test ids, and where their images come from.
    if test_files is not None:
      test_ids = set(test_files)
      test_source = TEST_RELEASE.name
    elif TEST_RELEASE.labels_csv in csvs:
      test_ids = set(test_labels)
      test_files = {i: pool[i] for i in sorted(test_ids & set(pool))}
      test_source = "the training releases that hold them"
      if len(test_files) < len(test_ids):
        logger.warning("isic: %d of the %d ISIC 2017 test ids listed in %s are in none of the "
                       "archives present", len(test_ids) - len(test_files), len(test_ids),
                       TEST_RELEASE.labels_csv)
    else:
      test_ids, test_files, test_source = set(), {}, None
      with_2018 = any(r is POOL_RELEASES[-1] for r, _, _ in present)
      logger.warning(
          "isic: the ISIC 2017 test archives (%s) and %s are missing: the test split is empty%s",
          ", ".join(TEST_RELEASE.archives), TEST_RELEASE.labels_csv,
          "; the ISIC 2018 training images include the 600 ISIC 2017 test images, which stay "
          "in train/validation" if with_2018 else "")
    removed = sorted(test_ids & set(pool))
    if removed:
      logger.info("isic: %d ISIC 2017 test ids removed from the training pool (found in %s); "
                  "test images taken from %s", len(removed),
                  ", ".join(sorted({pool[i][0].name for i in removed})), test_source)

    self.info.metadata["releases_used"] = [r.name for r, _, _ in present]
    self.info.metadata["archives_missing"] = missing_archives
    records = [
        common.LesionRecord(i, image, mask, labels.get(i, "unknown"))
        for i, (_, image, mask) in sorted(pool.items()) if i not in test_ids]
    records += [
        common.LesionRecord(i, image, mask, test_labels.get(i, labels.get(i, "unknown")), "test")
        for i, (_, image, mask) in sorted(test_files.items())]
    return records

  def _official_records(self, manual_dir: Path,
                        problems: common.Problems) -> list[common.LesionRecord]:
    """The ISIC 2017 releases as they are, each to its split (`protocol`)."""
    present, _, csvs = self._locate(manual_dir)
    paths = {release: (images, masks) for release, images, masks in present}
    needed = [n for r in (ISIC2017_TRAINING, ISIC2017_VALIDATION) if r not in paths
              for n in r.archives]
    if needed:
      raise self._missing(manual_dir, needed)
    dev = self.protocol == "official_dev"
    splits = {ISIC2017_TRAINING: None if dev else "train",
              ISIC2017_VALIDATION: "test" if dev else "validation"}
    if not dev:
      if TEST_RELEASE in paths:
        splits[TEST_RELEASE] = "test"
      else:
        logger.warning("isic (official): %s not in %s: the test split is empty and runs report "
                       "no test metrics; put them there to report the ISIC 2017 benchmark",
                       " and ".join(TEST_RELEASE.archives), manual_dir)
    records = []
    for release, split in splits.items():
      labels = (read_isic2017_labels(csvs[release.labels_csv].read_bytes(),
                                     str(csvs[release.labels_csv]), problems)
                if release.labels_csv in csvs else {})
      images, masks = _index_release(release, *paths[release], problems)
      ids = common.pair_files(images, masks, problems,
                              mask_hint=lambda i: f"{i}_segmentation.png in {paths[release][1]}",
                              image_hint=lambda i: f"{i}.jpg in {paths[release][0]}")
      records += [common.LesionRecord(i, images[i], masks[i], labels.get(i, "unknown"), split)
                  for i in sorted(ids)]
    self.info.metadata["releases_used"] = [r.name for r in splits]
    return records

  def _log_duplicates(self, replaced, problems: common.Problems) -> None:
    """Logs duplicate ids; names those whose masks differ (the newest release's mask is kept)."""
    if not replaced:
      return
    differing = []
    for image_id, (old_release, _, old_mask), (new_release, _, new_mask) in replaced:
      old, new = common.read_mask(old_mask, problems), common.read_mask(new_mask, problems)
      if old is not None and new is not None and (old.shape != new.shape
                                                   or not np.array_equal(old, new)):
        differing.append(f"{image_id} ({old_release.name} -> {new_release.name})")
    logger.info("isic: %d ids are in several releases; each keeps its newest release's image "
                "and mask", len(replaced))
    if differing:
      logger.warning("isic: %d duplicate ids have different masks in different releases; kept "
                     "the newest release's mask: %s", len(differing), ", ".join(differing))

  def _assign_splits(self, records):
    """Splits fixed by their release as given; validation is 10% of the rest (the pool),
    stratified by label."""
    pool = [r for r in records if r.split is None]
    fraction = splits_lib.VALIDATION_FRACTION
    split_ids = splits_lib.partition(
        [r.image_id for r in pool], [r.label for r in pool],
        {"train": 1.0 - fraction, "validation": fraction}) if pool else {
            "train": [], "validation": []}
    for split in ("train", "validation", "test"):
      split_ids[split] = list(split_ids.get(split, [])) + sorted(
          r.image_id for r in records if r.split == split)
    return split_ids
