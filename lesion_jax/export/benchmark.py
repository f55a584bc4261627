"""Size and CPU latency of the paper's mobile model at each quantisation (no training needed).

    python -m lesion_jax.export --benchmark [--image_size 512]
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lesion_jax.data import pipeline
from lesion_jax.export.parity import median_latency_ms
from lesion_jax.export.tflite import (PROBABILITY_OUTPUT, QUANTIZATIONS, convert_to_tflite,
                                      for_export, inference_function, load_interpreter)

def benchmark(image_size=512, alpha: float = 0.35, runs: int = 20,
              quantizations: Sequence[str] = ("none", "float16", "dynamic_int8"),
              out_dir: str | None = None) -> list[dict]:
  """Exports a freshly initialised reduced Mobile DeepLab at each quantisation; sizes, latency.

  Neither size nor speed depends on the weights' values, so no training is needed, and the
  weights are drawn with NumPy (normal, std 0.1; BN statistics 0 and 1): running flax's
  initialisers would cost a 20 s XLA compilation on a CPU.
  """
  from lesion_jax import models

  model = for_export(models.create_model("deeplab_mobilenetv2", alpha=alpha, output_stride=16,
                                         depthwise_implementation="xla"))
  height, width = pipeline.image_shape(image_size)
  models.check_input_size(model, height, width)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                          jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32))
  rng = np.random.default_rng(0)
  variables = {
      "params": jax.tree.map(lambda s: rng.normal(0.0, 0.1, s.shape).astype(s.dtype),
                             shapes["params"]),
      "batch_stats": jax.tree_util.tree_map_with_path(
          lambda path, s: np.full(s.shape, 1.0 if path[-1].key == "var" else 0.0, s.dtype),
          shapes.get("batch_stats", {})),
  }
  infer = inference_function(model, variables)
  rows = []
  for name in quantizations:
    quantization = QUANTIZATIONS.get(name, where="benchmark")
    model_bytes = convert_to_tflite(infer, image_size, PROBABILITY_OUTPUT, quantization)
    if out_dir:
      with open(os.path.join(out_dir, f"mobile_deeplab_{image_size}_{name}.tflite"), "wb") as f:
        f.write(model_bytes)
    interpreter = load_interpreter(model_bytes, num_threads=1)
    rows.append({"quantization": name, "image_size": image_size, "size_bytes": len(model_bytes),
                 "latency_ms": median_latency_ms(interpreter, image_size, runs)})
  return rows


def benchmark_table(rows: Sequence[Mapping[str, Any]]) -> str:
  lines = ["| quantization | input | size (MB) | CPU latency, 1 thread (ms, median) |",
           "|---|---|---|---|"]
  for row in rows:
    size = row["image_size"]
    lines.append(f"| {row['quantization']} | {size}x{size} | {row['size_bytes'] / 1e6:.3f} | "
                 f"{row['latency_ms']:.1f} |")
  return "\n".join(lines)
