"""`dermofit`: the Dermofit Image Library, 1300 macroscopic images (paper 2.1, Table 1).

The release (licensed by the University of Edinburgh) has ten class folders, AK, BCC, DF, IEC,
MEL, ML, PYO, SCC, SK and VASC, holding one folder per lesion with an image and its mask, e.g.
`A12.png` and `A12mask.png`. The builder finds the class folders at any depth (zips or
extracted folders), takes the class from the nearest class-named ancestor folder, and pairs
`<id>.<ext>` with `<id>mask.<ext>` strictly: every unpaired file is an error.

The split is 80/20 stratified by class with Table 1's exact sizes (1036 / 264 of 1300), and
validation is 10% of the train/val part.
"""
from __future__ import annotations

import logging
from pathlib import Path

from lesion_jax.data.builders import common

logger = logging.getLogger(__name__)

# Actinic keratosis, basal cell carcinoma, dermatofibroma, intraepithelial carcinoma, melanoma,
# melanocytic nevus (mole), pyogenic granuloma, squamous cell carcinoma, seborrhoeic keratosis,
# vascular lesion: the release's folder names, used as label names unchanged.
LABEL_NAMES = ("AK", "BCC", "DF", "IEC", "MEL", "ML", "PYO", "SCC", "SK", "VASC")
_MASK_SUFFIX = "mask"

_INSTRUCTIONS = """\
Obtain the Dermofit Image Library from the University of Edinburgh
(https://licensing.edinburgh-innovations.ed.ac.uk/product/dermofit-image-library). Put the
release, zipped or extracted, in the manual directory (`--manual_dir`, or
`<manual_dir>/dermofit/`). The builder needs the ten class folders, at any depth:

  AK/ BCC/ DF/ IEC/ MEL/ ML/ PYO/ SCC/ SK/ VASC/
    <lesion folder>/<id>.png and <id>mask.png      e.g. AK/A12/A12.png, AK/A12/A12mask.png

A class zip (e.g. AK.zip) counts as the folder AK/. Every image needs its mask and vice versa.
"""


def class_of(folders: tuple[str, ...]) -> str | None:
  """The class of a file: its nearest ancestor folder named like a class (case-insensitive)."""
  for folder in reversed(folders):
    if folder.upper() in LABEL_NAMES:
      return folder.upper()
  return None


class Dermofit(common.LesionBuilder):
  """The Dermofit Image Library (tfds name `dermofit`): 10 classes, 80/20 stratified split."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
  LABEL_NAMES = LABEL_NAMES
  DOMAIN = "macroscopic"
  TEST_FRACTION = 264 / 1300  # Table 1: 1036 / 264 (stratification makes it not quite 20%).
  DESCRIPTION = "Dermofit Image Library: 1300 macroscopic images of 10 lesion classes with masks."
  HOMEPAGE = "https://licensing.edinburgh-innovations.ed.ac.uk/product/dermofit-image-library"
  CITATION = """\
@incollection{ballerini2013dermofit,
  title={A color and texture based hierarchical K-NN approach to the classification of
         non-melanoma skin lesions},
  author={Ballerini, Lucia and Fisher, Robert B and Aldridge, Ben and Rees, Jonathan},
  booktitle={Color Medical Image Analysis}, pages={63--86}, year={2013}, publisher={Springer}}"""

  def _find_records(self, manual_dir: Path, problems: common.Problems) -> list[common.LesionRecord]:
    images, masks, seen_classes = [], [], set()
    for f in common.list_folder(manual_dir, expand_zips=True):
      label = class_of(f.folders)
      if label is None or f.suffix not in common.IMAGE_SUFFIXES:
        continue  # outside the class folders, or not an image (notes, metadata).
      seen_classes.add(label)
      if f.stem.lower().endswith(_MASK_SUFFIX) and len(f.stem) > len(_MASK_SUFFIX):
        masks.append((f.stem[:-len(_MASK_SUFFIX)], label, f))
      else:
        images.append((f.stem, label, f))
    missing = [c for c in LABEL_NAMES if c not in seen_classes]
    if missing:
      raise self._missing(manual_dir, [f"class folder {c}/ (or {c}.zip) with <id>.png and "
                                       f"<id>mask.png" for c in missing])

    image_index = common.index_by_id(((i, f) for i, _, f in images), problems, "image")
    mask_index = common.index_by_id(((i, f) for i, _, f in masks), problems, "mask")
    labels = {i: label for i, label, _ in images}
    for image_id, label, f in masks:
      if image_id in labels and labels[image_id] != label:
        problems.add(f.location, f"mask of {image_id} is in class {label} but its image is in "
                     f"{labels[image_id]}")
    ids = common.pair_files(
        image_index, mask_index, problems,
        mask_hint=lambda i: f"{i}{_MASK_SUFFIX}{image_index[i].suffix} next to it",
        image_hint=lambda i: f"{i}{mask_index[i].suffix} next to it")
    return [common.LesionRecord(i, image_index[i], mask_index[i], labels[i]) for i in ids]
