"""The architectures of the paper as named settings (`models/registry.py`: `MODELS`,
`create_model`, `from_config`), and the trained segmenters shipped with lesion_jax
(`load_trained`, `models/trained.py`).

    model = create_model("deeplab_mobilenetv2", alpha=0.35, output_stride=16)
    variables = model.init(jax.random.key(0), x)             # x: (B, H, W, 3) float32, NHWC
    logits = model.apply(variables, x)                         # (B, H, W, 1) float32
"""
from __future__ import annotations

from typing import Any

from lesion_jax.models.registry import (
    COMPUTE_DTYPES,
    CPU_YNNPACK_CHOICES,
    MODELS,
    DeepLab,
    KernelOptions,
    MobileNetV2Encoder,
    UNet,
    Xception65Encoder,
    check_input_size,
    config_kwargs,
    count_params,
    create_model,
    deeplab_mobilenetv2,
    from_config,
    deeplabv3plus_xception65,
    model_names,
    variables_input_side,
    xla_compiler_options,
)


def load_trained(name: str, directory: str | None = None) -> Any:
  """The trained segmenter shipped as `name` (`lesion_jax.models.trained.load`, which documents
  it): a `TrainedModel` with its module, variables, threshold and input size.

  `trained` is imported on the call, so that `import lesion_jax.models`, which every training
  process does, never runs trained.py (its writer and command line) nor what it imports.
  """
  from lesion_jax.models import trained
  return trained.load(name, directory)


__all__ = [
    "COMPUTE_DTYPES",
    "CPU_YNNPACK_CHOICES",
    "DeepLab",
    "KernelOptions",
    "MODELS",
    "MobileNetV2Encoder",
    "UNet",
    "Xception65Encoder",
    "check_input_size",
    "config_kwargs",
    "count_params",
    "create_model",
    "deeplab_mobilenetv2",
    "deeplabv3plus_xception65",
    "from_config",
    "load_trained",
    "model_names",
    "variables_input_side",
    "xla_compiler_options",
]
