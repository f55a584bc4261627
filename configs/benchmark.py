"""Training throughput of the paper's models: images/s, step time, compile time, FLOPs, memory.

  python launch.py --config configs/benchmark.py --workdir runs/benchmark
  python launch.py --config configs/benchmark.py:runlocal --workdir runs/benchmark_local

Times the real pmapped train step (and eval step) of every Table 2 setting at the paper's 512x512
inputs and batch 4 per device, on synthetic batches already on the devices, plus the grain input
pipeline alone. Writes benchmark.json (one row per model) and benchmark.md (tables headed by the
device kind and the JAX version) in the workdir. Useful overrides:
  --config.data.image_size=256 --config.batch_size_per_device=8
  --config.benchmark.dtypes='("float32", "bfloat16")'       compute dtype comparison
  --config.benchmark.batch_sweep=True                        largest batch that fits
  --config.benchmark.device_sweep=True                       1, 2, 4 ... devices: scaling
  --config.benchmark.models='("unet:ifc=16",)'               any registry name:option=value

Expected: every row filled (device peak memory only where the backend reports it: not on CPU),
parameter counts as in Table 2 (7.85M, 31.90M, 6.00M, 96.51M, 41.05M, 2.11M, 0.44M), and the
reduced Mobile DeepLab the fastest. On the 2-core development CPU at 256x256, batch 4
(steps=3, warmup_steps=1; 5.5 minutes in all, 2026-11-26, huge pages on) train images/s were:
U-Net 2.29, AttU-Net 0.56, R2U-Net 2.30, AttR2U-Net 0.23, Xception-65 1.13, MobileNetV2 1.0
10.1, MobileNetV2 0.35 23.4; the input pipeline alone gave 289 images/s. On one H200 at 512x512
the MobileNetV2 0.35 row trains at ~457 images/s (docs/performance.md, entry 11).
`:runlocal` (two small models at 64x64, 3 timed steps) takes about 2 minutes on a busy 2-core CPU
and reports roughly 70-160 train images/s for Mobile DeepLab 0.35 and 20-30 for U-Net ifc 16.
"""
from lesion_jax.config import base_config


def get_config(arg: str | None = None):
  config = base_config()
  config.experiment = "benchmark"
  config.data.image_size = 512  # the paper's input size
  config.batch_size_per_device = 4  # the paper's batch size
  config.loss = "dice"

  if arg == "runlocal":
    # Seconds per model on a laptop CPU: the two smallest settings at 64x64.
    config.benchmark.models = ("deeplab_mobilenetv2:alpha=0.35", "unet:ifc=16")
    config.data.image_size = 64
    config.benchmark.warmup_steps = 1
    config.benchmark.steps = 3
    config.benchmark.pipeline_batches = 5
    config.benchmark.pipeline_images = 20
  elif arg:
    raise ValueError(f"configs/benchmark.py takes no argument or 'runlocal', got {arg!r}")
  return config
