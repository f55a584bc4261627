"""The throughput benchmark: its files, its FLOP count, its sweeps and its errors.

End-to-end runs swap the registry's models for a three-conv net (`ConvNet`) so that they compile
in seconds; everything else (pmapped steps, the grain pipeline on synthetic lesions, the files)
is the real thing. `configs/benchmark.py:runlocal` runs the same code on two registry models.
"""
import functools
import json
import os
import subprocess
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from lesion_jax import benchmark, losses, train
from lesion_jax import parallel
from tests.conftest import load_config_module, tiny_config, xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANNELS = (3, 8, 8, 1)  # input, two hidden layers, logits
_INITIAL_STATE = benchmark.initial_state  # the unpatched function


class ConvNet(nn.Module):
  """Three 3x3 'same' convolutions: FLOPs that can be counted by hand."""
  dtype: Any = jnp.float32
  input_divisor = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    for i, features in enumerate(CHANNELS[1:]):
      x = nn.Conv(features, (3, 3), dtype=self.dtype)(x)
      if i < len(CHANNELS) - 2:
        x = nn.relu(x)
    return x.astype(jnp.float32)


@functools.lru_cache(maxsize=None)
def conv_net_state(image_size: int):
  """One initialisation per session: initialising (threefry) compiles for seconds on a CPU."""
  return _INITIAL_STATE(ConvNet(), image_size)


def use_conv_net(monkeypatch):
  monkeypatch.setattr(benchmark.ModelSetting, "create",
                      lambda self, dtype, **extra: ConvNet(dtype=jnp.dtype(dtype)))
  monkeypatch.setattr(benchmark, "initial_state",
                      lambda model, image_size, seed=0, **options: conv_net_state(image_size))


def bench_config(data_dir: str, **changes):
  """A runlocal-sized benchmark: one model, 32x32, two timed steps, a short pipeline read."""
  defaults = {
      "experiment": "benchmark", "benchmark.models": ("unet:ifc=16",),
      "benchmark.warmup_steps": 1, "benchmark.steps": 2, "benchmark.pipeline_batches": 2,
      "benchmark.pipeline_images": 12, "batch_size_per_device": 2,
  }
  return tiny_config(data_dir, **{**defaults, **changes})


