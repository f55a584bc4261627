"""The measurements of a benchmark row: the train and eval steps alone, the input pipeline
alone, and the real training loop, each after warm-up and with every step waited for.

FLOPs are counted on the program as lowered from JAX, before any backend rewrites it: after
XLA's GPU passes, convolutions are cuDNN custom calls that the compiled module's cost analysis
does not count, so the compiled figure meant different things on CPU and GPU.
"""
from __future__ import annotations

import functools
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lesion_jax import augment, loop as loop_lib
from lesion_jax import metrics as metrics_lib
from lesion_jax import optim, parallel, preemption, train
from lesion_jax.data import pipeline


class DoesNotFit(RuntimeError):
  """A setting needs more memory than the device has (found before or while running it)."""


def _percentile_ms(times: Sequence[float], q: float) -> float:
  return float(np.percentile(np.asarray(times) * 1e3, q))


def _time_steps(run_step: Callable[[], Any], warmup_steps: int, steps: int) -> list[float]:
  """Seconds of each of `steps` steps, after `warmup_steps` untimed ones."""
  for _ in range(warmup_steps):
    jax.block_until_ready(run_step())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(run_step())
    times.append(time.perf_counter() - start)
  return times


def _first(analysis: Any) -> dict:
  """cost_analysis() is a dict, or a list with one dict per program in older JAX versions."""
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return dict(analysis or {})


def step_bytes(compiled) -> int | None:
  """Per-device bytes XLA plans for one call: arguments + outputs + temporaries - aliased."""
  try:
    stats = compiled.memory_analysis()
  except (NotImplementedError, AttributeError):
    return None
  if stats is None:
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def device_peak_bytes(devices: Sequence[jax.Device]) -> int | None:
  """The allocator's high-water mark over `devices`, or None where the backend keeps none."""
  peaks = []
  for device in devices:
    stats = device.memory_stats()
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def _memory_limit(devices: Sequence[jax.Device]) -> int | None:
  """Bytes one device may use: the allocator's limit, or a share of the host's free memory."""
  stats = devices[0].memory_stats()
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"])
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          # CPU "devices" share the host's memory.
          return int(line.split()[1]) * 1024 // len(devices)
  except OSError:
    pass
  return None


def _is_out_of_memory(error: Exception) -> bool:
  text = str(error).lower()
  return any(s in text for s in ("resource_exhausted", "out of memory", "resource exhausted",
                                 "failed to allocate"))


def synthetic_batch(devices: Sequence[jax.Device], batch_per_device: int, image_size,
                    seed: int = 0) -> dict:
  """uint8 images and {0, 1} masks as the input pipeline sends them, sharded over `devices`."""
  rng = np.random.default_rng(seed)
  shape = (len(devices), batch_per_device, *pipeline.image_shape(image_size))
  batch = {"image": rng.integers(0, 256, shape + (3,), dtype=np.uint8),
           "mask": (rng.random(shape + (1,)) < 0.3).astype(np.uint8)}
  return next(parallel.prefetch_to_devices([batch], devices, size=1))


def initial_state(model, image_size: int, seed: int = 0, learning_rate: float = 1e-3,
                  flatten: bool = False) -> train.TrainState:
  """A fresh train state (Adam, as in training; `flatten`: config.optimizer.flatten) fetched
  to the host.

  Parameters are float32 whatever the compute dtype, so one initialisation serves every dtype,
  batch size and device count of a model.
  """
  return jax.device_get(train.create_train_state(
      model, optim.adam(learning_rate, flatten), jax.random.PRNGKey(seed), image_size))


def lowered_flops(lowered) -> float | None:
  """FLOPs of a lowered (not yet compiled) program: the same count on every backend."""
  flops = _first(lowered.cost_analysis()).get("flops")
  return None if flops is None else float(flops)


def count_flops(fn: Callable, *args) -> float | None:
  """FLOPs of `fn(*args)` as JAX lowers it (convolutions, dots and elementwise work)."""
  return lowered_flops(jax.jit(fn).lower(*args))


