"""Training throughput: images/s, step time, FLOPs and memory of the real train and eval steps.

`python launch.py --config configs/benchmark.py --workdir W` times, for every model of
`config.benchmark.models`, the pmapped `train.train_step` that training runs (same donation,
same loss, Adam at a constant learning rate) and `train.eval_step`, on synthetic batches already
on the devices, so that neither disk nor host-to-device copies are timed. Compilation is timed on its own; the clock
runs only after `warmup_steps` further steps, and every step is waited for (`block_until_ready`).
The input pipeline (grain, on synthetic lesions stored at the benchmark size) is timed alone, so a
reader sees whether loading would hold training back.

FLOPs per image come from XLA's cost analysis of the compiled per-device train step (forward,
backward and optimiser update, divided by the per-device batch). Memory: `peak_bytes` is what XLA
plans for one device for one step (arguments + outputs + temporaries - donated buffers), known on
every backend; `device_peak_bytes` is the allocator's high-water mark where the backend reports
one (GPU, TPU; null on CPU). The latter is a process-wide maximum, so a row after a larger model
shows that model's peak.

Writes W/benchmark.json (a list of rows) and W/benchmark.md (the same as tables, headed by the
device kind and the JAX version) after every row, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import json
import logging
import os
import platform
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lesion_jax import config as config_lib
from lesion_jax import losses as losses_lib
from lesion_jax import metrics as metrics_lib
from lesion_jax import models as models_lib
from lesion_jax import parallel, train
from lesion_jax.data import pipeline
from lesion_jax.errors import ConfigError, WorkdirError

OUTPUTS = ("benchmark.json", "benchmark.md")
# Every row has these keys (null where a sweep does not measure them, or where a setting failed).
ROW_KEYS = (
    "model", "params", "image_size", "batch_per_device", "devices", "dtype", "sweep",
    "train_images_per_s", "train_images_per_s_per_device", "step_ms_median", "step_ms_p10",
    "step_ms_p90", "compile_s", "xla_options", "eval_images_per_s", "eval_compile_s",
    "flops_per_image", "achieved_flops_per_s", "peak_bytes", "device_peak_bytes",
    "pipeline_images_per_s", "input_bound", "scaling_efficiency", "device_kind", "platform",
    "jax_version", "error")


class DoesNotFit(RuntimeError):
  """A setting needs more memory than the device has (found before or while running it)."""


@dataclasses.dataclass(frozen=True)
class ModelSetting:
  """One entry of config.benchmark.models: a registry name and its options."""
  label: str  # as written in the config, e.g. "unet:ifc=32"
  name: str
  options: dict

  def create(self, dtype: str):
    return models_lib.create_model(self.name, **self.options, dtype=jnp.dtype(dtype))


def parse_model_setting(spec: str, where: str = "config.benchmark.models") -> ModelSetting:
  """"name" or "name:option=value,option=value" -> ModelSetting (values as Python literals)."""
  if not isinstance(spec, str) or not spec.strip():
    raise ConfigError(f"{where}: each entry must be 'name' or 'name:option=value,...', got {spec!r}")
  name, _, options_text = spec.partition(":")
  name = name.strip()
  models_lib.MODELS.get(name, where=where)
  options = {}
  for item in (part.strip() for part in options_text.split(",")):
    if not item:
      continue
    key, equals, value = item.partition("=")
    if not equals or not key.strip():
      raise ConfigError(f"{where}: {spec!r}: option {item!r} is not option=value")
    try:
      options[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      options[key.strip()] = value.strip()  # a bare word such as a depthwise implementation
  if "dtype" in options:
    raise ConfigError(f"{where}: {spec!r}: set compute dtypes in config.benchmark.dtypes, not per "
                     "model")
  return ModelSetting(spec.strip(), name, options)


def model_settings(config: ml_collections.ConfigDict) -> list[ModelSetting]:
  """config.benchmark.models, or config.model when that list is empty."""
  specs = config.benchmark.models
  if isinstance(specs, str):
    specs = tuple(s for s in specs.split("+") if s.strip())
  if not specs:
    kwargs, _ = config_lib.model_kwargs(config)
    kwargs.pop("dtype", None)
    label = config.model.name + (":" + ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
                                 if kwargs else "")
    return [ModelSetting(label, config.model.name, kwargs)]
  return [parse_model_setting(s, f"config.benchmark.models[{i}]") for i, s in enumerate(specs)]


def compute_dtypes(config: ml_collections.ConfigDict) -> list[str]:
  dtypes = config.benchmark.dtypes
  if isinstance(dtypes, str):
    dtypes = tuple(d for d in dtypes.replace("+", ",").split(",") if d)
  dtypes = list(dtypes) or [config.model.dtype]
  for dtype in dtypes:
    if dtype not in models_lib.COMPUTE_DTYPES:
      raise ConfigError(f"config.benchmark.dtypes: {dtype!r} is not one of "
                       f"{models_lib.COMPUTE_DTYPES}")
  return dtypes


def validate(config: ml_collections.ConfigDict) -> tuple[list[ModelSetting], list[str]]:
  """Checks the config and builds every model (cheap: no parameters) before any compilation."""
  config_lib.validate(config)
  bench = config.benchmark
  for key in ("steps", "max_batch_per_device", "cpu_max_batch_per_device"):
    if not isinstance(bench[key], int) or bench[key] < 1:
      raise ConfigError(f"config.benchmark.{key} must be a positive integer, got {bench[key]!r}")
  for key in ("warmup_steps", "pipeline_batches"):
    if not isinstance(bench[key], int) or bench[key] < 0:
      raise ConfigError(f"config.benchmark.{key} must be an integer >= 0, got {bench[key]!r}")
  if bench.pipeline_batches and bench.pipeline_images < 10:
    raise ConfigError("config.benchmark.pipeline_images must be >= 10 (the synthetic builder "
                     f"splits them into train/validation/test), got {bench.pipeline_images!r}")
  if parallel.process_count() > 1:
    raise ConfigError("the benchmark measures one host: run it as a single process (without "
                     "--num_processes or srun over several tasks)")
  settings = model_settings(config)
  dtypes = compute_dtypes(config)
  size = config.data.image_size
  for setting in settings:
    for dtype in dtypes:
      models_lib.check_input_size(setting.create(dtype), size, size)
  return settings, dtypes


# ----------------------------------------------------------------------------------------------
# Measurements.

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


def synthetic_batch(devices: Sequence[jax.Device], batch_per_device: int, image_size: int,
                    seed: int = 0) -> dict:
  """Standardised-looking images and binary masks, already sharded over `devices`."""
  rng = np.random.default_rng(seed)
  shape = (len(devices), batch_per_device, image_size, image_size)
  batch = {"image": rng.standard_normal(shape + (3,), dtype=np.float32),
           "mask": (rng.random(shape + (1,)) < 0.3).astype(np.float32)}
  return next(parallel.prefetch_to_devices([batch], devices, size=1))


def initial_state(model, image_size: int, seed: int = 0,
                  learning_rate: float = 1e-3) -> train.TrainState:
  """A fresh train state (Adam, as in training) fetched to the host.

  Parameters are float32 whatever the compute dtype, so one initialisation serves every dtype,
  batch size and device count of a model.
  """
  return jax.device_get(train.create_train_state(
      model, optax.adam(learning_rate), jax.random.PRNGKey(seed), image_size))


def measure_steps(model, *, image_size: int, batch_per_device: int,
                  devices: Sequence[jax.Device], loss_fn: Callable, warmup_steps: int,
                  steps: int, with_eval: bool = True, state: train.TrainState | None = None,
                  seed: int = 0, compiler_options: dict | None = None) -> dict:
  """Times the real pmapped train step (and eval step) of `model`; one row's measured fields.

  `state` (from `initial_state`, possibly of the same model in another dtype) saves an
  initialisation. Raises DoesNotFit when XLA's plan exceeds the device memory or the backend
  runs out of it.
  """
  num_devices = len(devices)
  global_batch = batch_per_device * num_devices
  if state is None:
    state = initial_state(model, image_size, seed)
  params = int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(state.params)))
  replicated = parallel.replicate(state.replace(apply_fn=model.apply), devices)
  batch = synthetic_batch(devices, batch_per_device, image_size, seed)
  p_train = parallel.pmap_train_step(functools.partial(train.train_step, loss_fn=loss_fn),
                                     devices, compiler_options)
  options = sorted((compiler_options or {}).items())
  row: dict[str, Any] = {"params": params, "xla_options": ",".join(
      f"{key}={value!r}" for key, value in options) or "default"}
  try:
    start = time.perf_counter()
    # Ahead-of-time compilation: the same executable a training step runs, timed on its own,
    # and the object XLA's cost and memory analyses come from.
    compiled = p_train.compile(replicated, batch)
    row["compile_s"] = time.perf_counter() - start
    planned = step_bytes(compiled)
    limit = _memory_limit(devices)
    if planned is not None and limit is not None and planned > limit:
      raise DoesNotFit(f"XLA plans {planned / 2**20:.0f} MiB per device for one train step; "
                       f"the device has {limit / 2**20:.0f} MiB")
    flops = _first(compiled.cost_analysis()).get("flops")

    def train_once():
      nonlocal replicated
      replicated, metrics = compiled(replicated, batch)  # the state is donated, as in training
      return metrics

    times = _time_steps(train_once, warmup_steps, steps)
    loss = float(np.asarray(train_once()["loss"])[0])
    if not np.isfinite(loss):
      raise FloatingPointError(f"the train step returned a {loss} loss on synthetic data")

    step_s = float(np.median(times))
    row.update(
        train_images_per_s=global_batch / step_s,
        train_images_per_s_per_device=batch_per_device / step_s,
        step_ms_median=step_s * 1e3, step_ms_p10=_percentile_ms(times, 10),
        step_ms_p90=_percentile_ms(times, 90),
        flops_per_image=None if flops is None else float(flops) / batch_per_device,
        peak_bytes=planned)
    if flops is not None:
      row["achieved_flops_per_s"] = row["flops_per_image"] * row["train_images_per_s"]

    if with_eval:
      thresholds = jnp.asarray(metrics_lib.THRESHOLDS, jnp.float32)
      p_eval = parallel.pmap_eval_step(
          functools.partial(train.eval_step, loss_fn=loss_fn, thresholds=thresholds), devices,
          compiler_options)
      start = time.perf_counter()
      compiled_eval = p_eval.compile(replicated, batch)
      row["eval_compile_s"] = time.perf_counter() - start
      eval_times = _time_steps(lambda: compiled_eval(replicated, batch), warmup_steps, steps)
      row["eval_images_per_s"] = global_batch / float(np.median(eval_times))
    row["device_peak_bytes"] = device_peak_bytes(devices)
  except jax.errors.JaxRuntimeError as error:
    if _is_out_of_memory(error):
      raise DoesNotFit(str(error).splitlines()[0]) from error
    raise
  return row


def measure_input_pipeline(config: ml_collections.ConfigDict, *, image_size: int,
                           batch_per_device: int, devices: Sequence[jax.Device],
                           num_batches: int, num_images: int) -> float:
  """Images/s of the real training pipeline alone, up to the arrays on the devices.

  Reads synthetic lesions stored at `image_size` (the resized copy a real database would use),
  with config.data's augmentation and thread count, through grain and
  `parallel.prefetch_to_devices`, exactly as the training loop does.
  """
  from lesion_jax import data as data_lib

  builder = data_lib.get_builder(
      "synthetic_lesions/dermoscopic", data_dir=config.data.data_dir,
      options=dict(num_images=num_images, image_size=image_size, seed=0))
  source = builder.as_data_source("train")
  preprocess = pipeline.Preprocess(image_size, config.data.flip, config.data.rotate)
  batches = pipeline.training_batches(
      [source], preprocess, seed=config.seed, batch_size_per_device=batch_per_device,
      num_devices=len(devices))
  stream = parallel.prefetch_to_devices(
      pipeline.iterate_from(batches, 0, num_threads=config.data.num_threads), devices)
  # The first batches pay for starting the threads and opening the files.
  for _ in range(2):
    jax.block_until_ready(next(stream))
  start = time.perf_counter()
  for _ in range(num_batches):
    jax.block_until_ready(next(stream))
  elapsed = time.perf_counter() - start
  stream.close()  # stops the reading threads, which would otherwise compete with the steps
  return num_batches * batch_per_device * len(devices) / elapsed


# ----------------------------------------------------------------------------------------------
# The experiment.

def environment() -> dict:
  device = jax.local_devices()[0]
  return {"device_kind": device.device_kind, "platform": device.platform,
          "jax_version": jax.__version__, "local_devices": jax.local_device_count(),
          "host_cpus": os.cpu_count(), "python": platform.python_version(),
          # Huge pages for host memory change CPU step times by 10-20% (lesion_jax/hugepages.py).
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


def _device_counts(available: int) -> list[int]:
  """1, 2, 4, ... up to `available`, and `available` itself."""
  counts, n = [], 1
  while n < available:
    counts.append(n)
    n *= 2
  return counts + [available]


def _batch_sizes(limit: int) -> list[int]:
  sizes, b = [], 1
  while b <= limit:
    sizes.append(b)
    b *= 2
  return sizes


class _Rows:
  """The rows so far, rewritten to disk after each one."""

  def __init__(self, workdir: str, env: dict, notes: list[str]):
    self.workdir, self.env, self.notes, self.rows = workdir, env, notes, []

  def add(self, row: dict) -> dict:
    full = {key: row.get(key) for key in ROW_KEYS}
    full.update({k: self.env[k] for k in ("device_kind", "platform", "jax_version")})
    self.rows.append(full)
    logging.info("benchmark: %s", json.dumps(full))
    with open(os.path.join(self.workdir, "benchmark.json.tmp"), "w") as f:
      json.dump(self.rows, f, indent=2)
    os.replace(os.path.join(self.workdir, "benchmark.json.tmp"),
               os.path.join(self.workdir, "benchmark.json"))
    with open(os.path.join(self.workdir, "benchmark.md"), "w") as f:
      f.write(markdown(self.rows, self.env, self.notes))
    return full


def run_benchmark(config: ml_collections.ConfigDict, workdir: str,
                  overwrite: bool = False) -> list[dict]:
  """Measures every model (and sweep) of `config.benchmark`; writes and returns the rows."""
  settings, dtypes = validate(config)
  bench = config.benchmark
  devices = parallel.local_devices(config.num_devices)
  size, batch = config.data.image_size, config.batch_size_per_device
  loss_fn = losses_lib.get_loss(config.loss)
  config_lib.check_workdir_parent(workdir)
  if os.path.exists(os.path.join(workdir, "benchmark.json")) and not overwrite:
    raise WorkdirError(f"{workdir!r} already holds a benchmark.json; use another --workdir, "
                          "or pass --overwrite to replace it")
  os.makedirs(workdir, exist_ok=True)
  env = environment()
  env["load_average_start"] = _load_average()
  notes: list[str] = []
  rows = _Rows(workdir, env, notes)
  timing = dict(image_size=size, loss_fn=loss_fn, warmup_steps=bench.warmup_steps,
                steps=bench.steps, seed=config.seed)

  pipeline_ips = None
  if bench.pipeline_batches:
    pipeline_ips = measure_input_pipeline(
        config, image_size=size, batch_per_device=batch, devices=devices,
        num_batches=bench.pipeline_batches, num_images=bench.pipeline_images)
    notes.append(f"Input pipeline alone: {pipeline_ips:.1f} images/s at {size}x{size}, "
                 f"{config.data.num_threads} grain threads, batches of {batch} x {len(devices)} "
                 "(synthetic lesions stored at that size).")
    logging.info("benchmark: input pipeline %.1f images/s", pipeline_ips)

  def finish(row: dict) -> dict:
    row["pipeline_images_per_s"] = pipeline_ips
    if pipeline_ips is not None and row.get("train_images_per_s"):
      row["input_bound"] = pipeline_ips < row["train_images_per_s"]
    return rows.add(row)

  def measured(setting, state, dtype, batch_per_device, devs, sweep, with_eval) -> dict:
    row = dict(model=setting.label, image_size=size, batch_per_device=batch_per_device,
               devices=len(devs), dtype=dtype, sweep=sweep)
    model = setting.create(dtype)
    options = models_lib.xla_compiler_options(model, config.cpu_ynnpack, devs[0].platform)
    try:
      row.update(measure_steps(model, batch_per_device=batch_per_device, devices=devs,
                               with_eval=with_eval, state=state, compiler_options=options,
                               **timing))
    except DoesNotFit as error:
      row["error"] = f"does not fit: {error}"
      logging.warning("benchmark: %s, batch %d per device does not fit: %s", setting.label,
                      batch_per_device, error)
    return row

  for setting in settings:
    state = initial_state(setting.create(dtypes[0]), size, config.seed)
    for dtype in dtypes:
      finish(measured(setting, state, dtype, batch, devices, "models", with_eval=True))

      if bench.batch_sweep:
        cap = bench.max_batch_per_device
        if devices[0].platform == "cpu":
          cap = min(cap, bench.cpu_max_batch_per_device)
        largest = None
        for b in _batch_sizes(cap):
          row = finish(measured(setting, state, dtype, b, devices, "batch_size",
                                with_eval=False))
          if row["error"]:
            break
          largest = b
        capped = largest == _batch_sizes(cap)[-1]
        notes.append(f"{setting.label} ({dtype}): largest batch per device that fits: "
                     f"{largest if largest is not None else 'none'}"
                     + (f" (the sweep stops at {cap})" if capped else ""))

      if bench.device_sweep:
        single = None
        for n in _device_counts(len(jax.local_devices())):
          row = measured(setting, state, dtype, batch, jax.local_devices()[:n], "devices",
                         with_eval=False)
          if n == 1:
            single = row.get("train_images_per_s")
          if single and row.get("train_images_per_s"):
            # Weak scaling: the per-device batch is fixed, so the ideal is N times one device.
            row["scaling_efficiency"] = row["train_images_per_s"] / (n * single)
          finish(row)

  env["load_average_end"] = _load_average()
  with open(os.path.join(workdir, "benchmark.md"), "w") as f:
    f.write(markdown(rows.rows, env, notes))
  return rows.rows


def end_summary(rows: list[dict], workdir: str) -> str:
  """The last lines of a benchmark on the console."""
  lines = ["", f"Finished benchmark: {workdir}"]
  for row in rows:
    if row["sweep"] == "models":
      rate = row["train_images_per_s"]
      lines.append(f"  {row['model']} ({row['dtype']}): "
                   + (f"{rate:.1f} train images/s" if rate else row.get("error") or "-"))
  lines.append(f"Tables: {os.path.join(workdir, 'benchmark.md')} (and benchmark.json)")
  return "\n".join(lines)


def _load_average() -> list[float] | None:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


# ----------------------------------------------------------------------------------------------
# The markdown report.

def _num(value: Any, fmt: str) -> str:
  return "-" if value is None else format(value, fmt)


def _mib(value: Any) -> str:
  return "-" if value is None else f"{value / 2**20:,.0f}"


def _gflops(value: Any) -> str:
  return "-" if value is None else f"{value / 1e9:,.2f}"


_SECTIONS = {
    "models": ("Models", [
        ("model", "model", str), ("dtype", "dtype", str),
        ("params", "params (M)", lambda v: _num(v and v / 1e6, ".2f")),
        ("train_images_per_s", "train img/s", lambda v: _num(v, ".2f")),
        ("train_images_per_s_per_device", "img/s/device", lambda v: _num(v, ".2f")),
        ("step_ms_median", "step ms (p10-p90)", None),
        ("compile_s", "compile s", lambda v: _num(v, ".1f")),
        ("eval_images_per_s", "eval img/s", lambda v: _num(v, ".2f")),
        ("flops_per_image", "train GFLOP/img", _gflops),
        ("achieved_flops_per_s", "GFLOP/s", _gflops),
        ("peak_bytes", "XLA MiB/device", _mib),
        ("device_peak_bytes", "device peak MiB", _mib),
        ("input_bound", "input-bound", lambda v: "-" if v is None else ("yes" if v else "no")),
        ("xla_options", "XLA options", lambda v: v or "-"),
    ]),
    "batch_size": ("Batch-size sweep (largest per-device batch that fits)", [
        ("model", "model", str), ("dtype", "dtype", str),
        ("batch_per_device", "batch/device", str),
        ("train_images_per_s", "train img/s", lambda v: _num(v, ".2f")),
        ("step_ms_median", "step ms (p10-p90)", None),
        ("peak_bytes", "XLA MiB/device", _mib),
        ("error", "note", lambda v: v or ""),
    ]),
    "devices": ("Device-count sweep (per-device batch fixed)", [
        ("model", "model", str), ("dtype", "dtype", str), ("devices", "devices", str),
        ("train_images_per_s", "train img/s", lambda v: _num(v, ".2f")),
        ("train_images_per_s_per_device", "img/s/device", lambda v: _num(v, ".2f")),
        ("step_ms_median", "step ms (p10-p90)", None),
        ("scaling_efficiency", "efficiency", lambda v: _num(v, ".2f")),
    ]),
}


def _step_cell(row: dict) -> str:
  if row.get("step_ms_median") is None:
    return "-" if not row.get("error") else "does not fit"
  return (f"{row['step_ms_median']:.1f} ({row['step_ms_p10']:.1f}-"
          f"{row['step_ms_p90']:.1f})")


def markdown(rows: Sequence[dict], env: dict, notes: Sequence[str] = ()) -> str:
  """benchmark.md: the environment, then one table per sweep present in `rows`."""
  first = rows[0] if rows else {}
  lines = [
      "# Training throughput",
      "",
      f"Device: **{env['device_kind']}** ({env['platform']}), {first.get('devices', '?')} "
      f"of {env['local_devices']} local device(s); JAX {env['jax_version']}; "
      f"host CPUs: {env['host_cpus']}; Python {env['python']}.",
      f"Image size {first.get('image_size', '?')}x{first.get('image_size', '?')}, "
      f"batch {first.get('batch_per_device', '?')} per device unless a sweep says otherwise. "
      "Steady-state images/s exclude compilation (median step time; p10-p90 in brackets).",
  ]
  if env.get("platform") == "cpu":
    tunables = env.get("glibc_tunables")
    lines.append("Host memory: " + (f"GLIBC_TUNABLES={tunables}" if tunables else
                                    "glibc defaults (4 KiB pages; see lesion_jax/hugepages.py)")
                 + ".")
  if env.get("load_average_start") is not None:
    lines.append(f"Host load average (1, 5, 15 min) at start {env['load_average_start']}"
                 + (f", at end {env['load_average_end']}" if env.get("load_average_end")
                    else "") + ".")
  lines.append("XLA MiB/device: planned memory of one train step (arguments + outputs + "
               "temporaries - donated). Device peak: the allocator's high-water mark where the "
               "backend reports one (not on CPU).")
  for sweep, (title, columns) in _SECTIONS.items():
    chosen = [r for r in rows if r["sweep"] == sweep]
    if not chosen:
      continue
    lines += ["", f"## {title}", "",
              "| " + " | ".join(c[1] for c in columns) + " |",
              "|" + "---|" * len(columns)]
    for row in chosen:
      cells = [_step_cell(row) if fmt is None else fmt(row.get(key)) for key, _, fmt in columns]
      lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in chosen if r.get("error") and sweep != "batch_size"]
    for row in errors:
      lines.append(f"\n{row['model']} ({row['dtype']}, batch {row['batch_per_device']}): "
                   f"{row['error']}")
  if notes:
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
  return "\n".join(lines) + "\n"


__all__ = ["DoesNotFit", "ModelSetting", "OUTPUTS", "ROW_KEYS", "device_peak_bytes",
           "markdown", "measure_input_pipeline", "measure_steps", "model_settings",
           "parse_model_setting", "run_benchmark", "step_bytes", "synthetic_batch", "validate"]
