"""Runs one experiment from a config file.

  python launch.py --config configs/quickstart.py --workdir runs/quickstart
  python launch.py --config configs/quickstart.py --workdir runs/q2 --config.loss=jaccard

Flags only: everything an experiment needs is in its config; the work is done by
`lesion_jax.experiment.run`. Exit codes (lesion_jax/errors.py): 0 finished, 1 unexpected error
(with its traceback), 2 bad input, 3 training diverged, 75 stopped by SIGTERM or SIGINT after
saving (run the same command again to resume). A mistake in the flags (an unknown flag or
config key, a config file that does not load) is one `error:` line and exit code 2 as well.
"""
import errno
import os
import re
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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, where a mistake is one `error:` line and exit code 2, no traceback."""
  try:
    remaining = FLAGS(argv)
    FLAGS.config.keys()  # ml_collections defers a config file's load error to its first use
  except (flags.Error, AttributeError, KeyError, OSError, TypeError, ValueError) as error:
    # A misspelt config key, a value of the wrong type, a config file that does not load.
    _exit_bad_input(error, _flag_error_message(error, argv))
  return remaining


def _flag_error_message(error: Exception, argv: list[str]) -> str:
  """One line for a flag error; a misspelt config key is named by its flag, with the hint."""
  path = _config_path(argv)
  if isinstance(error, OSError) and path and not os.path.isfile(path):
    what = "is not a file" if os.path.exists(path) else "no such file"
    return f"--config {path}: {what} (name a config file, e.g. configs/quickstart.py)"
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]  # ml_collections wraps the KeyError that holds the hint
  text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
  lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(error).__name__]
  key = re.fullmatch(r"'(\w+)'", lines[0])
  flag = key and next((a.split("=")[0] for a in argv if a.startswith("--config.")
                       and key.group(1) in a.split("=")[0].split(".")), None)
  if flag:
    return " ".join([f"{flag}: the config has no key {lines[0]}.", *lines[1:]])
  return " ".join(lines)


def _config_path(argv: list[str]) -> str | None:
  """The file of --config (without its `:arg`), as given."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":", 1)[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return None


def _exit_bad_input(error: Exception, message: str) -> None:
  if os.environ.get("LESION_JAX_TRACEBACK"):  # LESION_JAX_TRACEBACK=1 shows the traceback too
    raise error
  print(f"error: {message}", file=sys.stderr)
  sys.exit(errors.EXIT_BAD_INPUT)


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments: {' '.join(argv[1:])} (every setting is a flag, e.g. "
          "--config.loss=dice)", file=sys.stderr)
    sys.exit(errors.EXIT_BAD_INPUT)
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
  except OSError as error:
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    # A full disk outside the checkpoints (metrics, reports): what was kept is the latest/ one.
    _exit_bad_input(error, f"{error.strerror} while writing {error.filename or 'the run'}: "
                    "free some space and run the same command again to resume from the last "
                    "checkpoint")
  except KeyboardInterrupt:
    print("interrupted (a second Ctrl-C): the step in progress was not saved", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
