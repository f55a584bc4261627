"""End-to-end runs of the training spine on tiny synthetic data.

The loop's decisions (early stopping, divergence, the calls' plan, a collapsed model) are checked
as functions in tests/test_loop_decisions.py; here, that a run acts on them. Every run here but
two compiles no step of its own: they share tiny_config's (or the averaged run's) compilations.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import flax.linen as flax_nn
import numpy as np
import pytest

from lesion_jax import errors
from lesion_jax import evaluation as evaluation_lib
from lesion_jax import loop as loop_lib
from lesion_jax import metrics as metrics_lib
from lesion_jax import parallel as parallel_lib
from lesion_jax import train
from tests.conftest import AVERAGED_RUN, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def finished_run(tiny_run):
  """The session's finished tiny run (tests/conftest.py); the tests here only read it."""
  return tiny_run


def test_run_writes_every_output(finished_run):
  workdir, results = finished_run
  for name in ("config.json", "metrics.jsonl", "results.json", "results.md",
               "threshold_curve.png", "tensorboard"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  assert on_disk == results
  assert results["model"] == {"name": "deeplab_mobilenetv2", "params": 440417}
  assert results["threshold"] in [pytest.approx(t) for t in metrics_lib.THRESHOLDS]
  assert 0 <= results["validation"]["ja"] <= 1
  test = results["test"]["synthetic_lesions/dermoscopic"]
  assert set(test) == {"tja", "ja", "di", "ac", "se", "sp", "n_images"}
  assert test["n_images"] == 8  # 20% of 40, every test image exactly once
  assert all(0 <= test[m] <= 1 for m in ("tja", "ja", "di", "ac", "se", "sp"))
  overlays = os.listdir(os.path.join(workdir, "overlays", "synthetic_lesions_dermoscopic"))
  assert any(n.startswith("best1_") for n in overlays)
  assert any(n.startswith("worst1_") for n in overlays)
  table = open(os.path.join(workdir, "results.md")).read()
  assert "| synthetic_lesions/dermoscopic |" in table and "TJA" in table
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert {l["kind"] for l in lines} == {"train", "validation"}
  assert all(np.isfinite(l["loss"]) for l in lines if l["kind"] == "train")


def test_same_seed_gives_identical_metrics(finished_run, data_dir, tmp_path):
  _, first = finished_run
  second = train.train_and_evaluate(tiny_config(data_dir), str(tmp_path / "again"))
  assert second["test"] == first["test"]
  assert second["threshold"] == first["threshold"]


def test_reusing_a_workdir_with_another_config_is_refused(finished_run, data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run[0], workdir)
  with pytest.raises(FileExistsError, match="loss"):
    train.train_and_evaluate(tiny_config(data_dir, loss="jaccard"), workdir)
  # The same config is a finished run: it is not trained again.
  mtime = os.path.getmtime(os.path.join(workdir, "results.json"))
  train.train_and_evaluate(tiny_config(data_dir), workdir)
  assert os.path.getmtime(os.path.join(workdir, "results.json")) == mtime


def test_overwrite_starts_again(finished_run, data_dir, tmp_path):
  workdir = str(tmp_path / "w")
  shutil.copytree(finished_run[0], workdir)
  first = finished_run[1]
  (tmp_path / "w" / "notes.txt").write_text("mine")
  # Another seed: a different run that compiles to the same step (the cache serves it).
  second = train.train_and_evaluate(tiny_config(data_dir, seed=1), workdir, overwrite=True)
  assert json.loads((tmp_path / "w" / "config.json").read_text())["seed"] == 1
  assert second != first
  assert (tmp_path / "w" / "notes.txt").read_text() == "mine"  # only the run's outputs go


@pytest.mark.slow
def test_a_diverging_run_stops_with_the_error_and_keeps_its_last_good_checkpoint(data_dir,
                                                                                tmp_path):
  """A loss above divergence_factor times the first step's ends the run before the diverged
  step is saved. (A factor of 0.001 makes any second step "diverge": the run compiles the tiny
  runs' steps, where an exploding learning rate or loss would compile its own; what counts as
  diverged, NaN and inf included, is tests/test_loop_decisions.py's.)"""
  config = tiny_config(data_dir, **{"training.divergence_factor": 0.001,
                                    "training.divergence_reference_steps": 1,
                                    "checkpoint.every_steps": 1})
  workdir = tmp_path / "diverged"
  with pytest.raises(train.NonFiniteLossError) as caught:  # the name earlier versions raised
    train.train_and_evaluate(config, str(workdir))
  assert isinstance(caught.value, errors.TrainingDiverged)
  assert caught.value.exit_code == errors.EXIT_DIVERGED
  message = str(caught.value)
  assert message.startswith("training diverged at step 2: the loss reached ")
  assert "times its mean over the run's first 1 steps" in message
  assert (f"The last good checkpoint, step 1, is kept in {workdir}/checkpoints/latest"
          in message)
  assert not os.path.exists(workdir / "results.json")
  assert os.listdir(workdir / "checkpoints" / "latest") == ["1"]  # step 2 was not saved
  # The same command resumes from step 1 and diverges again: the error, not a result.
  with pytest.raises(errors.TrainingDiverged, match="at step 2:"):
    train.train_and_evaluate(config, str(workdir))


def _collapsed(evaluation: evaluation_lib.Evaluation) -> evaluation_lib.Evaluation:
  """The same images as a model calling every pixel lesion at every threshold would score."""
  counts = evaluation.counts.copy()
  tp, fp, fn, tn = (counts[..., i].copy() for i in (metrics_lib.TP, metrics_lib.FP,
                                                      metrics_lib.FN, metrics_lib.TN))
  counts[..., metrics_lib.TP], counts[..., metrics_lib.FP] = tp + fn, fp + tn
  counts[..., metrics_lib.FN] = counts[..., metrics_lib.TN] = 0
  return evaluation_lib.Evaluation(counts, evaluation.loss, evaluation.index)


@pytest.mark.slow
def test_a_model_collapsed_to_a_constant_mask_is_flagged(data_dir, tmp_path, caplog,
                                                         monkeypatch):
  """The run's evaluations see a model that calls every pixel lesion (what a huge learning rate
  with the bounded Dice loss gives): its results, log, results.md and end summary say so."""
  real_evaluate = evaluation_lib.evaluate
  monkeypatch.setattr(evaluation_lib, "evaluate",
                      lambda *args, **kwargs: _collapsed(real_evaluate(*args, **kwargs)))
  with caplog.at_level("WARNING"):
    results = train.train_and_evaluate(tiny_config(data_dir), str(tmp_path / "collapsed"))
  (warning,) = results["warnings"]
  assert "constant mask" in warning and "lesion at every pixel" in warning
  assert warning in caplog.text
  assert warning in (tmp_path / "collapsed" / "results.md").read_text()
  from lesion_jax import report
  assert f"WARNING: {warning}" in report.tables.run_end_summary(results,
                                                                str(tmp_path / "collapsed"))


@pytest.mark.slow
def test_early_stopping_stops_after_patience(data_dir, tmp_path, monkeypatch):
  """Validation JA 0.5, 0.6, 0.55, ... with patience 1 stops at the 3rd of 4 evaluations.

  The averaged run's settings (4 epochs): its compilation serves, and the stop comes early."""
  sequence = iter([0.5, 0.6, 0.55, 0.9, 0.9, 0.9])
  real_evaluate = evaluation_lib.evaluate

  def fake_evaluate(*args, **kwargs):
    evaluation = real_evaluate(*args, **kwargs)
    ja = next(sequence, 0.9)
    # One image whose JA is `ja` at every threshold: tp / (tp + fp + fn).
    counts = np.zeros_like(evaluation.counts[:1])
    counts[..., 0] = int(ja * 1000)
    counts[..., 1] = 1000 - int(ja * 1000)
    return evaluation_lib.Evaluation(counts, evaluation.loss[:1], evaluation.index[:1])

  monkeypatch.setattr(evaluation_lib, "evaluate", fake_evaluate)
  config = tiny_config(data_dir, **{**AVERAGED_RUN, "training.patience": 1})
  results = train.train_and_evaluate(config, str(tmp_path / "es"))
  validation_calls = [json.loads(l) for l in open(tmp_path / "es" / "metrics.jsonl")
                      if '"validation"' in l]
  assert [c["step"] for c in validation_calls] == [7, 14, 21]  # of 28 steps
  assert results["training"]["steps"] == 21
  assert results["best_step"] == validation_calls[1]["step"]


@pytest.mark.parametrize("kill_after_checkpoints", [1])
def test_resume_after_kill_matches_an_uninterrupted_run(finished_run, data_dir, tmp_path,
                                                        kill_after_checkpoints):
  _, uninterrupted = finished_run
  workdir = tmp_path / "killed"
  # A checkpoint every 3 steps, not every step: a save costs ~0.4 s, and the kill then leaves
  # more logged steps after the last save for the resumed run to replay.
  args = [sys.executable, "-c", (
      "import sys; sys.path.insert(0, %r)\n"
      "from tests.conftest import tiny_config\n"
      "from lesion_jax import train\n"
      "config = tiny_config(%r, **{'checkpoint.every_steps': 3})\n"
      "train.train_and_evaluate(config, %r)\n") % (REPO, data_dir, str(workdir))]
  process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  latest = workdir / "checkpoints" / "latest"
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    steps = [int(p) for p in os.listdir(latest) if p.isdigit()] if latest.exists() else []
    if len(steps) >= kill_after_checkpoints and max(steps) >= 3:
      process.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  process.wait()
  assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  assert not (workdir / "results.json").exists()
  resumed = train.train_and_evaluate(
      tiny_config(data_dir, **{"checkpoint.every_steps": 3}), str(workdir))
  assert resumed["test"] == uninterrupted["test"]
  assert resumed["threshold"] == uninterrupted["threshold"]
  # The steps logged after the last checkpoint were replayed, and appear once.
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert len({(r["kind"], r["step"]) for r in rows}) == len(rows)


def test_dispatch_plan_never_crosses_a_logging_evaluation_or_save_step():
  plan = loop_lib.dispatch_plan(start=0, total=30, steps_per_dispatch=4, every=(4, 6, None))
  assert sum(count for _, count in plan) == 30 and max(count for _, count in plan) == 4
  ends = [end for end, _ in plan]
  assert set(range(4, 31, 4)) | set(range(6, 31, 6)) | {30} <= set(ends)
  assert loop_lib.dispatch_plan(10, 14, 1, (2,)) == [(11, 1), (12, 1), (13, 1), (14, 1)]
  # Resumed mid-way: the calls still end on the same steps.
  assert loop_lib.dispatch_plan(5, 12, 8, (4,)) == [(8, 3), (12, 4)]


def test_config_optimizer_flatten_gives_the_run_adam_on_one_flat_vector():
  """The key reaches the optimiser a run builds (the update itself: tests/test_optim.py)."""
  import jax

  from lesion_jax.config import base_config
  params = {"conv": np.zeros((3, 3, 2, 4), np.float32), "bias": np.zeros(4, np.float32)}
  sizes = {}
  for flatten in (False, True):
    config = base_config()
    config.optimizer.flatten = flatten
    tx, _ = train.optimizer(config, total_steps=100, steps_per_epoch=10)
    sizes[flatten] = sorted(np.size(x) for x in jax.tree.leaves(tx.init(params))
                            if x.dtype == np.float32)
  assert sizes == {False: [4, 4, 72, 72], True: [76, 76]}


class _ConvBatchNormDropout(flax_nn.Module):
  """A conv, BatchNorm over the pmap axis, dropout and a 1x1 conv: each per-step draw and state
  a model has, in a program that compiles in a second (a U-Net's takes half a minute)."""

  @flax_nn.compact
  def __call__(self, x, train: bool = False):
    x = flax_nn.Conv(4, (3, 3))(x)
    x = flax_nn.BatchNorm(use_running_average=not train, momentum=0.9,
                          axis_name=parallel_lib.AXIS_NAME)(x)
    x = flax_nn.Dropout(0.2, deterministic=not train)(flax_nn.relu(x))
    return flax_nn.Conv(1, (1, 1))(x)


def test_a_model_is_initialised_as_at_the_run_size():
  """create_train_state initialises a registry model at one size for every image size (one
  compiled init): its variables are the ones flax's init gives at the run's own size."""
  import jax
  import jax.numpy as jnp
  import optax

  from lesion_jax.models import create_model

  model = create_model("unet", ifc=16, batch_norm=True).clone(ifc=2)
  key = jax.random.PRNGKey(3)
  state = train.create_train_state(model, optax.sgd(0.1), key, (32, 48))
  init_rng, dropout_rng, _ = jax.random.split(key, 3)
  direct = jax.jit(lambda: model.init({"params": init_rng, "dropout": dropout_rng},
                                      jnp.zeros((1, 32, 48, 3)), train=False))()
  got = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  assert jax.tree.structure(got) == jax.tree.structure(direct)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(direct)):
    np.testing.assert_array_equal(a, b)


