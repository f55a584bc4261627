"""Training throughput: images/s of the real train step, of the input pipeline and of the whole
training loop, with step time, FLOPs and memory.

`python launch.py --config configs/benchmark.py --workdir W` measures, for every model of
`config.benchmark.models`:
- the step alone: the pmapped `train.train_step` that training runs (same donation, loss,
  on-device augmentation and standardisation, Adam at a constant learning rate) and
  `train.eval_step`, on a synthetic uint8 batch already on the devices. Compilation is timed
  on its own; the clock runs only after `warmup_steps` further steps, and every step is
  waited for (`block_until_ready`);
- the loop: `loop.train_loop`, the code path of train.py, for `steps` steps on synthetic
  lesions stored at the training size: input pipeline, augmentation, step, loss checks,
  logging and progress included (`loop_images_per_s`, and `loop_to_step_ratio` against the
  step alone: 1.0 means the loop runs at the speed of its compiled step);
and once, the input pipeline alone, up to the arrays on the devices (`pipeline_images_per_s`).

FLOPs per image come from the train step as JAX lowers it (forward, backward and optimiser
update, divided by the per-device batch), before any backend rewrite, so they mean the same on
every backend (`measure.lowered_flops`). Memory: `peak_bytes` is what XLA plans for one device
for one step (arguments + outputs + temporaries - donated buffers); `device_peak_bytes` is the
allocator's high-water mark where the backend reports one (GPU, TPU; null on CPU), a
process-wide maximum.

Writes W/benchmark.json (a list of rows) and W/benchmark.md (the same as tables, headed by the
device kind and the JAX version) after every row, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import json
import logging
import os
import platform

import jax
import ml_collections

from lesion_jax import augment
from lesion_jax import config as config_lib
from lesion_jax import losses as losses_lib
from lesion_jax import parallel
from lesion_jax.benchmark.measure import (DoesNotFit, count_flops, device_peak_bytes,
                                          initial_state, lowered_flops, measure_input_pipeline,
                                          measure_loop, measure_steps, step_bytes,
                                          synthetic_batch)
from lesion_jax.benchmark.settings import (ModelSetting, compute_dtypes, model_settings,
                                           parse_model_setting, validate)
from lesion_jax.benchmark.tables import end_summary, markdown
from lesion_jax.errors import WorkdirError

OUTPUTS = ("benchmark.json", "benchmark.md")
# Every row has these keys (null where a sweep does not measure them, or where a setting failed).
ROW_KEYS = (
    "model", "params", "image_size", "batch_per_device", "devices", "dtype", "sweep",
    "train_images_per_s", "train_images_per_s_per_device", "step_ms_median", "step_ms_p10",
    "step_ms_p90", "compile_s", "xla_options", "eval_images_per_s", "eval_compile_s",
    "loop_images_per_s", "loop_to_step_ratio", "steps_per_dispatch",
    "flops_per_image", "achieved_flops_per_s", "peak_bytes", "device_peak_bytes",
    "pipeline_images_per_s", "input_bound", "scaling_efficiency", "device_kind", "platform",
    "jax_version", "error")


def environment() -> dict:
  device = jax.local_devices()[0]
  return {"device_kind": device.device_kind, "platform": device.platform,
          "jax_version": jax.__version__, "local_devices": jax.local_device_count(),
          "host_cpus": os.cpu_count(), "python": platform.python_version(),
          # Huge pages for host memory change CPU step times by 10-20% (lesion_jax/hugepages.py).
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


def _load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def _device_counts(available: int) -> list[int]:
  """1, 2, 4, ... up to `available`, and `available` itself."""
  counts, n = [], 1
  while n < available:
    counts.append(n)
    n *= 2
  return counts + [available]


def _batch_sizes(limit: int) -> list[int]:
  """1, 2, 4, ... up to `limit`."""
  return [2 ** k for k in range(limit.bit_length()) if 2 ** k <= limit]


class _Rows:
  """The rows so far, rewritten to disk after each one."""

  def __init__(self, workdir: str, env: dict, notes: list[str]):
    self.workdir, self.env, self.notes, self.rows = workdir, env, notes, []
    self.pipeline_images_per_s: float | None = None

  def add(self, row: dict) -> dict:
    full = {key: row.get(key) for key in ROW_KEYS}
    full.update({k: self.env[k] for k in ("device_kind", "platform", "jax_version")})
    full["pipeline_images_per_s"] = self.pipeline_images_per_s
    if self.pipeline_images_per_s is not None and full["train_images_per_s"]:
      full["input_bound"] = self.pipeline_images_per_s < full["train_images_per_s"]
    self.rows.append(full)
    logging.info("benchmark: %s", json.dumps(full))
    with open(os.path.join(self.workdir, "benchmark.json.tmp"), "w") as f:
      json.dump(self.rows, f, indent=2)
    os.replace(os.path.join(self.workdir, "benchmark.json.tmp"),
               os.path.join(self.workdir, "benchmark.json"))
    self.write_markdown()
    return full

  def write_markdown(self) -> None:
    with open(os.path.join(self.workdir, "benchmark.md"), "w") as f:
      f.write(markdown(self.rows, self.env, self.notes))


class _Bench:
  """One benchmark: the config's settings, the devices, and the rows written so far."""

  def __init__(self, config: ml_collections.ConfigDict, rows: _Rows):
    self.config, self.rows = config, rows
    self.devices = parallel.local_devices(config.num_devices)
    self.size = config.data.image_size
    self.loss_fn = losses_lib.get_loss(config.loss)
    self.augment_options = augment.AugmentOptions.from_config(config)

  def steps_row(self, setting: ModelSetting, state, dtype: str, batch_per_device: int,
                devices, sweep: str, with_eval: bool) -> dict:
    """The step-alone fields of one row (an error instead when it does not fit)."""
    row = dict(model=setting.label, image_size=self.size, batch_per_device=batch_per_device,
               devices=len(devices), dtype=dtype, sweep=sweep)
    from lesion_jax import train
    model = setting.create(dtype)
    options = train.compiler_options(self.config, model, devices[0].platform)
    bench = self.config.benchmark
    try:
      row.update(measure_steps(
          model, image_size=self.size, batch_per_device=batch_per_device, devices=devices,
          loss_fn=self.loss_fn, warmup_steps=bench.warmup_steps, steps=bench.steps,
          with_eval=with_eval, state=state, seed=self.config.seed, compiler_options=options,
          augment_options=self.augment_options))
    except DoesNotFit as error:
      row["error"] = f"does not fit: {error}"
      logging.warning("benchmark: %s, batch %d per device does not fit: %s", setting.label,
                      batch_per_device, error)
    return row

  def loop_fields(self, setting: ModelSetting, dtype: str, row: dict) -> dict:
    """The real training loop of the same setting, next to its step alone."""
    from lesion_jax import train
    bench = self.config.benchmark
    model = setting.create(dtype, bn_axis_name=parallel.AXIS_NAME)
    loop_ips = measure_loop(self.config, model, setting.name, dtype, devices=self.devices,
                            warmup_steps=bench.warmup_steps, steps=bench.steps,
                            num_images=bench.pipeline_images)
    step_ips = row.get("train_images_per_s")
    return {"loop_images_per_s": loop_ips,
            "loop_to_step_ratio": loop_ips / step_ips if step_ips else None,
            "steps_per_dispatch": train.steps_per_dispatch(self.config,
                                                           self.devices[0].platform)}

  def models(self, setting: ModelSetting, state, dtype: str) -> None:
    row = self.steps_row(setting, state, dtype, self.config.batch_size_per_device,
                         self.devices, "models", with_eval=True)
    if self.config.benchmark.loop and not row.get("error"):
      row.update(self.loop_fields(setting, dtype, row))
    self.rows.add(row)

  def batch_sweep(self, setting: ModelSetting, state, dtype: str) -> None:
    bench = self.config.benchmark
    cap = bench.max_batch_per_device
    if self.devices[0].platform == "cpu":
      cap = min(cap, bench.cpu_max_batch_per_device)
    largest = None
    sizes = _batch_sizes(cap)
    for b in sizes:
      row = self.rows.add(self.steps_row(setting, state, dtype, b, self.devices, "batch_size",
                                         with_eval=False))
      if row["error"]:
        break
      largest = b
    capped = largest == sizes[-1]
    self.rows.notes.append(f"{setting.label} ({dtype}): largest batch per device that fits: "
                           f"{largest if largest is not None else 'none'}"
                           + (f" (the sweep stops at {cap})" if capped else ""))

  def device_sweep(self, setting: ModelSetting, state, dtype: str) -> None:
    single = None
    for n in _device_counts(len(jax.local_devices())):
      row = self.steps_row(setting, state, dtype, self.config.batch_size_per_device,
                           jax.local_devices()[:n], "devices", with_eval=False)
      if n == 1:
        single = row.get("train_images_per_s")
      if single and row.get("train_images_per_s"):
        # Weak scaling: the per-device batch is fixed, so the ideal is N times one device.
        row["scaling_efficiency"] = row["train_images_per_s"] / (n * single)
      self.rows.add(row)

  def input_pipeline(self) -> None:
    bench = self.config.benchmark
    measured = measure_input_pipeline(
        self.config, image_size=self.size, batch_per_device=self.config.batch_size_per_device,
        devices=self.devices, num_batches=bench.pipeline_batches,
        num_images=bench.pipeline_images)
    self.rows.pipeline_images_per_s = measured["pipeline_images_per_s"]
    height, width = _shape(self.size)
    self.rows.notes.append(
        f"Input pipeline alone: {measured['pipeline_images_per_s']:.0f} images/s at "
        f"{height}x{width}, {self.config.data.num_threads} grain threads, batches of "
        f"{self.config.batch_size_per_device} x {len(self.devices)}, "
        + (f"decoded once into memory in {measured['cache_fill_s']:.1f} s"
           if measured["cached"] else "decoded at every read (over config.data.cache_gb)")
        + " (synthetic lesions stored at that size; augmentation runs in the train step).")


