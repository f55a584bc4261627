"""`ph2`: the PH2 dermoscopic database, 200 images (paper 2.1, Table 1: 160 train/val, 40 test).

Layout of the official release (`PH2Dataset.rar`, extracted; a zip of it also works):
`PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp`, the lesion mask
`.../IMDxxx_lesion/IMDxxx_lesion.bmp`, and the diagnoses in `PH2Dataset/PH2_dataset.xlsx` (or
`PH2_dataset.txt`). The split is 80/20, stratified by clinical diagnosis (80 common nevus,
80 atypical nevus, 40 melanoma), and validation is 10% of the train/val part.

A flattened copy is read as well: `images/IMDxxx.jpg` (any image format), `masks/IMDxxx_lesion.png`
and `PH2_dataset.xlsx` (or `.txt`, or a `metadata.csv` with `image_id,clinical_diagnosis`) next
to them. The layout is detected from the folder names; where both are present the release tree
wins. The split depends only on the image ids and their diagnoses, so both layouts of one
database give the same split.

The xlsx is read with zipfile and ElementTree (an xlsx is a zip of XML), so no spreadsheet
library is needed.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import logging
import posixpath
import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree

from lesion_jax.data.builders import common

logger = logging.getLogger(__name__)

LABEL_NAMES = ("common_nevus", "atypical_nevus", "melanoma")
_IMAGE = re.compile(r"^(IMD\d+)\.bmp$", re.IGNORECASE)
_MASK = re.compile(r"^(IMD\d+)_lesion\.bmp$", re.IGNORECASE)
_ID = re.compile(r"^IMD\d+$", re.IGNORECASE)
_XLSX, _TXT = "PH2_dataset.xlsx", "PH2_dataset.txt"
# The flattened copy: images/IMDxxx.jpg and masks/IMDxxx_lesion.png, in any image format.
_FLAT_FOLDERS = ("images", "masks")
_FLAT_IMAGE = re.compile(r"^(IMD\d+)\.(jpe?g|png|bmp|tiff?)$", re.IGNORECASE)
_FLAT_MASK = re.compile(r"^(IMD\d+)_lesion\.(png|bmp|gif|tiff?)$", re.IGNORECASE)
_CSV = "metadata.csv"
# Diagnosis tables by preference: the original spreadsheet, its text export, the flattened csv.
_TABLES = (_XLSX.lower(), _TXT.lower(), _CSV)
# Spreadsheet column headers -> labels; the .txt codes the same classes as 0/1/2.
_XLSX_COLUMNS = {"common nevus": "common_nevus", "atypical nevus": "atypical_nevus",
                 "melanoma": "melanoma"}
_TXT_CODES = {"0": "common_nevus", "1": "atypical_nevus", "2": "melanoma"}

_INSTRUCTIONS = """\
Request PH2 from https://www.fc.up.pt/addi/ph2%20database.html (free for research). Extract
`PH2Dataset.rar` (e.g. `unrar x PH2Dataset.rar` or `7z x PH2Dataset.rar`) into the manual
directory (`--manual_dir`, or `<manual_dir>/ph2/`), or put a zip of the `PH2Dataset` folder there:

  PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp
  PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp
  PH2Dataset/PH2_dataset.xlsx   (or PH2_dataset.txt: the clinical diagnoses)

A flattened copy also works (the same split; the release tree wins if both are there):

  images/IMDxxx.jpg  masks/IMDxxx_lesion.png  PH2_dataset.xlsx  (or metadata.csv)
