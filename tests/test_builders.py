"""The real-database builders on tiny fixture releases in their official layouts."""
from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
import tensorflow_datasets as tfds

import fixtures_archives as fx
from lesion_jax.data import __main__ as data_cli
from lesion_jax.data import stats
from lesion_jax.data.builders import common, dermofit, isic, ph2, smartskins

SPLITS = ("train", "validation", "test")


def split_ids(builder) -> dict[str, list[str]]:
  return {s: sorted(fx.read_split(builder, s)) for s in SPLITS}


def encoded(builder, split: str) -> dict[str, tuple[bytes, bytes, int]]:
  """{id: (stored image bytes, stored mask bytes, label)}: what was written, undecoded."""
  if split not in builder.info.splits:
    return {}
  skip = {"image": tfds.decode.SkipDecoding(), "mask": tfds.decode.SkipDecoding()}
  source = builder.as_data_source(split, decoders=skip)
  out = {}
  for i in range(len(source)):
    ex = source[i]
    out[ex["image_id"].decode()] = (ex["image"], ex["mask"], int(ex["label"]))
  return out


def assert_stratified(split: dict[str, list[str]], labels: dict[str, str],
                      fractions: dict[str, float]) -> None:
  """Each class's count in each split is within one image of its exact share."""
  per_class = Counter(labels.values())
  for name, fraction in fractions.items():
    counts = Counter(labels[i] for i in split[name])
    for cls, n in per_class.items():
      assert abs(counts[cls] - n * fraction) < 1, (name, cls, counts[cls], n * fraction)


# --------------------------------------------------------------------------------------------
# ISIC


@pytest.fixture(scope="module")
def isic_full(tmp_path_factory):
  root = tmp_path_factory.mktemp("isic_full")
  fixture = fx.write_isic(root / "manual")
  with fx.captured_logs() as logs:
    builder = fx.build(isic.Isic, fixture.root, root / "data")
  return fixture, builder, logs


def test_isic_holds_out_the_2017_test_ids_and_splits_the_pool(isic_full):
  fixture, builder, _ = isic_full
  ids = split_ids(builder)
  assert ids["test"] == fixture.test_ids
  assert sorted(ids["train"] + ids["validation"]) == fixture.pool_ids
  assert not set(ids["test"]) & set(ids["train"] + ids["validation"])
  assert abs(len(ids["validation"]) - 0.1 * len(fixture.pool_ids)) < 1
  # ISIC 2016 (`_Segmentation.png`), 2017 and 2018 all contribute; superpixels add nothing.
  assert {"ISIC_0000000", "ISIC_0000014", "ISIC_0000021"} <= set(fixture.pool_ids)


def test_isic_duplicates_keep_the_newest_mask_and_log_the_differing_ids(isic_full):
  fixture, builder, logs = isic_full
  stored = {**fx.read_split(builder, "train"), **fx.read_split(builder, "validation"),
            **fx.read_split(builder, "test")}
  for image_id, expected in fixture.masks.items():
    np.testing.assert_array_equal(stored[image_id]["mask"][..., 0], expected, err_msg=image_id)
  message = next(m for m in logs if "different masks" in m)
  for image_id in fixture.changed_mask_ids:
    assert image_id in message
  for image_id in fixture.same_mask_duplicate_ids:
    assert image_id not in message
  assert fixture.changed_mask_ids == ["ISIC_0000004", "ISIC_0000011"]


def test_isic_labels_images_and_metadata(isic_full):
  fixture, builder, _ = isic_full
  names = builder.info.features["label"].names
  for split in SPLITS:
    for image_id, (image, mask, label) in encoded(builder, split).items():
      assert names[label] == fixture.labels[image_id], image_id
      assert image == fixture.images[image_id]  # JPEG bytes stored untouched.
  example = next(iter(fx.read_split(builder, "train").values()))
  assert example["database"] == b"isic"
  assert builder.info.features["domain"].int2str(example["domain"]) == "dermoscopic"
  assert builder.info.metadata["archives_missing"] == []


def test_isic_extracted_folders_give_the_same_dataset_as_zips(isic_full, tmp_path):
  _, zipped, _ = isic_full
  fixture = fx.write_isic(tmp_path / "manual", as_zip=False, extra_top_level=True)
  folders = fx.build(isic.Isic, fixture.root, tmp_path / "data")
  for split in SPLITS:
    assert encoded(folders, split) == encoded(zipped, split)


