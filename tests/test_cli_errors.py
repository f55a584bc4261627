"""Every user mistake at a command line ends with one `error:` line and exit code 2.

One table: each row is a command line, a common bad input, and the text its error must hold.
The output has no traceback and at most 6 lines. Each CLI's `main` runs in this process (launch.py
through its own flag parsing and `main`); four launch.py rows also run it as a process, to check
absl's entry point, where the error line is all the output. Nothing here trains: every mistake is
found before.
"""
import errno
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import launch_in_this_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")
CLIS = {"predict": "lesion_jax.predict", "score": "lesion_jax.score",
        "export": "lesion_jax.export.cli", "report": "lesion_jax.report.cli",
        "data": "lesion_jax.data.__main__"}
LAUNCH = ["--config", QUICKSTART, "--workdir"]

# (command, arguments, what the error line says, how: "" in this process, "process" as a
# process, "read_only" with writes into the workdir failing, "disk_full" with a full disk).
# {missing} is a path that does not exist, {file} a file, {dir} an empty folder, {images} a
# folder holding one image.
CASES = [
    ("launch", LAUNCH + ["{missing}", "--config.training.max_stepz=5"],
     """--config.training.max_stepz: the config has no key 'max_stepz'. Did you mean """
     """"max_steps" instead of "max_stepz"?""", "process"),
    ("launch", ["--config", "{missing}.py", "--workdir", "{missing}"], "no such file", ""),
    ("launch", LAUNCH + ["{file}"], "is a file, not a folder", ""),
    ("launch", LAUNCH + ["{missing}", "--config.training.max_steps=ten"],
     "invalid literal for int()", ""),
    ("launch", LAUNCH + ["{missing}", "--config.model.name=unet3"],
     "Unknown model 'unet3' (from config.model.name). Valid model names: att_r2_unet, att_unet, "
     "deeplab_mobilenetv2", ""),
    ("launch", LAUNCH + ["{missing}", "--wrkdir={dir}"], "Unknown command line flag 'wrkdir'", ""),
    ("launch", LAUNCH + ["{missing}", "extra"], "unexpected arguments: extra", ""),
    ("launch", ["--workdir", "{dir}"], "Flag --config must have a value", ""),
    ("launch", LAUNCH + ["{missing}/run"], "its parent folder", "process"),
    ("launch", LAUNCH + ["{dir}"], "cannot be written (Read-only file system)", "read_only"),
    ("launch", LAUNCH + ["{dir}"], "No space left on device while writing", "disk_full"),
    ("predict", ["--images", "{missing}", "--workdir", "{dir}", "--out", "{missing}"],
     "no such file or folder", ""),
    ("predict", ["--images", "{images}", "--workdir", "{file}", "--out", "{missing}"],
     "no such folder", ""),
    ("score", ["--truth", "{missing}", "--pred", "{dir}"], "does not exist or is not a folder", ""),
    ("score", ["--truth", "{file}", "--pred", "{images}"], "does not exist or is not a folder", ""),
    ("export", ["--workdir", "{missing}", "--out", "{missing}.tflite"], "is not a training run",
     ""),
    ("export", ["--workdir", "{dir}", "--out", "{missing}.tflite", "--format", "bogus"],
     "Unknown export format 'bogus'", ""),
    ("report", ["compare", "{missing}", "{dir}"], "no such folder", ""),
    ("report", ["table", "{file}"], "is a file, not a run folder", ""),
    ("report", ["compare", "{dir}", "{dir}", "--names", "one"], "--names has 1 labels for 2 runs",
     ""),
    ("data", ["stats", "bogus"], "Unknown dataset 'bogus'", ""),
    ("data", ["stats", "ph2", "--manual_dir", "{file}", "--data_dir", "{dir}/tfds"],
     "Not a directory", ""),
]


@pytest.fixture
def paths(tmp_path) -> dict:
  (tmp_path / "file.txt").write_text("not a folder")
  (tmp_path / "empty").mkdir()
  (tmp_path / "images").mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
  return {"missing": str(tmp_path / "missing"), "file": str(tmp_path / "file.txt"),
          "dir": str(tmp_path / "empty"), "images": str(tmp_path / "images")}


def _exit_code(main, argv: list[str]) -> int:
  try:
    return main(argv)
  except SystemExit as stop:  # argparse, and launch.py's main
    return stop.code


def _read_only(monkeypatch, workdir: str) -> None:
  """Writes into `workdir` fail as on a read-only mount (root writes through any chmod)."""
  real_open = os.open

  def read_only_open(path, flags, *args, **kwargs):
    if str(path).startswith(workdir) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return real_open(path, flags, *args, **kwargs)

  monkeypatch.setattr(os, "open", read_only_open)


def _disk_full(monkeypatch, workdir: str) -> None:
  from lesion_jax import experiment

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{workdir}/metrics.jsonl")

  monkeypatch.setattr(experiment, "run", full)


@pytest.mark.parametrize("cli, argv, expected, how", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_mistake_is_one_error_line_and_exit_code_2(cli, argv, expected, how, paths, capsys,
                                                      monkeypatch, restored_logging):
  argv = [a.format(**paths) for a in argv]
  if how == "process":
    done = subprocess.run([sys.executable, "launch.py", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    code, output = done.returncode, done.stdout + done.stderr
    # The error comes alone: no config dump, no progress lines, no usage text.
    assert len(output.strip().splitlines()) == 1, output[-3000:]
  else:
    if how == "read_only":
      _read_only(monkeypatch, paths["dir"])
    elif how == "disk_full":
      _disk_full(monkeypatch, paths["dir"])
    main = launch_in_this_process if cli == "launch" else importlib.import_module(CLIS[cli]).main
    code = _exit_code(main, argv)
    captured = capsys.readouterr()
    output = captured.out + captured.err
  lines = output.strip().splitlines()
  assert code == 2, output[-3000:]
  assert "Traceback" not in output and len(lines) <= 6, output[-3000:]
  errors = [line for line in lines if line.startswith("error: ") or ": error: " in line]
  assert len(errors) == 1, output
  assert expected in errors[0], output
