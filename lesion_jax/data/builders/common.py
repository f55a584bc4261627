"""What every real-database builder shares: finding the archives, reading them, checking them.

The official releases come as zips that users may or may not have extracted, sometimes into an
extra top-level folder. Every builder therefore sees its sources through `SourceFile`s: a file
inside a zip and the same file in an extracted folder behave the same, so zips and folders give
identical datasets.

Building is two passes. The first pass pairs every image with its mask and fully decodes both
(PIL `.load()`, which is what catches truncated JPEGs); every problem is collected and reported
in one `SourceFileError` before anything is written. The second pass writes: JPEG sources keep
their original bytes, everything else is re-encoded to PNG, and masks are stored as PNG {0, 1}.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import inspect
import io
import logging
import os
import posixpath
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageFile

from lesion_jax import errors
from lesion_jax.data import splits as splits_lib
from lesion_jax.data.features import encode_png, lesion_features

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "validation", "test")
# Files that archivers and file browsers add; they are never data.
_JUNK_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini")
_JUNK_FOLDERS = ("__MACOSX",)


class MissingArchiveError(errors.MissingPathError):
  """An official archive (or extracted folder) of a database is not in the manual directory."""


class SourceFileError(errors.DataError):
  """Problems in the source files of a database (unpaired, unreadable, mismatched), all listed."""


# --------------------------------------------------------------------------------------------
# Reading archives: zips and extracted folders alike.


@dataclasses.dataclass(frozen=True)
class SourceFile:
  """One file of a release, wherever it lives (a folder or a zip member)."""
  path: str  # posix path inside its archive or scanned tree; compared by name, not by depth.
  location: str  # where a user finds it, for error messages.
  _reader: Callable[[], bytes] = dataclasses.field(repr=False, compare=False)

  @property
  def name(self) -> str:
    return posixpath.basename(self.path)

  @property
  def stem(self) -> str:
    return posixpath.splitext(self.name)[0]

  @property
  def suffix(self) -> str:
    return posixpath.splitext(self.name)[1].lower()

  @property
  def folders(self) -> tuple[str, ...]:
    return tuple(self.path.split("/")[:-1])

  def read(self) -> bytes:
    return self._reader()


class _Zip:
  """A zip opened once and read member by member (builds read sequentially, in one thread)."""

  def __init__(self, path: Path):
    self.path = path
    self._zip: zipfile.ZipFile | None = None

  def open(self) -> zipfile.ZipFile:
    if self._zip is None:
      self._zip = zipfile.ZipFile(self.path)
    return self._zip

  def read(self, member: str) -> bytes:
    return self.open().read(member)


def _is_junk(path: str) -> bool:
  parts = path.split("/")
  return (any(p in _JUNK_FOLDERS for p in parts) or parts[-1] in _JUNK_NAMES
          or parts[-1].startswith("._"))


def list_zip(zip_path: Path, prefix: str = "") -> list[SourceFile]:
  """The files of a zip, as `prefix/inner/path`. Raises SourceFileError for a broken zip."""
  handle = _Zip(zip_path)
  try:
    infos = handle.open().infolist()
  except (zipfile.BadZipFile, OSError) as e:
    raise SourceFileError(f"{zip_path} is not a readable zip archive ({e}); download it again"
                          ) from e
  files = []
  for info in infos:
    if info.is_dir() or _is_junk(info.filename):
      continue
    inner = info.filename.strip("/")
    files.append(SourceFile(
        path=posixpath.join(prefix, inner) if prefix else inner,
        location=f"{inner} (in {zip_path})",
        _reader=lambda m=info.filename: handle.read(m)))
  return files


def list_folder(root: Path, expand_zips: bool = False) -> list[SourceFile]:
  """Every file below `root`, as paths relative to it, sorted.

  With `expand_zips`, a zip `a/X.zip` is read as if it were the extracted folder `a/X/`; where
  both the zip and a sibling folder of that name exist, the zip wins (it is the complete,
  official artefact; the folder may be a partial extraction) and the folder is skipped.
  """
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    here = Path(dirpath)
    rel = here.relative_to(root).as_posix()
    rel = "" if rel == "." else rel
    dirnames[:] = sorted(d for d in dirnames if d not in _JUNK_FOLDERS and not d.startswith("."))
    if expand_zips:
      zip_stems = {f[:-4] for f in filenames if f.lower().endswith(".zip")}
      skipped = [d for d in dirnames if d in zip_stems]
      if skipped:
        logger.info("Using the zips rather than the folders of the same name in %s: %s",
                    here, ", ".join(skipped))
      dirnames[:] = [d for d in dirnames if d not in zip_stems]
    for filename in sorted(filenames):
      path = posixpath.join(rel, filename) if rel else filename
      if _is_junk(path):
        continue
      full = here / filename
      if expand_zips and filename.lower().endswith(".zip"):
        files.extend(list_zip(full, prefix=path[:-4]))
        continue
      files.append(SourceFile(path=path, location=str(full), _reader=full.read_bytes))
  return files


def open_archive(path: Path) -> list[SourceFile]:
  """The files of one archive, a zip or its extracted folder (paths relative to either)."""
  return list_zip(path) if path.is_file() else list_folder(path)


def find_named(manual_dir: Path, names: Iterable[str], max_depth: int = 3) -> dict[str, Path]:
  """Locates files or folders by exact name (case-insensitive) up to `max_depth` levels down.

  Returns {requested name: shallowest match}. A matched folder is not searched further, so an
  extracted archive is never confused with the archive folder nested inside it.
  """
  wanted = {n.lower(): n for n in names}
  found: dict[str, Path] = {}
  manual_dir = Path(manual_dir)
  for dirpath, dirnames, filenames in os.walk(manual_dir):
    depth = len(Path(dirpath).relative_to(manual_dir).parts)
    for entry in sorted(filenames) + sorted(dirnames):
      key = entry.lower()
      if key in wanted and wanted[key] not in found:
        found[wanted[key]] = Path(dirpath) / entry
    dirnames[:] = sorted(d for d in dirnames
                         if d.lower() not in wanted and d not in _JUNK_FOLDERS
                         and not d.startswith(".") and depth + 1 < max_depth)
  return found


def find_archive(manual_dir: Path, stem: str) -> Path | None:
  """The archive `stem.zip` or its extracted folder `stem/`; the zip when both exist."""
  found = find_named(manual_dir, [stem + ".zip", stem])
  return found.get(stem + ".zip") or found.get(stem)


# --------------------------------------------------------------------------------------------
# Problems are collected, then raised together.


class Problems:
  """Collects every problem with the source files so that one error lists them all."""

  def __init__(self, database: str):
    self.database = database
    self._items: list[tuple[str, str]] = []

  def add(self, location: str, message: str) -> None:
    self._items.append((location, message))

  def __len__(self) -> int:
    return len(self._items)

  def __iter__(self) -> Iterator[tuple[str, str]]:
    return iter(self._items)

  def raise_if_any(self) -> None:
    if not self._items:
      return
    lines = "\n".join(f"  - {loc}: {msg}" for loc, msg in self._items)
    raise SourceFileError(
        f"{self.database}: {len(self._items)} problem(s) in the source files; nothing was "
        f"written. Fix or re-download these files, then build again:\n{lines}")


def missing_archive_error(database: str, manual_dir: Path | str, missing: Sequence[str],
                          instructions: str) -> MissingArchiveError:
  names = "\n".join(f"  - {m}" for m in missing)
  return MissingArchiveError(
      f"{database}: not found in the manual directory {manual_dir} (searched up to 3 folder "
      f"levels deep, zips or extracted folders):\n{names}\n"
      f"See the download instructions of the {database!r} builder:\n{instructions.strip()}")


def pair_files(images: Mapping[str, SourceFile], masks: Mapping[str, SourceFile],
               problems: Problems, mask_hint: Callable[[str], str],
               image_hint: Callable[[str], str]) -> list[str]:
  """Ids that have both an image and a mask; every unpaired file becomes a problem."""
  for image_id in sorted(set(images) - set(masks)):
    problems.add(images[image_id].location,
                 f"image without a mask (expected {mask_hint(image_id)})")
  for image_id in sorted(set(masks) - set(images)):
    problems.add(masks[image_id].location,
                 f"mask without an image (expected {image_hint(image_id)})")
  return sorted(set(images) & set(masks))


def index_by_id(files: Iterable[tuple[str, SourceFile]], problems: Problems,
                what: str) -> dict[str, SourceFile]:
  """{id: file}; two files claiming one id are a problem (which one is meant is unknowable)."""
  index: dict[str, SourceFile] = {}
  for image_id, f in files:
    if image_id in index:
      problems.add(f.location,
                   f"second {what} for {image_id} (the first is {index[image_id].location})")
    else:
      index[image_id] = f
  return index


# --------------------------------------------------------------------------------------------
# Decoding and validation.


@contextlib.contextmanager
def _strict_decoding():
  """PIL must raise on truncated files, whatever another library set globally."""
  saved = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    yield
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = saved


def load_image(data: bytes) -> Image.Image:
  """Fully decodes an image (so truncation and corruption surface here, not during training)."""
  with _strict_decoding():
    image = Image.open(io.BytesIO(data))
    image.load()
  return image


def binarize_mask(mask: Image.Image) -> np.ndarray:
  """uint8 HxW with 1 where any channel is > 0: masks come as 0/255, 0/1, grey or RGB."""
  if mask.mode in ("P", "PA"):  # palette indices mean nothing; their colours do.
    mask = mask.convert("RGBA" if mask.mode == "PA" else "RGB")
  elif mask.mode == "1":
    mask = mask.convert("L")
  array = np.asarray(mask)
  if mask.mode in ("LA", "RGBA"):  # alpha is transparency, not lesion.
    array = array[..., :-1]
  if array.ndim == 3:
    array = array.any(axis=-1)
  return (array > 0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class LesionRecord:
  """One image and its mask, ready to be checked and written."""
  image_id: str
  image: SourceFile
  mask: SourceFile
  label: str
  split: str | None = None  # fixed by the release (ISIC 2017 test); None: partitioned later.


def _read_and_load(f: SourceFile, problems: Problems, what: str) -> Image.Image | None:
  try:
    return load_image(f.read())
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError...; all mean unreadable.
    problems.add(f.location, f"unreadable {what} ({type(e).__name__}: {e})")
    return None


def read_mask(f: SourceFile, problems: Problems) -> np.ndarray | None:
  mask = _read_and_load(f, problems, "mask")
  return None if mask is None else binarize_mask(mask)


def validate_records(records: Sequence[LesionRecord], problems: Problems) -> None:
  """Decodes every image and mask fully and checks that each mask matches its image's size."""
  grey_masks = []
  for record in records:
    image = _read_and_load(record.image, problems, "image")
    mask = _read_and_load(record.mask, problems, "mask")
    if image is not None and mask is not None and image.size != mask.size:
      problems.add(record.mask.location,
                   f"mask is {mask.size[0]}x{mask.size[1]} (WxH) but its image "
                   f"{record.image.location} is {image.size[0]}x{image.size[1]}")
    if mask is not None and mask.mode == "L":
      levels = np.count_nonzero(np.bincount(np.asarray(mask).ravel(), minlength=256))
      if levels > 2:
        grey_masks.append(record.image_id)
  if grey_masks:
    logger.warning("%d masks hold more than two grey levels; every value > 0 counts as lesion: %s",
                   len(grey_masks), ", ".join(grey_masks))