def test_isic_builds_from_2017_training_and_validation_alone(tmp_path):
  fixture = fx.write_isic(tmp_path / "manual", ["2017_train", "2017_val"])
  with fx.captured_logs() as logs:
    builder = fx.build(isic.Isic, fixture.root, tmp_path / "data")
  ids = split_ids(builder)
  assert sorted(ids["train"] + ids["validation"]) == fixture.pool_ids
  assert len(fixture.pool_ids) == 13 and ids["test"] == []
  assert "test" not in builder.info.splits
  assert builder.info.metadata["empty_splits"] == ["test"]
  log = "\n".join(logs)
  for name in ("ISBI2016_ISIC_Part1_Training_Data.zip", "ISIC2018_Task1-2_Training_Input.zip",
               "ISIC-2017_Test_v2_Data.zip", "ISIC-2017_Test_v2_Part1_GroundTruth.zip"):
    assert name in log
    assert name in builder.info.metadata["archives_missing"]


def test_isic_test_ids_from_the_csv_take_their_images_from_2018(tmp_path):
  fixture = fx.write_isic(tmp_path / "manual", ["2018", "2017_test_csv"])
  builder = fx.build(isic.Isic, fixture.root, tmp_path / "data")
  ids = split_ids(builder)
  assert ids["test"] == fixture.test_ids == [fx.isic_id(n) for n in range(100, 105)]
  assert sorted(ids["train"] + ids["validation"]) == fixture.pool_ids
  names = builder.info.features["label"].names
  assert {names[l] for _, _, l in encoded(builder, "test").values()} <= set(fx.ISIC_LABELS)


def test_isic_official_protocol_keeps_the_2017_challenge_splits(tmp_path):
  fixture = fx.write_isic(tmp_path / "manual")
  builder = fx.build(isic.Isic, fixture.root, tmp_path / "data", protocol="official")
  assert builder.builder_config.name == "native_official"
  ids = split_ids(builder)
  # Each release as published: no other year, no deduplication across years.
  assert ids["train"] == [fx.isic_id(n) for n in sorted(fx.ISIC_IDS["2017_train"])]
  assert ids["validation"] == [fx.isic_id(n) for n in sorted(fx.ISIC_IDS["2017_val"])]
  assert ids["test"] == fixture.test_ids
  # Without the test archives: an empty test split, and a warning naming the archives.
  fixture = fx.write_isic(tmp_path / "manual2", ["2016", "2017_train", "2017_val", "2018"])
  with fx.captured_logs() as logs:
    builder = fx.build(isic.Isic, fixture.root, tmp_path / "data2", protocol="official")
  assert split_ids(builder)["test"] == [] and "ISIC-2017_Test_v2_Data.zip" in "\n".join(logs)


def test_isic_official_dev_protocol_splits_the_training_set_and_tests_on_validation(tmp_path):
  fixture = fx.write_isic(tmp_path / "manual")
  builder = fx.build(isic.Isic, fixture.root, tmp_path / "data", protocol="official_dev",
                     image_size=(12, 16))
  assert builder.builder_config.name == "resized_12x16_official_dev"
  ids = split_ids(builder)
  assert sorted(ids["train"] + ids["validation"]) == [
      fx.isic_id(n) for n in sorted(fx.ISIC_IDS["2017_train"])]
  assert len(ids["validation"]) == round(0.1 * len(fx.ISIC_IDS["2017_train"]))
  assert ids["test"] == [fx.isic_id(n) for n in sorted(fx.ISIC_IDS["2017_val"])]
  example = next(iter(fx.read_split(builder, "test").values()))
  assert example["image"].shape == (12, 16, 3) and example["mask"].shape == (12, 16, 1)
  with pytest.raises(ValueError, match="protocol must be one of"):
    isic.Isic(data_dir=str(tmp_path), protocol="challenge")
  fixture = fx.write_isic(tmp_path / "only_train", ["2017_train"])
  with pytest.raises(FileNotFoundError, match="ISIC-2017_Validation_Data.zip"):
    fx.build(isic.Isic, fixture.root, tmp_path / "data3", protocol="official_dev")


# --------------------------------------------------------------------------------------------
# PH2, Dermofit, SMARTSKINS


