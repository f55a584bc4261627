"""Encoder registry and the contract every DeepLab encoder keeps.

An encoder is a flax.linen Module with
- `output_stride: int`, the stride of its deepest (high-level) feature;
- `feature_channels -> dict[int, int]`, a property mapping each returned stride to its channel
  count, known before the module runs;
- `__call__(x, train=False) -> dict[int, Array]`, features keyed by stride; the largest key is
  `output_stride`, and DeepLab's v3+ decoder reads key 4.
The DeepLab head and decoder (lesion_jax/models/deeplab.py) use nothing else, as in
segmentation_models_pytorch, so a new encoder only needs registering here.
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn

from lesion_jax.models.encoders.mobilenet_v2 import MobileNetV2Encoder
from lesion_jax.models.encoders.xception import Xception65Encoder
from lesion_jax.registry import Registry

ENCODERS: Registry[Callable[..., nn.Module]] = Registry("encoder")
ENCODERS.add("mobilenet_v2", MobileNetV2Encoder)
ENCODERS.add("xception_65", Xception65Encoder)


def create_encoder(name: str, **kwargs) -> nn.Module:
  """The encoder registered as `name`, built with `kwargs`."""
  return ENCODERS.get(name)(**kwargs)


__all__ = ["ENCODERS", "MobileNetV2Encoder", "Xception65Encoder", "create_encoder"]
