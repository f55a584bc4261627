"""`python -m lesion_jax.data stats NAME... [--data_dir D] [--manual_dir M]`

Builds each named database if it is not built yet (from the archives in M) and prints a
Table 1-like summary: images per split and per class. M defaults to $LESION_JAX_REAL_DATA, and
where M holds a folder named like the database (`M/waterloo/`), that folder is read. For example

  python -m lesion_jax.data stats ph2 isic --data_dir ~/tensorflow_datasets \\
      --manual_dir ~/lesion_archives
  LESION_JAX_REAL_DATA=../shared/data python -m lesion_jax.data stats waterloo
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from lesion_jax.data import DATASETS, get_builder, stats
from lesion_jax.data.builders.common import MissingArchiveError, SourceFileError

# Where the real archives are (the variable the tests and configs read, too).
REAL_DATA_ENV = "LESION_JAX_REAL_DATA"


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lesion_jax.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  stats_parser = commands.add_parser("stats", help="images per split and per class (Table 1)")
  stats_parser.add_argument("names", nargs="+", metavar="NAME", help="datasets, e.g. isic ph2")
  stats_parser.add_argument("--data_dir", default=None,
                            help="tfds data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  stats_parser.add_argument("--manual_dir", default=os.environ.get(REAL_DATA_ENV),
                            help="folder with the downloaded archives, or one folder per "
                                 "database in it (only needed to build; default: "
                                 f"${REAL_DATA_ENV})")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("absl").setLevel(logging.WARNING)  # tfds' "reusing dataset" chatter.
  try:
    for name in args.names:  # every name checked before the first database is built
      DATASETS.get(name)
    rows = [stats.database_statistics(get_builder(n, data_dir=args.data_dir,
                                                  manual_dir=args.manual_dir))
            for n in args.names]
  except (KeyError, MissingArchiveError, SourceFileError) as e:
    # These messages are written for the user (what is missing or broken, where); no traceback.
    print(f"error: {e if not isinstance(e, KeyError) or len(e.args) != 1 else e.args[0]}",
          file=sys.stderr)
    return 2
  except OSError as e:  # --manual_dir or --data_dir a file, or a folder that cannot be written
    print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
    return 2
  print(stats.format_table(rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
