"""The input pipeline: resizing, the decoded cache, batching by step, shards and padding."""
import numpy as np
import pytest

from lesion_jax.data import pipeline


def fake_source(n, height=20, width=30, seed=0, tag=0):
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(n):
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width, 1), np.uint8)
    mask[height // 4: height // 2, width // 3: width // 2] = 1
    examples.append({"image": image, "mask": mask, "image_id": f"{tag}_{i}", "tag": tag})
  return examples


def test_resize_keeps_masks_binary_and_images_smooth():
  image = np.zeros((40, 60, 3), np.uint8)
  image[:, 30:] = 200
  mask = np.zeros((40, 60, 1), np.uint8)
  mask[:, 30:] = 1
  out_image, out_mask = pipeline.resize_pair(image, mask, 16)
  assert out_image.shape == (16, 16, 3) and out_mask.shape == (16, 16)
  assert set(np.unique(out_mask)) == {0, 1}  # nearest neighbour: no in-between values
  assert len(np.unique(out_image)) > 2  # bilinear: the edge is blended


def test_prepared_examples_are_uint8_at_the_size_with_binary_masks():
  example = fake_source(1, 40, 60)[0]
  prepared = pipeline.prepare_example(example, 16)
  assert prepared["image"].shape == (16, 16, 3) and prepared["image"].dtype == np.uint8
  assert prepared["mask"].shape == (16, 16, 1) and set(np.unique(prepared["mask"])) <= {0, 1}
  assert pipeline.prepare_example(example, (12, 20))["image"].shape == (12, 20, 3)


def test_a_split_is_decoded_once_into_memory_when_it_fits():
  source = fake_source(5, 20, 30)
  decoded = pipeline.decode_split([source[:2], source[2:]], 16, cache_gb=1.0, num_threads=2)
  assert isinstance(decoded, pipeline.DecodedSplit) and len(decoded) == 5
  for i in range(5):
    expected = pipeline.prepare_example(source[i], 16)
    np.testing.assert_array_equal(decoded[i]["image"], expected["image"])
    np.testing.assert_array_equal(decoded[i]["mask"], expected["mask"])
  # Over the budget (or at 0) examples are prepared at every read instead, with equal values.
  streamed = pipeline.decode_split([source], 16, cache_gb=1e-9)
  assert not isinstance(streamed, pipeline.DecodedSplit)
  np.testing.assert_array_equal(streamed.gather(np.array([3, 1]))["image"],
                                decoded.gather(np.array([3, 1]))["image"])


def _decoded(source, size):
  return pipeline.decode_split([source], size, cache_gb=1.0, num_threads=1)


def test_training_batches_shape_determinism_and_epochs():
  source = _decoded(fake_source(10), 16)
  ds = pipeline.training_batches(source, seed=3, batch_size_per_device=2, num_devices=2)
  batch = ds[0]
  assert batch["image"].shape == (2, 2, 16, 16, 3)  # (devices, per_device, H, W, C)
  assert batch["mask"].shape == (2, 2, 16, 16, 1)
  assert batch["image"].dtype == np.uint8  # standardised and augmented on the device
  again = pipeline.training_batches(source, seed=3, batch_size_per_device=2, num_devices=2)
  for k in (0, 1, 7):  # batch k is a pure function of (seed, k): resuming reads the same data
    np.testing.assert_array_equal(ds[k]["image"], again[k]["image"])
  it = pipeline.iterate_from(ds, 5, num_threads=1)
  np.testing.assert_array_equal(next(it)["image"], ds[5]["image"])


def _tagged_source(n, size=8):
  """Examples whose mask has i + 1 lesion pixels, so a batch tells which examples it holds."""
  examples = fake_source(n, size, size)
  for i, example in enumerate(examples):
    example["mask"][:] = 0
    example["mask"].reshape(-1)[: i + 1] = 1
  return examples


def _ids(batch):
  return [int(m.sum()) - 1 for m in batch["mask"].reshape((-1,) + batch["mask"].shape[2:])]


def test_every_epoch_sees_every_example_once_in_a_new_order():
  ds = pipeline.training_batches(_decoded(_tagged_source(8), 8), seed=0,
                                 batch_size_per_device=4, num_devices=1)
  epoch1 = _ids(ds[0]) + _ids(ds[1])
  epoch2 = _ids(ds[2]) + _ids(ds[3])
  assert sorted(epoch1) == list(range(8)) and sorted(epoch2) == list(range(8))
  assert epoch1 != epoch2


def test_processes_read_disjoint_shards():
  source = _decoded(_tagged_source(8), 8)
  shards = [pipeline.training_batches(source, seed=0, batch_size_per_device=2, num_devices=1,
                                      process_index=p, process_count=2) for p in range(2)]
  seen = [_ids(shard[0]) + _ids(shard[1]) for shard in shards]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(8))


