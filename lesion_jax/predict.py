"""Segment new images with a trained run: masks, probability maps and overlays.

    python -m lesion_jax.predict --workdir runs/quickstart --images photos/ --out predictions/ \
        [--model model.tflite] [--truth truth_masks/]

Each image, of any size, is resized to the training resolution (bilinear, as evaluation does),
segmented, and its probability map is resized back to the original size (bilinear) and
thresholded at the run's chosen threshold (results.json; 0.5, with a note, for an unfinished
run). Per image id (the file name without its extension):
  OUT/<id>_segmentation.png              binary mask, 0/255 (ISIC naming)
  OUT/probability/<id>_probability.png   the probability map as 8-bit greyscale (p * 255)
  OUT/overlay/<id>_overlay.png           the image, lesion tinted and outlined in green
The masks sit alone at the top of OUT so that `python -m lesion_jax.score --pred OUT` reads
them directly; `--truth DIR` does that here and prints the ISIC metrics.

Models: by default the run's JAX model (best checkpoint). Images go through one jit-compiled
function in batches of config.batch_size_per_device, padded like evaluation's last batch, so
any number of images of any sizes costs one compilation. `--model FILE.tflite` runs an export
of `lesion_jax.export` with the LiteRT interpreter instead (needs `ai-edge-litert`); its sidecar
(FILE.tflite.json, or the description embedded in the file) must give the run's input size.
`--workdir` may then be left out: the sidecar gives the size and threshold.

`--tta flips|dihedral` averages the probabilities over flipped (and, for square inputs,
turned) copies of each image; by default a JAX model uses the run's `config.evaluation.tta`, so
its masks match the run's reported metrics, and a TFLite model none.

Inputs: files and folders (a folder's images with the usual extensions, not recursive; other
files are skipped). Grey, RGBA, palette, 16-bit and CMYK images are converted to 8-bit RGB, with
a note saying so. Pixels are read as stored: EXIF orientation is not applied, so masks line up
with the stored pixel grid as the training data does.
Errors: a file that cannot be read as an image gets an `error:` line and the others are still
processed; the exit code is then 0 as long as one image was segmented, 1 if none was. Problems
that stop everything before any work (no such path, no images, a workdir that is not a run or
has no checkpoint, a model for another input size, a folder that cannot be scored against
--truth) give one `error:` message and exit code 2, never a stack trace.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import pathlib
import sys
import warnings
from typing import Iterator, Protocol, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from lesion_jax.data import pipeline

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
MASK_SUFFIX = "_segmentation.png"
PROBABILITY_DIR, PROBABILITY_SUFFIX = "probability", "_probability.png"
OVERLAY_DIR, OVERLAY_SUFFIX = "overlay", "_overlay.png"
OVERLAY_TINT = np.array([0, 255, 0], np.float32)  # green: lesion tint and outline
TINT_OPACITY = 0.3
DEFAULT_THRESHOLD = 0.5


class PredictError(ValueError):
  """Prediction cannot start (bad paths, run or model); the message says what and where."""


class ImageReadError(ValueError):
  """One input file cannot be read as an image; the others are still processed."""


# ----------------------------------------------------------------------------------------------
# Inputs.

def collect_images(paths: Sequence[str | os.PathLike]) -> list[pathlib.Path]:
  """The image files named by `paths` (files as given, folders' images sorted by name)."""
  if not paths:
    raise PredictError("no --images given: name image files or folders")
  files: list[pathlib.Path] = []
  for raw in paths:
    path = pathlib.Path(raw).expanduser()
    if path.is_dir():
      found = sorted(p for p in path.iterdir()
                     if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
      if not found:
        raise PredictError(f"--images folder {path} holds no images (looked for "
                           f"{', '.join('*' + s for s in IMAGE_SUFFIXES)})")
      files.extend(found)
    elif path.is_file():
      files.append(path)
    else:
      raise PredictError(f"--images {path}: no such file or folder")
  return files


def read_image(path: pathlib.Path) -> tuple[np.ndarray, str | None]:
  """(H, W, 3) uint8 RGB pixels of `path`, and a note when they had to be converted.

  Raises:
    ImageReadError: the file is not an image PIL can decode (corrupt, truncated, not an image).
  """
  try:
    with Image.open(path) as image:
      image.load()
      mode = image.mode
      if mode == "RGB":
        return np.asarray(image), None
      if mode.startswith("I;16") or mode == "I":
        # 16-bit (or 32-bit integer) greyscale: keep the top 8 bits of 16.
        grey = np.asarray(image, dtype=np.float64) / 257.0
        grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1), (
            f"16-bit greyscale image (mode {mode}) converted to 8-bit RGB")
      converted = np.asarray(image.convert("RGB"))
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
          Image.DecompressionBombError) as error:
    raise ImageReadError(f"cannot be read as an image ({error})") from None
  if mode in ("L", "1", "LA"):
    what = "greyscale" + (" with alpha" if mode == "LA" else "")
    note = f"{what} image (mode {mode}) converted to RGB by repeating the grey channel"
  elif mode in ("RGBA", "RGBa", "PA"):
    note = f"image with an alpha channel (mode {mode}) converted to RGB; the alpha is dropped"
  elif mode == "P":
    note = "palette image (mode P) converted to RGB"
  else:
    note = f"image in mode {mode} converted to RGB"
  return converted, note


