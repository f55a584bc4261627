"""The command line of `python -m lesion_jax.export`."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from lesion_jax.export.benchmark import benchmark, benchmark_table
from lesion_jax.export.parity import ParityError
from lesion_jax.export.run import export_run, trained_run
from lesion_jax.errors import LesionJaxError
from lesion_jax.export.tflite import QUANTIZATIONS, ExportError
from lesion_jax.registry import Registry

FORMATS = Registry("export format")

FORMATS.add("tflite", export_run)

ONNX_NOT_OFFERED = ("ONNX export is not offered: jax2onnx needs an older orbax-checkpoint than "
                    "lesion_jax uses, and its newest compatible release cannot convert "
                    "jax.image.resize (see the docstring of lesion_jax/export.py). Use "
                    "--format tflite.")


def main(argv: Sequence[str] | None = None) -> int:
  """Command line entry point; returns the exit code (0, 1 when the parity check fails, 2 on
  bad input)."""
  parser = argparse.ArgumentParser(
      prog="python -m lesion_jax.export",
      description="Export a trained run to TensorFlow Lite, checked against the JAX model.")
  parser.add_argument("--workdir", help="the training run (its best checkpoint is exported)")
  parser.add_argument("--model", help="instead of --workdir: a trained model shipped with "
                                      "lesion_jax, by name (lesion_jax.models.trained)")
  parser.add_argument("--step", type=int, default=None,
                      help="export this step of checkpoints/latest instead of the best")
  parser.add_argument("--format", default="tflite", help="tflite (the only format offered)")
  parser.add_argument("--quantize", default="none",
                      help=f"one of {', '.join(QUANTIZATIONS.names())} (default none)")
  parser.add_argument("--with_threshold", action="store_true",
                      help="output the binary mask at the run's threshold, not probabilities")
  parser.add_argument("--out", help="the .tflite file to write (its sidecar is OUT.json)")
  parser.add_argument("--parity_images", type=int, default=4,
                      help="validation images for the parity check (0 skips it)")
  parser.add_argument("--latency_runs", type=int, default=20,
                      help="timed invocations for the median CPU latency (0 skips it)")
  parser.add_argument("--benchmark", action="store_true",
                      help="instead: sizes and latency of a fresh reduced Mobile DeepLab")
  parser.add_argument("--image_size", type=int, default=512, help="--benchmark input size")
  args = parser.parse_args(argv)
  try:
    if args.benchmark:
      rows = benchmark(args.image_size, runs=max(1, args.latency_runs))
      print(benchmark_table(rows))
      return 0
    if args.format.lower() == "onnx":
      raise ExportError(ONNX_NOT_OFFERED)
    exporter = FORMATS.get(args.format, where="--format")
    missing = [flag for flag, value in (("--workdir or --model", args.workdir or args.model),
                                        ("--out", args.out)) if not value]
    if missing:
      parser.error(f"{' and '.join(missing)} required (or --benchmark)")
    if args.workdir and args.model:
      parser.error("give --workdir (a run) or --model (a trained model), not both")
    source = trained_run(args.model) if args.model else args.workdir
    report = exporter(source, args.out, step=args.step, quantize=args.quantize,
                      with_threshold=args.with_threshold, parity_images=args.parity_images,
                      latency_runs=args.latency_runs)
  except ParityError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  except (ExportError, LesionJaxError, FileNotFoundError, KeyError, ValueError) as error:
    print(f"error: {error.args[0] if isinstance(error, KeyError) else error}", file=sys.stderr)
    return 2
  except OSError as error:  # --out a folder, a folder that cannot be written, a full disk
    print(f"error: {error.filename or '--out'}: {error.strerror}", file=sys.stderr)
    return 2
  print(report.summary())
  return 0
