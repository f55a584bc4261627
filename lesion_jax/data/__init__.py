"""Lesion databases as tfds builders, and the registry that names them.

Configs name datasets by string: `synthetic_lesions/dermoscopic`, `synthetic_lesions/macroscopic`,
`isic`, `ph2`, `dermofit`, `smartskins`, `waterloo`. `get_builder` returns the prepared tfds
builder; training reads it through `as_data_source()` and grain, never through TensorFlow.

Builders are imported lazily so that naming a dataset never costs the import of all the others.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Mapping

import tensorflow_datasets as tfds

from lesion_jax.registry import Registry

# name -> factory(data_dir, options) -> un-prepared tfds builder.
DATASETS: Registry[Callable[..., tfds.core.DatasetBuilder]] = Registry("dataset")

# Which databases form the paper's sets (Table 1).
SET_D = ("isic", "ph2")
SET_M = ("dermofit", "smartskins")
# Macroscopic like set M but not in the paper: obtainable where Dermofit and SMARTSKINS are not,
# it stands in for set M (a config names it instead); SET_M itself stays the paper's.
SET_M_STANDIN = ("waterloo",)


def _synthetic(domain: str):
  def make(data_dir: str | None, options: Mapping[str, Any]):
    module = importlib.import_module("lesion_jax.data.builders.synthetic_lesions")
    return module.synthetic_builder(domain=domain, data_dir=data_dir, **dict(options))
  return make


def _manual(module_name: str, class_name: str):
  def make(data_dir: str | None, options: Mapping[str, Any]):
    module = importlib.import_module(f"lesion_jax.data.builders.{module_name}")
    builder_cls = getattr(module, class_name)
    kwargs = {k: v for k, v in dict(options).items() if v is not None}
    return builder_cls(data_dir=data_dir, file_format="array_record", **kwargs)
  return make


DATASETS.add("synthetic_lesions/dermoscopic", _synthetic("dermoscopic"))
DATASETS.add("synthetic_lesions/macroscopic", _synthetic("macroscopic"))
DATASETS.add("isic", _manual("isic", "Isic"))
DATASETS.add("ph2", _manual("ph2", "Ph2"))
DATASETS.add("dermofit", _manual("dermofit", "Dermofit"))
DATASETS.add("smartskins", _manual("smartskins", "Smartskins"))
DATASETS.add("waterloo", _manual("waterloo", "Waterloo"))


def dataset_names() -> list[str]:
  return DATASETS.names()


def resolve_manual_dir(name: str, manual_dir: str | None,
                       manual_dirs: Mapping[str, str] | None = None) -> str | None:
  """Where the official archives of database `name` are.

  `manual_dirs[name]` wins; else `<manual_dir>/<name>` when that folder exists (one root holding
  every database); else `manual_dir` itself.
  """
  if manual_dirs and manual_dirs.get(name):
    return os.path.expanduser(manual_dirs[name])
  if manual_dir is None:
    return None
  root = os.path.expanduser(manual_dir)
  nested = os.path.join(root, name)
  return nested if os.path.isdir(nested) else root


def get_builder(name: str, data_dir: str | None = None, manual_dir: str | None = None,
                manual_dirs: Mapping[str, str] | None = None,
                options: Mapping[str, Any] | None = None,
                prepare: bool = True) -> tfds.core.DatasetBuilder:
  """The tfds builder of dataset `name`, prepared (built once, then reused) unless told not to."""
  factory = DATASETS.get(name, where="config.data")
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  builder = factory(data_dir, options or {})
  if prepare:
    resolved = resolve_manual_dir(name, manual_dir, manual_dirs)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=resolved))
  return builder


__all__ = ["DATASETS", "SET_D", "SET_M", "SET_M_STANDIN", "dataset_names", "get_builder",
           "resolve_manual_dir"]