def test_ph2_split_is_stratified_by_diagnosis_and_txt_zip_match_xlsx_folder(tmp_path):
  xlsx = fx.write_ph2(tmp_path / "xlsx", table="xlsx")
  txt = fx.write_ph2(tmp_path / "txt", table="txt", as_zip=True)
  from_xlsx = fx.build(ph2.Ph2, xlsx.root, tmp_path / "data_xlsx")
  from_txt = fx.build(ph2.Ph2, txt.root, tmp_path / "data_txt")
  ids = split_ids(from_xlsx)
  assert [len(ids[s]) for s in SPLITS] == [18, 2, 5]  # 25 images: 80/20, then 90/10
  assert_stratified(ids, xlsx.diagnoses, {"test": 0.2, "validation": 0.08, "train": 0.72})
  names = from_xlsx.info.features["label"].names
  for image_id, (_, _, label) in encoded(from_xlsx, "train").items():
    assert names[label] == xlsx.diagnoses[image_id]
  for split in SPLITS:
    assert encoded(from_txt, split) == encoded(from_xlsx, split)
  example = next(iter(fx.read_split(from_xlsx, "test").values()))
  assert example["image"].shape == (fx.HEIGHT, fx.WIDTH, 3)  # BMP re-encoded, same pixels
  image_id = example["image_id"].decode()
  np.testing.assert_array_equal(example["image"], fx.lesion_image(int(image_id[3:])))


def test_ph2_flat_copy_gives_the_release_trees_split_masks_and_pixels(tmp_path):
  flat = fx.write_ph2_flat(tmp_path / "flat")
  release = fx.write_ph2_release_of(tmp_path / "release", flat)  # BMPs of the same pixels
  csv_only = fx.write_ph2_flat(tmp_path / "csv_only", tables=("csv",))
  with fx.captured_logs() as logs:
    from_flat = fx.build(ph2.Ph2, flat.root, tmp_path / "data_flat")
  from_release = fx.build(ph2.Ph2, release.root, tmp_path / "data_release")
  from_csv = fx.build(ph2.Ph2, csv_only.root, tmp_path / "data_csv")
  assert any("flattened copy (25 images)" in l and "PH2_dataset.xlsx" in l for l in logs)
  ids = split_ids(from_flat)
  assert [len(ids[s]) for s in SPLITS] == [18, 2, 5]
  assert ids == split_ids(from_release) == split_ids(from_csv)
  # The split hangs on ids and diagnoses alone: the usual release fixture splits the same way.
  assert ids == split_ids(fx.build(ph2.Ph2, fx.write_ph2(tmp_path / "bmp").root,
                                   tmp_path / "data_bmp"))
  for split in SPLITS:
    released = fx.read_split(from_release, split)
    for image_id, example in fx.read_split(from_flat, split).items():
      np.testing.assert_array_equal(example["mask"][..., 0], flat.masks[image_id])
      np.testing.assert_array_equal(example["mask"], released[image_id]["mask"])
      np.testing.assert_array_equal(example["image"], released[image_id]["image"])
      assert example["label"] == released[image_id]["label"]
      # A JPEG of the fixture's image (its gradient wraps, so edges blur): close on average.
      original = fx.lesion_image(int(image_id[3:])).astype(float)
      assert abs(example["image"].mean() - original.mean()) < 4
    assert encoded(from_csv, split) == encoded(from_flat, split)
  stored_image, _, _ = encoded(from_flat, "test")[ids["test"][0]]
  assert stored_image == (flat.root / "images" / f"{ids['test'][0]}.jpg").read_bytes()


def test_ph2_reads_the_release_tree_and_its_spreadsheet_when_both_layouts_are_present(tmp_path):
  flat = fx.write_ph2_flat(tmp_path / "manual", counts=(3, 3, 2))
  fx.write_ph2(tmp_path / "manual", counts=(3, 3, 2))  # PH2Dataset/ beside images/ and masks/
  # A flattened spreadsheet that disagrees: only the release's own one may be read.
  (flat.root / "PH2_dataset.xlsx").write_bytes(fx.ph2_xlsx({i: "melanoma" for i in flat.diagnoses}))
  with fx.captured_logs() as logs:
    built = fx.build(ph2.Ph2, flat.root, tmp_path / "data")
  assert any("both the release tree (8 images) and a flattened copy (8 images" in l
             and "reading the release tree only" in l for l in logs)
  names = built.info.features["label"].names
  for split in SPLITS:
    for image_id, example in fx.read_split(built, split).items():
      assert names[example["label"]] == flat.diagnoses[image_id]
      # Lossless BMP pixels, not the JPEG's.
      np.testing.assert_array_equal(example["image"], fx.lesion_image(int(image_id[3:])))


