"""Tiny fixture releases in the official layouts of ISIC 2016/2017/2018, PH2, Dermofit, SMARTSKINS
and Waterloo.

Images are 16x12 (WxH). Every writer returns what a correct builder must produce (ids, labels,
masks), computed here independently of the builders. Zips mimic the official ones (a top-level
folder named like the archive); "extracted" folders are what `unzip` makes of them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import zipfile
from pathlib import Path
from typing import Iterable, Mapping
from xml.sax.saxutils import escape

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

WIDTH, HEIGHT = 16, 12


# ------------------------------------------------------------------------------------------
# Pixels and encodings.


def lesion_image(seed: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
  """uint8 HxWx3: a smooth gradient (so resizing is predictable) that differs per seed."""
  y, x = np.mgrid[0:height, 0:width]
  r = (x * 255 // max(width - 1, 1) + seed * 37) % 256
  g = (y * 255 // max(height - 1, 1) + seed * 11) % 256
  b = np.full_like(x, (seed * 53) % 256)
  return np.stack([r, g, b], -1).astype(np.uint8)


def lesion_mask(seed: int, width: int = WIDTH, height: int = HEIGHT,
                value: int = 255) -> np.ndarray:
  """uint8 HxW: an axis-aligned ellipse of `value` on 0, placed by the seed."""
  y, x = np.mgrid[0:height, 0:width]
  cx, cy = 4 + seed % (width - 8), 3 + (seed // 3) % (height - 6)
  inside = ((x - cx) / 4.0) ** 2 + ((y - cy) / 3.0) ** 2 <= 1.0
  return (inside * value).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
  return encode(array, "JPEG", quality=95)


def png_bytes(array: np.ndarray) -> bytes:
  return encode(array, "PNG")


def bmp_bytes(array: np.ndarray) -> bytes:
  return encode(array, "BMP")


def write_files(root: Path, files: Mapping[str, bytes]) -> None:
  for rel, data in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_archive(root: Path, name: str, files: Mapping[str, bytes], *, as_zip: bool,
                  extra_top_level: bool = False, inner_folder: bool = True) -> Path:
  """`root/name.zip`, or the folder `root/name/` that extracting it gives.

  The official zips hold one top-level folder named like the archive (`inner_folder`);
  `extra_top_level` adds one more `name/` level (what `unzip -d name name.zip` gives).
  """
  levels = [name] * (int(extra_top_level) + int(inner_folder))
  if as_zip:
    path = root / f"{name}.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
      for rel, data in files.items():
        z.writestr("/".join(levels + [rel]), data)
    return path
  folder = root / name / (name if extra_top_level else "")
  write_files(folder, files)
  return root / name


# ------------------------------------------------------------------------------------------
# ISIC.

ISIC_RELEASES = ("2016", "2017_train", "2017_val", "2018", "2017_test", "2017_test_csv")
ISIC_NAMES = {  # release -> (images archive, masks archive, labels csv)
    "2016": ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth", None),
    "2017_train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth",
                   "ISIC-2017_Training_Part3_GroundTruth.csv"),
    "2017_val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth",
                 "ISIC-2017_Validation_Part3_GroundTruth.csv"),
    "2018": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth", None),
    "2017_test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth",
                  "ISIC-2017_Test_v2_Part3_GroundTruth.csv"),
}
ISIC_IDS = {  # numeric ids per release; overlaps are the cross-year duplicates.
    "2016": range(0, 6),
    "2017_train": range(3, 13),
    "2017_val": range(13, 16),
    "2018": list(range(10, 22)) + list(range(100, 105)),  # 2018 holds the 2017 test images.
    "2017_test": range(100, 105),
}
# (release, number) whose mask differs from the earlier releases' mask of the same id.
ISIC_CHANGED_MASKS = {("2017_train", 4), ("2018", 11)}
ISIC_LABELS = ("melanoma", "seborrheic_keratosis", "nevus")


def isic_id(number: int) -> str:
  return f"ISIC_{number:07d}"


def isic_label(number: int) -> str:
  return ISIC_LABELS[number % 3]


def isic_mask(release: str, number: int) -> np.ndarray:
  changed = any((r, number) in ISIC_CHANGED_MASKS for r in _releases_up_to(release))
  return lesion_mask(number + (1000 if changed else 0))


def _releases_up_to(release: str) -> list[str]:
  order = ["2016", "2017_train", "2017_val", "2018"]
  return order[:order.index(release) + 1] if release in order else [release]


@dataclasses.dataclass
class IsicFixture:
  root: Path
  pool_ids: list[str]  # train + validation, as the builder must produce
  test_ids: list[str]
  labels: dict[str, str]  # expected label per id
  masks: dict[str, np.ndarray]  # expected stored {0, 1} mask per id (the newest release's)
  images: dict[str, bytes]  # expected stored JPEG bytes per id
  changed_mask_ids: list[str]  # duplicates whose newer mask differs
  same_mask_duplicate_ids: list[str]


def write_isic(root: Path, releases: Iterable[str] = ISIC_RELEASES, *, as_zip: bool = True,
               extra_top_level: bool = False) -> IsicFixture:
  """Writes the chosen ISIC releases; '2017_test_csv' writes only the 2017 test labels CSV."""
  releases = list(releases)
  root.mkdir(parents=True, exist_ok=True)
  csv_rows: dict[str, list[int]] = {}
  newest: dict[int, str] = {}
  seen_in: dict[int, list[str]] = {}
  for release in ISIC_NAMES:
    if release not in releases:
      if release == "2017_test" and "2017_test_csv" in releases:
        csv_rows[ISIC_NAMES[release][2]] = list(ISIC_IDS[release])
      continue
    images_name, masks_name, csv_name = ISIC_NAMES[release]
    mask_suffix = "_Segmentation.png" if release == "2016" else "_segmentation.png"
    images, masks = {}, {}
    for n in ISIC_IDS[release]:
      images[f"{isic_id(n)}.jpg"] = jpeg_bytes(lesion_image(n))
      masks[f"{isic_id(n)}{mask_suffix}"] = png_bytes(isic_mask(release, n))
      if release.startswith("2017") and release != "2017_test":
        # The real 2017 data zips also hold superpixel maps, which are not masks.
        images[f"{isic_id(n)}_superpixels.png"] = png_bytes(lesion_image(n + 7))
      if release != "2017_test":
        newest[n] = release
        seen_in.setdefault(n, []).append(release)
    if release == "2017_train":
      images["ISIC-2017_Training_Data_metadata.csv"] = b"image_id,age_approximate,sex\n"
    if release == "2018":
      images["LICENSE.txt"] = masks["LICENSE.txt"] = b"CC-BY-NC\n"
    write_archive(root, images_name, images, as_zip=as_zip, extra_top_level=extra_top_level)
    write_archive(root, masks_name, masks, as_zip=as_zip, extra_top_level=extra_top_level)
    if csv_name:
      csv_rows[csv_name] = list(ISIC_IDS[release])
  for csv_name, numbers in csv_rows.items():
    lines = ["image_id,melanoma,seborrheic_keratosis"]
    for n in numbers:
      label = isic_label(n)
      lines.append(f"{isic_id(n)},{float(label == 'melanoma')},"
                   f"{float(label == 'seborrheic_keratosis')}")
    (root / csv_name).write_text("\n".join(lines) + "\n")

  labelled = {n for r in ("2017_train", "2017_val") if r in releases for n in ISIC_IDS[r]}
  has_test_ids = "2017_test" in releases or "2017_test_csv" in releases
  test_numbers = sorted(ISIC_IDS["2017_test"]) if has_test_ids else []
  if "2017_test" not in releases:  # the test images then come from the pool that holds them.
    test_numbers = [n for n in test_numbers if n in newest]
  pool = sorted(n for n in newest if n not in ISIC_IDS["2017_test"] or not has_test_ids)
  labels = {isic_id(n): isic_label(n) if n in labelled else "unknown" for n in pool}
  labels.update({isic_id(n): isic_label(n) for n in test_numbers})
  masks = {isic_id(n): (isic_mask(newest[n], n) > 0).astype(np.uint8) for n in pool}
  masks.update({isic_id(n): (lesion_mask(n) > 0).astype(np.uint8) for n in test_numbers})
  changed = sorted(isic_id(n) for r, n in ISIC_CHANGED_MASKS
                   if r in releases and len(seen_in.get(n, [])) > 1
                   and seen_in[n][0] != r)
  same = sorted(isic_id(n) for n, rs in seen_in.items()
                if len(rs) > 1 and isic_id(n) not in changed)
  return IsicFixture(
      root=root, pool_ids=[isic_id(n) for n in pool], test_ids=[isic_id(n) for n in test_numbers],
      labels=labels, masks=masks,
      images={isic_id(n): jpeg_bytes(lesion_image(n)) for n in pool + test_numbers},
      changed_mask_ids=changed, same_mask_duplicate_ids=same)


# ------------------------------------------------------------------------------------------
# PH2.

PH2_LABELS = ("common_nevus", "atypical_nevus", "melanoma")
PH2_IMAGES = "PH2Dataset/PH2 Dataset images"


def minimal_xlsx(rows: list[list[str]]) -> bytes:
  """A valid one-sheet .xlsx with shared strings (what Excel writes), from rows of texts."""
  strings: list[str] = []
  index: dict[str, int] = {}
  sheet_rows = []
  for r, row in enumerate(rows, start=1):
    cells = []
    for c, text in enumerate(row):
      if text == "":
        continue
      ref = f"{chr(ord('A') + c)}{r}"
      if text.isdigit():
        cells.append(f'<c r="{ref}"><v>{text}</v></c>')
        continue
      if text not in index:
        index[text] = len(strings)
        strings.append(text)
      cells.append(f'<c r="{ref}" t="s"><v>{index[text]}</v></c>')
    sheet_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
  main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
  rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
  parts = {
      "[Content_Types].xml":
          '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
          'package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/>'
          '</Types>',
      "xl/workbook.xml":
          f'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="{main}" xmlns:r="{rel}">'
          '<sheets><sheet name="Folha1" sheetId="2" r:id="rId1"/></sheets></workbook>',
      "xl/_rels/workbook.xml.rels":
          '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
          'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" '
          f'Type="{rel}/worksheet" Target="worksheets/sheet1.xml"/></Relationships>',
      "xl/sharedStrings.xml":
          f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{main}">'
          + "".join(f"<si><t>{escape(s)}</t></si>" for s in strings) + "</sst>",
      "xl/worksheets/sheet1.xml":
          f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{main}"><sheetData>'
          + "".join(sheet_rows) + "</sheetData></worksheet>",
  }
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as z:
    for name, text in parts.items():
      z.writestr(name, text)
  return buffer.getvalue()


def ph2_xlsx(diagnoses: Mapping[str, str]) -> bytes:
  """The PH2 spreadsheet's shape: a legend above a header row, an 'X' per clinical diagnosis."""
  rows = [[], ["", "", "", "", "", "Legends"], ["", "", "Clinical Diagnosis"],
          ["Image Name", "Histological Diagnosis", "Common Nevus", "Atypical Nevus", "Melanoma",
           "Asymmetry\n(0/1/2)"]]
  for image_id, label in diagnoses.items():
    marks = ["X" if label == name else "" for name in PH2_LABELS]
    rows.append([image_id, ""] + marks + ["0"])
  return minimal_xlsx(rows)


