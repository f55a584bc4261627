"""Data augmentation on the device, inside the jitted train step.

Each example draws its own transform from a key that is a pure function of (seed, step,
device, position in the batch), and the image and its mask go through the same geometric
transform (bilinear for the image, nearest neighbour for the mask, so it stays in {0, 1}), so a
resumed or re-run training sees exactly the same augmented batches. Running on the device keeps
the host's work per batch to a memory copy (lesion_jax/data/pipeline.py).

The paper's augmentation (section 2.2), the default, is random flips and quarter turns: each
flip with probability 1/2, then a rotation by 0, 90, 180 or 270 degrees; together they draw
uniformly from the 8 symmetries of the square. A quarter turn swaps height and width, so images
that are not square turn by 0 or 180 degrees only.

Stronger options (config.data.augment), applied after those, in this order:
- geometry, one resampling: a random zoom in `scale` (aspect kept; > 1 crops into the image at
  a random place, < 1 shows more of it), a rotation by any angle in +-`rotation_degrees` about
  the centre, and an elastic distortion (a random displacement of up to `elastic_pixels` on a
  coarse grid, smoothly interpolated); outside the image, pixels are mirrored;
- colour, to the image only: brightness, contrast and saturation factors drawn in 1 +- their
  strength, and a hue rotation of up to +-`hue` turns (in the YIQ colour plane).

Kept rather than dm_pix (0.4.5 compared, same draws): its flips and rot90 give the same pixels but
take Python choices (rot90's k is static), while each example here draws its own under vmap;
its affine_transform/rotate in mode 'mirror' call the same map_coordinates, but from coordinates
rounded otherwise (images up to 0.0035 of 255 apart, masks off by nearest-neighbour ties) and
interpolating along the channel axis too; its elastic_deformation is another distortion (per-pixel
noise blurred by a Gaussian, not a coarse grid) and cannot share the zoom and rotation's single
resampling.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.scipy.ndimage import map_coordinates

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """Which transforms the train step draws (static: part of the compiled step)."""
  flip: bool = False  # horizontal and vertical flips, each with probability 1/2
  rotate: bool = False  # quarter turns (half turns for images that are not square)
  scale: tuple[float, float] = (1.0, 1.0)  # random zoom range, aspect kept
  rotation_degrees: float = 0.0  # rotation by any angle in [-r, r]
  elastic_pixels: float = 0.0  # largest displacement of the elastic distortion
  elastic_grid: int = 4  # control points per side of the distortion
  brightness: float = 0.0  # factor drawn in [1 - b, 1 + b]
  contrast: float = 0.0
  saturation: float = 0.0
  hue: float = 0.0  # hue rotation in [-h, h] turns

  def __post_init__(self):
    low, high = self.scale
    if not 0 < low <= high:
      raise ValueError(f"augment scale must be a range 0 < low <= high, got {self.scale}")
    for name in ("rotation_degrees", "elastic_pixels", "brightness", "contrast", "saturation",
                 "hue"):
      if getattr(self, name) < 0:
        raise ValueError(f"augment {name} must be >= 0, got {getattr(self, name)}")
    if self.elastic_grid < 2:
      raise ValueError(f"augment elastic_grid must be >= 2, got {self.elastic_grid}")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "AugmentOptions":
    more = config.data.augment
    return cls(flip=bool(config.data.flip), rotate=bool(config.data.rotate),
               scale=tuple(float(v) for v in more.scale),
               rotation_degrees=float(more.rotation_degrees),
               elastic_pixels=float(more.elastic_pixels), elastic_grid=int(more.elastic_grid),
               brightness=float(more.brightness), contrast=float(more.contrast),
               saturation=float(more.saturation), hue=float(more.hue))

  @property
  def geometric(self) -> bool:
    return self.scale != (1.0, 1.0) or self.rotation_degrees > 0 or self.elastic_pixels > 0

  @property
  def colour(self) -> bool:
    return any(v > 0 for v in (self.brightness, self.contrast, self.saturation, self.hue))

  @property
  def active(self) -> bool:
    return self.flip or self.rotate or self.geometric or self.colour


# ----------------------------------------------------------------------------------------------
# Flips and quarter turns (exact: pixels move, none is interpolated).

def _dihedral(x: Array, flip_rows: Array, flip_columns: Array, quarter_turns: Array) -> Array:
  """One (H, W, C) image flipped, then turned counter-clockwise by `quarter_turns` (traced).

  Written as at most three selects (flip columns, flip rows, transpose): a quarter turn is a
  transpose and a flip (np.rot90(x) = x.T[::-1]), and flips move across a transpose by
  swapping axes, so every flip-then-turn has that form. Selecting among the four turned copies
  would read and write each image four times.
  """
  odd, half_or_more = quarter_turns % 2 == 1, quarter_turns >= 2
  # k = 1: columns flipped; k = 2: both; k = 3: rows flipped (each after the drawn flips).
  x = jnp.where(flip_columns ^ (quarter_turns == 1) ^ (quarter_turns == 2), x[:, ::-1], x)
  x = jnp.where(flip_rows ^ half_or_more, x[::-1], x)
  if x.shape[0] == x.shape[1]:
    return jnp.where(odd, x.swapaxes(0, 1), x)
  return x  # not square: odd quarter turns are never drawn


def draw(key: Array, options: AugmentOptions, square: bool) -> dict[str, Array]:
  """The random choices of the flips and quarter turns for one example."""
  flip_key, turn_key = jax.random.split(key)
  flips = jax.random.bernoulli(flip_key, 0.5, (2,)) & options.flip
  if options.rotate:
    turns = jax.random.randint(turn_key, (), 0, 4)
    turns = turns if square else 2 * (turns % 2)
  else:
    turns = jnp.zeros((), jnp.int32)
  return {"flip_rows": flips[0], "flip_columns": flips[1], "quarter_turns": turns}


def apply(choices: dict[str, Array], image: Array, mask: Array) -> tuple[Array, Array]:
  """The drawn flips and turns of one example, applied alike to its image and its mask."""
  return (_dihedral(image, **choices), _dihedral(mask, **choices))


# ----------------------------------------------------------------------------------------------
# Zoom, rotation by any angle, elastic distortion: one resampling.

def source_coordinates(shape: tuple[int, int], zoom: Array, angle: Array, shift: Array,
                       displacement: Array | None = None) -> Array:
  """(2, H, W) input (row, column) coordinates that each output pixel takes its value from.

  The output is the input zoomed by `zoom` about its centre moved by `shift` (rows, columns,
  in pixels), and rotated counter-clockwise by `angle` radians; `displacement` (2, H, W) adds
  an elastic offset to each output pixel first.
  """
  height, width = shape
  rows, columns = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                               jnp.arange(width, dtype=jnp.float32), indexing="ij")
  if displacement is not None:
    rows, columns = rows + displacement[0], columns + displacement[1]
  centre_row, centre_column = (height - 1) / 2, (width - 1) / 2
  y, x = rows - centre_row, columns - centre_column
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  # Inverse map: undo the rotation, then the zoom. With rows pointing down, a counter-clockwise
  # turn of the picture (np.rot90's) takes output (y, x) from input (cos y + sin x, ...).
  source_y = (cos * y + sin * x) / zoom
  source_x = (-sin * y + cos * x) / zoom
  return jnp.stack([source_y + centre_row + shift[0], source_x + centre_column + shift[1]])


def resample(x: Array, coordinates: Array, order: int) -> Array:
  """(H, W, C) `x` at (2, H, W) `coordinates`: bilinear (order 1) or nearest (0), mirrored."""
  sample = lambda channel: map_coordinates(channel, list(coordinates), order=order,  # noqa
                                           mode="mirror")
  return jax.vmap(sample, in_axes=-1, out_axes=-1)(x.astype(jnp.float32))


def elastic_displacement(key: Array, shape: tuple[int, int], pixels: float,
                         grid: int) -> Array:
  """(2, H, W) smooth offsets: uniform in +-`pixels` on a `grid` x `grid` lattice, bilinear
  between (a grid distortion)."""
  coarse = jax.random.uniform(key, (2, grid, grid), minval=-pixels, maxval=pixels)
  return jax.image.resize(coarse, (2, *shape), method="bilinear")


def draw_geometry(key: Array, options: AugmentOptions, shape: tuple[int, int]) -> dict:
  zoom_key, angle_key, shift_key, elastic_key = jax.random.split(key, 4)
  low, high = options.scale
  # Zoom drawn uniformly in log scale: zooming in by 1.25 is as likely as out by 1.25.
  zoom = jnp.exp(jax.random.uniform(zoom_key, (), minval=math.log(low), maxval=math.log(high)))
  angle = jnp.deg2rad(jax.random.uniform(angle_key, (), minval=-options.rotation_degrees,
                                         maxval=options.rotation_degrees))
  # Zoomed in, the crop may sit anywhere inside the image; zoomed out, the image stays centred.
  room = jnp.maximum(1.0 - 1.0 / zoom, 0.0) * jnp.asarray(shape, jnp.float32) / 2
  shift = jax.random.uniform(shift_key, (2,), minval=-1.0, maxval=1.0) * room
  displacement = (elastic_displacement(elastic_key, shape, options.elastic_pixels,
                                       options.elastic_grid)
                  if options.elastic_pixels > 0 else None)
  return {"zoom": zoom, "angle": angle, "shift": shift, "displacement": displacement}


def warp(image: Array, mask: Array, geometry: dict) -> tuple[Array, Array]:
  """Image (bilinear) and mask (nearest) through one drawn geometry."""
  coordinates = source_coordinates(image.shape[:2], **geometry)
  return resample(image, coordinates, order=1), resample(mask, coordinates, order=0)


# ----------------------------------------------------------------------------------------------
# Colour.

# NumPy constants: no device array at import, and the inverse is taken once, not per trace.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                np.float32)
_RGB_FROM_YIQ = np.linalg.inv(_YIQ).astype(np.float32)


def _grey(image: Array) -> Array:
  return image @ _YIQ[0][:, None]


def adjust_colour(image: Array, brightness: Array, contrast: Array, saturation: Array,
                  hue_turns: Array) -> Array:
  """An (H, W, 3) RGB image (0-255, float) with the given factors and hue rotation."""
  image = image * brightness
  mean_grey = _grey(image).mean()
  image = mean_grey + (image - mean_grey) * contrast
  grey = _grey(image)
  image = grey + (image - grey) * saturation
  angle = 2 * jnp.pi * hue_turns
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rotate_iq = jnp.array([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
  image = image @ (_RGB_FROM_YIQ @ rotate_iq @ _YIQ).T
  return jnp.clip(image, 0.0, 255.0)


def draw_colour(key: Array, options: AugmentOptions) -> dict:
  keys = jax.random.split(key, 4)
  factor = lambda k, strength: jax.random.uniform(  # noqa: E731
      k, (), minval=1.0 - strength, maxval=1.0 + strength)
  return {"brightness": factor(keys[0], options.brightness),
          "contrast": factor(keys[1], options.contrast),
          "saturation": factor(keys[2], options.saturation),
          "hue_turns": jax.random.uniform(keys[3], (), minval=-options.hue, maxval=options.hue)}


# ----------------------------------------------------------------------------------------------
# A batch.

def _augment_one(key: Array, image: Array, mask: Array,
                 options: AugmentOptions) -> tuple[Array, Array]:
  # The flips and turns draw from the example's key itself, the other transforms from keys
  # folded from it: adding them leaves the paper's draws as they were.
  geometry_key, colour_key = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
  square = image.shape[0] == image.shape[1]
  image, mask = apply(draw(key, options, square), image, mask)
  if options.geometric:
    image, mask = warp(image, mask, draw_geometry(geometry_key, options, image.shape[:2]))
  if options.colour:
    image = adjust_colour(image.astype(jnp.float32), **draw_colour(colour_key, options))
  return image, mask.astype(jnp.uint8) if options.geometric else mask


def augment_batch(key: Array, images: Array, masks: Array,
                  options: AugmentOptions) -> tuple[Array, Array]:
  """(B, H, W, 3) images and (B, H, W, 1) masks, each example with its own draw from `key`.

  The images come back as given (uint8) when only flips and turns apply, else as float32 in
  [0, 255]; the masks stay {0, 1}.
  """
  if not options.active:
    return images, masks
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda k, x, m: _augment_one(k, x, m, options))(keys, images, masks)


__all__ = ["AugmentOptions", "adjust_colour", "apply", "augment_batch", "draw",
           "draw_colour", "draw_geometry", "elastic_displacement", "resample",
           "source_coordinates", "warp"]
