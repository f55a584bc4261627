"""The `waterloo` builder on tiny fixture archives, its hashed split, and the real copy."""
from __future__ import annotations

import io
import os
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import fixtures_archives as fx
from lesion_jax import data as data_lib
from lesion_jax.data import __main__ as data_cli
from lesion_jax.data import splits as splits_lib
from lesion_jax.data.builders import common, waterloo

SPLITS = ("train", "validation", "test")
REAL_DATA_ENV = "LESION_JAX_REAL_DATA"


def split_of(builder) -> dict[str, str]:
  """{image_id: split} of a prepared builder."""
  skip = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}
  out = {}
  for split in SPLITS:
    if split in builder.info.splits:
      source = builder.as_data_source(split, decoders=skip)
      out.update({source[i]["image_id"].decode(): split for i in range(len(source))})
  return out


def encoded(builder) -> dict[str, tuple]:
  """{image_id: (split, stored image bytes, stored mask bytes, label)}."""
  skip = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}
  out = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split, decoders=skip)
    for i in range(len(source)):
      ex = source[i]
      out[ex["image_id"].decode()] = (split, ex["image"], ex["mask"], int(ex["label"]))
  return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("waterloo")
  fixture = fx.write_waterloo(root / "manual")
  with fx.captured_logs() as logs:
    builder = fx.build(waterloo.Waterloo, fixture.root, root / "data")
  return fixture, builder, logs


def test_every_pair_is_built_with_its_label_and_binary_mask(built):
  fixture, builder, logs = built
  examples = {i: ex for s in SPLITS for i, ex in fx.read_split(builder, s).items()}
  assert sorted(examples) == sorted(fixture.labels)  # 12 pairs; junk files ignored
  labels = builder.info.features["label"].names
  for image_id, ex in examples.items():
    assert labels[ex["label"]] == fixture.labels[image_id]
    np.testing.assert_array_equal(ex["mask"][..., 0], fixture.masks[image_id])
    assert ex["image"].shape[:2] == ex["mask"].shape[:2]
    assert ex["domain"] == builder.info.features["domain"].str2int("macroscopic")
  # The same ID in both atlases is two examples; the fixture holds both mask depths.
  assert {"dermis/SSM1", "dermquest/SSM1"} <= set(examples)
  with zipfile.ZipFile(fixture.root / "skin_image_data_set-1.zip") as z:
    modes = {Image.open(io.BytesIO(z.read(n))).mode for n in z.namelist()
             if n.endswith("_contour.png")}
  assert modes == {"1", "L"}
  assert not any("ignored" in line for line in logs)  # Thumbs.db, .DS_Store: silently


def test_photographs_of_one_lesion_share_a_split(built):
  _, builder, _ = built
  splits = split_of(builder)
  assert splits == {i: s for s, ids in waterloo.assign_splits(list(splits)).items() for i in ids}
  by_lesion: dict[str, set] = {}
  for image_id, split in splits.items():
    by_lesion.setdefault(waterloo.lesion_key(image_id), set()).add(split)
  assert waterloo.lesion_key("dermquest/D10_1") == "dermquest/D10"
  assert waterloo.lesion_key("dermis/10") == "dermis/10"
  assert len(by_lesion) == 9 and all(len(s) == 1 for s in by_lesion.values())


def test_extracted_folders_of_any_case_give_the_same_dataset(built, tmp_path):
  _, from_zips, _ = built
  fixture = fx.write_waterloo(tmp_path / "manual", as_zip=False, swap_case=True)
  assert (fixture.root / "Skin Image Data Set-1" / "skin_data" / "MELANOMA" / "DERMis").is_dir()
  (fixture.root / "Skin Image Data Set-2" / "readme.txt").write_text("notes")
  with fx.captured_logs() as logs:
    from_folders = fx.build(waterloo.Waterloo, fixture.root, tmp_path / "data")
  assert encoded(from_folders) == encoded(from_zips)
  assert any("ignored 1 files" in line and "readme.txt" in line for line in logs)


