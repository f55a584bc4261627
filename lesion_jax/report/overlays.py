"""The overlays `lesion_jax.predict` writes: a prediction, or its comparison with a truth.

- `overlay`: the predicted lesion lightly filled and outlined in blue;
- `comparison_overlay`: each TP, FP and FN pixel blended in the Fig. 1 colour of the reports
  (`figures.FIG1_COLOURS`: yellow, red, green), TN left as photographed;
- `draw_overlay`: either of them below a strip with its key (`with_key`), as predict writes it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from lesion_jax.report import figures

# Azure blue: none of the Fig. 1 colours (figures.FIG1_COLOURS: yellow, red, green, black), so
# a prediction is never read as a comparison with a truth; and it stands out on skin.
PREDICTION_COLOUR = (0, 160, 255)
FILL_OPACITY = 0.2  # light, so the lesion's own pattern stays visible inside the outline
COMPARISON_OPACITY = 0.5
KEY_BACKGROUND, KEY_TEXT = (255, 255, 255), (0, 0, 0)


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


Colour = tuple[int, int, int]


def _blend(out: np.ndarray, where: np.ndarray, colour: Colour, opacity: float) -> None:
  out[where] = (1 - opacity) * out[where] + opacity * np.asarray(colour, np.float32)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The image with the predicted lesion lightly filled and outlined in blue, (H, W, 3) uint8."""
  out = image.astype(np.float32)
  _blend(out, mask, PREDICTION_COLOUR, FILL_OPACITY)
  # A border about 1/250 of the image side stays visible on full-resolution dermoscopy.
  out[_outline(mask, max(1, min(mask.shape) // 250))] = PREDICTION_COLOUR
  return np.round(out).astype(np.uint8)


def comparison_overlay(image: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The image with the Fig. 1 colour of each TP, FP and FN pixel blended in; TN untouched."""
  out = image.astype(np.float32)
  for kind, where in (("tp", truth & mask), ("fp", ~truth & mask), ("fn", truth & ~mask)):
    _blend(out, where, figures.FIG1_COLOURS[kind], COMPARISON_OPACITY)
  return np.round(out).astype(np.uint8)


def with_key(drawn: np.ndarray, entries: Sequence[tuple[Colour | None, str]]) -> np.ndarray:
  """`drawn` below a strip holding the key: a swatch and a label per entry, wrapped.

  A strip above the image rather than a box on it, so that the key hides no part of the lesion;
  the image keeps its pixel grid at the bottom left. Images narrower than the widest entry get
  a wider canvas, white on the right.
  """
  from PIL import ImageDraw, ImageFont
  height, width = drawn.shape[:2]
  size = max(10, min(height, width) // 40)  # the text's height: 26 pixels on a 1640x1043 photo
  try:
    font = ImageFont.load_default(size=size)
  except TypeError:  # Pillow 10.0: only the small bitmap font
    font = ImageFont.load_default()
  gap = size // 2
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  widths = [(size + gap if colour else 0) + int(np.ceil(measure.textlength(label, font=font)))
            for colour, label in entries]
  canvas_width = max(width, max(widths) + 2 * gap)
  places, x, y = [], gap, gap
  for entry_width in widths:
    if x > gap and x + entry_width + gap > canvas_width:
      x, y = gap, y + size + gap
    places.append((x, y))
    x += entry_width + 2 * gap
  strip = y + size + gap
  canvas = Image.new("RGB", (canvas_width, strip + height), KEY_BACKGROUND)
  canvas.paste(Image.fromarray(drawn), (0, strip))
  draw = ImageDraw.Draw(canvas)
  for (colour, label), (x, y) in zip(entries, places):
    if colour:
      draw.rectangle((x, y, x + size - 1, y + size - 1), fill=colour, outline=(128, 128, 128))
      x += size + gap
    draw.text((x, y + size / 2), label, fill=KEY_TEXT, font=font, anchor="lm")
  return np.asarray(canvas)


def draw_overlay(image: np.ndarray, mask: np.ndarray, threshold: float,
                 truth: np.ndarray | None = None) -> np.ndarray:
  """The overlay file's pixels: the prediction (or, given a truth, the comparison) and its key."""
  if truth is None:
    key = [(PREDICTION_COLOUR, f"predicted lesion (p >= {threshold:.2f})")]
    return with_key(overlay(image, mask), key)
  key = [(figures.FIG1_COLOURS[kind], label) for kind, label in figures.FIG1_LEGEND[:3]]
  return with_key(comparison_overlay(image, truth, mask),
                  key + [(None, "true negative: image unchanged")])
