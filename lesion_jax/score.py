"""Score folders of PNG masks with the ISIC 2018 Task 1 metrics.

    python -m lesion_jax.score --truth DIR --pred DIR [--threshold 128]

Prints the six macro averages (tja, ja, di, ac, se, sp, as fractions) and n_images as JSON. The
numbers equal those of the official `isic-challenge-scoring` segmentation scorer on the same
folders (tests/test_score.py checks this).

- Pairing: truth and prediction files are paired by image id. The id is the file stem without
  an `_segmentation` suffix (any letter case), so ISIC 2018 `<id>_segmentation.png`, ISIC 2016
  `<id>_Segmentation.png` and plain `<id>.png` all pair with one another. Only `*.png` files are
  read; anything else in the folders (LICENSE.txt, ...) is ignored.
- Binarisation: a pixel is lesion when its value is > threshold (default 128), in the truth and
  the prediction alike, as the official scorer does. For 0/255 masks any threshold in [0, 254]
  gives the same result.
- Bad input: the whole input is checked first, then every problem is reported at once.
  - missing partners, duplicate ids, an empty folder;
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

DEFAULT_THRESHOLD = 128

_SUFFIX = re.compile(r"_segmentation$", re.IGNORECASE)


class ScoreInputError(ValueError):
  """The folders cannot be scored; the message lists every problem found."""


def image_id(path: pathlib.Path) -> str:
  """The id a mask file is paired by: its stem without a `_segmentation` suffix."""
  return _SUFFIX.sub("", path.stem)


def _index_folder(folder: pathlib.Path, role: str,
                  problems: list[str]) -> dict[str, pathlib.Path]:
  if not folder.is_dir():
    problems.append(f"{role} folder {folder} does not exist or is not a folder")
    return {}
  by_id: dict[str, pathlib.Path] = {}
  for path in sorted(folder.iterdir()):
    if not (path.is_file() and path.suffix.lower() == ".png"):
      continue
    key = image_id(path)
    if key in by_id:
      problems.append(f"{role}: {by_id[key].name} and {path.name} both give image id {key!r}")
      continue
    by_id[key] = path
  if not by_id:
    problems.append(f"{role} folder {folder} holds no .png masks")
  return by_id


def load_mask(path: pathlib.Path) -> np.ndarray:
  """A greyscale PNG as an (H, W) uint8 array; ScoreInputError if it cannot be read as one."""
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
    raise ScoreInputError(f"{path.name}: cannot be read as a PNG ({error})") from None


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
  truths = _index_folder(truth_dir, "truth", problems)
  preds = _index_folder(pred_dir, "prediction", problems)
  if not truths or not preds:
    # A missing or empty folder is the cause; listing every file of the other one as
    # unpaired would only bury it.
    raise ScoreInputError(f"cannot score {pred_dir} against {truth_dir}: "
                          + "; ".join(problems))
  for key in sorted(truths.keys() - preds.keys()):
    problems.append(f"truth {truths[key].name} has no prediction (image id {key!r})")
  for key in sorted(preds.keys() - truths.keys()):
    problems.append(f"prediction {preds[key].name} has no truth (image id {key!r})")

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
    raise ScoreInputError(f"cannot score {pred_dir} against {truth_dir}; "
                          f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
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
      description="ISIC 2018 Task 1 metrics (macro averages) of PNG prediction masks.")
  parser.add_argument("--truth", required=True, help="folder of ground-truth PNG masks (0/255)")
  parser.add_argument("--pred", required=True, help="folder of predicted PNG masks (0-255)")
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
