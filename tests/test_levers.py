"""Snapshot ensembles, SWA, BatchNorm recomputation and mask post-processing (levers of the ISIC
recipe), each against a plain NumPy computation; the levers evaluation of a tiny run against the
run's own results."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lesion_jax import averaging, inference, levers, metrics, postprocess, train
from lesion_jax.config import base_config
from lesion_jax.errors import ConfigError


def test_largest_component_keeps_the_biggest_region_and_fills_its_holes():
  mask = np.zeros((12, 12), bool)
  mask[1:8, 1:8] = True  # 49 pixels, with a hole
  mask[4, 4] = False
  mask[10:12, 10:12] = True  # 4 pixels, an island
  mask[8, 8] = True  # touches the big square diagonally: 8-connected to it
  expected = np.zeros((12, 12), bool)
  expected[1:8, 1:8] = True
  expected[8, 8] = True
  np.testing.assert_array_equal(postprocess.largest_component(mask), expected)
  assert not postprocess.largest_component(np.zeros((5, 5), bool)).any()


def test_fill_holes_equals_scipy_binary_fill_holes():
  from scipy import ndimage

  rng = np.random.default_rng(4)
  blurred = ndimage.gaussian_filter(rng.random((6, 64, 48)), (0, 3, 3))  # blobs with holes
  masks = [b >= t for b in blurred for t in np.quantile(b, (0.3, 0.5, 0.7))]
  masks += [rng.random((9, 13)) > 0.5 for _ in range(20)]  # ragged, holes at the border
  masks += [np.ones((5, 5), bool), np.zeros((5, 5), bool), np.eye(6, dtype=bool)]
  for mask in masks:
    np.testing.assert_array_equal(postprocess.fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_counts_without_postprocessing_equal_the_device_counts():
  rng = np.random.default_rng(0)
  probs = rng.uniform(size=(3, 16, 16)).astype(np.float32)
  masks = (rng.uniform(size=(3, 16, 16)) > 0.6).astype(np.uint8)
  host = postprocess.counts_at_thresholds(probs, masks, "none")
  device = metrics.confusion_counts_at_thresholds(probs, masks, metrics.THRESHOLDS)
  np.testing.assert_array_equal(host, np.asarray(device))
  cleaned = postprocess.counts_at_thresholds(probs, masks, "largest_component")
  assert cleaned.shape == host.shape and (cleaned.sum(-1) == 256).all()


def test_cycle_end_steps_follow_the_sgdr_cycles():
  config = base_config()  # cycles of 10 epochs, doubling
  assert averaging.cycle_end_steps(config, 450, 70 * 450) == [4500, 13500, 31500]
  # A run cut inside its third cycle ends a snapshot at its last step.
  assert averaging.cycle_end_steps(config, 10, 500) == [100, 300, 500]


def test_checkpoint_plan_takes_the_last_cycle_and_its_second_half():
  config = base_config()
  steps = list(range(10, 710, 10))  # every epoch of a 70-epoch run, 10 steps each
  plan = levers.checkpoint_plan(config, steps, 10, 700)
  assert plan["snapshots"] == [100, 300, 700]
  assert plan["swa_cycle"] == list(range(310, 710, 10))
  assert plan["swa_half"] == list(range(510, 710, 10))
  assert "snapshots" not in levers.checkpoint_plan(config, [650, 700], 10, 700)
  # A chosen kept step is a variant of its own; a step the run did not keep is refused.
  assert levers.checkpoint_plan(config, steps, 10, 700, (310,))["step_310"] == [310]
  with pytest.raises(ConfigError, match=r"--steps \[315\].*kept: 10-700, 70 steps"):
    levers.checkpoint_plan(config, steps, 10, 700, (310, 315))


def test_the_reference_variant_is_checked_first_and_differences_are_paired():
  with pytest.raises(ConfigError, match="'step_9\\+none' is not a variant.*step_310\\+none"):
    levers.check_reference("step_9+none", ["best", "step_310"])
  with pytest.raises(ConfigError, match="not a variant"):
    levers.check_reference("ema+none", ["best"])
  levers.check_reference("ema_bn+largest_component", ["best", "ema", "ema_bn"])
  rng = np.random.default_rng(0)
  per_image = {name: {"x": {m: rng.uniform(size=7).tolist() for m in metrics.METRIC_NAMES}}
               for name in ("best+none", "step_310+none")}
  results = levers.with_differences(
      {k: {"per_image": v, "members": 1, "threshold": 0.5, "validation_ja": 0.8}
       for k, v in per_image.items()}, against="step_310+none")
  ja = np.subtract(per_image["best+none"]["x"]["ja"], per_image["step_310+none"]["x"]["ja"])
  mean, low, high = results["best+none"]["vs_reference"]["x"]["ja"]
  assert mean == pytest.approx(ja.mean()) and low < mean < high
  assert results["step_310+none"]["vs_reference"]["x"]["ja"] == [0.0, 0.0, 0.0]
  assert "JA - step_310+none" in levers.levers_table(results)


def test_mean_variables_is_the_leafwise_mean():
  trees = [{"a": np.full(3, v, np.float32), "b": {"c": np.array([v, 2 * v])}} for v in (1., 2., 6.)]
  mean = averaging.mean_variables(trees)
  np.testing.assert_allclose(mean["a"], np.full(3, 3.0))
  np.testing.assert_allclose(mean["b"]["c"], [3.0, 6.0])
  assert mean["a"].dtype == np.float32


class _DenseBN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(3)(x.reshape(x.shape[0], -1))
    return nn.BatchNorm(use_running_average=not train, momentum=0.0)(x)


def test_recompute_batch_stats_averages_each_batch_statistics():
  model = _DenseBN()
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, size=(10, 2, 2, 3), dtype=np.uint8)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 3)), train=False)
  stats = averaging.recompute_batch_stats(model, variables, images, batch_size=4)
  # NumPy: the Dense layer's outputs per whole batch (the last 2 images are left out).
  kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])
  bias = np.asarray(variables["params"]["Dense_0"]["bias"])
  outputs = [np.asarray(inference.standardize(images[i:i + 4])).reshape(4, -1) @ kernel + bias
             for i in (0, 4)]
  np.testing.assert_allclose(stats["BatchNorm_0"]["mean"],
                             np.mean([o.mean(0) for o in outputs], axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["BatchNorm_0"]["var"],
                             np.mean([o.var(0) for o in outputs], axis=0), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_levers_of_a_tiny_run_reproduce_its_own_results(averaged_run, averaged_run_levers):
  _, results = averaged_run
  found = averaged_run_levers
  best = found["best+none"]
  # The host's counts and threshold search give the run's own device-side evaluation.
  assert best["threshold"] == pytest.approx(results["threshold"])
  for name, own in results["test"].items():
    assert best["test"][name]["ja"] == pytest.approx(own["ja"], abs=1e-6)
  assert found["snapshots+none"]["members"] == 2 and found["snapshots+none"]["steps"][0] > 0
  assert found["swa_cycle+none"]["members"] == 1
  assert found["ema+largest_component"]["members"] == 1 and "ema_bn+none" in found
  assert found["best+none"]["vs_reference"][name]["ja"] == [0.0, 0.0, 0.0]


def test_train_step_keeps_an_exponential_moving_average_of_the_weights():
  import functools
  import optax
  from lesion_jax import losses, parallel

  class TwoConvs(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      del train
      return nn.Conv(1, (3, 3))(nn.relu(nn.Conv(4, (3, 3))(x)))

  decay = 0.5
  state = train.create_train_state(TwoConvs(), optax.sgd(0.1), jax.random.PRNGKey(0), 16,
                                   ema_decay=decay)
  devices = parallel.local_devices(1)
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, size=(1, 2, 16, 16, 3)).astype(np.uint8),
           "mask": (rng.random((1, 2, 16, 16, 1)) > 0.5).astype(np.uint8)}
  p_step = parallel.pmap_train_step(
      functools.partial(train.train_step, loss_fn=losses.get_loss("dice")), devices)
  replicated = parallel.replicate(state, devices)
  expected = jax.tree.map(np.asarray, state.params)
  for t in range(3):
    replicated, _ = p_step(replicated, batch)
    params = jax.tree.map(lambda x: np.asarray(x)[0], replicated.params)
    # NumPy: the warmed-up decay min(decay, (1 + t) / (10 + t)) at the step just taken.
    rate = min(decay, (1 + t + 1) / (10 + t + 1))
    expected = jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, expected, params)
  ema = jax.tree.map(lambda x: np.asarray(x)[0], replicated.ema["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), ema,
               expected)


def test_a_checkpoint_keeps_the_weight_average_exactly(tmp_path):
  import optax
  from lesion_jax import checkpoint

  class OneConv(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      del train
      return nn.Conv(1, (3, 3))(x)

  state = train.create_train_state(OneConv(), optax.adam(1e-3), jax.random.PRNGKey(0), 16,
                                   ema_decay=0.99)
  ema = jax.tree.map(lambda x: x + 0.125, state.ema)  # differs from the weights
  state = state.replace(ema=ema, step=jnp.asarray(7, jnp.int32))
  manager = checkpoint.RunCheckpoints(str(tmp_path))
  manager.save_latest(7, checkpoint.state_to_dict(state), {"note": "x"}, wait=True)
  fresh = train.create_train_state(OneConv(), optax.adam(1e-3), jax.random.PRNGKey(1), 16,
                                   ema_decay=0.99)
  restored, _ = manager.restore_latest(checkpoint.state_to_dict(fresh))
  manager.close()
  back = checkpoint.state_from_dict(fresh, restored)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               back.ema, ema)
  assert int(back.step) == 7
  read = checkpoint.read_ema(str(tmp_path), 7)
  np.testing.assert_array_equal(read["params"]["Conv_0"]["kernel"],
                                np.asarray(ema["params"]["Conv_0"]["kernel"]))


@pytest.mark.slow
def test_the_final_evaluation_scores_the_average_and_cleaned_masks_as_levers_does(
    averaged_run, averaged_run_levers, data_dir, tmp_path):
  import shutil
  from conftest import AVERAGED_RUN, tiny_config

  workdir = str(tmp_path / "run")
  shutil.copytree(averaged_run[0], workdir)
  config = tiny_config(data_dir, **AVERAGED_RUN)
  config.evaluation.weights = "ema"
  config.evaluation.postprocess = "largest_component"
  results = train.train_and_evaluate(config, workdir)  # evaluated again, not trained
  lever = averaged_run_levers["ema+largest_component"]
  assert results["weights"] == "ema" and results["best_step"] == results["training"]["steps"]
  assert results["threshold"] == pytest.approx(lever["threshold"])
  for name, scores in results["test"].items():
    assert scores["ja"] == pytest.approx(lever["test"][name]["ja"], abs=1e-6)


def test_the_validation_images_are_written_image_by_image(averaged_run):
  import csv
  workdir, results = averaged_run
  with open(f"{workdir}/per_image_validation.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == results["validation"]["n_images"]
  # Their mean is the validation JA the run reports at its threshold, up to the CSV's 6 decimals
  # (each value rounded by at most 5e-7, so their mean too).
  assert np.mean([float(r["ja"]) for r in rows]) == pytest.approx(results["validation"]["ja"],
                                                                  rel=0, abs=1e-6)