def _shape(size) -> tuple[int, int]:
  from lesion_jax.data import pipeline
  return pipeline.image_shape(size)


def _prepare_workdir(workdir: str, overwrite: bool) -> None:
  config_lib.check_workdir_parent(workdir)
  if os.path.exists(os.path.join(workdir, "benchmark.json")) and not overwrite:
    raise WorkdirError(f"{workdir!r} already holds a benchmark.json; use another --workdir, "
                       "or pass --overwrite to replace it")
  os.makedirs(workdir, exist_ok=True)


def run_benchmark(config: ml_collections.ConfigDict, workdir: str,
                  overwrite: bool = False) -> list[dict]:
  """Measures every model (and sweep) of `config.benchmark`; writes and returns the rows."""
  settings, dtypes = validate(config)
  _prepare_workdir(workdir, overwrite)
  env = environment()
  env["load_average_start"] = _load_average()
  env["adam_flat"] = bool(config.optimizer.flatten)
  rows = _Rows(workdir, env, notes=[])
  bench = _Bench(config, rows)
  if config.benchmark.pipeline_batches:
    bench.input_pipeline()
  for setting in settings:
    state = initial_state(setting.create(dtypes[0]), bench.size, config.seed,
                          flatten=config.optimizer.flatten)
    for dtype in dtypes:
      bench.models(setting, state, dtype)
      if config.benchmark.batch_sweep:
        bench.batch_sweep(setting, state, dtype)
      if config.benchmark.device_sweep:
        bench.device_sweep(setting, state, dtype)
  env["load_average_end"] = _load_average()
  rows.write_markdown()
  return rows.rows


__all__ = ["DoesNotFit", "ModelSetting", "OUTPUTS", "ROW_KEYS", "compute_dtypes", "count_flops",
           "device_peak_bytes", "end_summary", "initial_state", "lowered_flops", "markdown",
           "measure_input_pipeline", "measure_loop", "measure_steps", "model_settings",
           "parse_model_setting", "run_benchmark", "step_bytes", "synthetic_batch", "validate"]