def measure_steps(model, *, image_size, batch_per_device: int, devices: Sequence[jax.Device],
                  loss_fn: Callable, warmup_steps: int, steps: int, with_eval: bool = True,
                  state: train.TrainState | None = None, seed: int = 0,
                  compiler_options: dict | None = None,
                  augment_options: augment.AugmentOptions = augment.AugmentOptions()) -> dict:
  """Times the real pmapped train step (and eval step) of `model`; one row's measured fields.

  `state` (from `initial_state`, possibly of the same model in another dtype) saves an
  initialisation. Raises DoesNotFit when XLA's plan exceeds the device memory or the backend
  runs out of it.
  """
  if state is None:
    state = initial_state(model, image_size, seed)
  replicated = parallel.replicate(state.replace(apply_fn=model.apply), devices)
  batch = synthetic_batch(devices, batch_per_device, image_size, seed)
  p_train = parallel.pmap_train_step(functools.partial(
      train.train_step, loss_fn=loss_fn, augment_options=augment_options), devices,
      compiler_options)
  options = sorted((compiler_options or {}).items())
  row: dict[str, Any] = {
      "params": int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(state.params))),
      "xla_options": ",".join(f"{key}={value!r}" for key, value in options) or "default"}
  try:
    fields, replicated = _time_train_step(p_train, replicated, batch, devices,
                                          batch_per_device, warmup_steps, steps)
    row.update(fields)
    if with_eval:
      row.update(_time_eval_step(p_train.compiler_options, loss_fn, devices, replicated, batch,
                                 warmup_steps, steps))
    row["device_peak_bytes"] = device_peak_bytes(devices)
  except jax.errors.JaxRuntimeError as error:
    if _is_out_of_memory(error):
      raise DoesNotFit(str(error).splitlines()[0]) from error
    raise
  return row


def _time_train_step(p_train, replicated, batch, devices, batch_per_device: int,
                     warmup_steps: int, steps: int) -> tuple[dict, Any]:
  """(the row's step fields, the trained state: the one passed in was donated)."""
  global_batch = batch_per_device * len(devices)
  lowered = p_train.lower(replicated, batch)
  flops = lowered_flops(lowered)
  start = time.perf_counter()
  # Ahead-of-time compilation: the same executable a training step runs, timed on its own,
  # and the object XLA's memory analysis comes from.
  compiled = lowered.compile(compiler_options=p_train.compiler_options or None)
  compile_s = time.perf_counter() - start
  planned = step_bytes(compiled)
  limit = _memory_limit(devices)
  if planned is not None and limit is not None and planned > limit:
    raise DoesNotFit(f"XLA plans {planned / 2**20:.0f} MiB per device for one train step; "
                     f"the device has {limit / 2**20:.0f} MiB")

  def train_once():
    nonlocal replicated
    replicated, metrics = compiled(replicated, batch)  # the state is donated, as in training
    return metrics

  times = _time_steps(train_once, warmup_steps, steps)
  loss = float(np.asarray(train_once()["loss"])[0])
  if not np.isfinite(loss):
    raise FloatingPointError(f"the train step returned a {loss} loss on synthetic data")
  step_s = float(np.median(times))
  row = dict(train_images_per_s=global_batch / step_s,
             train_images_per_s_per_device=batch_per_device / step_s,
             step_ms_median=step_s * 1e3, step_ms_p10=_percentile_ms(times, 10),
             step_ms_p90=_percentile_ms(times, 90), compile_s=compile_s, peak_bytes=planned,
             flops_per_image=None if flops is None else flops / batch_per_device)
  if flops is not None:
    row["achieved_flops_per_s"] = row["flops_per_image"] * row["train_images_per_s"]
  return row, replicated


def _time_eval_step(compiler_options, loss_fn, devices, replicated, batch, warmup_steps: int,
                    steps: int) -> dict:
  thresholds = jnp.asarray(metrics_lib.THRESHOLDS, jnp.float32)
  p_eval = parallel.pmap_eval_step(
      functools.partial(train.eval_step, loss_fn=loss_fn, thresholds=thresholds), devices,
      compiler_options)
  start = time.perf_counter()
  compiled = p_eval.compile(replicated, batch)
  compile_s = time.perf_counter() - start
  times = _time_steps(lambda: compiled(replicated, batch), warmup_steps, steps)
  global_batch = batch["image"].shape[0] * batch["image"].shape[1]
  return {"eval_compile_s": compile_s,
          "eval_images_per_s": global_batch / float(np.median(times))}


