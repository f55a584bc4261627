"""The datasets a config names, opened as random-access sources of raw examples.

`config.data.train` names the training mixture: its `train` splits are read together, and its
`validation` splits (10% of each database's train/val pool, paper 2.2) choose the checkpoint and
the threshold. `config.data.test` names the databases whose `test` splits are reported, each on
its own (Table 3); empty means the training databases.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import grain
import ml_collections

from lesion_jax import config as config_lib
from lesion_jax import parallel


@dataclasses.dataclass
class Datasets:
  train: list  # data sources of the train splits
  validation: list
  test: dict  # name -> data source
  train_size: int

  @property
  def validation_source(self) -> Any:
    """The validation splits of every training database read as one source."""
    return concatenate(self.validation)


def builder_options(config: ml_collections.ConfigDict, name: str) -> dict:
  """The tfds builder options of dataset `name` under `config`."""
  options = dict(config.data.options.get(name, {})) if name in config.data.options else {}
  if name.startswith("synthetic_lesions/"):
    return {**config.data.synthetic.to_dict(), **options}
  if config.data.stored_size:
    options.setdefault("image_size", config.data.stored_size)
  return options


def get_builder(config: ml_collections.ConfigDict, name: str):
  """The prepared tfds builder of dataset `name` as `config` sets it up."""
  from lesion_jax import data as data_lib
  return data_lib.get_builder(
      name, data_dir=config.data.data_dir, manual_dir=config.data.manual_dir,
      manual_dirs=config.data.manual_dirs.to_dict(), options=builder_options(config, name))


def load_datasets(config: ml_collections.ConfigDict) -> Datasets:
  """Prepares (once) and opens every dataset of the config."""
  train_names = config_lib.dataset_names(config.data.train, "data.train")
  test_names = config_lib.dataset_names(config.data.test, "data.test") or train_names
  # Processes sharing a data dir must not build the same dataset at once: process 0 prepares
  # every dataset first, the others then open the finished copy (or build their own).
  if not parallel.is_main_process():
    parallel.sync_hosts("datasets-prepared")
  builders = {name: get_builder(config, name)
              for name in dict.fromkeys(train_names + test_names)}
  if parallel.is_main_process():
    parallel.sync_hosts("datasets-prepared")
  train = [split_source(builders[n], n, "train") for n in train_names]
  validation = [split_source(builders[n], n, "validation") for n in train_names]
  test = {n: split_source(builders[n], n, "test") for n in test_names}
  for name, source in zip(train_names, train):
    logging.info("train: %s, %d images", name, len(source))
  return Datasets(train=train, validation=validation, test=test,
                  train_size=sum(len(s) for s in train))


def split_source(builder, name: str, split: str):
  """The split's random-access source; an empty list where the database has no such split."""
  if split not in builder.info.splits:
    # tfds cannot store an empty split (e.g. `isic` without the ISIC 2017 test archives).
    logging.warning("%s has no %s split; it counts as empty", name, split)
    return []
  return builder.as_data_source(split)


def concatenate(sources: Sequence[Any]) -> grain.MapDataset:
  """Several random-access sources read as one, in order (e.g. the validation of a mixture)."""
  return grain.MapDataset.concatenate([grain.MapDataset.source(s) for s in sources])