def test_mixture_draws_in_proportion_to_size():
  small = fake_source(10, 8, 8, tag=1)
  large = fake_source(30, 8, 8, tag=2)
  for ex in small:
    ex["mask"][:] = 1  # full masks mark the small database
  mixture = pipeline.decode_split([small, large], 8, cache_gb=1.0)
  ds = pipeline.training_batches(mixture, seed=0, batch_size_per_device=4, num_devices=1)
  full = [float(m.mean() == 1.0) for k in range(10) for m in ds[k]["mask"][0]]  # one epoch
  assert sum(full) == 10  # exactly the small database's share: 10 of 40


def test_evaluation_sees_every_example_exactly_once_with_padding():
  source = fake_source(7)
  batches = list(pipeline.evaluation_batches(source, 8, batch_size_per_device=2,
                                             num_devices=2, num_threads=1))
  assert len(batches) == 2
  assert batches[0]["image"].shape == (2, 2, 8, 8, 3) and batches[0]["image"].dtype == np.uint8
  # A decoded split gives the very same batches.
  again = list(pipeline.evaluation_batches(_decoded(source, 8), 8, batch_size_per_device=2,
                                           num_devices=2, num_threads=1))
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["index"], b["index"])
  valid = np.concatenate([b["valid"].reshape(-1) for b in batches])
  index = np.concatenate([b["index"].reshape(-1) for b in batches])
  assert valid.sum() == 7
  assert sorted(index[valid > 0].tolist()) == list(range(7))
  assert np.all(index[valid == 0] == -1)


def test_evaluation_shards_by_process_with_equal_batch_counts():
  source = fake_source(9)
  seen, counts = [], []
  for process in range(2):
    batches = list(pipeline.evaluation_batches(source, 8, batch_size_per_device=2,
                                               num_devices=1, num_threads=1,
                                               process_index=process, process_count=2))
    counts.append(len(batches))
    for b in batches:
      seen += b["index"].reshape(-1)[b["valid"].reshape(-1) > 0].tolist()
  assert counts[0] == counts[1]  # every process runs the same number of pmapped steps
  assert sorted(seen) == list(range(9))


def test_bad_image_size_is_rejected():
  for size in (4, (16, 4), (16,), 16.0, True):
    with pytest.raises(ValueError, match="image_size"):
      pipeline.image_shape(size)
  assert pipeline.image_shape(16) == (16, 16) and pipeline.image_shape((192, 256)) == (192, 256)


def test_process_shards_together_are_the_single_process_global_batch():
  """Two processes x 1 device see what one process x 2 devices sees (the augmentation, drawn on
  the device from the global device index, follows: tests/test_parallel.py)."""
  source = _decoded(fake_source(12, 8, 8), 8)
  single = pipeline.training_batches(source, seed=5, batch_size_per_device=2, num_devices=2)
  shards = [pipeline.training_batches(source, seed=5, batch_size_per_device=2, num_devices=1,
                                      process_index=p, process_count=2) for p in range(2)]
  for k in range(8):  # across the epoch boundary too
    joined = np.concatenate([shards[0][k]["image"], shards[1][k]["image"]], axis=0)
    np.testing.assert_array_equal(joined, single[k]["image"])