"""

_NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
_REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"


def _column_index(cell_ref: str) -> int:
  """'A1' -> 0, 'AB12' -> 27."""
  index = 0
  for ch in re.match(r"[A-Z]+", cell_ref).group(0):
    index = index * 26 + ord(ch) - ord("A") + 1
  return index - 1


def read_xlsx_rows(data: bytes) -> list[list[str]]:
  """The cell texts of the first worksheet of an .xlsx file, row by row ('' for empty cells)."""
  with zipfile.ZipFile(io.BytesIO(data)) as book:
    names = set(book.namelist())
    shared = []
    if "xl/sharedStrings.xml" in names:
      for item in ElementTree.fromstring(book.read("xl/sharedStrings.xml")).findall("m:si", _NS):
        shared.append("".join(t.text or "" for t in item.iter(f"{{{_NS['m']}}}t")))
    sheet = _first_sheet_path(book, names)
    rows = []
    for row in ElementTree.fromstring(book.read(sheet)).iter(f"{{{_NS['m']}}}row"):
      cells: dict[int, str] = {}
      for cell in row.findall("m:c", _NS):
        kind, value = cell.get("t"), cell.find("m:v", _NS)
        if kind == "inlineStr":
          text = "".join(t.text or "" for t in cell.iter(f"{{{_NS['m']}}}t"))
        elif value is None or value.text is None:
          text = ""
        elif kind == "s":
          text = shared[int(value.text)]
        else:
          text = value.text
        cells[_column_index(cell.get("r"))] = text
      rows.append([cells.get(i, "") for i in range(max(cells, default=-1) + 1)])
    return rows


def _first_sheet_path(book: zipfile.ZipFile, names: set[str]) -> str:
  """The first sheet in workbook order (sheet1.xml is not always the first)."""
  try:
    workbook = ElementTree.fromstring(book.read("xl/workbook.xml"))
    rel_id = workbook.find("m:sheets/m:sheet", _NS).get(f"{{{_REL_NS}}}id")
    rels = ElementTree.fromstring(book.read("xl/_rels/workbook.xml.rels"))
    for rel in rels:
      if rel.get("Id") == rel_id:
        target = rel.get("Target").lstrip("/")
        return target if target.startswith("xl/") else posixpath.join("xl", target)
  except (KeyError, AttributeError, ElementTree.ParseError):
    pass
  sheets = sorted(n for n in names if re.match(r"xl/worksheets/sheet\d+\.xml$", n))
  if not sheets:
    raise ValueError("no worksheet in the xlsx file")
  return sheets[0]


def diagnoses_from_xlsx(data: bytes, location: str, problems: common.Problems) -> dict[str, str]:
  """{IMDxxx: label}: the row's 'X' under Common Nevus, Atypical Nevus or Melanoma."""
  try:
    rows = read_xlsx_rows(data)
  except (zipfile.BadZipFile, ElementTree.ParseError, ValueError, KeyError) as e:
    problems.add(location, f"unreadable spreadsheet ({e})")
    return {}
  header_at = next((n for n, row in enumerate(rows)
                    if {c.strip().lower() for c in row} >= set(_XLSX_COLUMNS)), None)
  if header_at is None:
    problems.add(location, "no header row with the columns Common Nevus, Atypical Nevus, Melanoma")
    return {}
  header = [c.strip().lower() for c in rows[header_at]]
  columns = {header.index(name): label for name, label in _XLSX_COLUMNS.items()}
  diagnoses = {}
  for n, row in enumerate(rows[header_at + 1:], start=header_at + 2):
    image_id = next((c.strip() for c in row if _ID.match(c.strip())), None)
    if image_id is None:
      continue
    marked = [label for col, label in columns.items() if col < len(row) and row[col].strip()]
    if len(marked) != 1:
      problems.add(f"{location} ({image_id})", f"expected exactly one clinical diagnosis marked, "
                   f"found {marked or 'none'}")
      continue
    diagnoses[image_id] = marked[0]
  return diagnoses


def diagnoses_from_txt(data: bytes, location: str, problems: common.Problems) -> dict[str, str]:
  """{IMDxxx: label} from the '||'-separated table; Clinical Diagnosis is coded 0/1/2."""
  column = 3  # `|| Name || Histological Diagnosis || Clinical Diagnosis || ...`
  diagnoses = {}
  for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
    fields = [f.strip() for f in line.split("||")]
    if "Clinical Diagnosis" in fields:
      column = fields.index("Clinical Diagnosis")
      continue
    if len(fields) <= column or not _ID.match(fields[1] if len(fields) > 1 else ""):
      continue
    code = fields[column]
    if code not in _TXT_CODES:
      problems.add(f"{location} line {n}", f"clinical diagnosis {code!r} of {fields[1]} is not "
                   "0, 1 or 2")
      continue
    diagnoses[fields[1]] = _TXT_CODES[code]
  return diagnoses


def diagnoses_from_csv(data: bytes, location: str, problems: common.Problems) -> dict[str, str]:
  """{IMDxxx: label} from a csv with `image_id` and `clinical_diagnosis` (label names)."""
  try:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig", errors="replace")))
    rows = list(reader)
  except csv.Error as e:
    problems.add(location, f"unreadable csv ({e})")
    return {}
  if not {"image_id", "clinical_diagnosis"} <= set(reader.fieldnames or ()):
    problems.add(location, "expected the columns image_id and clinical_diagnosis, found "
                 f"{reader.fieldnames}")
    return {}
  diagnoses = {}
  for n, row in enumerate(rows, start=2):
    image_id = (row["image_id"] or "").strip()
    label = (row["clinical_diagnosis"] or "").strip().lower().replace(" ", "_")
    if not _ID.match(image_id):
      continue
    if label not in LABEL_NAMES:
      problems.add(f"{location} line {n}", f"clinical diagnosis {label!r} of {image_id} is not "
                   f"one of {', '.join(LABEL_NAMES)}")
      continue
    diagnoses[image_id] = label
  return diagnoses


_READERS = {_XLSX.lower(): diagnoses_from_xlsx, _TXT.lower(): diagnoses_from_txt,
            _CSV: diagnoses_from_csv}


@dataclasses.dataclass
class _Layout:
  """The image and mask files of one layout, and where a user would have put the missing one."""
  name: str
  mask_hint: str  # formatted with the image id
  image_hint: str
  images: list[tuple[str, common.SourceFile]] = dataclasses.field(default_factory=list)
  masks: list[tuple[str, common.SourceFile]] = dataclasses.field(default_factory=list)

  def __bool__(self) -> bool:
    return bool(self.images or self.masks)

  def anchor(self) -> tuple[str, ...]:
    """The folders of its first file: the diagnosis table belongs to one of their ancestors."""
    return min(self.images or self.masks, key=lambda pair: pair[1].path)[1].folders


