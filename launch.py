"""Runs one experiment from a config file.

  python launch.py --config configs/quickstart.py --workdir runs/quickstart
  python launch.py --config configs/quickstart.py --workdir runs/q2 --config.loss=jaccard

Flags only: everything an experiment needs is in its config; the work is done by
`lesion_jax.experiment.run`.
"""
import os
import sys

from lesion_jax import hugepages

# Before JAX starts: glibc reads its malloc tunables only when a process starts. Only when run
# as a script: importing this file must not replace the importing process.
if __name__ == "__main__":
  hugepages.reexec_with_huge_pages()

from absl import app, flags  # noqa: E402 (after the re-execution above)
from ml_collections import config_flags  # noqa: E402

from lesion_jax import experiment  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (`file.py` or `file.py:arg`).", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.")
flags.DEFINE_bool("overwrite", False,
                  "Delete the run already in --workdir (checkpoints, results) and start again.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: address of process 0 (host:port).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
flags.mark_flags_as_required(["config"])


# Errors that describe bad input (a config value, a path, a workdir holding another run, a NaN
# loss): the message says what was wrong and what was expected, so it is printed without a
# traceback. LESION_JAX_TRACEBACK=1 shows the traceback too.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, FloatingPointError)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    experiment.run(FLAGS.config, FLAGS.workdir, overwrite=FLAGS.overwrite,
                   overrides=config_flags.get_override_values(FLAGS["config"]),
                   config_path=config_flags.get_config_filename(FLAGS["config"]),
                   coordinator_address=FLAGS.coordinator_address,
                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  except USER_ERRORS as error:
    if os.environ.get("LESION_JAX_TRACEBACK"):
      raise
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