def test_ph2_flat_copy_problems_name_their_files(tmp_path):
  flat = fx.write_ph2_flat(tmp_path / "manual", counts=(3, 3, 2))
  (flat.root / "masks" / "IMD003_lesion.png").unlink()
  truncated = flat.root / "images" / "IMD004.jpg"
  truncated.write_bytes(truncated.read_bytes()[:200])
  listed = {i: label for i, label in flat.diagnoses.items() if i != "IMD005"}
  (flat.root / "PH2_dataset.xlsx").write_bytes(fx.ph2_xlsx(listed))
  with pytest.raises(common.SourceFileError) as error:
    fx.build(ph2.Ph2, flat.root, tmp_path / "data")
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "IMD003.jpg: image without a mask (expected masks/IMD003_lesion.png)" in message
  assert "IMD004.jpg: unreadable image" in message
  assert "IMD005.jpg: IMD005 has no clinical diagnosis in" in message
  assert "PH2_dataset.xlsx" in message

  no_table = fx.write_ph2_flat(tmp_path / "no_table", counts=(3, 3, 2), tables=())
  with pytest.raises(common.MissingArchiveError, match="PH2_dataset.xlsx.*metadata.csv"):
    fx.build(ph2.Ph2, no_table.root, tmp_path / "data")


def test_dermofit_split_is_stratified_by_class_and_class_zips_match_folders(tmp_path):
  folders = fx.write_dermofit(tmp_path / "folders")
  zips = fx.write_dermofit(tmp_path / "zips", as_zip=True)
  built = fx.build(dermofit.Dermofit, folders.root, tmp_path / "data_folders")
  ids = split_ids(built)
  total = sum(fx.DERMOFIT_COUNTS.values())
  assert len(ids["test"]) == round(total * 264 / 1300)
  t = 264 / 1300
  assert_stratified(ids, folders.labels, {"test": t, "validation": (1 - t) * 0.1})
  names = built.info.features["label"].names
  stored = {i: names[l] for s in SPLITS for i, (_, _, l) in encoded(built, s).items()}
  assert stored == folders.labels
  from_zips = fx.build(dermofit.Dermofit, zips.root, tmp_path / "data_zips")
  for split in SPLITS:
    assert encoded(from_zips, split) == encoded(built, split)


def test_smartskins_has_the_papers_39_41_split_and_binarised_masks(tmp_path):
  fixture = fx.write_smartskins(tmp_path / "manual", as_zip=True)
  builder = fx.build(smartskins.Smartskins, fixture.root, tmp_path / "data")
  ids = split_ids(builder)
  assert len(ids["train"]) + len(ids["validation"]) == 39 and len(ids["test"]) == 41
  assert len(ids["validation"]) == 4
  for split in SPLITS:
    for image_id, example in fx.read_split(builder, split).items():
      # Grey (0/128) and RGB masks become {0, 1} lesion masks.
      np.testing.assert_array_equal(example["mask"][..., 0], fixture.masks[image_id])
  example = next(iter(fx.read_split(builder, "test").values()))
  assert builder.info.features["domain"].int2str(example["domain"]) == "macroscopic"


def test_builds_are_deterministic(tmp_path):
  fixture = fx.write_smartskins(tmp_path / "manual", count=20)
  first = fx.build(smartskins.Smartskins, fixture.root, tmp_path / "a")
  second = fx.build(smartskins.Smartskins, fixture.root, tmp_path / "b")
  for split in SPLITS:
    assert encoded(first, split) == encoded(second, split)


def test_resized_copy_has_square_images_and_binary_masks(tmp_path):
  fixture = fx.write_smartskins(tmp_path / "manual", count=20)
  native = fx.build(smartskins.Smartskins, fixture.root, tmp_path / "data")
  resized = fx.build(smartskins.Smartskins, fixture.root, tmp_path / "data", image_size=8)
  assert resized.builder_config.name == "resized_8"
  assert split_ids(resized) == split_ids(native)
  for image_id, example in fx.read_split(resized, "test").items():
    assert example["image"].shape == (8, 8, 3) and example["mask"].shape == (8, 8, 1)
    assert set(np.unique(example["mask"])) <= {0, 1}
    original = fx.lesion_image(int(image_id[3:])).astype(float)
    assert abs(example["image"].mean() - original.mean()) < 4
    lesion = fixture.masks[image_id].mean()
    assert abs(example["mask"].mean() - lesion) < 0.15


def test_image_size_selects_the_named_config(tmp_path):
  assert ph2.Ph2(data_dir=str(tmp_path), image_size=512).builder_config is common.RESIZED_512
  assert ph2.Ph2(data_dir=str(tmp_path)).builder_config.name == "native"
  with pytest.raises(ValueError, match="contradicts"):
    ph2.Ph2(data_dir=str(tmp_path), image_size=256, config="resized_512")
  with pytest.raises(ValueError, match="positive integer"):
    ph2.Ph2(data_dir=str(tmp_path), image_size=0)


# --------------------------------------------------------------------------------------------
# Bad input


