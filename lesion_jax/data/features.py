"""The one feature layout that every lesion database builder exposes.

Training, evaluation and the statistics command read only these keys, so a new database plugs
in by producing them. Images and masks are handed to tfds as *encoded bytes* (PNG or the source
JPEG): tfds then stores them untouched and needs no TensorFlow to prepare or read the data.
"""
from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

DOMAINS = ("dermoscopic", "macroscopic")


def lesion_features(label_names: tuple[str, ...]) -> tfds.features.FeaturesDict:
  """Features of one database; `label_names` are its diagnosis classes (("unknown",) if none)."""
  return tfds.features.FeaturesDict({
      # uint8 HxWx3, stored as the encoded bytes given (JPEG sources stay JPEG, others PNG).
      "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
      # uint8 HxWx1 with values {0, 1}, always PNG (lossless).
      "mask": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png"),
      "image_id": tfds.features.Text(),
      "label": tfds.features.ClassLabel(names=list(label_names)),
      "database": tfds.features.Text(),
      "domain": tfds.features.ClassLabel(names=list(DOMAINS)),
  })


def encode_png(array: np.ndarray, compress_level: int = 1) -> io.BytesIO:
  """PNG bytes of a uint8 HxW, HxWx1 or HxWx3 array, as a file object tfds stores verbatim.

  Level 1 (fastest) is about 4x quicker to write than PIL's default and only ~4% larger; a
  dataset is prepared once but its size barely matters next to its preparation time.
  """
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f"expected a uint8 array, got {array.dtype}")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG", compress_level=compress_level)
  buffer.seek(0)
  return buffer
