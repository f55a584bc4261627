"""Shared test fixtures: a tiny end-to-end config and a session-wide tfds data dir."""
import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Many tests (and their subprocesses, which inherit the environment) compile the same tiny
# training step; XLA's persistent cache turns every compile after the first into a disk read.
# Set before anything imports jax, which reads these variables once. The pytest-xdist workers of
# `make test` share the one folder. JAX writes an entry in place under its key (not atomically),
# so a read that meets a half-written entry fails its decompression, warns and compiles instead.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Most of the suite's time is XLA compiling tiny programs once. With most of XLA's optimisations
# off they compile ~35% quicker and run slower, which tiny shapes do not notice; what the tests
# check (values against NumPy or a plain form, with tolerances; shapes; files; decisions) does
# not depend on them. The speed of the compiled code is the benchmarks' business (docs/). A test
# may still compile optimised programs: tests/test_parallel.py's steps do.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA's CPU fusion emitters (its MLIR code generator) compile ~25% slower than its older
# elemental emitters in this suite (a tiny run's 53 programs: 8.6 s against 11.3-12.7 s of
# compilation); the programs compute the same operations either way. Subprocesses that set
# XLA_FLAGS of their own keep it through `xla_flags`.
COMPILE_FLAGS = "--xla_cpu_use_fusion_emitters=false"
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {COMPILE_FLAGS}".strip()


def xla_flags(*flags: str) -> str:
  """XLA_FLAGS for a test's subprocess: `flags` and the suite's compile flag."""
  return " ".join((*flags, COMPILE_FLAGS))


# Keras (the reference of tests/test_pretrained.py) initialises weights op by op: on its JAX
# backend every weight shape compiles (~30 s for two MobileNetV2s), on TensorFlow's not (~10 s).
if importlib.util.find_spec("tensorflow") is not None:
  os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest

from lesion_jax.config import base_config

REAL_DATA_ENV = "LESION_JAX_REAL_DATA"
# The session's trained runs: a test that uses one (itself or through another fixture) trains
# when it runs alone, so it is marked slow like the tests that train or start a process.
TRAINED_RUN_FIXTURES = {"tiny_run", "averaged_run", "averaged_run_levers"}


# The files that take longest (pytest --durations, 2 workers on 2 cores), longest first. xdist
# (`make test`: --dist loadfile) hands whole files (or groups of files) to the workers in
# collection order, so these start first and the short files fill in at the end, instead of a
# long file starting last. test_faults.py trains the tiny run and the averaged run first, and
# test_models.py compiles only its own programs meanwhile: the files after them find both
# runs' steps compiled.
LONGEST_FILES = ("test_faults.py", "test_models.py", "test_train.py", "test_trained.py",
                 "test_preemption.py", "test_isic2017_config.py", "test_builders_real_data.py",
                 "test_augment.py", "test_transfer.py", "test_config.py", "test_sweep.py",
                 "test_parallel.py", "test_benchmark.py", "test_pretrained.py", "test_levers.py",
                 "test_export.py", "test_multihost.py")


def pytest_configure(config):
  # xdist's own order (files with more tests first) would start a long file of few tests last.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


# The files that use the averaged run go to one worker together (`make test`: --dist loadfile,
# with the files below as one): a process traces and loads its steps once (~15 s), where two
# workers would each do it.
AVERAGED_RUN_FILES = ("test_faults.py", "test_train.py", "test_preemption.py", "test_trained.py",
                      "test_trained_cli.py", "test_levers.py")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook
def pytest_xdist_make_scheduler(config, log):
  """--dist loadfile, AVERAGED_RUN_FILES counting as one file. (xdist_group marks would do it
  with --dist loadgroup, but xdist 3.8 renames node ids in a way pytest 9 no longer reads.)"""
  from xdist.scheduler import LoadFileScheduling

  if config.getvalue("dist") != "loadfile":
    return None

  class FilesTogether(LoadFileScheduling):
    def _split_scope(self, nodeid: str) -> str:
      path = super()._split_scope(nodeid)
      return "averaged_run" if os.path.basename(path) in AVERAGED_RUN_FILES else path

  return FilesTogether(config, log)


def pytest_collection_modifyitems(items):
  for item in items:
    if TRAINED_RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.slow)
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


