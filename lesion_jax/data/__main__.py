"""`python -m lesion_jax.data stats NAME... [--data_dir D] [--manual_dir M]`

Builds each named database if it is not built yet (from the archives in M) and prints a
Table 1-like summary: images per split and per class. For example

  python -m lesion_jax.data stats ph2 isic --data_dir ~/tensorflow_datasets \\
      --manual_dir ~/lesion_archives
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

import tensorflow_datasets as tfds

from lesion_jax.data import stats
from lesion_jax.data.builders.common import MissingArchiveError, SourceFileError


def _local_builders() -> dict:
  # LOCAL FALLBACK, used only while lesion_jax.data has no `get_builder` registry: the real
  # databases by name. Once the registry exists this dict is never consulted.
  from lesion_jax.data.builders import dermofit, isic, ph2, smartskins
  return {"isic": isic.Isic, "ph2": ph2.Ph2, "dermofit": dermofit.Dermofit,
          "smartskins": smartskins.Smartskins}


def _registry():
  """(get_builder, DATASETS) of lesion_jax.data when the lead's registry exists, else Nones."""
  try:
    from lesion_jax.data import DATASETS, get_builder
  except ImportError:
    return None, None
  return get_builder, DATASETS


def check_names(names: Sequence[str]) -> None:
  """Fails on an unknown name before anything is built; the error lists the valid names."""
  _, registry = _registry()
  for name in names:
    if registry is not None:
      registry.get(name)
    elif name not in _local_builders():
      raise KeyError(f"Unknown dataset {name!r}. Valid dataset names: "
                     f"{', '.join(sorted(_local_builders()))}")


def prepared_builder(name: str, data_dir: str | None,
                     manual_dir: str | None) -> tfds.core.DatasetBuilder:
  """The builder of database `name`, built first if needed."""
  get_builder, _ = _registry()
  if get_builder is not None:
    return get_builder(name, data_dir=data_dir, manual_dir=manual_dir)
  builder = _local_builders()[name](data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lesion_jax.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  stats_parser = commands.add_parser("stats", help="images per split and per class (Table 1)")
  stats_parser.add_argument("names", nargs="+", metavar="NAME", help="datasets, e.g. isic ph2")
  stats_parser.add_argument("--data_dir", default=None,
                            help="tfds data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  stats_parser.add_argument("--manual_dir", default=None,
                            help="folder with the downloaded archives (only needed to build)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # tfds' "reusing dataset" chatter.
  try:
    check_names(args.names)
    rows = [stats.database_statistics(prepared_builder(n, args.data_dir, args.manual_dir))
            for n in args.names]
  except (KeyError, MissingArchiveError, SourceFileError) as e:
    # These messages are written for the user (what is missing or broken, where); no traceback.
    print(f"error: {e if not isinstance(e, KeyError) or len(e.args) != 1 else e.args[0]}",
          file=sys.stderr)
    return 1
  print(stats.format_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