def image_id(path: pathlib.Path) -> str:
  return path.stem


# ----------------------------------------------------------------------------------------------
# Models.

class Segmenter(Protocol):
  image_size: tuple[int, int]  # (height, width)
  threshold: float
  description: str

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 -> (N, S, S) float32 lesion probabilities."""


class JaxSegmenter:
  """The run's JAX model behind one jit-compiled function of a fixed batch size.

  Batches are padded with zero images to `batch_size` (as evaluation pads its last batch),
  so every call has one shape and the function compiles once.
  """

  def __init__(self, run, batch_size: int | None = None, tta: str | None = None):
    import jax

    from lesion_jax import inference

    # By default the run's own test-time augmentation, so masks match its reported metrics.
    self.tta = tta or run.config.get("evaluation", {}).get("tta", "none")
    self.image_size = run.image_size
    self.threshold = run.threshold
    self.batch_size = int(batch_size or run.config.batch_size_per_device)
    if self.batch_size < 1:
      raise PredictError(f"--batch_size must be >= 1, got {self.batch_size}")
    self.description = (f"JAX model {run.config.model.name} of {run.workdir} "
                        f"(checkpoint step {run.meta.get('step', '?')}; test-time "
                        f"augmentation: {self.tta})")
    self.model, self.variables = run.model, run.variables
    # Its own compiled function: one compilation serves every batch (tested).
    self.predict = jax.jit(functools.partial(inference.probabilities, run.model.apply,
                                             tta=self.tta))

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    from lesion_jax import inference

    return inference.predict_probabilities(self.model, self.variables, images,
                                           batch_size=self.batch_size, compiled=self.predict)


def read_sidecar(model_path: pathlib.Path) -> dict | None:
  """The export description of `model_path`: its JSON sidecar, else the embedded copy."""
  sidecar = pathlib.Path(os.fspath(model_path) + ".json")
  if sidecar.is_file():
    try:
      return json.loads(sidecar.read_text())
    except json.JSONDecodeError as error:
      raise PredictError(f"{sidecar} is not valid JSON ({error})") from None
  try:
    from lesion_jax import export
    return export.read_embedded_metadata(os.fspath(model_path))
  except ImportError:
    return None
  except Exception:  # not a flatbuffer we can parse: the interpreter will say so below
    return None


class TFLiteSegmenter:
  """An exported .tflite model run one image at a time with the LiteRT interpreter."""

  def __init__(self, model_path: pathlib.Path, expected_size: tuple[int, int] | None,
               run_threshold: float | None, workdir: str | None, tta: str | None = None):
    from lesion_jax import export

    self.tta = tta or "none"

    if not model_path.is_file():
      raise PredictError(f"--model {model_path}: no such file")
    described = read_sidecar(model_path)
    if described is None and expected_size is None:
      raise PredictError(f"--model {model_path} has no sidecar ({model_path}.json) nor embedded "
                         "description; pass --workdir of the run it was exported from")
    if described is not None:
      if described.get("thresholded_output"):
        raise PredictError(f"--model {model_path} outputs binary masks (exported with "
                           "--with_threshold); predict needs probabilities: export it again "
                           "without --with_threshold")
      size = pipeline.image_shape(described["image_size"], f"{model_path}: image_size")
      if expected_size is not None and size != expected_size:
        raise PredictError(
            f"--model {model_path} takes {_size_text(size)} images (its sidecar says so) but "
            f"the run in {workdir} was trained at {_size_text(expected_size)}: it is a model of "
            "another input size; export this run again, or pass the --workdir it came from")
    else:
      size = expected_size
    try:
      self.interpreter = export.load_interpreter(os.fspath(model_path), num_threads=1)
    except export.ExportError as error:
      raise PredictError(str(error)) from None
    (detail,) = self.interpreter.get_input_details()
    if tuple(detail["shape"]) != (1, *size, 3) or detail["dtype"] != np.uint8:
      raise PredictError(f"--model {model_path} takes {tuple(detail['shape'])} "
                         f"{np.dtype(detail['dtype']).name} input; expected {(1, *size, 3)} "
                         "uint8, as lesion_jax.export writes")
    self.image_size = size
    if run_threshold is not None:
      self.threshold = run_threshold
    elif described is not None:
      self.threshold = float(described["threshold"])
    else:
      self.threshold = DEFAULT_THRESHOLD
    quantization = described.get("quantization", "?") if described else "?"
    self.description = (f"TFLite model {model_path} (quantization {quantization}; test-time "
                        f"augmentation: {self.tta})")

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """Each image through the interpreter; with `tta`, each of its copies, averaged."""
    from lesion_jax import export, inference

    copies = inference.tta_transforms(self.tta, images.shape[1] == images.shape[2])
    total = np.zeros(images.shape[:3], np.float32)
    for choice in copies:
      moved = inference.transform(images, *choice)
      probs = np.stack([export.run_interpreter(self.interpreter, image[None])[0, ..., 0]
                        for image in moved]).astype(np.float32)
      total += inference.untransform(probs, *choice)
    return total / len(copies)


def _size_text(size: tuple[int, int]) -> str:
  """(height, width) as people write image sizes: width x height."""
  return f"{size[1]}x{size[0]}"


def _run_threshold(workdir: str) -> tuple[float | None, str | None]:
  """The run's chosen threshold (results.json) and a note when there is none yet."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None, f"{workdir} has no results.json (unfinished run)"
  with open(path) as f:
    return float(json.load(f)["threshold"]), None


