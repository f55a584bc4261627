"""`smartskins`: SMARTSKINS, 80 smartphone images of nevi (paper 2.1, Table 1: 39 / 41).

SMARTSKINS (Fraunhofer AICOS) has no public release layout, so the builder reads a documented
generic one: a folder (or zip) named `smartskins` holding `images/` and `masks/`, paired by file
stem (`images/x.jpg` <-> `masks/x.png`). The paper splits it 50/50 without classes; the test
fraction 41/80 reproduces its exact 39 train/val and 41 test images.
"""
from __future__ import annotations

import collections
import logging
from pathlib import Path

from lesion_jax.data.builders import common

logger = logging.getLogger(__name__)

ARCHIVE = "smartskins"

_INSTRUCTIONS = """\
SMARTSKINS is available from Fraunhofer AICOS on request (https://www.aicos.fraunhofer.pt).
It has no official layout; arrange it as a folder (or a zip of that folder) named `smartskins`
in the manual directory (`--manual_dir`, or `<manual_dir>/smartskins/`):

  smartskins/images/<name>.jpg   (or .png, .bmp, .tif)
  smartskins/masks/<name>.png    (the same <name>; 0 = skin, > 0 = lesion; grey or RGB)

Every image needs a mask with the same file stem and vice versa. A manual directory that holds
`images/` and `masks/` directly also works.
"""


class Smartskins(common.LesionBuilder):
  """SMARTSKINS (tfds name `smartskins`): 80 smartphone images, 39 train/val and 41 test."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  LABEL_NAMES = ("unknown",)
  DOMAIN = "macroscopic"
  TEST_FRACTION = 41 / 80  # Table 1: 39 / 41, the paper's "50/50".
  STRATIFY = False
  DESCRIPTION = "SMARTSKINS: 80 macroscopic smartphone images of nevi with lesion masks."
  HOMEPAGE = "https://www.aicos.fraunhofer.pt"
  CITATION = ""  # no public citation entry; cite the reference given with the data.

  def _find_records(self, manual_dir: Path, problems: common.Problems) -> list[common.LesionRecord]:
    archive = common.find_archive(manual_dir, ARCHIVE)
    root = archive if archive is not None else manual_dir
    # Group by parent folder: the release is the folder holding both images/ and masks/.
    by_parent: dict[str, dict[str, list[common.SourceFile]]] = collections.defaultdict(
        lambda: collections.defaultdict(list))
    for f in common.open_archive(root) if archive else common.list_folder(root):
      if len(f.folders) >= 1 and f.folders[-1].lower() in ("images", "masks"):
        by_parent["/".join(f.folders[:-1])][f.folders[-1].lower()].append(f)
    candidates = sorted(p for p, kinds in by_parent.items() if {"images", "masks"} <= set(kinds))
    if not candidates:
      raise self._missing(manual_dir, [f"{ARCHIVE}/images/ and {ARCHIVE}/masks/ "
                                       f"(or {ARCHIVE}.zip holding them)"])
    if len(candidates) > 1:
      raise common.SourceFileError(
          f"smartskins: several images/ + masks/ folder pairs under {root}: "
          f"{', '.join(c or '.' for c in candidates)}; keep only the SMARTSKINS one")
    files = by_parent[candidates[0]]
    ignored = [f.location for kind in ("images", "masks") for f in files[kind]
               if f.suffix not in common.IMAGE_SUFFIXES]
    if ignored:
      logger.warning("smartskins: ignored %d files that are not images: %s", len(ignored),
                     ", ".join(ignored))
    images = common.index_by_id(((f.stem, f) for f in files["images"]
                                 if f.suffix in common.IMAGE_SUFFIXES), problems, "image")
    masks = common.index_by_id(((f.stem, f) for f in files["masks"]
                                if f.suffix in common.IMAGE_SUFFIXES), problems, "mask")
    ids = common.pair_files(images, masks, problems,
                            mask_hint=lambda i: f"masks/{i}.<png|jpg|bmp|tif>",
                            image_hint=lambda i: f"images/{i}.<jpg|png|bmp|tif>")
    return [common.LesionRecord(i, images[i], masks[i], "unknown") for i in ids]