def _height_width(image_size) -> tuple[int, int]:
  """(height, width) of a stored size S (square) or (height, width); PIL wants it reversed."""
  size = stored_size(image_size)
  return (size, size) if isinstance(size, int) else size


def encoded_image(data: bytes, image_size) -> io.BytesIO:
  """The bytes tfds stores: RGB JPEGs untouched at native size, anything else as RGB PNG."""
  with _strict_decoding():
    image = Image.open(io.BytesIO(data))
    if image_size is None and image.format == "JPEG" and image.mode == "RGB":
      return io.BytesIO(data)  # no re-encoding: lossless and fast.
    image = image.convert("RGB")
  if image_size is not None:
    # PIL's bilinear filter widens with the scale factor, so downscaling averages (like area).
    image = image.resize(_height_width(image_size)[::-1], Image.BILINEAR)
  # Photographs barely compress: the fastest zlib level is 2-3x faster than encode_png's
  # default and only ~2% larger, which matters for 2594 ISIC or 1300 Dermofit images.
  buffer = io.BytesIO()
  image.save(buffer, format="PNG", compress_level=1)
  buffer.seek(0)
  return buffer


def encoded_mask(data: bytes, image_size) -> io.BytesIO:
  mask = binarize_mask(load_image(data))
  if image_size is not None:  # nearest neighbour: stays exactly {0, 1}.
    size = _height_width(image_size)[::-1]
    mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
  return encode_png(mask)