def ph2_txt(diagnoses: Mapping[str, str]) -> bytes:
  """The PH2 .txt table: '||'-separated, clinical diagnosis coded 0/1/2."""
  lines = ["||   Name   || Histological Diagnosis || Clinical Diagnosis || Asymmetry || Colors ||"]
  for image_id, label in diagnoses.items():
    lines.append(f"||  {image_id}  ||                        ||        "
                 f"{PH2_LABELS.index(label)}           ||     0     ||  4  ||")
  return ("\n".join(lines) + "\n").encode()


@dataclasses.dataclass
class Ph2Fixture:
  root: Path
  diagnoses: dict[str, str]


def ph2_files(images: Mapping[str, np.ndarray],
              masks: Mapping[str, np.ndarray]) -> dict[str, bytes]:
  """The official PH2 tree of BMPs (plus a colour-class mask, which is not the lesion mask)."""
  files = {}
  for image_id, image in images.items():
    folder = f"{PH2_IMAGES}/{image_id}"
    files[f"{folder}/{image_id}_Dermoscopic_Image/{image_id}.bmp"] = bmp_bytes(image)
    files[f"{folder}/{image_id}_lesion/{image_id}_lesion.bmp"] = bmp_bytes(masks[image_id])
    files[f"{folder}/{image_id}_roi/{image_id}_R1_Label4.bmp"] = bmp_bytes(masks[image_id] // 2)
  return files


def write_ph2(root: Path, counts: tuple[int, int, int] = (10, 10, 5), *, table: str = "xlsx",
              as_zip: bool = False) -> Ph2Fixture:
  """PH2 with `counts` images of common nevus, atypical nevus and melanoma."""
  diagnoses = {}
  number = 2
  for label, count in zip(PH2_LABELS, counts):
    for _ in range(count):
      diagnoses[f"IMD{number:03d}"] = label
      number += 1
  seeds = {image_id: int(image_id[3:]) for image_id in diagnoses}
  files = ph2_files({i: lesion_image(s) for i, s in seeds.items()},
                    {i: lesion_mask(s) for i, s in seeds.items()})
  files[f"PH2Dataset/PH2_dataset.{table}"] = (
      ph2_xlsx(diagnoses) if table == "xlsx" else ph2_txt(diagnoses))
  files["PH2Dataset/Readme.txt"] = b"PH2 readme\n"
  if as_zip:
    write_archive(root, "PH2Dataset", {k[len("PH2Dataset/"):]: v for k, v in files.items()},
                  as_zip=True)
  else:
    write_files(root, files)
  return Ph2Fixture(root=root, diagnoses=diagnoses)


# The flattened PH2 copy of the shared data: images/IMDxxx.jpg, masks/IMDxxx_lesion.png (0/255),
# PH2_dataset.xlsx and metadata.csv side by side.


@dataclasses.dataclass
class Ph2FlatFixture(Ph2Fixture):
  images: dict[str, np.ndarray]  # the JPEGs' decoded pixels: what a build from them stores
  masks: dict[str, np.ndarray]  # {0, 1}


def ph2_diagnoses(counts: tuple[int, int, int]) -> dict[str, str]:
  """IMD002, IMD003, ...: `counts` of common nevus, atypical nevus and melanoma, in that order."""
  labels = [label for label, count in zip(PH2_LABELS, counts) for _ in range(count)]
  return {f"IMD{n:03d}": label for n, label in enumerate(labels, start=2)}


def ph2_metadata_csv(diagnoses: Mapping[str, str]) -> bytes:
  """The shared copy's metadata.csv: the spreadsheet flattened, label names spelled out."""
  lines = ["image_id,clinical_diagnosis,histological_diagnosis,asymmetry,colors"]
  lines += [f"{i},{label},,0,dark_brown" for i, label in diagnoses.items()]
  return ("\n".join(lines) + "\n").encode()


def write_ph2_flat(root: Path, counts: tuple[int, int, int] = (10, 10, 5), *,
                   tables: Iterable[str] = ("xlsx", "csv")) -> Ph2FlatFixture:
  """The flattened PH2 copy; `tables` picks which of PH2_dataset.xlsx and metadata.csv exist."""
  diagnoses = ph2_diagnoses(counts)
  files, images, masks = {}, {}, {}
  for image_id in diagnoses:
    seed = int(image_id[3:])
    jpeg = jpeg_bytes(lesion_image(seed))
    files[f"images/{image_id}.jpg"] = jpeg
    files[f"masks/{image_id}_lesion.png"] = png_bytes(lesion_mask(seed))
    images[image_id] = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    masks[image_id] = (lesion_mask(seed) > 0).astype(np.uint8)
  if "xlsx" in tables:
    files["PH2_dataset.xlsx"] = ph2_xlsx(diagnoses)
  if "csv" in tables:
    files["metadata.csv"] = ph2_metadata_csv(diagnoses)
  files["Readme.txt"] = b"PH2 readme\n"
  write_files(root, files)
  return Ph2FlatFixture(root=root, diagnoses=diagnoses, images=images, masks=masks)


def write_ph2_release_of(root: Path, flat: Ph2FlatFixture) -> Ph2Fixture:
  """The official release tree holding the flat copy's pixels as BMPs (so stored images match
  exactly), as one would rebuild it from the shared copy."""
  files = ph2_files(flat.images, {i: m * 255 for i, m in flat.masks.items()})
  files["PH2Dataset/PH2_dataset.xlsx"] = ph2_xlsx(flat.diagnoses)
  files["PH2Dataset/Readme.txt"] = b"PH2 readme\n"
  write_files(root, files)
  return Ph2Fixture(root=root, diagnoses=dict(flat.diagnoses))


# ------------------------------------------------------------------------------------------
# Dermofit.

DERMOFIT_COUNTS = {"AK": 3, "BCC": 6, "DF": 2, "IEC": 3, "MEL": 4, "ML": 8, "PYO": 2, "SCC": 3,
                   "SK": 7, "VASC": 2}


@dataclasses.dataclass
class DermofitFixture:
  root: Path
  labels: dict[str, str]


def write_dermofit(root: Path, counts: Mapping[str, int] = DERMOFIT_COUNTS, *,
                   as_zip: bool = False) -> DermofitFixture:
  """Class folders of per-lesion folders (`AK/A1/A1.png`, `AK/A1/A1mask.png`) under a release
  folder; `as_zip` writes one zip per class instead (`AK.zip` holding `A1/A1.png`, ...)."""
  labels = {}
  number = 1
  for cls, count in counts.items():
    files = {}
    for _ in range(count):
      image_id = f"{cls[0]}{number}"
      labels[image_id] = cls
      files[f"{image_id}/{image_id}.png"] = png_bytes(lesion_image(number))
      files[f"{image_id}/{image_id}mask.png"] = png_bytes(lesion_mask(number))
      number += 1
    files["notes.txt"] = b"lesion notes\n"
    write_archive(root / "Dermofit_release", cls, files, as_zip=as_zip, inner_folder=False)
  return DermofitFixture(root=root, labels=labels)


# ------------------------------------------------------------------------------------------
# SMARTSKINS.


@dataclasses.dataclass
class SmartskinsFixture:
  root: Path
  ids: list[str]
  masks: dict[str, np.ndarray]  # expected {0, 1} masks


def write_smartskins(root: Path, count: int = 80, *, as_zip: bool = False) -> SmartskinsFixture:
  """`smartskins/images/ss_NN.jpg` + `smartskins/masks/ss_NN.png`; a few masks are RGB or grey
  (0/128) to check that any value > 0 counts as lesion."""
  files, masks = {}, {}
  for n in range(count):
    image_id = f"ss_{n:02d}"
    mask = lesion_mask(n, value=128 if n % 5 == 1 else 255)
    masks[image_id] = (mask > 0).astype(np.uint8)
    stored = np.stack([mask, np.zeros_like(mask), np.zeros_like(mask)], -1) if n % 5 == 2 else mask
    files[f"images/{image_id}.jpg"] = jpeg_bytes(lesion_image(n))
    files[f"masks/{image_id}.png"] = png_bytes(stored)
  write_archive(root, "smartskins", files, as_zip=as_zip, inner_folder=True)
  return SmartskinsFixture(root=root, ids=sorted(masks), masks=masks)


# ------------------------------------------------------------------------------------------
# Waterloo (Skin Cancer Detection).

WATERLOO_ZIPS = {  # class folder -> (zip stem, its top-level folder)
    "melanoma": ("skin_image_data_set-1", "Skin Image Data Set-1"),
    "notmelanoma": ("skin_image_data_set-2", "Skin Image Data Set-2"),
}


@dataclasses.dataclass(frozen=True)
class WaterlooPair:
  """One photograph and its mask; `atlas` as the release spells the folder."""
  class_folder: str  # "melanoma" or "notmelanoma"
  atlas: str  # "dermIS", "dermis" or "dermquest"
  photo_id: str
  size: tuple[int, int] = (WIDTH, HEIGHT)  # (W, H)
  one_bit: bool = True  # mode "1" PNG mask; else 8-bit 0/255

  @property
  def image_id(self) -> str:
    return f"{self.atlas.lower()}/{self.photo_id}"


# Both atlases hold SSM1 (two different photographs); SSM1_2, D8_2 and D10_1 are second
# photographs of lesions SSM1, D8 and D10; sizes and mask depths vary.
WATERLOO_PAIRS = (
    WaterlooPair("melanoma", "dermIS", "SSM1"),
    WaterlooPair("melanoma", "dermIS", "SSM3", one_bit=False),
    WaterlooPair("melanoma", "dermIS", "NM2", size=(12, 16)),
    WaterlooPair("melanoma", "dermquest", "SSM1"),
    WaterlooPair("melanoma", "dermquest", "SSM1_2", one_bit=False),
    WaterlooPair("melanoma", "dermquest", "LMM8", size=(20, 14)),
    WaterlooPair("notmelanoma", "dermis", "10"),
    WaterlooPair("notmelanoma", "dermis", "11", one_bit=False),
    WaterlooPair("notmelanoma", "dermquest", "D8"),
    WaterlooPair("notmelanoma", "dermquest", "D8_2", size=(14, 20)),
    WaterlooPair("notmelanoma", "dermquest", "D10"),
    WaterlooPair("notmelanoma", "dermquest", "D10_1", one_bit=False),
)


@dataclasses.dataclass
class WaterlooFixture:
  root: Path
  labels: dict[str, str]  # image_id -> "melanoma" / "not_melanoma"
  masks: dict[str, np.ndarray]  # image_id -> expected stored {0, 1} mask


def waterloo_mask_png(mask: np.ndarray, one_bit: bool) -> bytes:
  """A 1-bit PNG (PIL mode "1") or an 8-bit one holding 0/255."""
  return png_bytes(mask > 0) if one_bit else png_bytes(((mask > 0) * 255).astype(np.uint8))


def waterloo_files(pairs: Iterable[WaterlooPair]) -> dict[str, dict[str, bytes]]:
  """{class folder: {path below the zip's top-level folder: bytes}}, with the junk files the
  release holds (Thumbs.db, .DS_Store)."""
  files: dict[str, dict[str, bytes]] = {c: {} for c in WATERLOO_ZIPS}
  for seed, pair in enumerate(pairs, start=1):
    folder = f"skin_data/{pair.class_folder}/{pair.atlas}"
    mask = lesion_mask(seed, *pair.size)
    files[pair.class_folder][f"{folder}/{pair.photo_id}_orig.jpg"] = jpeg_bytes(
        lesion_image(seed, *pair.size))
    files[pair.class_folder][f"{folder}/{pair.photo_id}_contour.png"] = waterloo_mask_png(
        mask, pair.one_bit)
    files[pair.class_folder][f"{folder}/Thumbs.db"] = b"\xd0\xcf\x11\xe0 thumbnails"
    files[pair.class_folder][f"skin_data/{pair.class_folder}/.DS_Store"] = b"\x00\x00\x00\x01Bud1"
  return files


def write_waterloo(root: Path, pairs: Iterable[WaterlooPair] = WATERLOO_PAIRS, *,
                   as_zip: bool = True, swap_case: bool = False,
                   edit: Mapping[str, bytes | None] | None = None) -> WaterlooFixture:
  """The two official zips, or the folders `unzip` makes of them (`Skin Image Data Set-1/`).

  `swap_case` swaps the case of the class and atlas folders (`MELANOMA/DERMis/`). `edit` maps
  a file name (`SSM3_contour.png`) to new bytes, or to None to leave that file out.
  """
  pairs = list(pairs)
  for class_folder, files in waterloo_files(pairs).items():
    stem, top = WATERLOO_ZIPS[class_folder]
    files = _edited(files, edit or {})
    if swap_case:
      files = {_swap_folder_case(path): data for path, data in files.items()}
    if as_zip:
      root.mkdir(parents=True, exist_ok=True)
      with zipfile.ZipFile(root / f"{stem}.zip", "w") as z:
        for rel, data in files.items():
          z.writestr(f"{top}/{rel}", data)
        z.writestr(f"__MACOSX/{top}/._skin_data", b"\x00\x05\x16\x07")  # macOS zip residue
    else:
      write_files(root / top, files)
  return WaterlooFixture(
      root=root,
      labels={p.image_id: "melanoma" if p.class_folder == "melanoma" else "not_melanoma"
              for p in pairs},
      masks={p.image_id: (lesion_mask(seed, *p.size) > 0).astype(np.uint8)
             for seed, p in enumerate(pairs, start=1)})


def _edited(files: Mapping[str, bytes], edit: Mapping[str, bytes | None]) -> dict[str, bytes]:
  out = {}
  for path, data in files.items():
    name = path.rsplit("/", 1)[-1]
    if name in edit and edit[name] is None:
      continue
    out[path] = edit.get(name, data)
  return out


def _swap_folder_case(path: str) -> str:
  """`skin_data/melanoma/dermIS/x.jpg` -> `skin_data/MELANOMA/DERMis/x.jpg`."""
  parts = path.split("/")
  return "/".join([parts[0]] + [p.swapcase() for p in parts[1:-1]] + parts[-1:])


# ------------------------------------------------------------------------------------------
# Building and reading back.


def build(builder_cls, manual_dir: Path, data_dir: Path, **kwargs):
  """Prepares `builder_cls` from `manual_dir` into `data_dir` (array_record, no TensorFlow)."""
  builder = builder_cls(data_dir=str(data_dir), file_format="array_record", **kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def read_split(builder, split: str) -> dict[str, dict]:
  """{image_id: decoded example} of one split."""
  if split not in builder.info.splits:
    return {}
  source = builder.as_data_source(split)
  examples = [source[i] for i in range(len(source))]
  return {ex["image_id"].decode(): ex for ex in examples}


@contextlib.contextmanager
def captured_logs():
  """Messages logged by lesion_jax while the block runs (module fixtures cannot use caplog)."""
  records: list[str] = []

  class Collect(logging.Handler):
    def emit(self, record):
      records.append(record.getMessage())

  handler, log = Collect(level=logging.INFO), logging.getLogger("lesion_jax")
  saved = log.level
  log.addHandler(handler)
  log.setLevel(logging.INFO)
  try:
    yield records
  finally:
    log.removeHandler(handler)
    log.setLevel(saved)