def load_segmenter(workdir: str | None, model_path: str | None, batch_size: int | None = None,
                   tta: str | None = None) -> tuple[Segmenter, list[str]]:
  """The model to segment with, and notes for the user; PredictError when it cannot be used."""
  from lesion_jax import runs

  notes = []
  if workdir is None and model_path is None:
    raise PredictError("give --workdir (the run to predict with) or --model (an exported file)")
  if workdir is not None:
    workdir = os.path.expanduser(workdir)
    if not os.path.isdir(workdir):
      raise PredictError(f"--workdir {workdir}: no such folder")
  if model_path is not None:
    size = threshold = None
    if workdir is not None:
      try:
        size = pipeline.image_shape(runs.read_config(workdir).data.image_size)
      except FileNotFoundError as error:
        raise PredictError(str(error)) from None
      threshold, note = _run_threshold(workdir)
      if note:
        notes.append(note + "; using the threshold in the model's sidecar")
    return TFLiteSegmenter(pathlib.Path(model_path).expanduser(), size, threshold, workdir,
                           tta), notes
  try:
    run = runs.load_run(workdir)
  except FileNotFoundError as error:
    raise PredictError(str(error)) from None
  if not run.results:
    notes.append(f"{workdir} has no results.json (unfinished run): thresholding at "
                 f"{DEFAULT_THRESHOLD}")
  return JaxSegmenter(run, batch_size, tta), notes


# ----------------------------------------------------------------------------------------------
# Outputs.

def resize_probability(probs: np.ndarray, height: int, width: int) -> np.ndarray:
  """An (S, S) probability map at (height, width), bilinear; unchanged when already that size."""
  if probs.shape == (height, width):
    return probs
  resized = Image.fromarray(probs.astype(np.float32)).resize((width, height), Image.BILINEAR)
  return np.clip(np.asarray(resized), 0.0, 1.0)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
  """Lesion pixels within `width` pixels of the background (4-neighbourhood erosions)."""
  interior = mask.copy()
  for _ in range(width):
    shrunk = interior.copy()
    shrunk[1:] &= interior[:-1]
    shrunk[:-1] &= interior[1:]
    shrunk[:, 1:] &= interior[:, :-1]
    shrunk[:, :-1] &= interior[:, 1:]
    interior = shrunk
  return mask & ~interior


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The image with the lesion tinted and its border drawn, (H, W, 3) uint8."""
  out = image.astype(np.float32)
  out[mask] = (1 - TINT_OPACITY) * out[mask] + TINT_OPACITY * OVERLAY_TINT
  # A border about 1/250 of the image side stays visible on full-resolution dermoscopy.
  out[_outline(mask, max(1, min(mask.shape) // 250))] = OVERLAY_TINT
  return np.round(out).astype(np.uint8)


def write_outputs(out_dir: pathlib.Path, key: str, image: np.ndarray, probs: np.ndarray,
                  threshold: float) -> pathlib.Path:
  """Writes the three PNGs of one image; returns the mask's path."""
  mask = probs >= np.float32(threshold)
  mask_path = out_dir / f"{key}{MASK_SUFFIX}"
  Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
  Image.fromarray(np.round(probs * 255).astype(np.uint8)).save(
      out_dir / PROBABILITY_DIR / f"{key}{PROBABILITY_SUFFIX}")
  Image.fromarray(overlay(image, mask)).save(out_dir / OVERLAY_DIR / f"{key}{OVERLAY_SUFFIX}")
  return mask_path


