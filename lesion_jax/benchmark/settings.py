"""The models a benchmark times, read from config.benchmark, and its checks."""
from __future__ import annotations

import ast
import dataclasses

import jax.numpy as jnp
import ml_collections

from lesion_jax import models as models_lib
from lesion_jax import parallel
from lesion_jax.data import pipeline
from lesion_jax.errors import ConfigError

@dataclasses.dataclass(frozen=True)
class ModelSetting:
  """One entry of config.benchmark.models: a registry name and its options."""
  label: str  # as written in the config, e.g. "unet:ifc=32"
  name: str
  options: dict

  def create(self, dtype: str, **extra):
    return models_lib.create_model(self.name, **self.options, **extra, dtype=jnp.dtype(dtype))


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
    kwargs, _ = models_lib.config_kwargs(config)
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
  """Checks the benchmark's settings and builds every model (cheap: no parameters) before any
  compilation. The rest of the config was checked where it entered (`spec.validate`)."""
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
  height, width = pipeline.image_shape(config.data.image_size)
  for setting in settings:
    for dtype in dtypes:
      models_lib.check_input_size(setting.create(dtype), height, width)
  return settings, dtypes
