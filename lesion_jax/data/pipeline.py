"""The input pipeline: tfds data sources -> a decoded cache -> grain -> uint8 batches for the devices.

The host does only what an example needs once: decode it and resize it to the training size
(bilinear for the image, nearest neighbour for the mask, so it stays binary; the paper resizes
to 512x512). Standardisation and augmentation run inside the jitted steps, on the device
(`inference.standardize`, `lesion_jax/augment.py`), so the host sends uint8 pixels and a batch
costs it a memory copy: it keeps ahead of any accelerator at the paper's batch of 4.

Decoded once: `decode_split` reads every example of a split into two uint8 arrays at the
training size, when they fit in `config.data.cache_gb` (2000 ISIC images at 256x256 take
0.5 GB); otherwise examples are decoded as they are read.

Training batches form a grain `MapDataset` indexed by step: batch k is a pure function of
(seed, k). Resuming at step k therefore continues exactly where the killed run stopped, and
every host can read its own shard without coordination.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np
from PIL import Image

from lesion_jax import parallel
from lesion_jax.errors import ConfigError

MIN_SIDE = 8


def image_shape(size: int | Sequence[int], key: str = "config.data.image_size"
                ) -> tuple[int, int]:
  """(height, width) of an image size given as one int (square) or a (height, width) pair."""
  pair = ((size, size) if isinstance(size, (int, np.integer))
          else tuple(size) if isinstance(size, (tuple, list)) else ())
  if (len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                            or v < MIN_SIDE for v in pair)):
    raise ConfigError(f"{key} must be an integer >= {MIN_SIDE} or a (height, width) pair of "
                      f"them, got {size!r}")
  return int(pair[0]), int(pair[1])


def resize_pair(image: np.ndarray, mask: np.ndarray,
                size: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """Resizes to `size`: bilinear for the image, nearest neighbour for the (H, W) mask."""
  height, width = image_shape(size)
  if mask.ndim == 3:
    mask = mask[..., 0]
  if image.shape[:2] != (height, width):
    image = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
  if mask.shape[:2] != (height, width):
    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
  return image, mask


def prepare_example(example: Mapping[str, Any], size) -> dict[str, np.ndarray]:
  """A raw tfds example -> {'image': uint8 HxWx3, 'mask': uint8 HxWx1 in {0, 1}}."""
  image, mask = resize_pair(np.asarray(example["image"]), np.asarray(example["mask"]), size)
  return {"image": np.ascontiguousarray(image, np.uint8),
          "mask": (np.asarray(mask) > 0).astype(np.uint8)[..., None]}


@dataclasses.dataclass
class DecodedSplit:
  """Every example of a split, decoded and resized once: a random-access source in memory."""
  images: np.ndarray  # (N, H, W, 3) uint8
  masks: np.ndarray  # (N, H, W, 1) uint8 in {0, 1}

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": self.images[index], "mask": self.masks[index]}

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {"image": self.images[indices], "mask": self.masks[indices]}


class PreparedSource:
  """Sources read as one and prepared on every read (when they do not fit in the cache)."""

  def __init__(self, sources: Sequence[Any], size):
    self.source = grain.MapDataset.concatenate([grain.MapDataset.source(s) for s in sources])
    self.size = size

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return prepare_example(self.source[int(index)], self.size)

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    examples = [self[i] for i in indices]
    return {k: np.stack([e[k] for e in examples]) for k in ("image", "mask")}


def decoded_bytes(num_examples: int, size) -> int:
  height, width = image_shape(size)
  return num_examples * height * width * 4  # 3 image channels and the mask, uint8


def decode_split(sources: Sequence[Any], size, *, cache_gb: float, num_threads: int = 2,
                 what: str = "train") -> DecodedSplit | PreparedSource:
  """The sources as one prepared source: decoded into memory once when they fit in `cache_gb`."""
  prepared = PreparedSource(sources, size)
  needed = decoded_bytes(len(prepared), size)
  if not cache_gb or needed > cache_gb * 2**30:
    if cache_gb:
      logging.info("%s: %d images take %.1f GB decoded, over config.data.cache_gb = %g; they "
                   "are decoded as they are read", what, len(prepared), needed / 2**30, cache_gb)
    return prepared
  height, width = image_shape(size)
  images = np.empty((len(prepared), height, width, 3), np.uint8)
  masks = np.empty((len(prepared), height, width, 1), np.uint8)

  def fill(index: int) -> None:
    example = prepared[index]
    images[index], masks[index] = example["image"], example["mask"]

  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    list(pool.map(fill, range(len(prepared))))
  return DecodedSplit(images, masks)


def _shard_batch(batch: dict[str, np.ndarray], num_devices: int) -> dict[str, np.ndarray]:
  return {k: parallel.shard(v, num_devices) for k, v in batch.items()}


def training_batches(source, *, seed: int, batch_size_per_device: int, num_devices: int,
                     process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """An endless, step-indexed MapDataset of training batches of a prepared `source`.

  `source` (from `decode_split`) holds every training database read as one, so a mixture
  (the paper's set D = ISIC + PH2) is drawn in proportion to the databases' sizes. Every epoch
  is a new permutation. Each process takes its contiguous share of every global batch, so
  process p's devices see exactly what devices [p * num_devices, (p + 1) * num_devices) see in
  a one-process run of the same global batch: a multi-host run trains like a single-host one.
  Element k is the k-th batch: {'image': uint8 (devices, per_device, H, W, 3), 'mask': uint8
  (..., 1)}.
  """
  order = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
  local_batch = batch_size_per_device * num_devices
  if process_count > 1:
    global_batch = local_batch * process_count
    shuffled = order
    order = grain.MapDataset.range(0, 2**62).map(
        lambda i: shuffled[(i // local_batch) * global_batch + process_index * local_batch
                           + i % local_batch])
  return order.batch(local_batch, drop_remainder=True).map(
      lambda indices: _shard_batch(source.gather(np.asarray(indices)), num_devices))


def iterate_from(dataset: grain.MapDataset, start: int, num_threads: int = 2,
                 prefetch: int = 4) -> Iterator[dict]:
  """Iterates a step-indexed dataset from element `start`, reading ahead on threads."""
  remaining = dataset[start:] if start else dataset
  options = grain.ReadOptions(num_threads=num_threads,
                              prefetch_buffer_size=max(prefetch, num_threads))
  return iter(remaining.to_iter_dataset(options))


def evaluation_batches(source: Any, size, *, batch_size_per_device: int, num_devices: int,
                       num_threads: int = 2, process_index: int = 0,
                       process_count: int = 1) -> Iterator[dict]:
  """Every example exactly once, in order, in full-size batches of uint8 images and masks.

  `source` holds raw tfds examples, or prepared ones (a `DecodedSplit`). The last batch is
  padded with zero images; its `valid` entries are 0 there, so metrics skip the padding.
  `index` is each example's position in the source (-1 for padding), which lets a report find
  an image again. With several processes each reads its own interleaved share.
  """
  indices = list(range(process_index, len(source), process_count))
  local_batch = batch_size_per_device * num_devices
  # Every process must run the same number of (pmapped) eval steps, so all pad to the count of
  # the process with the most examples.
  total_batches = num_batches(-(-len(source) // process_count), local_batch)
  read = ((lambda i: source[i]) if isinstance(source, DecodedSplit)
          else (lambda i: prepare_example(source[i], size)))
  dataset = grain.MapDataset.source(indices).map(lambda i: dict(read(i), index=np.int32(i)))
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * local_batch)
  height, width = image_shape(size)
  blank = {"image": np.zeros((height, width, 3), np.uint8),
           "mask": np.zeros((height, width, 1), np.uint8), "index": np.int32(-1)}

  def emit(examples: list[dict]) -> dict:
    valid = np.zeros(local_batch, np.float32)
    valid[:len(examples)] = 1
    padded = examples + [blank] * (local_batch - len(examples))
    batch = {k: np.stack([e[k] for e in padded]) for k in ("image", "mask", "index")}
    batch["valid"] = valid
    return _shard_batch(batch, num_devices)

  emitted, pending = 0, []
  for example in dataset.to_iter_dataset(options):
    pending.append(example)
    if len(pending) == local_batch:
      yield emit(pending)
      emitted, pending = emitted + 1, []
  if pending:
    yield emit(pending)
    emitted += 1
  for _ in range(total_batches - emitted):
    yield emit([])


def num_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)