def _scan(files: list[common.SourceFile]) -> tuple[_Layout, _Layout, list[common.SourceFile]]:
  """(release, flattened, diagnosis tables). A file in a folder `images/` or `masks/` belongs to
  the flattened copy; any other IMDxxx.bmp is the release's, whatever its depth."""
  release = _Layout("release tree", "{0}_lesion/{0}_lesion.bmp", "{0}_Dermoscopic_Image/{0}.bmp")
  flat = _Layout("flattened copy", "masks/{0}_lesion.png", "images/{0}.jpg")
  tables = []
  for f in files:
    in_flat = bool(f.folders) and f.folders[-1].lower() in _FLAT_FOLDERS
    image, mask = (_FLAT_IMAGE, _FLAT_MASK) if in_flat else (_IMAGE, _MASK)
    layout = flat if in_flat else release
    if match := mask.match(f.name):
      layout.masks.append((match.group(1).upper(), f))
    elif match := image.match(f.name):
      layout.images.append((match.group(1).upper(), f))
    elif f.name.lower() in _TABLES:
      tables.append(f)
  return release, flat, tables


def _pick_table(tables: list[common.SourceFile], layout: _Layout) -> common.SourceFile | None:
  """The nearest table above the layout's files (so that a release tree unpacked inside a
  flattened copy reads its own spreadsheet); else any, the original spreadsheet first."""
  anchor = layout.anchor()
  above = [t for t in tables if anchor[:len(t.folders)] == t.folders]
  if above:
    return min(above, key=lambda t: (-len(t.folders), _TABLES.index(t.name.lower()), t.path))
  return min(tables, key=lambda t: (_TABLES.index(t.name.lower()), len(t.folders), t.path),
             default=None)


class Ph2(common.LesionBuilder):
  """PH2 (tfds name `ph2`): 200 dermoscopic images, 80/20 split stratified by diagnosis."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  LABEL_NAMES = LABEL_NAMES
  DOMAIN = "dermoscopic"
  TEST_FRACTION = 0.2  # Table 1: 160 / 40.
  DESCRIPTION = "PH2: 200 dermoscopic images of melanocytic lesions with lesion masks."
  HOMEPAGE = "https://www.fc.up.pt/addi/ph2%20database.html"
  CITATION = """\
@inproceedings{mendonca2013ph2,
  title={PH2 - A dermoscopic image database for research and benchmarking},
  author={Mendon{\\c{c}}a, Teresa and Ferreira, Pedro M and Marques, Jorge S and
          Marcal, Andr{\\'e} RS and Rozeira, Jorge}, booktitle={EMBC}, year={2013}}"""

  def _find_records(self, manual_dir: Path, problems: common.Problems) -> list[common.LesionRecord]:
    release, flat, tables = _scan(common.list_folder(manual_dir, expand_zips=True))
    layout = self._choose_layout(manual_dir, release, flat)
    table = _pick_table(tables, layout)
    if table is None:
      raise self._missing(manual_dir, [
          f"PH2Dataset/{_XLSX} (or PH2Dataset/{_TXT})" if layout is release
          else f"{_XLSX} (or {_TXT}, or {_CSV} with image_id,clinical_diagnosis) next to images/"])
    logger.info("%s: reading the %s (%d images) with the diagnoses of %s", self.name,
                layout.name, len(layout.images), table.location)
    read = _READERS[table.name.lower()]
    diagnoses = {k.upper(): v for k, v in read(table.read(), table.location, problems).items()}

    images = common.index_by_id(layout.images, problems, "image")
    masks = common.index_by_id(layout.masks, problems, "mask")
    ids = common.pair_files(images, masks, problems, mask_hint=layout.mask_hint.format,
                            image_hint=layout.image_hint.format)
    for image_id in sorted(set(ids) - set(diagnoses)):
      problems.add(images[image_id].location, f"{image_id} has no clinical diagnosis in "
                   f"{table.location}")
    for image_id in sorted(set(diagnoses) - set(images) - set(masks)):
      problems.add(table.location, f"{image_id} is listed but has neither image nor mask")
    return [common.LesionRecord(i, images[i], masks[i], diagnoses[i])
            for i in ids if i in diagnoses]

  def _choose_layout(self, manual_dir: Path, release: _Layout, flat: _Layout) -> _Layout:
    """The release tree if there is one (it is the original; the flattened copy re-encodes)."""
    if not release and not flat:
      raise self._missing(manual_dir, [
          "PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp "
          "(extract PH2Dataset.rar)",
          "or the flattened copy: images/IMDxxx.jpg and masks/IMDxxx_lesion.png"])
    if release and flat:
      logger.warning("%s: %s holds both the release tree (%d images) and a flattened copy "
                     "(%d images in images/, e.g. %s); reading the release tree only",
                     self.name, manual_dir, len(release.images), len(flat.images),
                     (flat.images or flat.masks)[0][1].location)
    return release if release else flat