def test_split_is_stable_when_pairs_are_removed():
  ids = [f"{atlas}/{prefix}{n}{suffix}" for atlas in waterloo.ATLASES for prefix in ("SSM", "D")
         for n in range(200) for suffix in ("", "_2")[:1 + (n % 3 == 0)]]
  full = {i: s for s, members in waterloo.assign_splits(ids).items() for i in members}
  kept = [i for k, i in enumerate(ids) if k % 3 == 0 or k % 7 == 1]
  partial = {i: s for s, members in waterloo.assign_splits(kept).items() for i in members}
  assert partial == {i: full[i] for i in kept}
  assert full["dermquest/SSM3"] == full["dermquest/SSM3_2"]
  lesions = {waterloo.lesion_key(i): s for i, s in full.items()}
  shares = Counter(lesions.values())
  for split, fraction in waterloo.SPLIT_FRACTIONS.items():  # 800 lesions: sd of a share 0.016
    assert abs(shares[split] / len(lesions) - fraction) < 0.05


def test_split_of_a_lesion_is_pinned():
  # The split must never change between versions: users compare results across them.
  assert waterloo.assign_splits(["dermis/SSM1", "dermquest/SSM1", "dermquest/D8", "dermis/10",
                                 "dermquest/SSM9_2"]) == {
      "train": ["dermis/10", "dermquest/D8", "dermquest/SSM1"],
      "validation": ["dermquest/SSM9_2"], "test": ["dermis/SSM1"]}
  assert splits_lib.unit_hash("dermis/SSM1", waterloo.SPLIT_SALT) == pytest.approx(
      0.9551294149036007, abs=1e-15)


@pytest.mark.parametrize("edit,expected", [
    ({"SSM3_contour.png": None},
     ["SSM3_orig.jpg", "image without a mask (expected SSM3_contour.png next to it)"]),
    ({"D8_orig.jpg": None},
     ["D8_contour.png", "mask without an image (expected D8_orig.jpg next to it)"]),
    ({"D10_contour.png": fx.png_bytes(fx.lesion_mask(1, 14, 12))},
     ["D10_contour.png", "mask is 14x12 (WxH) but its image", "D10_orig.jpg", "is 16x12"]),
    ({"LMM8_orig.jpg": fx.jpeg_bytes(fx.lesion_image(1, 20, 14))[:200]},
     ["LMM8_orig.jpg", "unreadable image"]),
    ({"11_contour.png": b"not a png"}, ["11_contour.png", "unreadable mask"]),
], ids=["missing_mask", "missing_image", "mismatched_size", "truncated_jpeg", "not_a_png"])
def test_a_broken_pair_is_named_and_nothing_is_written(tmp_path, edit, expected):
  fixture = fx.write_waterloo(tmp_path / "manual", edit=edit)
  with pytest.raises(common.SourceFileError) as error:
    fx.build(waterloo.Waterloo, fixture.root, tmp_path / "data")
  message = str(error.value)
  for text in expected:
    assert text in message
  assert "skin_image_data_set-" in message  # where the file is
  assert not waterloo.Waterloo(data_dir=str(tmp_path / "data")).is_prepared()


def test_every_problem_is_listed_in_one_error(tmp_path):
  fixture = fx.write_waterloo(tmp_path / "manual", as_zip=False, edit={
      "SSM3_contour.png": None, "D10_contour.png": fx.png_bytes(fx.lesion_mask(1, 14, 12))})
  with pytest.raises(common.SourceFileError, match="2 problem") as error:
    fx.build(waterloo.Waterloo, fixture.root, tmp_path / "data")
  assert "SSM3_orig.jpg" in str(error.value) and "D10_contour.png" in str(error.value)


def test_a_missing_archive_is_named(tmp_path):
  fixture = fx.write_waterloo(tmp_path / "manual")
  (fixture.root / "skin_image_data_set-2.zip").unlink()
  with pytest.raises(common.MissingArchiveError) as error:
    fx.build(waterloo.Waterloo, fixture.root, tmp_path / "data")
  assert "skin_image_data_set-2.zip" in str(error.value)
  assert "skin_image_data_set-1.zip" not in str(error.value).split("See the download")[0]


def test_registry_builds_a_resized_copy(tmp_path):
  fixture = fx.write_waterloo(tmp_path / "manual" / "waterloo")
  builder = data_lib.get_builder("waterloo", data_dir=str(tmp_path / "data"),
                                 manual_dir=str(tmp_path / "manual"), options={"image_size": 8})
  assert builder.builder_config.name == "resized_8"
  examples = {i: ex for s in SPLITS for i, ex in fx.read_split(builder, s).items()}
  assert len(examples) == len(fixture.labels)
  for ex in examples.values():
    assert ex["image"].shape == (8, 8, 3) and ex["mask"].shape == (8, 8, 1)
    assert set(np.unique(ex["mask"])) <= {0, 1}
  assert "waterloo" in data_lib.SET_M_STANDIN and waterloo.Waterloo.DOMAIN == "macroscopic"


