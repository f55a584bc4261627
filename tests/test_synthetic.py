"""Tests of the synthetic lesion generator and the `synthetic_lesions` tfds builder."""
import sys

import numpy as np
import pytest

from lesion_jax.data import synthesis
from lesion_jax.data.builders import synthetic_lesions
from lesion_jax.data.builders.synthetic_lesions import SyntheticLesionsConfig, synthetic_builder

SIZE = 64
SEEDS = range(8)


def _luminance(image: np.ndarray) -> np.ndarray:
  return image.astype(np.float64).mean(-1)


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
  """Pixels within `width` steps (4-connected) outside the mask: the skin around the lesion."""
  grown = mask.copy()
  for _ in range(width):
    grown[1:] |= grown[:-1].copy()
    grown[:-1] |= grown[1:].copy()
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
  return grown & ~mask


# ----------------------------------------------------------------------------------- generator


@pytest.mark.parametrize("domain", synthesis.DOMAINS)
def test_render_is_deterministic_in_seed(domain):
  image, mask, label = synthesis.render_lesion(5, domain, SIZE)
  again = synthesis.render_lesion(5, domain, SIZE)
  np.testing.assert_array_equal(image, again[0])
  np.testing.assert_array_equal(mask, again[1])
  assert label == again[2]
  other_image, other_mask, _ = synthesis.render_lesion(6, domain, SIZE)
  assert not np.array_equal(image, other_image)
  assert not np.array_equal(mask, other_mask)


def test_domains_are_different_draws_of_the_same_seed():
  der, _, _ = synthesis.render_lesion(5, "dermoscopic", SIZE)
  mac, _, _ = synthesis.render_lesion(5, "macroscopic", SIZE)
  assert not np.array_equal(der, mac)


def test_outputs_have_the_documented_types_and_shapes():
  image, mask, label = synthesis.render_lesion(1, "macroscopic", (48, 80))
  assert image.shape == (48, 80, 3) and image.dtype == np.uint8
  assert mask.shape == (48, 80) and mask.dtype == np.uint8
  assert label in synthesis.LABELS


def test_same_seed_draws_the_same_lesion_at_every_size():
  _, small, _ = synthesis.render_lesion(9, "dermoscopic", 48)
  _, large, _ = synthesis.render_lesion(9, "dermoscopic", 96)
  # 2x2 majority of the 96 px mask vs the 48 px mask: the same shape up to boundary pixels.
  pooled = large.reshape(48, 2, 48, 2).mean((1, 3)) >= 0.5
  agree = np.logical_and(pooled, small).sum() / np.logical_or(pooled, small).sum()
  assert agree > 0.95


@pytest.mark.parametrize("domain", synthesis.DOMAINS)
def test_masks_are_binary_and_cover_a_darker_lesion(domain):
  darker = 0
  for seed in SEEDS:
    image, mask, _ = synthesis.render_lesion(seed, domain, SIZE)
    assert set(np.unique(mask).tolist()) <= {0, 1}
    lesion = mask.astype(bool)
    assert 0.05 <= lesion.mean() <= 0.6, f"seed {seed}: lesion covers {lesion.mean():.2f}"
    lum = _luminance(image)
    # Compare with the skin right around the lesion (the vignette, shadows and moles elsewhere
    # are deliberate distractors).
    darker += np.median(lum[lesion]) < np.median(lum[_ring(lesion, 4)]) - 5
  assert darker >= len(SEEDS) - 1


def test_labels_agree_with_lesion_label_and_both_occur():
  labels = [synthesis.lesion_label(seed, "macroscopic") for seed in range(40)]
  assert set(labels) == set(synthesis.LABELS)
  for seed in range(4):
    assert synthesis.render_lesion(seed, "macroscopic", 32)[2] == labels[seed]


def test_dermoscopic_corners_are_dark_and_macroscopic_corners_are_not():
  k = SIZE // 16

  def brightest_corner(image):
    lum = _luminance(image)
    return max(lum[:k, :k].mean(), lum[:k, -k:].mean(), lum[-k:, :k].mean(),
               lum[-k:, -k:].mean())

  der = [brightest_corner(synthesis.render_lesion(s, "dermoscopic", SIZE)[0]) for s in SEEDS]
  mac = [brightest_corner(synthesis.render_lesion(s, "macroscopic", SIZE)[0]) for s in SEEDS]
  assert max(der) < 40, der  # the dermoscope's circular field of view
  assert np.median(mac) > 80, mac


def test_only_macroscopic_images_have_glare():
  def glare_pixels(image):
    return int((image.min(-1) >= 240).sum())  # near white in every channel

  der = [glare_pixels(synthesis.render_lesion(s, "dermoscopic", SIZE)[0]) for s in SEEDS]
  mac = [glare_pixels(synthesis.render_lesion(s, "macroscopic", SIZE)[0]) for s in SEEDS]
  assert sum(der) == 0, der
  assert sum(g > 0 for g in mac) >= len(SEEDS) - 1, mac


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed=0, domain="clinical", size=64), "valid domains: dermoscopic, macroscopic"),
    (dict(seed=-1, domain="dermoscopic", size=64), "seed must be a non-negative int"),
    (dict(seed=0, domain="dermoscopic", size=8), "each side must be >= 16"),
    (dict(seed=0, domain="dermoscopic", size=(64,)), "int or (height, width)"),
])
def test_render_rejects_bad_arguments(kwargs, message):
  with pytest.raises(ValueError) as error:
    synthesis.render_lesion(**kwargs)
  assert message in str(error.value)