# --------------------------------------------------------------------------------------------
# The shared builder.


@dataclasses.dataclass(eq=False)
class LesionConfig(tfds.core.BuilderConfig):
  """`image_size=None`: native resolution; an int S: images and masks resized to SxS; a pair
  (H, W): resized to H rows and W columns (ISIC's 4:3 images at (192, 256), say)."""
  image_size: int | tuple[int, int] | None = None


def stored_size(image_size) -> int | tuple[int, int] | None:
  """`image_size` checked: None, a positive int, or a (height, width) pair of them."""
  if image_size is None:
    return None
  pair = image_size if isinstance(image_size, (tuple, list)) else (image_size, image_size)
  if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
    raise errors.ConfigError("image_size must be a positive integer, a (height, width) pair of "
                             f"them, or None, got {image_size!r}")
  return pair[0] if pair[0] == pair[1] else (int(pair[0]), int(pair[1]))


def config_name(image_size) -> str:
  size = stored_size(image_size)
  if size is None:
    return "native"
  return f"resized_{size}" if isinstance(size, int) else f"resized_{size[0]}x{size[1]}"


def config_for_size(image_size) -> LesionConfig:
  size = stored_size(image_size)
  if size is None:
    return NATIVE
  height, width = _height_width(size)
  return LesionConfig(
      name=config_name(size), image_size=size,
      description=f"Images (bilinear) and masks (nearest) resized to {height} rows and {width} "
                  "columns.")