def synthetic_source(config: ml_collections.ConfigDict, image_size, num_images: int):
  """The train split of synthetic lesions stored at `image_size`, as a real database would be
  stored at the training size (config.data.stored_size)."""
  from lesion_jax import data as data_lib
  height, width = pipeline.image_shape(image_size)
  builder = data_lib.get_builder(
      "synthetic_lesions/dermoscopic", data_dir=config.data.data_dir,
      options=dict(num_images=num_images, image_size=max(height, width), seed=0))
  return builder.as_data_source("train")


def measure_input_pipeline(config: ml_collections.ConfigDict, *, image_size,
                           batch_per_device: int, devices: Sequence[jax.Device],
                           num_batches: int, num_images: int) -> dict:
  """Images/s of the real training pipeline alone, up to the arrays on the devices.

  The training split is decoded once into memory (timed apart, as `cache_fill_s`), then read
  through grain and `parallel.prefetch_to_devices` with config.data's thread count, exactly as
  the training loop reads it; augmentation happens later, inside the train step.
  """
  source = synthetic_source(config, image_size, num_images)
  start = time.perf_counter()
  decoded = pipeline.decode_split([source], image_size, cache_gb=config.data.cache_gb,
                                  num_threads=config.data.num_threads)
  fill_s = time.perf_counter() - start
  batches = pipeline.training_batches(decoded, seed=config.seed,
                                      batch_size_per_device=batch_per_device,
                                      num_devices=len(devices))
  stream = parallel.prefetch_to_devices(
      pipeline.iterate_from(batches, 0, num_threads=config.data.num_threads), devices)
  for _ in range(2):  # the first batches pay for starting the threads
    jax.block_until_ready(next(stream))
  start = time.perf_counter()
  for _ in range(num_batches):
    jax.block_until_ready(next(stream))
  elapsed = time.perf_counter() - start
  stream.close()  # stops the reading threads, which would otherwise compete with the steps
  return {"pipeline_images_per_s": num_batches * batch_per_device * len(devices) / elapsed,
          "cache_fill_s": fill_s, "cached": isinstance(decoded, pipeline.DecodedSplit)}


def loop_config(config: ml_collections.ConfigDict, model_name: str, dtype: str, steps: int,
                num_images: int) -> ml_collections.ConfigDict:
  """A training run of `steps` steps on synthetic lesions stored at the training size, with
  config's data and training settings, and no evaluation before its last step."""
  run = ml_collections.ConfigDict(config.to_dict())
  run.experiment = "train"
  run.model.name, run.model.dtype = model_name, dtype
  run.data.train, run.data.test, run.data.stored_size = ("synthetic_lesions/dermoscopic",), (), None
  height, width = pipeline.image_shape(config.data.image_size)
  run.data.synthetic.update(num_images=num_images, image_size=max(height, width), seed=0)
  run.training.update(max_steps=steps, num_epochs=10**6, eval_every_epochs=10**6,
                      tensorboard_images=0)
  run.checkpoint.update(keep=1, every_steps=None, every_seconds=None)
  return run


def measure_loop(config: ml_collections.ConfigDict, model, model_name: str, dtype: str, *,
                 devices: Sequence[jax.Device], warmup_steps: int, steps: int,
                 num_images: int) -> float:
  """Images/s of the real training loop (`loop.train_loop`, the code path of train.py): the
  input pipeline, augmentation, the step, loss checks, logging and the progress bar. Timed as
  the step alone is: after the compiling call and `warmup_steps` more calls, for `steps` calls
  (of config.training.steps_per_dispatch steps each)."""
  per_call = train.steps_per_dispatch(config, devices[0].platform)
  run_config = loop_config(config, model_name, dtype, per_call * (1 + warmup_steps + steps),
                           num_images)
  with tempfile.TemporaryDirectory() as workdir:
    run, state, loop = train.setup_run(run_config, workdir, list(devices), model=model)
    replicated = parallel.replicate(state, devices)
    with preemption.StopRequest() as stop:
      loop_lib.train_loop(run, replicated, loop, stop, int(state.step),
                          untimed_calls=1 + warmup_steps)
  run.checkpoints.close()
  return loop.images_per_second
