"""Faults a user meets: damaged checkpoints, a workdir in use, a full disk, a run made longer.

The resume tests start from copies of the session's tiny finished run without its results.json
(a run killed after its last checkpoint), so each restores, trains at most 7 steps and evaluates.
"""
import errno
import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lesion_jax import errors, experiment, train
from lesion_jax import workdir as workdir_lib
from tests.conftest import tiny_config, tiny_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# orbax's "Event loop is closed" reports after a failed read must not reach the user either.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def trained(tiny_run):
  """The session's finished tiny run: 14 steps, latest checkpoints at steps 7 and 14 (only
  copies of it are changed here)."""
  workdir, results = tiny_run
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["14", "7"]
  return workdir, results


def _unfinished_copy(trained, tmp_path) -> str:
  """The trained run as if killed after its last checkpoint, before results.json."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  os.remove(os.path.join(workdir, "results.json"))
  return workdir


def _truncate_data_files(step_dir: str) -> None:
  for path in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True):
    os.truncate(path, os.path.getsize(path) // 2)


def _remove_metadata(step_dir: str) -> None:
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _empty(step_dir: str) -> None:
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


DAMAGES = {"truncated_data_files": _truncate_data_files, "missing_METADATA": _remove_metadata,
           "empty_step_folder": _empty}


def _console_warnings(caplog) -> list[str]:
  """The warnings and errors `launch.py`'s console would show, but a collapsed model's (a tiny
  run's model may be one)."""
  console = experiment._ConsoleFilter()
  return [r.getMessage() for r in caplog.records
          if r.levelno >= logging.WARNING and console.filter(r)
          and "constant mask" not in r.getMessage()]


def _assert_each_step_logged_once(workdir: str) -> list[tuple[str, int]]:
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  keys = [(row["kind"], row["step"]) for row in rows]
  assert len(keys) == len(set(keys)), "a step logged twice"
  return keys


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_step_is_moved_aside_and_the_run_resumes_before_it(
    damage, trained, data_dir, tmp_path, caplog, capfd):
  workdir = _unfinished_copy(trained, tmp_path)
  latest = os.path.join(workdir, "checkpoints", "latest")
  DAMAGES[damage](os.path.join(latest, "14"))
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(tiny_config(data_dir), workdir)
  (warning,) = _console_warnings(caplog)
  assert f"{latest}/14 cannot be restored" in warning and "moved to 14.damaged" in warning
  assert "\n" not in warning
  assert f"Resuming {workdir} from step 7" in caplog.text
  assert sorted(os.listdir(latest)) == ["14", "14.damaged", "7"]
  # The 7 steps after the checkpoint are replayed exactly: the uninterrupted run's numbers.
  assert results["test"] == trained[1]["test"] and results["training"]["steps"] == 14
  assert _assert_each_step_logged_once(workdir) == _assert_each_step_logged_once(trained[0])
  assert "Event loop is closed" not in capfd.readouterr().err


def test_with_no_latest_step_left_the_run_goes_on_from_its_best_checkpoint(
    trained, data_dir, tmp_path, caplog):
  workdir = _unfinished_copy(trained, tmp_path)
  for step in ("7", "14"):
    _truncate_data_files(os.path.join(workdir, "checkpoints", "latest", step))
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(tiny_config(data_dir), workdir)
  best = trained[1]["best_step"]
  *damaged, fallback = _console_warnings(caplog)
  assert len(damaged) == 2 and all("cannot be restored" in line for line in damaged)
  assert f"going on from its best checkpoint, step {best}, with a fresh optimiser" in fallback
  assert results["training"]["steps"] == 14 and results["best_step"] >= best
  keys = _assert_each_step_logged_once(workdir)
  assert max(step for _, step in keys) == 14


def test_with_no_checkpoint_left_the_run_starts_again(trained, data_dir, tmp_path, caplog):
  workdir = _unfinished_copy(trained, tmp_path)
  for kind, step in (("latest", "7"), ("latest", "14"), ("best", str(trained[1]["best_step"]))):
    _empty(os.path.join(workdir, "checkpoints", kind, step))
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(tiny_config(data_dir), workdir)
  *damaged, fresh = _console_warnings(caplog)
  assert len(damaged) == 3 and fresh.endswith("restores: training starts again from step 0")
  assert results["test"] == trained[1]["test"]  # the same seed: the same run again
  assert _assert_each_step_logged_once(workdir) == _assert_each_step_logged_once(trained[0])


def test_the_best_fallback_keeps_the_learning_rate_schedule_at_its_step():
  import optax
  tx = optax.adam(optax.linear_schedule(1.0, 0.0, 10))
  state = train._schedule_at(tx.init({"w": np.zeros(3, np.float32)}), 4)
  adam, schedule = state
  assert int(schedule.count) == 4 and int(adam.count) == 0  # fresh moments, bias correction


def test_a_full_disk_at_save_time_is_one_error_and_keeps_the_last_good_checkpoint(
    trained, data_dir, tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  real_save = ocp.CheckpointManager.save

  def disk_full_after_step_7(self, step, *args, **kwargs):
    if step > 7:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", disk_full_after_step_7)
  workdir = str(tmp_path / "full")
  with pytest.raises(errors.DiskFullError) as caught:
    train.train_and_evaluate(tiny_config(data_dir), workdir)
  message, latest = str(caught.value), os.path.join(workdir, "checkpoints", "latest")
  assert caught.value.exit_code == errors.EXIT_BAD_INPUT and "\n" not in message
  assert message.startswith("no space left on device while saving the checkpoint of step 14")
  assert f"the last good checkpoint, step 7, is kept in {latest}" in message
  assert os.listdir(latest) == ["7"]
  monkeypatch.undo()  # space freed: the same command resumes from step 7
  results = train.train_and_evaluate(tiny_config(data_dir), workdir)
  assert results["test"] == trained[1]["test"]
  _assert_each_step_logged_once(workdir)


# ----------------------------------------------------------------------------------------------
# A larger training.num_epochs or training.max_steps extends a run.

def test_a_larger_num_epochs_extends_a_finished_run(trained, data_dir, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(tiny_config(data_dir, **{"training.num_epochs": 3}),
                                       workdir)
  assert "training.num_epochs: 2 -> 3" in caplog.text
  assert f"Resuming {workdir} from step 14" in caplog.text
  assert results["training"]["steps"] == 21
  with open(os.path.join(workdir, "results.prev.json")) as f:
    assert json.load(f) == trained[1]  # the earlier end's results, moved aside
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["training"]["num_epochs"] == 3
  keys = _assert_each_step_logged_once(workdir)
  assert ("validation", 21) in keys and ("validation", 14) in keys
  # Finished again: the same command returns its results; a shorter run is another config.
  assert train.train_and_evaluate(tiny_config(data_dir, **{"training.num_epochs": 3}),
                                  workdir) == results
  with pytest.raises(errors.WorkdirError, match=r"keys that differ: training.num_epochs\)"):
    train.train_and_evaluate(tiny_config(data_dir), workdir)


def test_a_finished_run_asked_for_another_test_set_is_evaluated_again(averaged_run, data_dir,
                                                                       tmp_path, caplog):
  from conftest import AVERAGED_RUN

  workdir = str(tmp_path / "run")
  shutil.copytree(averaged_run[0], workdir)
  config = tiny_config(data_dir, **AVERAGED_RUN)
  config.data.test = ("synthetic_lesions/dermoscopic", "synthetic_lesions/macroscopic")
  # Another evaluation key too, one that needs no program of its own (a new TTA would compile).
  config.evaluation.weights = "ema"
  with caplog.at_level(logging.INFO):
    results = train.train_and_evaluate(config, workdir)
  assert "data.test: ['synthetic_lesions/dermoscopic'] -> " in caplog.text or \
      "data.test: [] -> " in caplog.text
  # Not trained again: the same steps and best checkpoint, two test databases now.
  assert results["training"]["steps"] == averaged_run[1]["training"]["steps"]
  assert results["best_step"] == averaged_run[1]["best_step"]
  assert set(results["test"]) == {"synthetic_lesions/dermoscopic",
                                  "synthetic_lesions/macroscopic"}
  with open(os.path.join(workdir, "results.prev.json")) as f:
    assert json.load(f) == averaged_run[1]
  _assert_each_step_logged_once(workdir)


@pytest.mark.parametrize("stored, current, extended", [
    ({"num_epochs": 2, "max_steps": None}, {"num_epochs": 4, "max_steps": None}, True),
    ({"num_epochs": 2, "max_steps": 10}, {"num_epochs": 2, "max_steps": 20}, True),
    ({"num_epochs": 2, "max_steps": 10}, {"num_epochs": 3, "max_steps": None}, True),
    ({"num_epochs": 2, "max_steps": None}, {"num_epochs": 2, "max_steps": 20}, False),
    ({"num_epochs": 4, "max_steps": None}, {"num_epochs": 2, "max_steps": None}, False),
    ({"num_epochs": 2, "max_steps": 20}, {"num_epochs": 3, "max_steps": 10}, False),
])
def test_only_a_longer_run_counts_as_an_extension(stored, current, extended):
  stored, current = {"training": stored, "loss": "dice"}, {"training": current, "loss": "dice"}
  changed = workdir_lib.config_differences(stored, current)
  assert bool(workdir_lib.extension(stored, current, changed)) == extended
  current["loss"] = "jaccard"  # with any other key changed it is another run
  assert not workdir_lib.extension(stored, current,
                                   workdir_lib.config_differences(stored, current))


# ----------------------------------------------------------------------------------------------
# One run at a time in a workdir.

def _holder_pid(workdir: str) -> int | None:
  try:
    with open(os.path.join(workdir, workdir_lib.LOCK_FILE)) as f:
      return json.load(f)["pid"]
  except (OSError, ValueError, KeyError):
    return None


@pytest.mark.slow
def test_a_second_launch_into_a_workdir_in_use_is_refused_at_once(data_dir, tmp_path,
                                                                  monkeypatch):
  """A run trains in this process (a thread), held at its first validation until `launch.py`,
  started into the same workdir, has been refused; then it finishes as if alone."""
  from lesion_jax import loop as loop_lib
  workdir = str(tmp_path / "run")
  config_file = tiny_config_file(tmp_path, data_dir)  # the run this process trains
  in_validation, go_on = threading.Event(), threading.Event()
  real_validate = loop_lib.validate

  def held_validate(*args, **kwargs):
    in_validation.set()
    assert go_on.wait(timeout=300), "the second launch never ended"
    return real_validate(*args, **kwargs)

  monkeypatch.setattr(loop_lib, "validate", held_validate)
  outcome = {}

  def first_run():
    try:
      outcome["results"] = train.train_and_evaluate(tiny_config(data_dir), workdir)
    except BaseException as error:  # reported by the main thread
      outcome["error"] = error
      in_validation.set()

  first = threading.Thread(target=first_run)
  first.start()
  try:
    assert in_validation.wait(timeout=300) and "error" not in outcome, outcome.get("error")
    assert _holder_pid(workdir) == os.getpid()
    before = sorted(os.listdir(workdir))
    # Another seed too: the lock is checked before the stored config is read.
    second = subprocess.run([sys.executable, "launch.py", "--config", config_file, "--workdir",
                             workdir, "--config.seed=1"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert sorted(os.listdir(workdir)) == before  # the refused launch wrote nothing there
  finally:
    go_on.set()
    first.join(timeout=300)
  lines = (second.stdout + second.stderr).strip().splitlines()
  assert second.returncode == errors.EXIT_BAD_INPUT, second.stderr[-3000:]
  assert len(lines) <= 6 and "Traceback" not in second.stderr
  (error,) = [line for line in lines if line.startswith("error:")]
  assert f"is in use by another run (pid {os.getpid()} on host " in error
  assert "error" not in outcome, outcome.get("error")
  assert outcome["results"]["training"]["steps"] == 14
  _assert_each_step_logged_once(workdir)
  assert _holder_pid(workdir) is None  # released at the end


def test_a_lock_left_by_a_killed_run_does_not_block_a_rerun(tmp_path):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nsys.path.insert(0, %r)\n"
       "from lesion_jax import workdir\nwith workdir.locked(%r):\n"
       "  print('locked', flush=True)\n  time.sleep(120)\n" % (REPO, workdir)],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(errors.WorkdirInUseError, match=f"pid {holder.pid} on host"):
      with workdir_lib.locked(workdir):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert _holder_pid(workdir) == holder.pid  # the dead holder's file is still there...
  with workdir_lib.locked(workdir):  # ...and does not block
    assert _holder_pid(workdir) == os.getpid()
  assert _holder_pid(workdir) is None  # released: no stale holder is named


def test_locks_nest_within_a_process(tmp_path):
  """A sweep holds its folder while each run locks its own; a lock may be taken again."""
  sweep, run = str(tmp_path / "sweep"), str(tmp_path / "sweep" / "run")
  with workdir_lib.locked(sweep):
    with workdir_lib.locked(run), workdir_lib.locked(run):
      assert _holder_pid(sweep) == _holder_pid(run) == os.getpid()
    assert _holder_pid(run) is None and _holder_pid(sweep) == os.getpid()
  assert _holder_pid(sweep) is None


@pytest.mark.slow
def test_in_a_multi_host_run_process_0_alone_holds_the_lock(tmp_path):
  """Both processes get in (process 0 holds the lock), or both are refused."""
  import socket
  workdir = str(tmp_path / "run")
  script = (
      "import json, os, sys\nsys.path.insert(0, %r)\n"
      "from lesion_jax import errors, parallel, workdir\n"
      "parallel.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))\n"
      "try:\n  with workdir.locked(%r):\n"
      "    holder = json.load(open(os.path.join(%r, '.lock')))['pid']\n"
      "    print('in', holder == os.getpid(), flush=True)\n"
      "    parallel.sync_hosts('inside')\n"
      "except errors.WorkdirInUseError as error:\n  print('refused', error, flush=True)\n"
      % (REPO, workdir, workdir))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")

  def two_processes() -> list[str]:
    with socket.socket() as s:
      s.bind(("localhost", 0))
      address = f"localhost:{s.getsockname()[1]}"
    processes = [subprocess.Popen([sys.executable, "-c", script, address, str(i)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(2)]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert all(p.returncode == 0 for p in processes), [err[-2000:] for _, err in outputs]
    return [out.strip().splitlines()[-1] for out, _ in outputs]  # after gloo's own lines

  assert two_processes() == ["in True", "in False"]
  with workdir_lib.locked(workdir):  # another run holds it: both stop
    first, second = two_processes()
  assert first.startswith("refused") and f"pid {os.getpid()} on host" in first
  assert second.startswith("refused") and "process 0 could not lock it" in second
