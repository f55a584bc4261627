"""Two processes on one machine train as one process with all their devices would (slow).

Each test run starts real `jax.distributed` processes on localhost: a reference with one process
and 4 CPU devices, and at the same time two processes with 2 CPU devices each, joined over
gloo. Both drive the pieces `train_and_evaluate` uses (create_train_state,
parallel.pmap_train_step, the grain training batches sharded by process, evaluation.evaluate,
RunCheckpoints) on a two-conv model small enough to compile in a second, and dump what they saw
as JSON. The processes must end with identical parameters, see the losses of the single
process, gather every evaluation image exactly once, and save a checkpoint together.

This file is also the worker: `python tests/test_multihost.py NUM_PROCESSES PROCESS_ID PORT
LOCAL_DEVICES OUT_DIR`.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
BATCH_PER_DEVICE = 2
TRAIN_STEPS = 3
TRAIN_IMAGES = 24
EVAL_IMAGES = 11  # odd: the two processes hold 6 and 5 real images, padded to equal batches


def _synthetic_source(count: int, seed: int) -> list[dict]:
  """In-memory examples in the tfds layout (uint8 image, {0,1} mask), stored at 40x40."""
  import numpy as np
  rng = np.random.default_rng(seed)
  examples = []
  for _ in range(count):
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    mask = (image.mean(-1) > 127).astype(np.uint8)  # learnable: bright pixels are lesion
    examples.append({"image": image, "mask": mask})
  return examples


def _checkpoint_round_trip(directory: str, params) -> bool:
  """Saves `params` as every process's latest checkpoint and reads them back: equal?"""
  import jax
  import numpy as np

  from lesion_jax import checkpoint
  checkpoints = checkpoint.RunCheckpoints(directory)
  checkpoints.save_latest(TRAIN_STEPS, {"params": params}, {"step": TRAIN_STEPS})
  restored, meta = checkpoints.restore_latest({"params": params})
  checkpoints.close()
  return meta["step"] == TRAIN_STEPS and all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(restored["params"]), jax.tree.leaves(params)))


def worker(num_processes: int, process_id: int, port: int, local_devices: int,
           out_dir: str) -> None:
  # Both settings must precede the first use of a JAX backend.
  os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                             f"--xla_force_host_platform_device_count={local_devices}")
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  sys.path.insert(0, REPO)
  from lesion_jax import parallel
  if num_processes > 1:
    assert parallel.initialize_distributed(f"localhost:{port}", num_processes, process_id)

  import functools

  import flax.linen as nn
  import numpy as np
  import optax

  from lesion_jax import augment, losses, metrics, train
  from lesion_jax import evaluation as evaluation_lib
  from lesion_jax.data import pipeline

  class TwoConvs(nn.Module):
    """No BatchNorm and no dropout: the math cannot depend on which device holds which image."""

    @nn.compact
    def __call__(self, x, train: bool = False):
      del train
      return nn.Conv(1, (3, 3))(nn.relu(nn.Conv(8, (3, 3))(x)))

  devices = parallel.local_devices()
  loss_fn = losses.get_loss("dice")
  state = train.create_train_state(TwoConvs(), optax.adam(1e-2), jax.random.PRNGKey(0),
                                   IMAGE_SIZE)
  # Augmentation on: its draws follow the global device index, the same in both layouts.
  p_train = parallel.pmap_train_step(functools.partial(
      train.train_step, loss_fn=loss_fn,
      augment_options=augment.AugmentOptions(flip=True, rotate=True)), devices)
  p_eval = parallel.pmap_eval_step(functools.partial(
      train.eval_step, loss_fn=loss_fn,
      thresholds=jax.numpy.asarray(metrics.THRESHOLDS, jax.numpy.float32)), devices)
  batches = pipeline.training_batches(
      pipeline.decode_split([_synthetic_source(TRAIN_IMAGES, seed=1)], IMAGE_SIZE, cache_gb=1),
      seed=0, batch_size_per_device=BATCH_PER_DEVICE, num_devices=len(devices),
      process_index=parallel.process_index(), process_count=parallel.process_count())

  replicated = parallel.replicate(state, devices)
  step_losses = []
  stream = parallel.prefetch_to_devices(pipeline.iterate_from(batches, 0, num_threads=1),
                                        devices)
  for _ in range(TRAIN_STEPS):
    replicated, step_metrics = p_train(replicated, next(stream))
    step_losses.append(float(np.asarray(step_metrics["loss"])[0]))
  parallel.assert_replicas_equal(replicated.params)

  evaluation = evaluation_lib.evaluate(
      p_eval, replicated, _synthetic_source(EVAL_IMAGES, seed=2), IMAGE_SIZE,
      batch_size_per_device=BATCH_PER_DEVICE, num_devices=len(devices), num_threads=1)
  order = np.argsort(evaluation.index)

  host = parallel.unreplicate(replicated)
  result = {
      "process_index": parallel.process_index(),
      "process_count": parallel.process_count(),
      "global_devices": jax.device_count(),
      "losses": step_losses,
      "params": {"/".join(str(k.key) for k in path): np.asarray(leaf).tolist()
                 for path, leaf in jax.tree_util.tree_leaves_with_path(host.params)},
      "eval_index": evaluation.index[order].tolist(),
      "eval_counts": evaluation.counts[order].tolist(),
      "checkpoint_restored_equal": _checkpoint_round_trip(os.path.join(out_dir, "run"),
                                                          host.params),
  }
  with open(os.path.join(out_dir, f"process{process_id}.json"), "w") as f:
    json.dump(result, f)
  parallel.sync_hosts("worker-done")  # no process leaves while another still needs it


