"""On-device augmentation and standardisation, against NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

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


# ----------------------------------------------------------------------------------------------
# Zoom, rotation by any angle, elastic distortion, colour.

def _geometry(zoom, degrees, shift=(0.0, 0.0)):
  return {"zoom": jnp.float32(zoom), "angle": jnp.deg2rad(jnp.float32(degrees)),
          "shift": jnp.asarray(shift, jnp.float32), "displacement": None}


def test_the_identity_geometry_changes_no_pixel():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
  mask = rng.integers(0, 2, (12, 16, 1), dtype=np.uint8)
  out_image, out_mask = augment.warp(image, mask, _geometry(1.0, 0.0))
  np.testing.assert_allclose(out_image, image, atol=1e-4)
  np.testing.assert_array_equal(out_mask, mask)


def test_a_quarter_turn_of_a_mask_is_numpys_rot90():
  mask = np.zeros((9, 9, 1), np.uint8)
  mask[1:4, 2:8] = 1
  mask[5, 6] = 1
  _, turned = augment.warp(mask.astype(np.float32), mask, _geometry(1.0, 90.0))
  np.testing.assert_array_equal(np.asarray(turned)[..., 0], np.rot90(mask[..., 0], 1))


@pytest.mark.parametrize("zoom,degrees,shift", [(1.7, 17.0, (0.8, -1.2)), (0.8, -40.0, (0, 0))])
def test_zoom_rotation_and_shift_match_scipys_affine_transform(zoom, degrees, shift):
  rng = np.random.default_rng(1)
  image = rng.random((9, 11, 3)).astype(np.float32) * 255
  mask = (rng.random((9, 11, 1)) > 0.5).astype(np.uint8)
  out_image, out_mask = augment.warp(image, mask, _geometry(zoom, degrees, shift))
  angle = np.deg2rad(degrees)
  matrix = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]) / zoom
  centre = np.array([4.0, 5.0])
  offset = centre + np.asarray(shift) - matrix @ centre
  for channel in range(3):  # scipy's output[o] = input[matrix @ o + offset], mirrored outside
    expected = ndimage.affine_transform(image[..., channel], matrix, offset=offset, order=1,
                                        mode="mirror")
    np.testing.assert_allclose(out_image[..., channel], expected, atol=1e-3)
  expected = ndimage.affine_transform(mask[..., 0], matrix, offset=offset, order=0,
                                      mode="mirror")
  np.testing.assert_array_equal(np.asarray(out_mask)[..., 0], expected)


def test_random_geometry_keeps_masks_binary_and_matches_image_and_mask():
  options = augment.AugmentOptions(flip=True, rotate=True, scale=(0.7, 1.4),
                                   rotation_degrees=180.0, elastic_pixels=3.0)
  base = (np.random.default_rng(2).random((8, 24, 20, 1)) > 0.6).astype(np.uint8)
  images = np.repeat(base * 255, 3, axis=-1)
  out_images, out_masks = augment.augment_batch(jax.random.key(0), images, base, options)
  out_images, out_masks = np.asarray(out_images), np.asarray(out_masks)
  assert out_masks.shape == base.shape and set(np.unique(out_masks)) <= {0, 1}
  assert not np.array_equal(out_masks, base)  # something moved
  # Where the image is a clean 0 or 255 after bilinear resampling, the mask agrees.
  clean = (out_images[..., 0] < 1) | (out_images[..., 0] > 254)
  np.testing.assert_array_equal((out_images[..., 0] > 127)[clean], out_masks[..., 0][clean] == 1)


def test_elastic_displacement_is_smooth_and_bounded():
  field = np.asarray(augment.elastic_displacement(jax.random.key(3), (32, 40), 4.0, 4))
  assert field.shape == (2, 32, 40) and np.abs(field).max() <= 4.0
  assert np.abs(np.diff(field, axis=1)).max() < 4.0 * 2 / (32 / 4)  # no jumps between pixels


def test_colour_adjustments_against_their_definitions():
  rng = np.random.default_rng(4)
  image = rng.random((6, 7, 3)).astype(np.float32) * 200 + 20
  same = augment.adjust_colour(image, 1.0, 1.0, 1.0, 0.0)
  np.testing.assert_allclose(same, image, atol=1e-3)
  np.testing.assert_allclose(augment.adjust_colour(image, 1.0, 1.0, 1.0, 1.0), image,
                             atol=1e-2)  # a whole turn of hue
  np.testing.assert_allclose(augment.adjust_colour(image, 0.5, 1.0, 1.0, 0.0), image * 0.5,
                             atol=1e-3)
  grey = np.asarray(augment.adjust_colour(image, 1.0, 1.0, 0.0, 0.0))  # saturation 0
  np.testing.assert_allclose(grey[..., 0], grey[..., 1], atol=1e-3)
  np.testing.assert_allclose(grey[..., 0], image @ np.array([0.299, 0.587, 0.114]), atol=1e-3)
  flat = np.asarray(augment.adjust_colour(image, 1.0, 0.0, 1.0, 0.0))  # contrast 0
  np.testing.assert_allclose(flat @ np.array([0.299, 0.587, 0.114]),
                             (image @ np.array([0.299, 0.587, 0.114])).mean(), atol=1e-2)


def test_colour_jitter_leaves_masks_alone_and_stays_in_range():
  options = augment.AugmentOptions(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
  images = np.random.default_rng(5).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
  masks = np.random.default_rng(6).integers(0, 2, (6, 8, 8, 1), dtype=np.uint8)
  out_images, out_masks = augment.augment_batch(jax.random.key(1), images, masks, options)
  np.testing.assert_array_equal(out_masks, masks)
  assert out_images.dtype == jnp.float32
  assert float(out_images.min()) >= 0 and float(out_images.max()) <= 255
  assert not np.allclose(out_images, images)


def test_bad_options_are_refused():
  for bad in ({"scale": (1.2, 0.8)}, {"scale": (0.0, 1.0)}, {"hue": -0.1},
              {"elastic_grid": 1}):
    with pytest.raises(ValueError):
      augment.AugmentOptions(**bad)


# ----------------------------------------------------------------------------------------------
# Test-time augmentation.

@pytest.mark.parametrize("tta,square,count", [("none", True, 1), ("flips", True, 4),
                                               ("dihedral", True, 8), ("dihedral", False, 4)])
def test_tta_copies_map_back_exactly(tta, square, count):
  shape = (2, 5, 5 if square else 7, 1)
  x = np.arange(np.prod(shape)).reshape(shape)
  copies = inference.tta_transforms(tta, square)
  assert len(copies) == count and copies[0] == (False, False, False)
  moved = {inference.transform(x, *c).tobytes() for c in copies}
  assert len(moved) == count  # all different
  for choice in copies:
    np.testing.assert_array_equal(inference.untransform(inference.transform(x, *choice),
                                                        *choice), x)


def test_tta_averages_the_probabilities_of_the_copies():
  import flax.linen as nn

  class Shifted(nn.Module):  # position-dependent, so each copy predicts differently
    @nn.compact
    def __call__(self, x, train=False):
      ramp = jnp.linspace(-2, 2, x.shape[1] * x.shape[2]).reshape(1, x.shape[1], x.shape[2], 1)
      return nn.Conv(1, (3, 3))(x) + ramp

  model = Shifted()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 3)))
  plain = lambda x: np.asarray(inference.probabilities(model.apply, variables, x))  # noqa
  # The copies go through one model in a lax.map; each copy on its own is the reference.
  for tta, width in (("flips", 6), ("dihedral", 6), ("dihedral", 8)):
    images = np.random.default_rng(7).integers(0, 256, (2, 6, width, 3), dtype=np.uint8)
    expected = np.mean([inference.untransform(plain(inference.transform(images, *c)), *c)
                        for c in inference.tta_transforms(tta, square=width == 6)], axis=0)
    got = np.asarray(inference.probabilities(model.apply, variables, images, tta))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, plain(images))
