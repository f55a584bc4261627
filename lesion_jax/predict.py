"""Segment new images with a trained run: masks, probability maps and overlays.

    python -m lesion_jax.predict --workdir runs/quickstart --images photos/ --out predictions/ \
        [--model model.tflite] [--truth truth_masks/] [--overwrite]
    python -m lesion_jax.predict --model dermoscopic --images photos/ --out predictions/

Each image, of any size, is resized to the training resolution (bilinear, as evaluation does),
segmented, and its probability map is resized back to the original size (bilinear) and
thresholded at the run's chosen threshold (results.json; 0.5, with a note, for an unfinished
run). Per image id (the file name without its extension):
  OUT/<id>_segmentation.png              binary mask, 0/255 (ISIC naming)
  OUT/probability/<id>_probability.png   the probability map as 8-bit greyscale (p * 255)
  OUT/overlay/<id>_overlay.png           the image, the lesion outlined and lightly filled in
                                         blue, below a strip with the key
The masks sit alone at the top of OUT so that `python -m lesion_jax.score --pred OUT` reads
them directly; `--truth DIR` does that here and prints the ISIC metrics. It also draws the
overlay of an image with a truth mask (score.PAIRING_RULE) in the Fig. 1 colours of the run's
reports, blended into the image: yellow TP, red FP, green FN; TN left as photographed. The blue
is none of these. Outputs already in OUT are replaced only with `--overwrite`.
Before segmenting, predict prints what the model was trained on (the run's databases, their
kind of images, their training images where the run's tfds data dir is at hand, the input size,
the run it started from), and a warning when all of it was generated lesions.

Models: by default the run's JAX model (best checkpoint). Images go through one jit-compiled
function in batches of config.batch_size_per_device, padded like evaluation's last batch, so
any number of images of any sizes costs one compilation. `--model FILE.tflite` runs an export
of `lesion_jax.export` with the LiteRT interpreter instead (needs `ai-edge-litert`); its sidecar
(FILE.tflite.json, or the description embedded in the file) must give the run's input size.
`--workdir` may then be left out: the sidecar gives the size and threshold. `--model NAME`, a
trained model shipped with lesion_jax (`lesion_jax.models.trained`: dermoscopic, macroscopic;
$LESION_JAX_TRAINED_MODELS names another folder of them), runs its JAX model as above, with no
--workdir: its card gives the threshold, input size, test-time augmentation and training data. A
name comes first; `./NAME` is a file of that name.

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
has no checkpoint, a model for another input size, an --out holding these images' outputs, a
folder that cannot be scored against --truth) give one `error:` message and exit code 2, never
a stack trace.
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

from ml_collections import ConfigDict

import numpy as np
from PIL import Image, UnidentifiedImageError

from lesion_jax.data import pipeline
from lesion_jax.errors import LesionJaxError, WorkdirError
from lesion_jax.report import overlays

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
MASK_SUFFIX = "_segmentation.png"
PROBABILITY_DIR, PROBABILITY_SUFFIX = "probability", "_probability.png"
OVERLAY_DIR, OVERLAY_SUFFIX = "overlay", "_overlay.png"
DEFAULT_THRESHOLD = 0.5
SHOWN_EXISTING = 3  # outputs named in the error about an --out already used


class PredictError(LesionJaxError, ValueError):
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
  workdir: str | None  # the run it was trained in, when known
  trained_on: str | ConfigDict | None  # what the header reads: a run's workdir or its config

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
    # The run's mask clean-up too (config.evaluation.postprocess), as its metrics were scored.
    self.postprocess = run.config.get("evaluation", {}).get("postprocess", "none")
    self.image_size = run.image_size
    self.threshold = run.threshold
    self.workdir = run.workdir
    self.trained_on = run.config  # a shipped model has no workdir, but its run's config
    self.batch_size = int(batch_size or run.config.batch_size_per_device)
    if self.batch_size < 1:
      raise PredictError(f"--batch_size must be >= 1, got {self.batch_size}")
    origin = (run.workdir if run.workdir is not None
              else f"the shipped model {run.meta.get('trained_model', '?')}")
    self.description = (f"JAX model {run.config.model.name} of {origin} "
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
    self.postprocess = "none"

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
    # The export's sidecar names the run it came from; it may not be on this machine.
    self.workdir = workdir or ((described or {}).get("source") or {}).get("workdir")
    self.trained_on = self.workdir or _shipped_config(described)
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


def _shipped_config(described: dict | None) -> ConfigDict | None:
  """The config of the shipped model an export was made from, when this is the same model."""
  from lesion_jax.models import trained

  source = (described or {}).get("source") or {}
  if source.get("trained_model") not in trained.names():
    return None
  try:
    model = trained.load(source["trained_model"])
  except LesionJaxError:  # a damaged file: the header is not worth failing for
    return None
  return model.config if model.card["sha256"] == source.get("sha256") else None


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
  """The model to segment with, and notes for the user; PredictError when it cannot be used.

  `model_path` is the name of a shipped model (`trained.names()`), else an exported file.
  """
  from lesion_jax import runs
  from lesion_jax.models import trained

  notes = []
  if workdir is None and model_path is None:
    raise PredictError("give --workdir (the run to predict with) or --model (a trained model's "
                       "name or an exported .tflite file)")
  if model_path is not None and model_path in trained.names():
    return _trained_segmenter(model_path, workdir, batch_size, tta), notes
  if workdir is not None:
    workdir = os.path.expanduser(workdir)
    if not os.path.isdir(workdir):
      raise PredictError(f"--workdir {workdir}: no such folder")
  if model_path is not None:
    if not pathlib.Path(model_path).expanduser().is_file():
      raise PredictError(f"--model {model_path}: no trained model of that name "
                         f"({trained.listing()}) and no such file")
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


def _trained_segmenter(name: str, workdir: str | None, batch_size: int | None,
                       tta: str | None) -> JaxSegmenter:
  """The JAX segmenter of the shipped model `name` (lesion_jax.models.trained)."""
  from lesion_jax import runs
  from lesion_jax.models import trained

  if workdir is not None:  # its threshold and size would silently override the run's
    raise PredictError(f"--model {name} is a trained model shipped with lesion_jax, with its own "
                       "threshold and input size: leave out --workdir")
  return JaxSegmenter(runs.from_trained(trained.load(name)), batch_size, tta)


# ----------------------------------------------------------------------------------------------
# What the model was trained on.

SYNTHETIC_WARNING = ("warning: the model was trained only on generated (synthetic) lesions; it "
                     "may not work on real photographs")


def _kind_of_images(name: str) -> str:
  from lesion_jax import data as data_lib
  if name.startswith("synthetic_lesions/"):
    return f"generated {name.split('/', 1)[1]} lesions"
  if name in data_lib.SET_D:
    return "dermoscopic photographs"
  macroscopic = data_lib.SET_M + data_lib.SET_M_STANDIN  # waterloo stands in for set M
  return "macroscopic photographs" if name in macroscopic else "photographs"


def _training_images(config, name: str) -> int | None:
  """Database `name`'s train split size; None when the run's tfds data dir is not on hand."""
  from lesion_jax import data as data_lib
  from lesion_jax.data import loading

  try:
    builder = data_lib.get_builder(name, data_dir=config.data.data_dir, prepare=False,
                                   options=loading.builder_options(config, name))
    return builder.info.splits["train"].num_examples
  except Exception:  # a header line is not worth failing a prediction for
    return None


def training_data(run: str | ConfigDict | None, depth: int = 0) -> tuple[str, bool] | None:
  """(what a run trained on, in words; whether it was all generated lesions).

  `run` is its workdir, or its config (a shipped model's, which has no workdir here). Follows
  `init_from` to the runs it started from (a few levels: a model pretrained on real images and
  fine-tuned on generated ones is not synthetic-only). None when no run is readable.
  """
  from lesion_jax import config as config_lib
  from lesion_jax import runs

  if not run or depth > 4:
    return None
  try:
    config = run if isinstance(run, ConfigDict) else runs.read_config(os.path.expanduser(run))
    names = config_lib.dataset_names(config.data.train, "data.train")
  except (OSError, ValueError):  # no config.json, or not one of ours
    return None
  counts = {name: _training_images(config, name) for name in names}
  described = [f"{name} ({_kind_of_images(name)}"
               + (f", {counts[name]:,} training images)" if counts[name] else ")")
               for name in names]
  height, width = pipeline.image_shape(config.data.image_size)
  text = f"{' + '.join(described)} at {width}x{height} pixels"
  synthetic = all(n.startswith("synthetic_lesions/") for n in names)
  if config.get("init_from"):
    earlier = training_data(config.init_from, depth + 1)
    text += f", starting from the run {config.init_from}" + (
        f" trained on {earlier[0]}" if earlier else " (not readable here)")
    synthetic = synthetic and earlier is not None and earlier[1]
  return text, synthetic


def training_lines(run: str | ConfigDict | None) -> list[str]:
  """The header lines predict prints: what the model learnt from, and a warning if needed.

  `run`: the workdir or config of the run the model came from (`Segmenter.trained_on`).
  """
  found = training_data(run)
  if found is None:
    return ["trained on: unknown (no run to read it from; pass --workdir of the run the model "
            "came from)"]
  text, synthetic = found
  return [f"trained on: {text}"] + ([SYNTHETIC_WARNING] if synthetic else [])


# ----------------------------------------------------------------------------------------------
# Outputs.

def resize_probability(probs: np.ndarray, height: int, width: int) -> np.ndarray:
  """An (S, S) probability map at (height, width), bilinear; unchanged when already that size."""
  if probs.shape == (height, width):
    return probs
  resized = Image.fromarray(probs.astype(np.float32)).resize((width, height), Image.BILINEAR)
  return np.clip(np.asarray(resized), 0.0, 1.0)


def output_paths(out_dir: pathlib.Path, key: str) -> tuple[pathlib.Path, ...]:
  """The mask, probability map and overlay of image `key`."""
  return (out_dir / f"{key}{MASK_SUFFIX}",
          out_dir / PROBABILITY_DIR / f"{key}{PROBABILITY_SUFFIX}",
          out_dir / OVERLAY_DIR / f"{key}{OVERLAY_SUFFIX}")


def check_outputs_free(out_dir: str | os.PathLike, files: Sequence[pathlib.Path]) -> None:
  """WorkdirError when `out_dir` already holds an output of one of `files`."""
  out_dir = pathlib.Path(out_dir).expanduser()
  taken = []
  for path in files:
    taken += [p for p in output_paths(out_dir, image_id(path)) if p.exists()][:1]
  if not taken:
    return
  names = ", ".join(os.path.relpath(p, out_dir) for p in taken[:SHOWN_EXISTING])
  more = f" and {len(taken) - SHOWN_EXISTING} more" if len(taken) > SHOWN_EXISTING else ""
  raise WorkdirError(f"--out {out_dir} already holds the outputs of {len(taken)} of these "
                     f"images ({names}{more}); pass --overwrite to replace them, or choose "
                     "another --out")


def write_outputs(out_dir: pathlib.Path, key: str, image: np.ndarray, probs: np.ndarray,
                  threshold: float, truth: np.ndarray | None = None,
                  postprocess: str = "none") -> pathlib.Path:
  """Writes the three PNGs of one image; returns the mask's path."""
  from lesion_jax import postprocess as postprocess_lib
  mask = postprocess_lib.binarize(probs[None], threshold, postprocess)[0]
  mask_path, probability_path, overlay_path = output_paths(out_dir, key)
  Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
  Image.fromarray(np.round(probs * 255).astype(np.uint8)).save(probability_path)
  Image.fromarray(overlays.draw_overlay(image, mask, threshold, truth)).save(overlay_path)
  return mask_path


def _truth_of(truths: dict[str, pathlib.Path], key: str,
              shape: tuple[int, ...]) -> np.ndarray | None:
  """The binary truth of image `key` for its overlay; None without a usable one (score says)."""
  from lesion_jax import score

  path = truths.get(score.stem_id(key))
  if path is None:
    return None
  try:
    truth = score.load_mask(path)
  except score.ScoreInputError:
    return None
  return truth > score.DEFAULT_THRESHOLD if truth.shape == shape[:2] else None


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
            batch_size: int = 4, report=lambda line: print(line, file=sys.stderr),
            truth_dir: str | os.PathLike | None = None, overwrite: bool = False
            ) -> PredictSummary:
  """Segments `files` into `out_dir` (see the module docstring for the layout).

  Raises:
    WorkdirError: `out_dir` already holds outputs of `files`, and `overwrite` is False.
  """
  out_dir = pathlib.Path(out_dir).expanduser()
  if not overwrite:
    check_outputs_free(out_dir, files)
  for folder in (out_dir, out_dir / PROBABILITY_DIR, out_dir / OVERLAY_DIR):
    folder.mkdir(parents=True, exist_ok=True)
  truths = {}
  if truth_dir is not None:
    from lesion_jax import score
    truths = score.index_masks(pathlib.Path(truth_dir).expanduser(), "truth", [])
  summary = PredictSummary(written=[], failed=[], notes=[])
  pending: list[tuple[str, np.ndarray]] = []

  def flush() -> None:
    size = segmenter.image_size
    resized = np.stack([pipeline.resize_pair(image, np.zeros((1, 1), np.uint8), size)[0]
                        for _, image in pending])
    probs = segmenter.probabilities(resized)
    for (key, image), prob in zip(pending, probs):
      full = resize_probability(prob, *image.shape[:2])
      truth = _truth_of(truths, key, image.shape)
      summary.written.append(write_outputs(out_dir, key, image, full, segmenter.threshold,
                                           truth, getattr(segmenter, "postprocess", "none")))
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


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m lesion_jax.predict",
      description="Segment images with a trained run (or its TFLite export).")
  parser.add_argument("--workdir", help="the training run (best checkpoint, chosen threshold)")
  parser.add_argument("--images", nargs="+", required=True, help="image files and/or folders")
  parser.add_argument("--out", required=True, help="folder for masks, probabilities, overlays")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the outputs of these images already in --out (by default "
                           "prediction refuses to start)")
  parser.add_argument("--model", help="a trained model shipped with lesion_jax, by name (then "
                                      "no --workdir), or an exported .tflite file to run "
                                      "instead of the run's JAX model")
  parser.add_argument("--truth", help="folder of ground-truth masks: print the ISIC metrics and "
                                      "draw the overlays in the Fig. 1 colours (yellow TP, red "
                                      "FP, green FN)")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="images per JAX call (default: the run's batch_size_per_device)")
  parser.add_argument("--tta", choices=("none", "flips", "dihedral"), default=None,
                      help="test-time augmentation: probabilities averaged over flipped (and "
                           "turned) copies (default: the run's config.evaluation.tta; for "
                           "--model without --workdir, none)")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Command line entry point; returns the exit code (see the module docstring)."""
  args = _parser().parse_args(argv)

  def report(line: str) -> None:
    print(line, file=sys.stderr)

  try:
    files = collect_images(args.images)
    if args.truth and not os.path.isdir(args.truth):
      raise PredictError(f"--truth {args.truth}: no such folder")
    if not args.overwrite:  # before loading the model: the user fixes this first
      check_outputs_free(args.out, files)
    with _quiet_libraries():
      segmenter, notes = load_segmenter(args.workdir, args.model, args.batch_size, args.tta)
      header = training_lines(segmenter.trained_on)
  except LesionJaxError as error:
    report(f"error: {error}")
    return 2
  for line in [f"note: {note}" for note in notes] + header:
    report(line)
  report(f"segmenting {len(files)} file(s) with the {segmenter.description}, threshold "
         f"{segmenter.threshold:g}")
  batch = getattr(segmenter, "batch_size", 1)
  summary = predict(segmenter, files, args.out, batch_size=batch, report=report,
                    truth_dir=args.truth, overwrite=True)
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
