"""`synthetic_lesions`: procedurally drawn dermoscopic or macroscopic lesions with exact masks.

A stand-in for the paper's set D (dermoscopic) and set M (macroscopic) that needs no download:
every image comes from `lesion_jax.data.synthesis.render_lesion`, so the same config always
gives byte-identical examples. The two named configs are the two domains at the defaults
(300 images of 256x256, seed 0); `synthetic_builder` makes any other count, size or seed, as a
config whose name carries those settings so that different datasets never share a data dir.

Splits follow the paper's protocol (section 2.1): 20% test, the rest 90/10 train/validation,
stratified by label (300 images: 216 / 24 / 60).

Images and masks reach tfds as PNG bytes, so preparing and reading (`as_data_source()`, with
the default `array_record` format) never imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from lesion_jax import errors
from lesion_jax.data import synthesis
from lesion_jax.data.features import encode_png, lesion_features
from lesion_jax.data.splits import train_validation_test

NAME = "synthetic_lesions"
TEST_FRACTION = 0.2
MIN_IMAGES = 10     # below this a stratified 3-way split leaves splits empty
MIN_IMAGE_SIZE = 32
DEFAULTS = dict(num_images=300, image_size=256, seed=0)
# Short domain tags in image ids: 'synth_der_000123', 'synth_mac_000123'.
_ID_TAGS = {"dermoscopic": "der", "macroscopic": "mac"}


def check_settings(domain: str, num_images: int, image_size: int, seed: int) -> None:
  """Raises ValueError, naming the setting and the accepted values, for a bad setting."""
  def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

  where = f"{NAME} builder"
  if domain not in synthesis.DOMAINS:
    raise errors.ConfigError(f"{where}: unknown domain {domain!r}; valid domains: "
                     f"{', '.join(synthesis.DOMAINS)}")
  if not is_int(num_images) or num_images < MIN_IMAGES:
    raise errors.ConfigError(f"{where}: num_images must be an int >= {MIN_IMAGES} (train, validation "
                     f"and test must all be non-empty), got {num_images!r}")
  if not is_int(image_size) or image_size < MIN_IMAGE_SIZE:
    raise errors.ConfigError(f"{where}: image_size must be an int >= {MIN_IMAGE_SIZE} pixels, got "
                     f"{image_size!r}")
  if not is_int(seed) or seed < 0:
    raise errors.ConfigError(f"{where}: seed must be a non-negative int, got {seed!r}")


def config_name(domain: str, num_images: int, image_size: int, seed: int) -> str:
  """'dermoscopic' at the defaults, else e.g. 'dermoscopic_n64_s96_seed3'."""
  if (num_images, image_size, seed) == tuple(DEFAULTS.values()):
    return domain
  return f"{domain}_n{num_images}_s{image_size}_seed{seed}"


@dataclasses.dataclass(eq=False)
class SyntheticLesionsConfig(tfds.core.BuilderConfig):
  """One synthetic dataset: `num_images` lesions of `image_size`^2 pixels in `domain`."""
  domain: str = "dermoscopic"
  num_images: int = DEFAULTS["num_images"]
  image_size: int = DEFAULTS["image_size"]
  seed: int = DEFAULTS["seed"]

  def __post_init__(self):
    check_settings(self.domain, self.num_images, self.image_size, self.seed)


def _make_config(domain: str, num_images: int, image_size: int, seed: int
                 ) -> SyntheticLesionsConfig:
  return SyntheticLesionsConfig(
      name=config_name(domain, num_images, image_size, seed),
      description=(f"{num_images} {domain} lesions of {image_size}x{image_size} pixels, "
                   f"seed {seed}"),
      domain=domain, num_images=num_images, image_size=image_size, seed=seed)


class SyntheticLesions(tfds.core.GeneratorBasedBuilder):
  """Synthetic skin-lesion images and exact masks, one domain per config."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [_make_config(domain, **DEFAULTS) for domain in synthesis.DOMAINS]

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # tfds's default goes through importlib.resources, which needs the `importlib_resources`
    # backport for a builder outside the tfds package; tfds only uses the path to look for an
    # optional checksums file next to the module, so the module's own file is enough.
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    # `dataset_info_from_configs` looks for metadata files that only packaged tfds datasets
    # have, so the info is built directly.
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=lesion_features(synthesis.LABELS),
        supervised_keys=None)

  def _image_ids(self) -> list[str]:
    tag = _ID_TAGS[self.builder_config.domain]
    return [f"synth_{tag}_{i:06d}" for i in range(self.builder_config.num_images)]

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    config = self.builder_config
    ids = self._image_ids()
    # Labels come from the first draw of each scene, so splitting renders nothing.
    labels = [synthesis.lesion_label(synthesis.image_seed(config.seed, i), config.domain)
              for i in range(len(ids))]
    index = {image_id: i for i, image_id in enumerate(ids)}
    parts = train_validation_test(ids, labels, test_fraction=TEST_FRACTION, seed=config.seed)
    return {name: self._generate_examples([index[i] for i in part])
            for name, part in parts.items()}

  def _generate_examples(self, indices: list[int]) -> Iterator[tuple[str, dict]]:
    config = self.builder_config
    ids = self._image_ids()
    for i in indices:
      image, mask, label = synthesis.render_lesion(
          synthesis.image_seed(config.seed, i), config.domain, config.image_size)
      yield ids[i], {
          "image": encode_png(image),
          "mask": encode_png(mask),
          "image_id": ids[i],
          "label": label,
          "database": f"{NAME}/{config.domain}",
          "domain": config.domain,
      }


def synthetic_builder(domain: str = "dermoscopic", num_images: int = DEFAULTS["num_images"],
                      image_size: int = DEFAULTS["image_size"], seed: int = DEFAULTS["seed"],
                      data_dir: str | None = None,
                      file_format: str = "array_record") -> SyntheticLesions:
  """The (un-prepared) builder of one synthetic dataset; call `download_and_prepare()` next.

  The defaults use the named config (`synthetic_lesions/dermoscopic`); other settings get a
  config named after them. `array_record` storage is what `as_data_source()` reads.
  """
  check_settings(domain, num_images, image_size, seed)
  settings = dict(num_images=int(num_images), image_size=int(image_size), seed=int(seed))
  if settings == DEFAULTS:
    config = domain
  else:
    config = _make_config(domain, **settings)
  return SyntheticLesions(config=config, data_dir=data_dir, file_format=file_format)
