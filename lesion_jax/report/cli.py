"""The command line of `python -m lesion_jax.report`."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from lesion_jax.errors import LesionJaxError, MissingPathError
from lesion_jax.report import tables
from lesion_jax.report.compare import comparison_text, write_comparison_report

_DESCRIPTION = """Tables and comparisons of finished runs.

    python -m lesion_jax.report compare RUN_A RUN_B [--names "Exp 1" "Exp 2"] [--out DIR]
    python -m lesion_jax.report table SWEEP_OR_RUN [...] [--out DIR]
"""

def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lesion_jax.report", description=_DESCRIPTION,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  compare = commands.add_parser(
      "compare", help="runs side by side (Table 3); for two runs, paired differences with CIs")
  compare.add_argument("workdirs", nargs="+", metavar="RUN")
  compare.add_argument("--names", nargs="+", help="row labels, one per run (default: folders)")
  compare.add_argument("--out", help="also write report.md, comparison.json and Fig. 1 grids here")
  compare.add_argument("--resamples", type=int, default=10_000)
  compare.add_argument("--seed", type=int, default=0)
  compare.add_argument("--no-figure", action="store_true", help="with --out: skip the Fig. 1 grid")
  table = commands.add_parser("table", help="Table 2 of run folders or sweeps (md + csv)")
  table.add_argument("workdirs", nargs="+", metavar="RUN_OR_SWEEP")
  table.add_argument("--out", help="write table2.md and table2.csv here (default: print only)")
  args = parser.parse_args(argv)

  try:
    _check_folders(args.workdirs)
    if args.command == "compare":
      if args.names and len(args.names) != len(args.workdirs):
        parser.error(f"--names has {len(args.names)} labels for {len(args.workdirs)} runs")
      text, _ = comparison_text(args.workdirs, args.names, resamples=args.resamples,
                                seed=args.seed)
      print(text)
      if args.out:
        path = write_comparison_report(args.out, args.workdirs, args.names,
                                       resamples=args.resamples, seed=args.seed,
                                       figure=not args.no_figure)
        print(f"\nwrote {path}")
    else:
      entries = tables.table2_from_workdirs(args.workdirs)
      for subset in tables.table2_subsets(entries):
        print(f"{subset}:\n{tables.table2_markdown(entries, subset)}\n")
      if args.out:
        print("wrote " + " and ".join(tables.write_table2(args.out, entries)))
  except (LesionJaxError, FileNotFoundError, KeyError, ValueError) as error:
    print(f"error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
    return 2
  except OSError as error:  # --out a file, a folder that cannot be written, a full disk
    print(f"error: {error.filename or '--out'}: {error.strerror}", file=sys.stderr)
    return 2
  return 0


def _check_folders(paths: Sequence[str]) -> None:
  """Every named run or sweep is a folder: a missing one is an error, not an empty table."""
  for path in paths:
    if not os.path.isdir(path):
      what = "is a file, not a run folder" if os.path.exists(path) else "no such folder"
      raise MissingPathError(f"{path}: {what}")