def load_config_module(*parts: str):
  """A config file under configs/ (e.g. "paper", "exp2_finetune.py") loaded as a module."""
  import importlib.util

  path = os.path.join(REPO, "configs", *parts)
  name = "config_" + "_".join(parts).removesuffix(".py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One tfds data dir for the whole session, so each tiny dataset is generated once."""
  return str(tmp_path_factory.mktemp("tensorflow_datasets"))


def tiny_config(data_dir: str, **changes):
  """The quickstart pipeline shrunk to seconds: 40 synthetic images at 32x32, 2 epochs.

  Tests that only change settings outside the compiled step (seed, data flags, workdir,
  init_from, report options) reuse its compilation through the persistent cache.
  """
  config = base_config()
  config.data.data_dir = data_dir
  config.data.train = ("synthetic_lesions/dermoscopic",)
  config.data.synthetic.num_images = 40
  config.data.synthetic.image_size = 48
  config.data.image_size = 32
  config.data.num_threads = 1
  config.model.alpha = 0.35
  # 14 steps are enough to learn something visible only with quick BN statistics and a high
  # learning rate; the export tests need a model whose probabilities are not all alike.
  config.model.bn_momentum = 0.8
  config.optimizer.learning_rate = 1e-2
  config.batch_size_per_device = 4
  config.training.num_epochs = 2
  config.training.log_every_steps = 2
  config.training.tensorboard_images = 1
  config.optimizer.cycle_epochs = 1.0
  config.report.num_overlays = 1
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


@pytest.fixture(scope="session")
def tiny_run(data_dir, tmp_path_factory):
  """(workdir, results) of one finished run of `tiny_config(data_dir)` itself, trained once per
  worker for the tests that read some finished run (outputs, predict, export, resume, faults).
  A test that changes a run works on a copy (shutil.copytree)."""
  from lesion_jax import train

  workdir = str(tmp_path_factory.mktemp("tiny_run") / "run")
  return workdir, train.train_and_evaluate(tiny_config(data_dir), workdir)


def tiny_config_file(folder, data_dir: str, changes: dict | None = None) -> str:
  """FOLDER/tiny.py, a config file for launch.py of `tiny_config(data_dir, **changes)`, for the
  tests that start a run in another process."""
  path = os.path.join(folder, "tiny.py")
  with open(path, "w") as f:
    f.write(f"import sys\nsys.path.insert(0, {REPO!r})\nfrom tests.conftest import tiny_config\n"
            "\n\ndef get_config(arg=None):\n"
            f"  return tiny_config({data_dir!r}, **{changes or {}!r})\n")
  return path


# The settings that reach the compiled train and eval steps, or the number of steps the schedule
# is built for: runs that share them with tiny_config share its compilations.
STEP_KEYS = ("model", "loss", "optimizer", "batch_size_per_device", "training.num_epochs",
             "training.ema_decay", "data.image_size", "data.flip", "data.rotate",
             "data.augment", "data.synthetic", "data.num_threads", "evaluation.tta", "frozen")


def with_tiny_steps(config, data_dir: str):
  """`config` (a paper or recipe config) with tiny_config's compiled steps and data sizes, for
  tests of what happens around the runs (sweeps, transfer chains, reports): its runs reuse the
  tiny runs' compilations instead of compiling their own."""
  tiny = tiny_config(data_dir)
  config.data.data_dir = data_dir
  config.data.stored_size = None
  config.training.log_every_steps = tiny.training.log_every_steps
  config.training.tensorboard_images = tiny.training.tensorboard_images
  config.report.num_overlays = tiny.report.num_overlays
  for key in STEP_KEYS:
    *parents, leaf = key.split(".")
    source, target = tiny, config
    for part in parents:
      source, target = source[part], target[part]
    value = source[leaf]
    if hasattr(value, "to_dict"):
      for name, item in value.items():
        target[leaf][name] = item
    else:
      target[leaf] = value
  return config


# Two steps a call as well: the loop's k-step path, whose compiled scan then serves every run
# with these settings (tests/test_train.py compares its logging with the tiny run's one step).
AVERAGED_RUN = {"training.num_epochs": 4, "optimizer.cycle_epochs": 2.0,
                "optimizer.cycle_mult": 1.0, "checkpoint.keep": 10, "training.ema_decay": 0.9,
                "training.steps_per_dispatch": 2}


@pytest.fixture(scope="session")
def averaged_run(data_dir, tmp_path_factory):
  """(workdir, results) of a tiny finished run that kept every checkpoint and a weight average:
  four epochs in two SGDR cycles of two, two steps a call. Shared by the tests that only need
  some such run."""
  from lesion_jax import train

  config = tiny_config(data_dir, **AVERAGED_RUN)
  workdir = str(tmp_path_factory.mktemp("averaged_run") / "run")
  return workdir, train.train_and_evaluate(config, workdir)


@pytest.fixture(scope="session")
def averaged_run_levers(averaged_run):
  """levers.json of `averaged_run`, written by the command into WORKDIR/levers."""
  from lesion_jax import levers

  workdir, _ = averaged_run
  assert levers.main([workdir]) == 0
  with open(os.path.join(workdir, "levers", "levers.json")) as f:
    return json.load(f)


@pytest.fixture
def restored_logging():
  """launch.py's main sets up the console logging of a run; other tests keep theirs."""
  import logging

  root, absl = logging.getLogger(), logging.getLogger("absl")
  handlers, level, absl_level = list(root.handlers), root.level, absl.level
  yield
  root.handlers[:] = handlers
  root.setLevel(level)
  absl.setLevel(absl_level)


def launch_in_this_process(argv: list[str]) -> int:
  """launch.py's flag parsing, then its main, in this process (0, or the SystemExit raised);
  with `restored_logging` and capsys for what it prints."""
  import sys

  sys.path.insert(0, REPO)
  try:
    import launch
  finally:
    sys.path.remove(REPO)
  launch.FLAGS.unparse_flags()
  # ml_collections defines a flag per override (--config.loss, ...) at the first parse; another
  # launch here naming the same key would define it twice.
  for name in [name for name in launch.FLAGS if name.startswith("config.")]:
    delattr(launch.FLAGS, name)
  old_argv, sys.argv = sys.argv, ["launch.py", *argv]  # ml_collections reads its overrides here
  try:
    launch.main(launch.parse_flags(sys.argv))
  finally:
    sys.argv = old_argv
  return 0


@pytest.fixture
def real_data_dir():
  path = os.environ.get(REAL_DATA_ENV)
  if not path:
    pytest.skip(f"{REAL_DATA_ENV} is unset: point it at a folder holding ph2/ and isic2017/ "
                "(CI sets it to ../shared/data)")
  return path
