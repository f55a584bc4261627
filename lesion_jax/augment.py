"""Data augmentation on the device, inside the jitted train step.

Each example draws its own transform from a key that is a pure function of (seed, step,
device, position in the batch), and the image and its mask go through the same transform, so
a resumed or re-run training sees exactly the same augmented batches. Running on the device
keeps the host's work per batch to a memory copy (lesion_jax/data/pipeline.py).

The paper's augmentation (section 2.2) is random flips and quarter turns: each flip with
probability 1/2, then a rotation by 0, 90, 180 or 270 degrees. Together they draw uniformly
from the 8 symmetries of the square. A quarter turn swaps height and width, so images that are
not square turn by 0 or 180 degrees only.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """Which transforms the train step draws (static: part of the compiled step)."""
  flip: bool = False  # horizontal and vertical flips, each with probability 1/2
  rotate: bool = False  # quarter turns (half turns for images that are not square)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "AugmentOptions":
    return cls(flip=bool(config.data.flip), rotate=bool(config.data.rotate))

  @property
  def active(self) -> bool:
    return self.flip or self.rotate


def _dihedral(x: Array, flip_rows: Array, flip_columns: Array, quarter_turns: Array) -> Array:
  """One (H, W, C) image flipped and turned counter-clockwise by `quarter_turns` (traced)."""
  x = jnp.where(flip_columns, x[:, ::-1], x)
  x = jnp.where(flip_rows, x[::-1], x)
  if x.shape[0] == x.shape[1]:
    turns = [jnp.rot90(x, k, axes=(0, 1)) for k in range(4)]
    return jnp.select([quarter_turns == k for k in range(4)], turns)
  # Not square: a half turn is both flips; odd quarter turns are not drawn.
  return jnp.where(quarter_turns == 2, x[::-1, ::-1], x)


def draw(key: Array, options: AugmentOptions, square: bool) -> dict[str, Array]:
  """The random choices for one example."""
  flip_key, turn_key = jax.random.split(key)
  flips = jax.random.bernoulli(flip_key, 0.5, (2,)) & options.flip
  if options.rotate:
    turns = jax.random.randint(turn_key, (), 0, 4)
    turns = turns if square else 2 * (turns % 2)
  else:
    turns = jnp.zeros((), jnp.int32)
  return {"flip_rows": flips[0], "flip_columns": flips[1], "quarter_turns": turns}


def apply(choices: dict[str, Array], image: Array, mask: Array) -> tuple[Array, Array]:
  """The drawn transform of one example, applied alike to its image and its mask."""
  return (_dihedral(image, **choices), _dihedral(mask, **choices))


def augment_batch(key: Array, images: Array, masks: Array,
                  options: AugmentOptions) -> tuple[Array, Array]:
  """(B, H, W, 3) images and (B, H, W, 1) masks, each example with its own draw from `key`."""
  if not options.active:
    return images, masks
  square = images.shape[1] == images.shape[2]
  keys = jax.random.split(key, images.shape[0])
  choices = jax.vmap(lambda k: draw(k, options, square))(keys)
  return jax.vmap(apply)(choices, images, masks)


__all__ = ["AugmentOptions", "apply", "augment_batch", "draw"]
