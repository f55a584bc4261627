"""The input pipeline: tfds data sources -> grain -> batches shaped for the devices.

Preprocessing follows the paper (section 2.2): resize every image to a fixed square size (512 in
the paper) and standardise it per image. Masks are resized with nearest neighbour so they stay
binary. Augmentation (flips and quarter turns) draws once per example and applies the same draw
to the image and its mask.

Training batches form a grain `MapDataset` indexed by step: batch k is a pure function of
(seed, k). Resuming at step k therefore continues exactly where the killed run stopped, and
every host can read its own shard without coordination.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np
from PIL import Image

from lesion_jax import parallel


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """How raw examples become model inputs."""
  image_size: int
  flip: bool = False
  rotate: bool = False

  def __post_init__(self):
    if not isinstance(self.image_size, int) or self.image_size < 8:
      raise ValueError(f"config.data.image_size must be an integer >= 8, got {self.image_size!r}")


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Resizes to size x size: bilinear for the image, nearest neighbour for the mask."""
  if mask.ndim == 3:
    mask = mask[..., 0]
  if image.shape[:2] != (size, size):
    image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
  if mask.shape[:2] != (size, size):
    mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
  return image, mask


def standardize(image: np.ndarray) -> np.ndarray:
  """Per-image standardisation: zero mean, unit variance over all pixels and channels.

  The standard deviation is floored at 1/sqrt(N), as tf.image.per_image_standardization does,
  so a flat image does not divide by zero.
  """
  image = image.astype(np.float32)
  mean = image.mean()
  std = max(float(image.std()), 1.0 / math.sqrt(image.size))
  return (image - mean) / std


def augment_pair(image: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator, flip: bool, rotate: bool):
  """Random flips and quarter turns, one draw shared by image and mask (exact for masks)."""
  if flip:
    if rng.random() < 0.5:
      image, mask = image[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
      image, mask = image[::-1], mask[::-1]
  if rotate:
    k = int(rng.integers(4))
    image, mask = np.rot90(image, k), np.rot90(mask, k)
  return image, mask


def prepare_example(example: Mapping[str, Any], preprocess: Preprocess,
                    rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
  """A raw tfds example -> {'image': float32 SxSx3, 'mask': float32 SxSx1}."""
  image, mask = resize_pair(np.asarray(example["image"]), np.asarray(example["mask"]),
                            preprocess.image_size)
  if rng is not None:
    image, mask = augment_pair(image, mask, rng, preprocess.flip, preprocess.rotate)
  return {
      "image": standardize(np.ascontiguousarray(image)),
      "mask": (np.ascontiguousarray(mask) > 0).astype(np.float32)[..., None],
  }


def _stack_for_devices(examples: Sequence[dict], num_devices: int) -> dict[str, np.ndarray]:
  return {k: parallel.shard(np.stack([e[k] for e in examples]), num_devices)
          for k in examples[0]}


def training_batches(sources: Sequence[Any], preprocess: Preprocess, *, seed: int,
                     batch_size_per_device: int, num_devices: int,
                     process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """An endless, step-indexed MapDataset of training batches.

  Several sources (a mixture such as the paper's set D = ISIC + PH2) are concatenated and
  shuffled together, so each database is drawn in proportion to its size. Every epoch is a new
  permutation. Each process takes its contiguous share of every global batch.
  Element k is the k-th batch: {'image': (devices, per_device, S, S, 3), 'mask': (..., 1)}.
  """
  dataset = grain.MapDataset.concatenate([grain.MapDataset.source(s) for s in sources])
  dataset = dataset.shuffle(seed=seed).repeat()

  def transform(example, rng: np.random.Generator):
    return prepare_example(example, preprocess, rng)

  # Augmentation draws depend on the global position only, and each process takes a contiguous
  # slice of every global batch: process p's devices see exactly what devices
  # [p * num_devices, (p + 1) * num_devices) would see in a one-process run of the same global
  # batch, so a multi-host run trains like a single-host one with as many devices.
  dataset = dataset.random_map(transform, seed=seed + 1)
  local_batch = batch_size_per_device * num_devices
  if process_count > 1:
    global_batch = local_batch * process_count
    examples = dataset
    positions = grain.MapDataset.range(0, 2**62).map(
        lambda i: (i // local_batch) * global_batch + process_index * local_batch
        + i % local_batch)
    dataset = positions.map(lambda position: examples[position])
  return dataset.batch(local_batch, drop_remainder=True,
                       batch_fn=lambda examples: _stack_for_devices(examples, num_devices))


def iterate_from(dataset: grain.MapDataset, start: int, num_threads: int = 2,
                 prefetch: int = 4) -> Iterator[dict]:
  """Iterates a step-indexed dataset from element `start`, reading ahead on threads."""
  remaining = dataset[start:] if start else dataset
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  return iter(remaining.to_iter_dataset(options))


def evaluation_batches(source: Any, preprocess: Preprocess, *, batch_size_per_device: int,
                       num_devices: int, num_threads: int = 2,
                       process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Every example exactly once, in order, in full-size batches.

  The last batch is padded with zero images; its `valid` entries are 0 there, so metrics skip
  the padding. `index` is each example's position in the source (-1 for padding), which lets a
  report find an image again. With several processes each reads its own interleaved share.
  """
  indices = list(range(process_index, len(source), process_count))
  local_batch = batch_size_per_device * num_devices
  # Every process must run the same number of (pmapped) eval steps, so all pad to the count of
  # the process with the most examples.
  total_batches = num_batches(-(-len(source) // process_count), local_batch)
  dataset = grain.MapDataset.source(indices).map(
      lambda i: dict(prepare_example(source[i], preprocess), index=np.int32(i)))
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * local_batch)
  size = preprocess.image_size
  blank = {"image": np.zeros((size, size, 3), np.float32),
           "mask": np.zeros((size, size, 1), np.float32), "index": np.int32(-1)}

  def emit(examples: list[dict]) -> dict:
    valid = np.zeros(local_batch, np.float32)
    valid[:len(examples)] = 1
    batch = _stack_for_devices(examples + [blank] * (local_batch - len(examples)), num_devices)
    batch["valid"] = valid.reshape(num_devices, -1)
    return batch

  emitted = 0
  pending: list[dict] = []
  for example in dataset.to_iter_dataset(options):
    pending.append(example)
    if len(pending) == local_batch:
      yield emit(pending)
      emitted += 1
      pending = []
  if pending:
    yield emit(pending)
    emitted += 1
  for _ in range(total_batches - emitted):
    yield emit([])


def num_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)