def test_corrupt_inputs_are_all_reported_in_one_error_and_nothing_is_written(tmp_path):
  fixture = fx.write_isic(tmp_path / "manual", ["2017_train", "2017_val"], as_zip=False)
  images = fixture.root / "ISIC-2017_Training_Data"
  masks = fixture.root / "ISIC-2017_Training_Part1_GroundTruth"
  truncated = images / "ISIC_0000005.jpg"
  truncated.write_bytes(truncated.read_bytes()[:300])
  (masks / "ISIC_0000007_segmentation.png").unlink()
  (masks / "ISIC_0000009_segmentation.png").write_bytes(fx.png_bytes(fx.lesion_mask(9, 20, 10)))
  builder = isic.Isic(data_dir=str(tmp_path / "data"), file_format="array_record")
  with pytest.raises(common.SourceFileError) as error:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(fixture.root)))
  message = str(error.value)
  assert "3 problem(s)" in message
  assert "ISIC_0000005.jpg" in message and "unreadable image" in message
  assert "ISIC_0000007.jpg" in message and "without a mask" in message
  assert "ISIC_0000009_segmentation.png" in message and "20x10" in message
  assert not isic.Isic(data_dir=str(tmp_path / "data")).is_prepared()


def test_dermofit_unpaired_files_are_reported(tmp_path):
  fixture = fx.write_dermofit(tmp_path / "manual")
  ak = fixture.root / "Dermofit_release" / "AK"
  (ak / "A1" / "A1mask.png").unlink()
  (ak / "A2" / "A2.png").unlink()
  with pytest.raises(common.SourceFileError, match=r"(?s)A1\.png.*without a mask.*A2mask\.png"):
    fx.build(dermofit.Dermofit, fixture.root, tmp_path / "data")


def test_missing_archives_are_named(tmp_path):
  fixture = fx.write_isic(tmp_path / "isic", ["2017_train"])
  (fixture.root / "ISIC-2017_Training_Part1_GroundTruth.zip").unlink()
  with pytest.raises(common.MissingArchiveError,
                     match="ISIC-2017_Training_Part1_GroundTruth.zip(?s:.*)challenge.isic"):
    fx.build(isic.Isic, fixture.root, tmp_path / "data")

  unrelated = tmp_path / "unrelated"
  fx.write_files(unrelated, {"notes.txt": b"x"})
  with pytest.raises(common.MissingArchiveError, match="PH2Dataset"):
    fx.build(ph2.Ph2, unrelated, tmp_path / "data")
  with pytest.raises(common.MissingArchiveError, match="ISIC-2017_Training_Data.zip"):
    fx.build(isic.Isic, unrelated, tmp_path / "data")

  fixture = fx.write_dermofit(tmp_path / "dermofit")
  shutil.rmtree(fixture.root / "Dermofit_release" / "VASC")
  with pytest.raises(common.MissingArchiveError, match="class folder VASC/"):
    fx.build(dermofit.Dermofit, fixture.root, tmp_path / "data")

  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(common.MissingArchiveError, match="smartskins/images"):
    fx.build(smartskins.Smartskins, empty, tmp_path / "data")


# --------------------------------------------------------------------------------------------
# Statistics


def test_stats_count_every_split_and_class(isic_full):
  fixture, builder, _ = isic_full
  row = stats.database_statistics(builder)
  ids = split_ids(builder)
  assert row.split_sizes == {s: len(ids[s]) for s in SPLITS}
  assert row.total == len(fixture.pool_ids) + len(fixture.test_ids)
  assert row.train_val == len(fixture.pool_ids)
  for split in SPLITS:
    expected = Counter(fixture.labels[i] for i in ids[split])
    assert {c: row.class_counts[c][split] for c in expected} == dict(expected)
  table = stats.format_table([row])
  assert "dermoscopic  isic      (all)" in table
  assert f"{row.total}" in table and "seborrheic_keratosis" in table


def test_stats_command_builds_and_prints_table(tmp_path, capsys):
  fixture = fx.write_ph2(tmp_path / "manual")
  code = data_cli.main(["stats", "ph2", "--data_dir", str(tmp_path / "data"),
                        "--manual_dir", str(fixture.root)])
  assert code == 0
  lines = capsys.readouterr().out.splitlines()
  total = next(l for l in lines if l.startswith("dermoscopic  ph2 "))
  assert total.split()[-5:] == ["25", "20", "18", "2", "5"]
  melanoma = next(l for l in lines if "melanoma" in l)
  assert melanoma.split()[-5:] == ["5", "4", "4", "0", "1"]
  assert data_cli.main(["stats", "no_such_dataset"]) == 2  # bad input, as every command
  assert "Valid dataset names" in capsys.readouterr().err
