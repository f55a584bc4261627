"""On-device augmentation and standardisation, against NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lesion_jax import augment, inference

BOTH = augment.AugmentOptions(flip=True, rotate=True)


def _numpy_transform(x, flip_rows, flip_columns, quarter_turns):
  """The paper's augmentation written with NumPy: flips, then a counter-clockwise rotation."""
  if flip_columns:
    x = x[:, ::-1]
  if flip_rows:
    x = x[::-1]
  return np.rot90(x, int(quarter_turns))


def test_each_drawn_transform_is_the_numpy_flip_and_rotation():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 6, 6, 3), dtype=np.uint8)
  masks = rng.integers(0, 2, (16, 6, 6, 1), dtype=np.uint8)
  key = jax.random.key(3)
  out_images, out_masks = jax.jit(augment.augment_batch, static_argnums=3)(
      key, images, masks, BOTH)
  keys = jax.random.split(key, 16)
  seen = set()
  for i in range(16):
    choices = {k: np.asarray(v) for k, v in augment.draw(keys[i], BOTH, square=True).items()}
    seen.add(tuple(int(v) for v in choices.values()))
    np.testing.assert_array_equal(out_images[i], _numpy_transform(images[i], **choices))
    np.testing.assert_array_equal(out_masks[i], _numpy_transform(masks[i], **choices))
  assert len(seen) > 4  # the draws differ between examples


def test_image_and_mask_share_the_draw_and_masks_stay_binary():
  rng = np.random.default_rng(1)
  base = rng.integers(0, 2, (32, 8, 8, 1), dtype=np.uint8)
  images = np.repeat(base * 255, 3, axis=-1)
  out_images, out_masks = augment.augment_batch(jax.random.key(0), images, base, BOTH)
  np.testing.assert_array_equal(np.asarray(out_images)[..., :1] // 255, np.asarray(out_masks))
  assert set(np.unique(out_masks)) <= {0, 1}


def test_draws_are_uniform_over_the_eight_symmetries_of_the_square():
  keys = jax.random.split(jax.random.key(0), 4000)
  choices = jax.vmap(lambda k: augment.draw(k, BOTH, square=True))(keys)
  # The transform's effect on a 2x2 image with distinct pixels names the symmetry.
  x = np.arange(4).reshape(2, 2)
  names = [tuple(_numpy_transform(x, *(int(choices[k][i]) for k in
                                       ("flip_rows", "flip_columns", "quarter_turns"))).ravel())
           for i in range(len(keys))]
  counts = np.array([names.count(n) for n in set(names)])
  assert len(counts) == 8 and counts.min() > 400 and counts.max() < 600


def test_images_that_are_not_square_turn_by_half_turns_only():
  image = np.arange(2 * 3 * 1, dtype=np.uint8).reshape(1, 2, 3, 1)
  outs = {np.asarray(augment.augment_batch(jax.random.key(s), image, image, BOTH)[0]).tobytes()
          for s in range(40)}
  expected = {_numpy_transform(image[0], r, c, t).tobytes()
              for r in (0, 1) for c in (0, 1) for t in (0, 2)}
  assert outs == expected  # the 4 symmetries of a rectangle, shapes kept


def test_no_augmentation_is_the_identity():
  images = np.random.default_rng(2).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
  out, _ = augment.augment_batch(jax.random.key(0), images, images[..., :1],
                                 augment.AugmentOptions())
  np.testing.assert_array_equal(out, images)


def test_standardize_is_per_image_zero_mean_unit_variance_as_numpy():
  images = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3)).astype(np.uint8)
  out = np.asarray(inference.standardize(jnp.asarray(images)))
  assert out.dtype == np.float32
  for image, standardized in zip(images, out):
    x = image.astype(np.float64)
    reference = (x - x.mean()) / max(x.std(), 1 / np.sqrt(x.size))
    np.testing.assert_allclose(standardized, reference, atol=1e-5)
  flat = np.asarray(inference.standardize(jnp.full((1, 4, 4, 3), 7, jnp.uint8)))
  assert np.all(np.isfinite(flat)) and np.all(flat == 0)  # std floor: no division by zero


@pytest.mark.parametrize("options", [augment.AugmentOptions(flip=True),
                                     augment.AugmentOptions(rotate=True)])
def test_each_option_alone_draws_only_its_transform(options):
  keys = jax.random.split(jax.random.key(1), 200)
  choices = jax.vmap(lambda k: augment.draw(k, options, square=True))(keys)
  flips = np.asarray(choices["flip_rows"]) | np.asarray(choices["flip_columns"])
  turns = np.asarray(choices["quarter_turns"])
  assert flips.any() == options.flip and (turns != 0).any() == options.rotate
