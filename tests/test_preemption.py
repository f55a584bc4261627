"""A run stopped by SIGTERM or SIGINT saves the step it reached and resumes to the same results.

The single-process tests run launch.py's flags and main in this process, which sends itself the
signal after its third training step, and check the exit code (75), the checkpoint of the step
it stopped on, and that the rerun ends with the results of a run that was never interrupted:
the session's averaged run, whose settings (28 steps) they run with, so that its compiled steps
serve. The two-process test starts launch.py processes as a scheduler would and sends a real
SIGTERM to one of them (slow: real training processes).
"""
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from lesion_jax import errors, train
from tests.conftest import (AVERAGED_RUN, launch_in_this_process, tiny_config,
                            tiny_config_file, xla_flags)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def uninterrupted(averaged_run):
  return averaged_run[1]


def _start(command: list[str], env: dict | None = None) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "launch.py", *command], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until_training(process: subprocess.Popen, workdir: str) -> None:
  """Returns once the run has logged a training step (it is in the loop, signals handled)."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  while time.time() < deadline:
    if process.poll() is not None:
      raise AssertionError("the run ended before it could be signalled:\n"
                           + process.communicate()[1][-3000:])
    if os.path.exists(metrics) and '"train"' in open(metrics).read():
      return
    time.sleep(0.02)
  raise AssertionError("the run never started training")


def _stopped_step(stderr: str) -> tuple[int, int]:
  match = re.search(r"training stopped after step (\d+) of (\d+)", stderr)
  assert match, stderr[-3000:]
  return int(match.group(1)), int(match.group(2))


def _latest_steps(workdir: str) -> list[int]:
  latest = os.path.join(workdir, "checkpoints", "latest")
  return sorted(int(name) for name in os.listdir(latest) if name.isdigit())


def _signalled_in_this_process(argv: list[str], signum: int, monkeypatch, capsys,
                               caplog) -> tuple[int, str]:
  """(exit code, stderr and log) of launch.py's flag parsing and main in this process, which
  sends itself `signum` after its third training step (a Ctrl-C at the terminal, a scheduler's
  SIGTERM)."""
  from lesion_jax import preemption
  real_reached = preemption.StopRequest.reached

  def reached(self, call):
    if call == 3:
      os.kill(os.getpid(), signum)
    return real_reached(self, call)

  with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
    patch.setattr(preemption.StopRequest, "reached", reached)
    with pytest.raises(SystemExit) as stopped:
      launch_in_this_process(argv)
  return stopped.value.code, capsys.readouterr().err + caplog.text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_the_step_reached_and_the_rerun_matches(
    signum, uninterrupted, data_dir, tmp_path, monkeypatch, capsys, caplog, restored_logging):
  workdir = str(tmp_path / "run")
  argv = ["--config", tiny_config_file(tmp_path, data_dir, AVERAGED_RUN), "--workdir", workdir]
  returncode, stderr = _signalled_in_this_process(argv, signum, monkeypatch, capsys, caplog)
  assert returncode == errors.EXIT_STOPPED, stderr[-3000:]
  assert f"{signal.Signals(signum).name} received" in stderr
  assert "resume with:" in stderr and "Traceback" not in stderr
  step, total = _stopped_step(stderr)
  assert 0 < step < total
  assert _latest_steps(workdir)[-1] == step
  assert not os.path.exists(os.path.join(workdir, "results.json"))

  resumed = train.train_and_evaluate(tiny_config(data_dir, **AVERAGED_RUN), workdir)
  for key in ("test", "validation", "threshold", "best_step"):
    assert resumed[key] == uninterrupted[key], key
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  keys = [(row["kind"], row["step"]) for row in rows]
  assert len(keys) == len(set(keys)), "a step logged twice after the resume"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# A process other than the first compiles every step itself (JAX's persistent cache is read and
# written by process 0 only, and on the CPU a key names the devices of one process): the
# quickest-compiling model the registry has, a U-Net of 16 initial channels, one step a call, no
# weight average, 2 images per process (a global batch of 4, 28 steps). What is checked is where
# the processes stop, not what they compute.
TWO_PROCESS_RUN = {"training.num_epochs": 4, "batch_size_per_device": 2, "model.name": "unet",
                   "model.ifc": 16, "model.alpha": None}


def test_two_processes_agree_on_the_step_to_stop_at(data_dir, tmp_path):
  """SIGTERM reaches one process only: both stop at the same step and save it together."""
  config = tiny_config_file(tmp_path, data_dir, TWO_PROCESS_RUN)
  workdir, port = str(tmp_path / "run"), _free_port()
  env = dict(os.environ, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu",
             JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  processes = [_start(["--config", config, "--workdir", workdir,
                       f"--coordinator_address=localhost:{port}", "--num_processes=2",
                       f"--process_id={i}"], env) for i in range(2)]
  try:
    _wait_until_training(processes[0], workdir)
    processes[0].send_signal(signal.SIGTERM)
    logs = [process.communicate(timeout=180)[1] for process in processes]
  except (subprocess.TimeoutExpired, AssertionError):
    for process in processes:
      process.kill()
    logs = [process.communicate()[1] for process in processes]
    raise AssertionError("the two processes did not stop as expected:\n" + "\n----\n".join(
        log[-3000:] for log in logs))
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for process, log in zip(processes, logs):
    assert process.returncode == errors.EXIT_STOPPED, log[-3000:]
    assert "resume with:" in log and "Traceback" not in log
  assert "SIGTERM received" in logs[0]  # the process the scheduler signalled
  steps = [_stopped_step(log) for log in logs]
  assert steps[0] == steps[1] and 0 < steps[0][0] < steps[0][1]
  assert _latest_steps(workdir)[-1] == steps[0][0]