def test_stats_command_finds_the_archives_through_the_environment(tmp_path, monkeypatch, capsys):
  fx.write_waterloo(tmp_path / "real" / "waterloo")
  monkeypatch.setenv(REAL_DATA_ENV, str(tmp_path / "real"))
  assert data_cli.main(["stats", "waterloo", "--data_dir", str(tmp_path / "data")]) == 0
  lines = capsys.readouterr().out.splitlines()
  row = next(l for l in lines if l.startswith("macroscopic  waterloo "))
  assert row.split()[-5] == "12"
  assert any(l.split()[:1] == ["not_melanoma"] for l in lines)


# --------------------------------------------------------------------------------------------
# The real copy (161 of the 206 pairs).

# Realized on the 161-pair copy; docs/data.md shows the same table.
REAL_SPLITS = {"train": 100, "validation": 31, "test": 30}
REAL_STRATA = {  # (label, atlas) -> (train, validation, test)
    ("melanoma", "dermis"): (21, 7, 6), ("melanoma", "dermquest"): (37, 11, 11),
    ("not_melanoma", "dermis"): (12, 3, 5), ("not_melanoma", "dermquest"): (30, 10, 8),
}


@pytest.fixture(scope="module")
def real_copy(tmp_path_factory):
  """The real copy built in place, once: (builder, {image_id: (label, split)})."""
  real = os.environ.get(REAL_DATA_ENV)
  if not real:
    pytest.skip(f"{REAL_DATA_ENV} is unset: point it at a folder holding waterloo/ "
                "(e.g. LESION_JAX_REAL_DATA=../shared/data)")
  if not (Path(real) / "waterloo").is_dir():
    pytest.skip(f"{REAL_DATA_ENV}={real} holds no waterloo/ folder")
  data_dir = tmp_path_factory.mktemp("waterloo_real")
  builder = fx.build(waterloo.Waterloo, Path(real) / "waterloo", data_dir)  # read in place
  names = builder.info.features["label"].names
  skip = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}
  examples = []
  for split in builder.info.splits:
    source = builder.as_data_source(split, decoders=skip)
    examples += [(source[i]["image_id"].decode(), names[int(source[i]["label"])], split)
                 for i in range(len(source))]
  return builder, examples


def strata_counts(examples) -> dict[tuple[str, str], tuple[int, int, int]]:
  counts = Counter((label, image_id.split("/")[0], split) for image_id, label, split in examples)
  strata = sorted({(label, image_id.split("/")[0]) for image_id, label, _ in examples})
  return {st: tuple(counts[st + (s,)] for s in SPLITS) for st in strata}


@pytest.mark.real_data
def test_real_copy_builds_161_pairs_into_three_splits(real_copy):
  builder, examples = real_copy
  ids = [image_id for image_id, _, _ in examples]
  assert len(ids) == len(set(ids)) == 161
  assert {s: builder.info.splits[s].num_examples for s in SPLITS} == REAL_SPLITS
  assert strata_counts(examples) == REAL_STRATA
  split_of_lesion: dict[str, set] = {}
  for image_id, _, split in examples:
    split_of_lesion.setdefault(waterloo.lesion_key(image_id), set()).add(split)
  assert all(len(s) == 1 for s in split_of_lesion.values())


@pytest.mark.real_data
def test_real_copy_salt_is_the_most_balanced_candidate(real_copy):
  """The search that chose SPLIT_SALT (waterloo.py's docstring), repeated."""
  _, examples = real_copy
  ids = [image_id for image_id, _, _ in examples]
  stratum = {image_id: (label, image_id.split("/")[0]) for image_id, label, _ in examples}
  sizes = Counter(stratum.values())

  def deviation(salt: str) -> float:
    split_ids = splits_lib.hashed_partition(ids, [waterloo.lesion_key(i) for i in ids],
                                            waterloo.SPLIT_FRACTIONS, salt)
    counts = Counter((stratum[i], s) for s, members in split_ids.items() for i in members)
    return round(max(abs(counts[(st, s)] - f * n) for st, n in sizes.items()
                     for s, f in waterloo.SPLIT_FRACTIONS.items()), 6)

  best = min(waterloo.SALT_CANDIDATES, key=lambda salt: (deviation(salt),
                                                          waterloo.SALT_CANDIDATES.index(salt)))
  assert best == waterloo.SPLIT_SALT and deviation(best) == 1.6
