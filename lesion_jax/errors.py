"""The errors lesion_jax raises on purpose, and the exit code `launch.py` gives each.

Every error here describes something the user can fix or act on, in a message that says what
was wrong, where (file, config key, dataset name) and what was expected; `launch.py` prints it
alone, without a traceback. Any other exception is a bug in lesion_jax or a library, and keeps
its traceback. Each class also derives from the built-in error it refines (ValueError, ...), so
code that catches those still catches these.

Exit codes of `launch.py`:
  0   the run finished (results.json written);
  1   an unexpected error (a traceback follows);
  2   bad input: a config value, a path, a dataset, a workdir holding another run or in use by
      one, a full disk;
  3   training diverged (non-finite or exploding loss); the last good checkpoint is kept;
  75  stopped by SIGTERM or SIGINT after saving the step it reached; rerun the same command
      to resume (75 is EX_TEMPFAIL, "try again later").
"""
from __future__ import annotations

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_STOPPED = 75


class LesionJaxError(Exception):
  """Base of the errors with a message meant for the user; `launch.py` exits with `exit_code`."""
  exit_code = EXIT_BAD_INPUT

  def __str__(self) -> str:  # KeyError would otherwise print the repr of its message
    return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConfigError(LesionJaxError, ValueError):
  """A config value (or command-line flag) is invalid."""


class DataError(LesionJaxError, ValueError):
  """A dataset cannot be built or read as asked (missing archives, unpaired files, ...)."""


class MissingPathError(LesionJaxError, FileNotFoundError):
  """A file or folder the user named does not exist, or holds no run / checkpoint."""


class WorkdirError(LesionJaxError, FileExistsError):
  """A workdir or output already holds something that must not be overwritten unasked."""


class WorkdirInUseError(WorkdirError):
  """Another run holds the workdir's lock (WORKDIR/.lock); the message names its host and pid."""


class DiskFullError(LesionJaxError, OSError):
  """A write failed for lack of space (or quota); the message names the checkpoint kept."""


class UnknownNameError(LesionJaxError, KeyError):
  """A name that is not registered; the message lists the valid names."""


class TrainingDiverged(LesionJaxError, FloatingPointError):
  """The loss became non-finite or exploded; the message names the step, the loss and the
  checkpoint that was kept."""
  exit_code = EXIT_DIVERGED


class RunStopped(BaseException):
  """Training stopped at a signal (SIGTERM, SIGINT) after saving the step it reached.

  A BaseException, like KeyboardInterrupt: code that catches Exception (a sweep going on after
  one failed run) must not swallow a request to stop.
  """
  exit_code = EXIT_STOPPED

  def __init__(self, message: str, step: int, signal_name: str):
    super().__init__(message)
    self.step = step
    self.signal_name = signal_name


__all__ = ["ConfigError", "DataError", "DiskFullError", "EXIT_BAD_INPUT", "EXIT_DIVERGED",
           "EXIT_STOPPED", "LesionJaxError", "MissingPathError", "RunStopped", "TrainingDiverged",
           "UnknownNameError", "WorkdirError", "WorkdirInUseError"]