# ----------------------------------------------------------------------------------------------
# The test (the parent side).

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start_processes(num_processes: int, local_devices: int, out_dir) -> list:
  os.makedirs(out_dir, exist_ok=True)
  port = _free_port()
  from tests.conftest import xla_flags  # not at the top: this file is also the worker
  env = dict(os.environ, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu")
  return [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), str(num_processes), str(i), str(port),
       str(local_devices), str(out_dir)],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(num_processes)]


def _results(procs: list, out_dir) -> list[dict]:
  """What each of the started processes dumped, once all have ended."""
  logs = [proc.communicate(timeout=240)[0] for proc in procs]
  for i, proc in enumerate(procs):
    assert proc.returncode == 0, f"process {i} of {len(procs)} failed:\n{logs[i][-4000:]}"
  results = []
  for i in range(len(procs)):
    with open(os.path.join(out_dir, f"process{i}.json")) as f:
      results.append(json.load(f))
  return results


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_all_devices(tmp_path):
  import numpy as np

  # All three at once: while the pair waits on each other, the reference computes.
  runs = {"single": (1, 4), "pair": (2, 2)}
  procs = {}
  try:
    for name, (num_processes, local_devices) in runs.items():
      procs[name] = _start_processes(num_processes, local_devices, tmp_path / name)
    (single,) = _results(procs["single"], tmp_path / "single")
    first, second = _results(procs["pair"], tmp_path / "pair")
  finally:
    for proc in sum(procs.values(), []):  # a failed process would leave another at a barrier
      if proc.poll() is None:
        proc.kill()
        proc.wait()

  assert [r["process_index"] for r in (first, second)] == [0, 1]
  assert first["process_count"] == 2 and first["global_devices"] == 4
  # The replicas on both hosts hold the very same parameters and saw the same global losses.
  assert first["params"] == second["params"]
  assert first["losses"] == second["losses"]
  # ... which are those of one process holding all four devices (up to summation order).
  np.testing.assert_allclose(first["losses"], single["losses"], rtol=1e-5)
  assert first["losses"][-1] < first["losses"][0]  # it trained
  for name, value in single["params"].items():
    np.testing.assert_allclose(first["params"][name], value, rtol=1e-4, atol=1e-6)
  # Evaluation: every image exactly once, gathered on every process, padding dropped.
  for result in (first, second, single):
    assert result["eval_index"] == list(range(EVAL_IMAGES))
  assert first["eval_counts"] == second["eval_counts"]
  np.testing.assert_allclose(first["eval_counts"], single["eval_counts"], atol=2)
  # Both processes took part in one orbax save and read it back.
  assert first["checkpoint_restored_equal"] and second["checkpoint_restored_equal"]


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