NATIVE = LesionConfig(name="native", description="Images and masks at their native resolution.")
RESIZED_512 = config_for_size(512)


class LesionBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
  """Base of the real-database builders: locate, pair, validate, split, write.

  A subclass sets LABEL_NAMES, DOMAIN, TEST_FRACTION, STRATIFY (split stratified by label),
  MANUAL_DOWNLOAD_INSTRUCTIONS and `_find_records`. Construct with `image_size=S` (or
  `config="resized_512"`) to store images and masks resized to SxS; the default config
  `native` keeps the native resolution.
  """
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: the paper's Table 1 splits."}
  BUILDER_CONFIGS = [NATIVE, RESIZED_512]

  LABEL_NAMES: tuple[str, ...] = ("unknown",)
  DOMAIN: str = "dermoscopic"
  TEST_FRACTION: float = 0.2
  STRATIFY: bool = True
  DESCRIPTION: str = ""
  HOMEPAGE: str = ""
  CITATION: str = ""

  def __init__(self, *, image_size=None, config=None, **kwargs):
    if image_size is not None:
      sized = config_for_size(image_size)
      requested = getattr(config, "name", config)
      if requested is not None and requested != sized.name:
        raise errors.ConfigError(f"image_size={image_size} contradicts config={requested!r}")
      config = next((c for c in self.BUILDER_CONFIGS if c.name == sized.name), sized)
    super().__init__(config=config, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> tfds.core.Path:
    # tfds finds this through importlib.resources, which fails when lesion_jax is imported as a
    # namespace package (an editable install used from outside the repository); the module's
    # own file is all tfds needs (it looks for an optional checksums file next to it).
    return tfds.core.Path(inspect.getfile(cls))

  @property
  def image_size(self) -> int | tuple[int, int] | None:
    return getattr(self.builder_config, "image_size", None)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=lesion_features(self.LABEL_NAMES),
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  @abc.abstractmethod
  def _find_records(self, manual_dir: Path, problems: Problems) -> list[LesionRecord]:
    """Locates and pairs the source files; raises MissingArchiveError, adds pairing problems."""

  def _assign_splits(self, records: Sequence[LesionRecord]) -> dict[str, list[str]]:
    """{split: ids}: the paper's protocol, stratified by label unless STRATIFY is False."""
    ids = [r.image_id for r in records]
    labels = [r.label for r in records] if self.STRATIFY else None
    return splits_lib.train_validation_test(ids, labels, self.TEST_FRACTION)

  def _missing(self, manual_dir: Path | str, missing: Sequence[str]) -> MissingArchiveError:
    return missing_archive_error(self.name, manual_dir, missing, self.MANUAL_DOWNLOAD_INSTRUCTIONS)

  def _manual_dir(self, dl_manager) -> Path:
    try:
      return Path(dl_manager.manual_dir)
    except AssertionError as e:  # tfds: missing or empty folder; name what should be in it.
      raise MissingArchiveError(
          f"{self.name}: the manual directory is missing or empty ({e})") from e

  def _split_generators(self, dl_manager):
    manual_dir = self._manual_dir(dl_manager)
    problems = Problems(self.name)
    records = self._find_records(manual_dir, problems)
    validate_records(records, problems)
    problems.raise_if_any()
    split_ids = self._assign_splits(records)
    by_id = {r.image_id: r for r in records}
    summary = ", ".join(f"{len(split_ids.get(s, []))} {s}" for s in SPLITS)
    logger.info("%s (%s): %d images: %s", self.name, self.builder_config.name, len(records),
                summary)
    # tfds cannot write an empty split; one without images is left out and recorded.
    empty = [s for s in SPLITS if not split_ids.get(s)]
    if empty:
      logger.warning("%s: no images for split(s) %s; they are not written", self.name,
                     ", ".join(empty))
    self.info.metadata["empty_splits"] = empty
    return {s: self._generate_examples([by_id[i] for i in split_ids[s]])
            for s in SPLITS if split_ids.get(s)}

  def _generate_examples(self, records: Sequence[LesionRecord]):
    size = self.image_size
    for record in records:
      yield record.image_id, {
          "image": encoded_image(record.image.read(), size),
          "mask": encoded_mask(record.mask.read(), size),
          "image_id": record.image_id,
          "label": record.label,
          "database": self.name,
          "domain": self.DOMAIN,
      }
