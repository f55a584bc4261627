"""pmap data parallelism: the same global batch on 1, 2 or 4 devices trains the same way."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh process: the forced CPU device count must be set before jax starts.
SCRIPT = r"""
import functools, json
import jax, numpy as np, optax
from lesion_jax import losses, models, parallel, train
from lesion_jax.data import pipeline

rng = np.random.default_rng(0)
images = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
masks = (rng.random((4, 32, 32, 1)) > 0.6).astype(np.float32)
# Dropout off: its masks depend on how the batch is split; BatchNorm reduces over all devices.
# A narrow U-Net with BatchNorm after every conv: quick to compile, and BN everywhere.
model = models.create_model("unet", ifc=16, dropout_rate=0.0, batch_norm=True,
                            bn_axis_name=parallel.AXIS_NAME).clone(ifc=4)
# Plain SGD: Adam's first steps divide each gradient by its own magnitude, which turns the
# last-bit differences of a different summation order into visible ones for tiny gradients.
# One initial state for all three runs, its initialisation compiled as the rest of the suite's
# (tests/conftest.py: most XLA optimisations off). The steps compile optimised, as in training:
# unoptimised, their replicas once came out different ("replicas diverged", not reproduced).
state = train.create_train_state(model, optax.sgd(0.01), jax.random.PRNGKey(0), 32)
jax.config.update("jax_disable_most_optimizations", False)
out = {}
for n in (1, 2, 4):
  devices = parallel.local_devices(n)
  step = parallel.pmap_train_step(
      functools.partial(train.train_step, loss_fn=losses.get_loss("dice")), devices)
  replicated = parallel.replicate(state, devices)
  batch = {"image": parallel.shard(images, n), "mask": parallel.shard(masks, n)}
  step_losses = []
  for _ in range(3):
    replicated, metrics = step(replicated, batch)
    step_losses.append(float(np.asarray(metrics["loss"])[0]))
  parallel.assert_replicas_equal(replicated.params)
  params = parallel.unreplicate(replicated).params
  out[n] = {"losses": step_losses,
            "checksum": float(sum(np.abs(x).sum() for x in jax.tree.leaves(params))),
            "devices": len(devices)}
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_same_global_batch_gives_same_losses_on_1_2_4_devices():
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"),
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT"))
  runs = json.loads(line[len("RESULT"):])
  assert [runs[k]["devices"] for k in ("1", "2", "4")] == [1, 2, 4]
  for n in ("2", "4"):
    # The first loss agrees to the last bits; later ones drift by ~1e-4 relative, because the
    # summation order of BatchNorm's cross-device statistics differs and the BN layers amplify
    # the rounding. A missing gradient or BN reduction would be off by whole percents.
    np.testing.assert_allclose(runs[n]["losses"][0], runs["1"]["losses"][0], rtol=1e-6)
    np.testing.assert_allclose(runs[n]["losses"], runs["1"]["losses"], rtol=5e-4)
    np.testing.assert_allclose(runs[n]["checksum"], runs["1"]["checksum"], rtol=1e-4)
  assert runs["1"]["losses"][2] != runs["1"]["losses"][0]  # the steps did train


def test_compiled_step_applies_compiler_options_and_compiles_once():
  import functools

  import jax
  import optax
  from flax import linen as nn

  from lesion_jax import losses, parallel, train

  class TwoConvs(nn.Module):  # compiles in about a second, and has convolutions for YNNPACK
    @nn.compact
    def __call__(self, x, train: bool = False):
      del train
      return nn.Conv(1, (3, 3))(nn.relu(nn.Conv(32, (3, 3))(x)))

  state = train.create_train_state(TwoConvs(), optax.sgd(0.01), jax.random.PRNGKey(0), 32)
  devices = parallel.local_devices(1)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(1, 2, 32, 32, 3)).astype(np.float32),
           "mask": (rng.random((1, 2, 32, 32, 1)) > 0.5).astype(np.float32)}
  step = functools.partial(train.train_step, loss_fn=losses.get_loss("dice"))
  results = {}
  for options in ({}, {"xla_cpu_experimental_ynn_fusion_type": ""}):
    p_step = parallel.pmap_train_step(step, devices, options)
    replicated = parallel.replicate(state, devices)
    text = p_step.compile(replicated, batch).as_text()
    if options:  # YNNPACK fusions are gone when it is switched off
      assert "__ynn_fusion" not in text
    losses_seen = []
    for _ in range(2):
      replicated, metrics = p_step(replicated, batch)
      losses_seen.append(float(np.asarray(metrics["loss"])[0]))
    # With options the step is compiled once and reused; without, pmap dispatches it.
    assert len(p_step._executables) == (1 if options else 0)
    results[bool(options)] = losses_seen
  np.testing.assert_allclose(results[True], results[False], rtol=1e-5)


def test_shard_splits_over_the_devices_asked_for_as_common_utils_does_over_all():
  import jax
  from flax.training import common_utils

  from lesion_jax import parallel

  batch = np.arange(24 * 2).reshape(24, 2)
  # Over every local device, the same array as flax's helper ...
  np.testing.assert_array_equal(parallel.shard(batch, jax.local_device_count()),
                                common_utils.shard(batch))
  # ... which cannot split over fewer (config.num_devices) nor name an uneven split.
  assert parallel.shard(batch, 3).shape == (3, 8, 2)
  np.testing.assert_array_equal(parallel.shard(batch, 3)[1], batch[8:16])
  with pytest.raises(ValueError, match="batch of 24 does not split over 5 devices"):
    parallel.shard(batch, 5)