def test_model_settings_parse_and_bad_entries_fail_before_compiling(tmp_path):
  setting = benchmark.parse_model_setting("deeplab_mobilenetv2:alpha=0.35,output_stride=8")
  assert setting.name == "deeplab_mobilenetv2"
  assert setting.options == {"alpha": 0.35, "output_stride": 8}
  with pytest.raises(KeyError, match="Valid model names: .*unet"):
    benchmark.parse_model_setting("unett:ifc=16")
  with pytest.raises(ValueError, match="'ifc' is not option=value"):
    benchmark.parse_model_setting("unet:ifc")
  with pytest.raises(ValueError, match="config.benchmark.dtypes"):
    benchmark.parse_model_setting("unet:dtype='bfloat16'")
  config = bench_config(str(tmp_path), **{"benchmark.models": ("unet:ifc=17",)})
  with pytest.raises(ValueError, match="ifc"):
    benchmark.run_benchmark(config, str(tmp_path / "w"))
  config = bench_config(str(tmp_path), **{"benchmark.dtypes": ("float64",)})
  with pytest.raises(ValueError, match="benchmark.dtypes"):
    benchmark.run_benchmark(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def _load_config_module():
  return load_config_module("benchmark.py")


def test_default_and_runlocal_configs_name_valid_models():
  benchmark_config = _load_config_module()
  settings, dtypes = benchmark.validate(benchmark_config.get_config())
  assert [s.name for s in settings] == [
      "unet", "att_unet", "r2_unet", "att_r2_unet", "deeplabv3plus_xception65",
      "deeplab_mobilenetv2", "deeplab_mobilenetv2"]  # the seven rows of Table 2
  assert settings[-1].options == {"alpha": 0.35} and dtypes == ["float32"]
  settings, _ = benchmark.validate(benchmark_config.get_config("runlocal"))
  assert len(settings) == 2


@pytest.mark.slow
def test_flops_per_image_match_an_analytic_count():
  size, batch = 32, 2
  forward = sum(2 * size * size * c_in * c_out * 3 * 3
                for c_in, c_out in zip(CHANNELS[:-1], CHANNELS[1:]))
  row = benchmark.measure_steps(
      ConvNet(), image_size=size, batch_per_device=batch, devices=parallel.local_devices(1),
      loss_fn=losses.get_loss("dice"), warmup_steps=1, steps=3, with_eval=False,
      state=conv_net_state(size))
  # A train step is about three forwards (forward, input and weight gradients).
  assert 1.5 * forward <= row["flops_per_image"] <= 6 * forward
  assert row["params"] == sum(9 * a * b + b for a, b in zip(CHANNELS[:-1], CHANNELS[1:]))
  assert row["train_images_per_s"] == pytest.approx(batch / (row["step_ms_median"] / 1e3))
  assert row["step_ms_p10"] <= row["step_ms_median"] <= row["step_ms_p90"]
  assert row["peak_bytes"] > 4 * size * size * 3 * batch  # at least the batch of images


def test_flops_of_a_small_model_equal_the_hand_count():
  """The forward of ConvNet, counted on the program JAX lowers (before any backend rewrite)."""
  for side in (16, 32):
    x = jnp.zeros((1, side, side, 3))
    # Only shapes: lowering is all the count needs, and drawing weights would compile.
    variables = jax.eval_shape(ConvNet().init, jax.random.key(0), x)
    flops = benchmark.count_flops(lambda v, images: ConvNet().apply(v, images), variables, x)
    # A 3x3 'same' convolution multiplies and adds over the taps inside the image only:
    # (3S - 2) of the 3S (output, tap) pairs of each axis. Then a bias add per output and a
    # ReLU per hidden activation.
    convolutions = 2 * (3 * side - 2) ** 2 * sum(
        c_in * c_out for c_in, c_out in zip(CHANNELS[:-1], CHANNELS[1:]))
    biases = side * side * sum(CHANNELS[1:])
    relus = side * side * sum(CHANNELS[1:-1])
    assert flops == convolutions + biases + relus


def test_train_flops_per_image_grow_with_the_pixels():
  devices = parallel.local_devices(1)
  state = parallel.replicate(conv_net_state(32), devices)  # parameters do not depend on size
  p_train = parallel.pmap_train_step(
      functools.partial(train.train_step, loss_fn=losses.get_loss("dice")), devices)

  def per_image(side):
    batch = benchmark.synthetic_batch(devices, 2, side)
    return benchmark.lowered_flops(p_train.lower(state, batch)) / 2

  # Twice the side, four times the work per image: up to the taps a 'same' convolution skips
  # at the border ((3S - 2)^2, not 9S^2) and the per-parameter FLOPs of the Adam update.
  assert per_image(128) / per_image(64) == pytest.approx(4, rel=0.02)


@pytest.mark.slow
def test_benchmark_writes_json_and_markdown_with_every_field(data_dir, tmp_path, monkeypatch):
  use_conv_net(monkeypatch)
  workdir = str(tmp_path / "bench")
  config = bench_config(data_dir, **{"benchmark.dtypes": ("float32", "bfloat16"),
                                     "benchmark.batch_sweep": True,
                                     "benchmark.cpu_max_batch_per_device": 2})
  rows = benchmark.run_benchmark(config, workdir)

  with open(os.path.join(workdir, "benchmark.json")) as f:
    assert json.load(f) == rows
  models = [r for r in rows if r["sweep"] == "models"]
  assert [r["dtype"] for r in models] == ["float32", "bfloat16"]
  # CPU keeps no allocator statistics; the device sweep's key is only for its own rows.
  may_be_null = {"device_peak_bytes", "scaling_efficiency", "error"}
  for row in models:
    assert list(row) == list(benchmark.ROW_KEYS)
    assert row["device_peak_bytes"] is None and row["error"] is None
    for key in set(benchmark.ROW_KEYS) - may_be_null:
      assert row[key] is not None, key
    assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
    assert row["train_images_per_s"] == pytest.approx(
        row["batch_per_device"] * row["devices"] * 1e3 / row["step_ms_median"])
    assert row["achieved_flops_per_s"] == pytest.approx(
        row["flops_per_image"] * row["train_images_per_s"])
    assert row["input_bound"] == (row["pipeline_images_per_s"] < row["train_images_per_s"])
    # The real training loop of the same model, next to its step alone.
    assert row["loop_images_per_s"] > 0 and row["steps_per_dispatch"] == 1
    assert row["loop_to_step_ratio"] == pytest.approx(
        row["loop_images_per_s"] / row["train_images_per_s"])
    assert (row["model"], row["image_size"], row["batch_per_device"]) == ("unet:ifc=16", 32, 2)
  sweep = [r for r in rows if r["sweep"] == "batch_size"]
  assert [r["batch_per_device"] for r in sweep] == [1, 2] * 2  # capped at 2 on CPU
  # A larger batch needs more memory per device.
  assert sweep[1]["peak_bytes"] > sweep[0]["peak_bytes"]

  table = open(os.path.join(workdir, "benchmark.md")).read()
  assert "Device: **cpu**" in table and f"JAX {jax.__version__}" in table
  assert "| unet:ifc=16 | bfloat16 |" in table
  assert "largest batch per device that fits: 2 (the sweep stops at 2)" in table
  assert "loop img/s" in table and "loop / step" in table
  assert "Input pipeline alone:" in table and "decoded once into memory" in table
  assert "Adam: one update per parameter tensor." in table
  with pytest.raises(FileExistsError, match="--overwrite"):
    benchmark.run_benchmark(config, workdir)


def test_batch_that_does_not_fit_is_reported_not_raised(data_dir, tmp_path, monkeypatch):
  use_conv_net(monkeypatch)
  # A device with 64 KiB: XLA's plan for the step is larger, so nothing runs.
  monkeypatch.setattr(benchmark.measure, "_memory_limit", lambda devices: 64 * 1024)
  config = bench_config(data_dir, **{"benchmark.pipeline_batches": 0,
                                     "benchmark.batch_sweep": True})
  rows = benchmark.run_benchmark(config, str(tmp_path / "w"))
  assert [(r["sweep"], r["batch_per_device"]) for r in rows] == [("models", 2),
                                                                 ("batch_size", 1)]
  for row in rows:
    assert row["error"].startswith("does not fit: XLA plans") and row["train_images_per_s"] is None
  assert "largest batch per device that fits: none" in open(tmp_path / "w" / "benchmark.md").read()


DEVICE_SWEEP_SCRIPT = """
import json, sys
import pytest
from lesion_jax import benchmark
from tests import test_benchmark as t
mp = pytest.MonkeyPatch()
t.use_conv_net(mp)
# Neither the pipeline nor the loop alone (test_benchmark_writes_json... times both): the loop
# would compile its own initialisation and steps for the four devices.
config = t.bench_config(sys.argv[1], **{"benchmark.device_sweep": True, "benchmark.loop": False,
                                        "benchmark.pipeline_batches": 0})
rows = benchmark.run_benchmark(config, sys.argv[2])
print("ROWS", json.dumps(rows))
"""


@pytest.mark.slow
def test_device_sweep_reports_scaling_efficiency_on_four_devices(data_dir, tmp_path):
  env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4"),
         "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", DEVICE_SWEEP_SCRIPT, data_dir, str(tmp_path / "w")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.loads(out.stdout.split("ROWS", 1)[1])
  main = [r for r in rows if r["sweep"] == "models"]
  assert main[0]["devices"] == 4  # num_devices unset: every local device
  sweep = [r for r in rows if r["sweep"] == "devices"]
  assert [r["devices"] for r in sweep] == [1, 2, 4]
  assert sweep[0]["scaling_efficiency"] == pytest.approx(1.0)
  for row in sweep:
    assert row["scaling_efficiency"] == pytest.approx(
        row["train_images_per_s"] / (row["devices"] * sweep[0]["train_images_per_s"]))
    # FLOPs are per image of the per-device program: the device count does not change them.
    assert row["flops_per_image"] == pytest.approx(sweep[0]["flops_per_image"], rel=1e-3)
  assert "Device-count sweep" in open(tmp_path / "w" / "benchmark.md").read()
