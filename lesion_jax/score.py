"""Score folders of PNG masks with the ISIC 2018 Task 1 metrics.

    python -m lesion_jax.score --truth DIR --pred DIR [--threshold 128]

Prints the six macro averages (tja, ja, di, ac, se, sp, as fractions) and n_images as JSON. The
numbers equal those of the official `isic-challenge-scoring` segmentation scorer on the same
folders (tests/test_score.py checks this).

- Pairing: truth and prediction files are paired by image id (PAIRING_RULE): the file stem
  without a mask suffix, `_segmentation` (ISIC 2018; `_Segmentation`, ISIC 2016), `_lesion`
  (PH2) or `_contour` (Waterloo), in any letter case, and without Waterloo's photo suffix
  `_orig`. So `IMD003_lesion.png`, `IMD003_segmentation.png` (what `lesion_jax.predict` writes)
  and `IMD003.png` all pair with one another. Masks are PNGs, or BMPs as PH2 ships them; other
  files in the folders (LICENSE.txt, ...) are ignored. Two files of one folder with the same id
  are an error that names both.
- Binarisation: a pixel is lesion when its value is > threshold (default 128), in the truth and
  the prediction alike, as the official scorer does. For 0/255 masks any threshold in [0, 254]
  gives the same result.
- Bad input: the whole input is checked first, then every problem is reported at once.
  - files without a partner (a few named from each side, with the pairing rule), duplicate
    ids, an empty folder;
  - unreadable or non-greyscale PNGs, size mismatches;
  - 0/1-valued masks, which `> 128` would silently read as empty.
  The exit code is 2, and no traceback is printed.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from lesion_jax import metrics
from lesion_jax.errors import DataError

DEFAULT_THRESHOLD = 128
# BMP too: PH2 ships its masks as IMDxxx_lesion.bmp; both formats are lossless.
MASK_EXTENSIONS = (".png", ".bmp")
# The lazy `.+?` leaves the optional suffixes as long as they can be; one of each at most.
_ID = re.compile(r"(.+?)(_orig)?(_(?:segmentation|lesion|contour))?", re.IGNORECASE)
PAIRING_RULE = ("masks pair by image id, the file name without its extension and without a "
                "_segmentation (ISIC), _lesion (PH2) or _contour (Waterloo) suffix, in any "
                "letter case, nor a Waterloo photo's _orig: IMD003_lesion.png pairs with "
                "IMD003.png and IMD003_segmentation.png")
# Unpaired files named per side in the error; more would bury the other problems.
SHOWN_UNPAIRED = 5


class ScoreInputError(DataError):
  """The folders cannot be scored; the message lists every problem found."""


def stem_id(stem: str) -> str:
  """The image id of a file stem: without its mask suffix (and `_orig`), see PAIRING_RULE."""
  return _ID.fullmatch(stem).group(1)


def image_id(path: pathlib.Path) -> str:
  """The id a mask file is paired by (PAIRING_RULE)."""
  return stem_id(path.stem)


def index_masks(folder: pathlib.Path, role: str,
                problems: list[str]) -> dict[str, pathlib.Path]:
  """{image id: mask file} of `folder`; appends to `problems` what is wrong with it."""
  if not folder.is_dir():
    problems.append(f"{role} folder {folder} does not exist or is not a folder")
    return {}
  by_id: dict[str, pathlib.Path] = {}
  for path in sorted(folder.iterdir()):
    if not (path.is_file() and path.suffix.lower() in MASK_EXTENSIONS):
      continue
    key = image_id(path)
    if key in by_id:
      problems.append(f"{role}: {by_id[key].name} and {path.name} both give image id {key!r} "
                      "(keep one of them)")
      continue
    by_id[key] = path
  if not by_id:
    problems.append(f"{role} folder {folder} holds no masks "
                    f"({', '.join('*' + e for e in MASK_EXTENSIONS)})")
  return by_id


def _unpaired(files: dict[str, pathlib.Path], others: dict[str, pathlib.Path],
              what: str) -> list[str]:
  """One problem naming a few of the `files` whose id is not among `others`, or none."""
  keys = sorted(files.keys() - others.keys())
  if not keys:
    return []
  names = ", ".join(files[k].name for k in keys[:SHOWN_UNPAIRED])
  more = f" and {len(keys) - SHOWN_UNPAIRED} more" if len(keys) > SHOWN_UNPAIRED else ""
  return [f"{len(keys)} {what}: {names}{more}"]


def load_mask(path: pathlib.Path) -> np.ndarray:
  """A greyscale PNG (or BMP) as an (H, W) uint8 array; ScoreInputError if it cannot be."""
  try:
    with Image.open(path) as image:
      image.load()
      # Bilevel PNGs are greyscale too; as the official scorer does, read them as 0/255.
      if image.mode == "1":
        image = image.convert("L")
      if image.mode != "L":
        raise ScoreInputError(f"{path.name}: mode {image.mode!r}, expected a single-channel "
                              "8-bit greyscale PNG (mode 'L')")
      return np.asarray(image)
  except (UnidentifiedImageError, OSError, SyntaxError) as error:
    raise ScoreInputError(f"{path.name}: cannot be read as a {path.suffix[1:].upper()} "
                          f"({error})") from None


def _check_scale(array: np.ndarray, path: pathlib.Path, role: str, problems: list[str]) -> None:
  # A {0, 1} mask passes every decoder check, but `> 128` would read it as empty and score it
  # silently wrong; the masks this scorer takes are 0/255.
  if array.max(initial=0) == 1:
    problems.append(f"{role} {path.name}: values are 0/1 only; expected 0/255 masks")


def score_folders(truth_dir: str | pathlib.Path, pred_dir: str | pathlib.Path,
                  threshold: int = DEFAULT_THRESHOLD) -> dict[str, float | int]:
  """Macro-averaged ISIC metrics of the predictions in `pred_dir` against `truth_dir`.

  Returns:
    {"tja", "ja", "di", "ac", "se", "sp": fractions in [0, 1], "n_images": int}.

  Raises:
    ScoreInputError: listing every problem with the folders (see the module docstring).
  """
  if not 0 <= threshold <= 255:
    raise ScoreInputError(f"threshold {threshold} is outside the 0-255 pixel range")
  truth_dir, pred_dir = pathlib.Path(truth_dir), pathlib.Path(pred_dir)
  problems: list[str] = []
  truths = index_masks(truth_dir, "truth", problems)
  preds = index_masks(pred_dir, "prediction", problems)
  if not truths or not preds:
    # A missing or empty folder is the cause; listing every file of the other one as
    # unpaired would only bury it.
    raise ScoreInputError(f"cannot score {pred_dir} against {truth_dir}: "
                          + "; ".join(problems))
  problems += _unpaired(truths, preds, "truth mask(s) without a prediction")
  problems += _unpaired(preds, truths, "prediction(s) without a truth mask")
  unpaired = bool(truths.keys() ^ preds.keys())

  counts = []
  for key in sorted(truths.keys() & preds.keys()):
    pair = []
    for role, path in (("truth", truths[key]), ("prediction", preds[key])):
      try:
        pair.append(load_mask(path))
        _check_scale(pair[-1], path, role, problems)
      except ScoreInputError as error:
        problems.append(f"{role} {error}")
    if len(pair) != 2:
      continue
    truth, pred = pair
    if truth.shape != pred.shape:
      problems.append(f"prediction {preds[key].name} is {pred.shape[0]}x{pred.shape[1]} "
                      f"(HxW), its truth {truths[key].name} is {truth.shape[0]}x{truth.shape[1]}")
      continue
    counts.append(_confusion_counts(truth > threshold, pred > threshold))

  if problems:
    # With unpaired files, the rule is what the user needs to rename them.
    rule = f"\n{PAIRING_RULE}" if unpaired else ""
    raise ScoreInputError(f"cannot score {pred_dir} against {truth_dir}; "
                          f"{len(problems)} problem(s):\n  " + "\n  ".join(problems) + rule)
  result: dict[str, float | int] = dict(metrics.macro_average(np.stack(counts)))
  result["n_images"] = len(counts)
  return result


def _confusion_counts(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
  # NumPy on the host: one image at a time at full resolution, no reason to involve a device.
  tp = np.count_nonzero(truth & pred)
  fp = np.count_nonzero(~truth & pred)
  fn = np.count_nonzero(truth & ~pred)
  return np.array([tp, fp, fn, truth.size - tp - fp - fn], np.int64)


def main(argv: Sequence[str] | None = None) -> int:
  """Command line entry point; returns the exit code (0, or 2 on bad input)."""
  parser = argparse.ArgumentParser(
      prog="python -m lesion_jax.score",
      description="ISIC 2018 Task 1 metrics (macro averages) of PNG prediction masks. Truth "
                  f"and prediction {PAIRING_RULE}.")
  parser.add_argument("--truth", required=True,
                      help="folder of ground-truth masks (0/255; PNG, or PH2's BMP)")
  parser.add_argument("--pred", required=True, help="folder of predicted masks (0-255)")
  parser.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD,
                      help="a pixel is lesion when its value is > THRESHOLD (default 128, as the "
                           "official ISIC scorer)")
  args = parser.parse_args(argv)
  try:
    result = score_folders(args.truth, args.pred, args.threshold)
  except ScoreInputError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