# ----------------------------------------------------------------------------------------------
# The whole command.

@dataclasses.dataclass
class PredictSummary:
  written: list[pathlib.Path]  # mask paths
  failed: list[tuple[pathlib.Path, str]]
  notes: list[str]


def _readable_images(files: Sequence[pathlib.Path], failed: list, notes: list,
                     report) -> Iterator[tuple[str, pathlib.Path, np.ndarray]]:
  seen: dict[str, pathlib.Path] = {}
  for path in files:
    key = image_id(path)
    if key in seen:
      message = f"same image id {key!r} as {seen[key].name}; its outputs would overwrite"
      failed.append((path, message))
      report(f"error: {path}: {message}")
      continue
    try:
      image, note = read_image(path)
    except ImageReadError as error:
      failed.append((path, str(error)))
      report(f"error: {path}: {error}")
      continue
    seen[key] = path
    if note:
      notes.append(f"{path.name}: {note}")
      report(f"note: {path}: {note}")
    yield key, path, image


def predict(segmenter: Segmenter, files: Sequence[pathlib.Path], out_dir: str | os.PathLike,
            batch_size: int = 4, report=lambda line: print(line, file=sys.stderr)
            ) -> PredictSummary:
  """Segments `files` into `out_dir` (see the module docstring for the layout)."""
  out_dir = pathlib.Path(out_dir).expanduser()
  for folder in (out_dir, out_dir / PROBABILITY_DIR, out_dir / OVERLAY_DIR):
    folder.mkdir(parents=True, exist_ok=True)
  summary = PredictSummary(written=[], failed=[], notes=[])
  pending: list[tuple[str, np.ndarray]] = []

  def flush() -> None:
    size = segmenter.image_size
    resized = np.stack([pipeline.resize_pair(image, np.zeros((1, 1), np.uint8), size)[0]
                        for _, image in pending])
    probs = segmenter.probabilities(resized)
    for (key, image), prob in zip(pending, probs):
      full = resize_probability(prob, *image.shape[:2])
      summary.written.append(write_outputs(out_dir, key, image, full, segmenter.threshold))
    pending.clear()

  for key, _, image in _readable_images(files, summary.failed, summary.notes, report):
    pending.append((key, image))
    if len(pending) == batch_size:
      flush()
  if pending:
    flush()
  return summary


@contextlib.contextmanager
def _quiet_libraries():
  """Silences orbax's read-only notices and library warnings, which would bury our messages."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      yield
  finally:
    absl_logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
  """Command line entry point; returns the exit code (see the module docstring)."""
  parser = argparse.ArgumentParser(
      prog="python -m lesion_jax.predict",
      description="Segment images with a trained run (or its TFLite export).")
  parser.add_argument("--workdir", help="the training run (best checkpoint, chosen threshold)")
  parser.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
  parser.add_argument("--out", required=True, help="folder for masks, probabilities, overlays")
  parser.add_argument("--model", help="an exported .tflite file to run instead of the JAX model")
  parser.add_argument("--truth", help="folder of ground-truth masks: print the ISIC metrics")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="images per JAX call (default: the run's batch_size_per_device)")
  parser.add_argument("--tta", choices=("none", "flips", "dihedral"), default=None,
                      help="test-time augmentation: probabilities averaged over flipped (and "
                           "turned) copies (default: the run's config.evaluation.tta; for "
                           "--model without --workdir, none)")
  args = parser.parse_args(argv)

  def report(line: str) -> None:
    print(line, file=sys.stderr)

  try:
    files = collect_images(args.images)
    if args.truth and not os.path.isdir(args.truth):
      raise PredictError(f"--truth {args.truth}: no such folder")
    with _quiet_libraries():
      segmenter, notes = load_segmenter(args.workdir, args.model, args.batch_size, args.tta)
  except PredictError as error:
    report(f"error: {error}")
    return 2
  for note in notes:
    report(f"note: {note}")
  report(f"segmenting {len(files)} file(s) with the {segmenter.description}, threshold "
         f"{segmenter.threshold:g}")
  batch = getattr(segmenter, "batch_size", 1)
  summary = predict(segmenter, files, args.out, batch_size=batch, report=report)
  print(f"segmented {len(summary.written)} of {len(files)} image(s) into {args.out}"
        + (f"; {len(summary.failed)} failed (see the error lines)" if summary.failed else ""))
  if not summary.written:
    report("error: no image could be segmented")
    return 1
  if args.truth:
    from lesion_jax import score
    try:
      result = score.score_folders(args.truth, args.out)
    except score.ScoreInputError as error:
      report(f"error: {error}")
      return 2
    print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