# ------------------------------------------------------------------------------------- builder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("synthetic_tfds"))
  builder = synthetic_builder("macroscopic", num_images=20, image_size=48, seed=3,
                              data_dir=data_dir)
  builder.download_and_prepare()
  return builder


def test_factory_names_configs_after_their_settings(tmp_path):
  default = synthetic_builder("dermoscopic", data_dir=str(tmp_path))
  assert default.builder_config.name == "dermoscopic"
  named = {c.name: c for c in synthetic_lesions.SyntheticLesions.BUILDER_CONFIGS}
  assert default.builder_config is named["dermoscopic"]
  custom = synthetic_builder("dermoscopic", num_images=64, image_size=96, seed=3,
                             data_dir=str(tmp_path))
  assert custom.builder_config.name == "dermoscopic_n64_s96_seed3"
  assert custom.data_dir != default.data_dir


def test_builder_splits_stratified_array_record_without_tensorflow(prepared):
  assert prepared.info.file_format.value == "array_record"
  sources = prepared.as_data_source()
  assert {name: len(source) for name, source in sources.items()} == {
      "train": 14, "validation": 2, "test": 4}
  label_names = prepared.info.features["label"].names
  labels = {name: [label_names[ex["label"]] for ex in source] for name, source in sources.items()}
  expected = [synthesis.lesion_label(synthesis.image_seed(3, i), "macroscopic")
              for i in range(20)]
  for label in synthesis.LABELS:
    # Each split holds its share of every class, within one image (largest remainder).
    share = expected.count(label) / 20
    for name, size in (("train", 14), ("validation", 2), ("test", 4)):
      assert abs(labels[name].count(label) - share * size) < 1 + 1e-9, (name, label)


def test_preparing_and_reading_never_import_tensorflow(tmp_path):
  """In a fresh interpreter (other tests import TensorFlow for the export and weight imports):
  preparing the dataset, reading it and building a training batch leave TensorFlow unloaded,
  even where it is installed."""
  import subprocess
  script = (
      "import sys\n"
      "from lesion_jax.data import get_builder\n"
      "from lesion_jax.data import pipeline\n"
      f"b = get_builder('synthetic_lesions/dermoscopic', data_dir={str(tmp_path)!r},\n"
      "                options=dict(num_images=12, image_size=32, seed=0))\n"
      "split = pipeline.decode_split([b.as_data_source('train')], 32, cache_gb=1.0)\n"
      "ds = pipeline.training_batches(split, seed=0, batch_size_per_device=2, num_devices=1)\n"
      "assert ds[0]['image'].shape == (1, 2, 32, 32, 3)\n"
      "print('TF_LOADED' if 'tensorflow' in sys.modules else 'TF_ABSENT')\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "TF_ABSENT" in result.stdout


def test_builder_examples_match_the_generator(prepared):
  source = prepared.as_data_source("test")
  domain_names = prepared.info.features["domain"].names
  for example in source:
    image_id = example["image_id"].decode()
    assert image_id.startswith("synth_mac_")
    index = int(image_id.rsplit("_", 1)[1])
    image, mask, label = synthesis.render_lesion(
        synthesis.image_seed(3, index), "macroscopic", 48)
    assert example["image"].shape == (48, 48, 3) and example["image"].dtype == np.uint8
    assert example["mask"].shape == (48, 48, 1) and example["mask"].dtype == np.uint8
    np.testing.assert_array_equal(example["image"], image)
    np.testing.assert_array_equal(example["mask"][..., 0], mask)
    assert prepared.info.features["label"].names[example["label"]] == label
    assert example["database"].decode() == "synthetic_lesions/macroscopic"
    assert domain_names[example["domain"]] == "macroscopic"


def test_builder_is_byte_identical_across_data_dirs(prepared, tmp_path):
  again = synthetic_builder("macroscopic", num_images=20, image_size=48, seed=3,
                            data_dir=str(tmp_path))
  again.download_and_prepare()
  for split in ("train", "validation", "test"):
    first = {ex["image_id"]: ex for ex in prepared.as_data_source(split)}
    second = {ex["image_id"]: ex for ex in again.as_data_source(split)}
    assert first.keys() == second.keys()
    for image_id, example in first.items():
      np.testing.assert_array_equal(example["image"], second[image_id]["image"])
      np.testing.assert_array_equal(example["mask"], second[image_id]["mask"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(domain="clinical"), "valid domains: dermoscopic, macroscopic"),
    (dict(num_images=5), "num_images must be an int >= 10"),
    (dict(image_size=16), "image_size must be an int >= 32"),
    (dict(seed=-2), "seed must be a non-negative int"),
    (dict(num_images=20.0), "num_images must be an int"),
])
def test_builder_rejects_bad_settings(kwargs, message, tmp_path):
  with pytest.raises(ValueError) as error:
    synthetic_builder(data_dir=str(tmp_path), **kwargs)
  assert message in str(error.value)
  with pytest.raises(ValueError):  # the config validates itself too
    SyntheticLesionsConfig(name="bad", **{"domain": "dermoscopic", **kwargs})