def test_k_steps_per_dispatch_give_the_parameters_of_k_single_steps():
  """With dropout, BatchNorm and augmentation: the scan carries every per-step draw."""
  import functools

  import jax
  import optax

  from lesion_jax import augment, losses, parallel

  model = _ConvBatchNormDropout()
  devices = parallel.local_devices(1)
  options = augment.AugmentOptions(flip=True, rotate=True)
  loss_fn = losses.get_loss("dice")
  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (1, 2, 32, 32, 3), dtype=np.uint8),
              "mask": rng.integers(0, 2, (1, 2, 32, 32, 1), dtype=np.uint8)}
             for _ in range(3)]
  # Plain SGD: Adam's first updates are nearly sign(gradient), which turns float noise in
  # near-zero gradients into whole learning-rate steps and would hide what is compared here.
  state = jax.device_get(train.create_train_state(model, optax.sgd(0.1, momentum=0.9),
                                                  jax.random.PRNGKey(1), 32))
  single = parallel.pmap_train_step(
      functools.partial(train.train_step, loss_fn=loss_fn, augment_options=options), devices)
  several = parallel.pmap_train_step(
      functools.partial(train.train_steps, loss_fn=loss_fn, augment_options=options), devices)
  one_by_one, losses_single = parallel.replicate(state, devices), []
  for batch in batches:
    one_by_one, metrics = single(one_by_one, batch)
    losses_single.append(float(metrics["loss"][0]))
  stacked = {k: np.stack([b[k] for b in batches], axis=1) for k in batches[0]}
  at_once, metrics = several(parallel.replicate(state, devices), stacked)
  np.testing.assert_allclose(np.asarray(metrics["loss"][0]), losses_single, rtol=1e-5)
  a, b = parallel.unreplicate(one_by_one), parallel.unreplicate(at_once)
  assert int(a.step) == int(b.step) == 3
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats, a.opt_state)),
                  jax.tree.leaves((b.params, b.batch_stats, b.opt_state))):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_a_run_with_two_steps_per_dispatch_logs_and_evaluates_at_the_same_steps(
    finished_run, averaged_run):
  """The averaged run makes two steps a call (conftest.AVERAGED_RUN), the tiny run one; they log
  every 2 steps and evaluate every 7 (an epoch), and start from the same weights and batches."""
  (workdir, one_per_call), (two_workdir, two_per_call) = finished_run, averaged_run
  assert one_per_call["training"]["steps"] == 14 and two_per_call["training"]["steps"] == 28
  one, two = ([json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
              for w in (workdir, two_workdir))
  keys = [(r["kind"], r["step"]) for r in two]
  # Over the tiny run's 14 steps, the same rows in the same order; then on to step 28 so: the
  # losses at every 2nd step and before each evaluation, which comes every 7th.
  assert keys[:len(one)] == [(r["kind"], r["step"]) for r in one]
  assert len(keys) == len(set(keys))
  evaluations = {7, 14, 21, 28}
  assert set(keys) == ({("train", s) for s in set(range(2, 29, 2)) | evaluations}
                       | {("validation", s) for s in evaluations})
  # The first two steps are one call: the same losses to float tolerance (the first update is
  # the same: the same peak learning rate; the weight average changes no weight). Later steps
  # drift apart by more: their schedules differ, and Adam's first updates are nearly
  # sign(gradient), which turns float noise in near-zero gradients into whole learning-rate
  # steps; test_k_steps... checks the math.
  assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
