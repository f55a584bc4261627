"""Runs one experiment from a config file.

  python launch.py --config configs/quickstart.py --workdir runs/quickstart
  python launch.py --config configs/quickstart.py --workdir runs/q2 --config.loss=jaccard

Flags only: everything an experiment needs is in its config; the work is done by
`lesion_jax.experiment.run`. Exit codes (lesion_jax/errors.py): 0 finished, 1 unexpected error
(with its traceback), 2 bad input, 3 training diverged, 75 stopped by SIGTERM or SIGINT after
saving (run the same command again to resume).
"""
import os
import shlex
import sys

from lesion_jax import hugepages

# Before JAX starts: glibc reads its malloc tunables only when a process starts. Only when run
# as a script: importing this file must not replace the importing process.
if __name__ == "__main__":
  hugepages.reexec_with_huge_pages()

from absl import app, flags  # noqa: E402 (after the re-execution above)
from ml_collections import config_flags  # noqa: E402

from lesion_jax import errors, experiment  # noqa: E402

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  try:
    experiment.run(FLAGS.config, FLAGS.workdir, overwrite=FLAGS.overwrite,
                   overrides=config_flags.get_override_values(FLAGS["config"]),
                   config_path=config_flags.get_config_filename(FLAGS["config"]),
                   coordinator_address=FLAGS.coordinator_address,
                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  except errors.RunStopped as stopped:
    print(f"stopped: {stopped}\nresume with: {shlex.join(sys.orig_argv)}", file=sys.stderr)
    sys.exit(stopped.exit_code)
  except errors.LesionJaxError as error:
    # Our own messages say what was wrong and what was expected: no traceback.
    # LESION_JAX_TRACEBACK=1 shows it too.
    if os.environ.get("LESION_JAX_TRACEBACK"):
      raise
    print(f"error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)
  except KeyboardInterrupt:
    print("interrupted (a second Ctrl-C): the step in progress was not saved", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main)
