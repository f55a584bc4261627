"""The input pipeline: resizing, standardisation, shared augmentation, batching and padding."""
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


def test_standardize_is_per_image_zero_mean_unit_variance():
  image = np.random.default_rng(0).integers(0, 255, (8, 8, 3)).astype(np.uint8)
  out = pipeline.standardize(image)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out.mean(), 0, atol=1e-5)
  np.testing.assert_allclose(out.std(), 1, atol=1e-4)
  flat = pipeline.standardize(np.full((4, 4, 3), 7, np.uint8))
  assert np.all(np.isfinite(flat)) and np.all(flat == 0)  # std floor: no division by zero


def test_augmentation_applies_one_draw_to_image_and_mask():
  # The mask is a copy of the image's first channel, so any shared transform keeps them equal.
  for seed in range(20):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (12, 12), dtype=np.uint8)
    image, mask = pipeline.augment_pair(np.stack([base] * 3, -1), base, rng, True, True)
    np.testing.assert_array_equal(image[..., 0], mask)


def test_augmentation_changes_some_examples():
  base = np.arange(16, dtype=np.uint8).reshape(4, 4)
  outcomes = {pipeline.augment_pair(base[..., None], base, np.random.default_rng(s), True,
                                    True)[1].tobytes() for s in range(30)}
  assert len(outcomes) > 4


def test_training_batches_shape_determinism_and_epochs():
  source = fake_source(10)
  prep = pipeline.Preprocess(16, flip=True, rotate=True)
  ds = pipeline.training_batches([source], prep, seed=3, batch_size_per_device=2,
                                 num_devices=2)
  batch = ds[0]
  assert batch["image"].shape == (2, 2, 16, 16, 3)  # (devices, per_device, H, W, C)
  assert batch["mask"].shape == (2, 2, 16, 16, 1)
  assert batch["image"].dtype == np.float32
  again = pipeline.training_batches([source], prep, seed=3, batch_size_per_device=2,
                                    num_devices=2)
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
  ds = pipeline.training_batches([_tagged_source(8)], pipeline.Preprocess(8), seed=0,
                                 batch_size_per_device=4, num_devices=1)
  epoch1 = _ids(ds[0]) + _ids(ds[1])
  epoch2 = _ids(ds[2]) + _ids(ds[3])
  assert sorted(epoch1) == list(range(8)) and sorted(epoch2) == list(range(8))
  assert epoch1 != epoch2


def test_processes_read_disjoint_shards():
  source = _tagged_source(8)
  shards = [pipeline.training_batches([source], pipeline.Preprocess(8), seed=0,
                                      batch_size_per_device=2, num_devices=1,
                                      process_index=p, process_count=2) for p in range(2)]
  seen = [_ids(shard[0]) + _ids(shard[1]) for shard in shards]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(8))


def test_mixture_draws_in_proportion_to_size():
  small = fake_source(10, 8, 8, tag=1)
  large = fake_source(30, 8, 8, tag=2)
  for ex in small:
    ex["mask"][:] = 1  # full masks mark the small database
  prep = pipeline.Preprocess(8)
  ds = pipeline.training_batches([small, large], prep, seed=0, batch_size_per_device=4,
                                 num_devices=1)
  full = [float(m.mean() == 1.0) for k in range(10) for m in ds[k]["mask"][0]]  # one epoch
  assert sum(full) == 10  # exactly the small database's share: 10 of 40


def test_evaluation_sees_every_example_exactly_once_with_padding():
  source = fake_source(7)
  prep = pipeline.Preprocess(8)
  batches = list(pipeline.evaluation_batches(source, prep, batch_size_per_device=2,
                                             num_devices=2, num_threads=1))
  assert len(batches) == 2
  assert batches[0]["image"].shape == (2, 2, 8, 8, 3)
  valid = np.concatenate([b["valid"].reshape(-1) for b in batches])
  index = np.concatenate([b["index"].reshape(-1) for b in batches])
  assert valid.sum() == 7
  assert sorted(index[valid > 0].tolist()) == list(range(7))
  assert np.all(index[valid == 0] == -1)


def test_evaluation_shards_by_process_with_equal_batch_counts():
  source = fake_source(9)
  prep = pipeline.Preprocess(8)
  seen, counts = [], []
  for process in range(2):
    batches = list(pipeline.evaluation_batches(source, prep, batch_size_per_device=2,
                                               num_devices=1, num_threads=1,
                                               process_index=process, process_count=2))
    counts.append(len(batches))
    for b in batches:
      seen += b["index"].reshape(-1)[b["valid"].reshape(-1) > 0].tolist()
  assert counts[0] == counts[1]  # every process runs the same number of pmapped steps
  assert sorted(seen) == list(range(9))


def test_bad_image_size_is_rejected():
  with pytest.raises(ValueError, match="image_size"):
    pipeline.Preprocess(image_size=4)


def test_process_shards_together_are_the_single_process_global_batch():
  """Two processes x 1 device see, augmentation included, what one process x 2 devices sees."""
  source = fake_source(12, 8, 8)
  prep = pipeline.Preprocess(8, flip=True, rotate=True)
  single = pipeline.training_batches([source], prep, seed=5, batch_size_per_device=2,
                                     num_devices=2)
  shards = [pipeline.training_batches([source], prep, seed=5, batch_size_per_device=2,
                                      num_devices=1, process_index=p, process_count=2)
            for p in range(2)]
  for k in range(8):  # across the epoch boundary too
    joined = np.concatenate([shards[0][k]["image"], shards[1][k]["image"]], axis=0)
    np.testing.assert_array_equal(joined, single[k]["image"])
