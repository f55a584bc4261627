"""MobileNetV2 encoder in the keras.applications layout, with atrous output stride for DeepLab.

Blocks 0-16 are the Keras inverted-residual blocks (expand 1x1 -> depthwise 3x3 -> project 1x1,
BN after each, ReLU6 after the first two, identity shortcut when shape is kept). The final
1280-channel 1x1 conv is not built: DeepLab puts its head on block 16.

Widths follow Keras exactly (so Keras ImageNet weights load): block widths are
`make_divisible(int(c * alpha), 8)`, the stem is `make_divisible(32 * alpha, 8)` and each
expansion is `t * in_channels` with no rounding.

Output stride: once the running stride reaches `output_stride`, later strides become 1 and the
depthwise convs dilate instead, as TF-slim's MobileNet does for DeepLab: the block that would
have strided runs at the current rate, and the rate is multiplied for the blocks after it.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lesion_jax.models.layers import BatchNormOptions, ConvBN, relu6

Array = jax.Array

# (expansion t, output channels c, stride s) of Keras blocks 0..16.
BLOCKS: tuple[tuple[int, int, int], ...] = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)
# DeepLab's low-level feature for MobileNetV2 is TF-slim's 'layer_4/depthwise_output': the
# depthwise output of Keras block 2, the last block at stride 4.
LOW_LEVEL_BLOCK = 2
OUTPUT_STRIDES = (8, 16)  # what DeepLab uses
# 32 = no atrous at all: exactly keras.applications.MobileNetV2, used to check imported weights.
ENCODER_OUTPUT_STRIDES = (8, 16, 32)
KERAS_BN_EPSILON = 1e-3
KERAS_BN_MOMENTUM = 0.999


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Keras/TF rounding of a width to a multiple of `divisor`, never more than 10% below `value`."""
  min_value = divisor if min_value is None else min_value
  rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


def validate_alpha(alpha: float) -> None:
  if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
    raise ValueError(f"MobileNetV2 width multiplier alpha must be a number > 0, got {alpha!r}")


def validate_output_stride(output_stride: int, model: str,
                           allowed: tuple[int, ...] = OUTPUT_STRIDES) -> None:
  if output_stride not in allowed:
    raise ValueError(f"{model} output_stride must be one of {allowed}, got {output_stride!r}")


def block_widths(alpha: float) -> tuple[int, list[tuple[int, int]]]:
  """Stem width and (expanded, output) widths of blocks 0-16 for width multiplier `alpha`."""
  stem = make_divisible(32 * alpha, 8)
  widths = []
  in_channels = stem
  for expansion, channels, _ in BLOCKS:
    out = make_divisible(int(channels * alpha), 8)
    widths.append((expansion * in_channels, out))
    in_channels = out
  return stem, widths


def block_strides_and_rates(output_stride: int) -> list[tuple[int, int]]:
  """(stride, depthwise dilation) of blocks 0-16 after trading strides for atrous rate."""
  current_stride, rate = 2, 1  # the stem conv has stride 2
  schedule = []
  for _, _, stride in BLOCKS:
    if current_stride == output_stride:
      schedule.append((1, rate))
      rate *= stride
    else:
      schedule.append((stride, 1))
      current_stride *= stride
  return schedule


class InvertedResidual(nn.Module):
  """One Keras MobileNetV2 block; returns (block output, depthwise output)."""
  expanded: int
  features: int
  expand: bool
  strides: int = 1
  dilation: int = 1
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    common = dict(bn_epsilon=KERAS_BN_EPSILON, bn_momentum=KERAS_BN_MOMENTUM,
                  bn_options=self.bn_options, dtype=self.dtype)
    inputs = x
    if self.expand:
      x = ConvBN(self.expanded, 1, activation=relu6, name="expand", **common)(x, train)
    x = ConvBN(x.shape[-1], 3, strides=self.strides, dilation=self.dilation, activation=relu6,
               depthwise=True, name="depthwise", **common)(x, train)
    depthwise_output = x
    x = ConvBN(self.features, 1, activation=None, name="project", **common)(x, train)
    if self.strides == 1 and inputs.shape[-1] == self.features:
      x = x + inputs
    return x, depthwise_output


class MobileNetV2Encoder(nn.Module):
  """Keras-layout MobileNetV2 (blocks 0-16) returning {4: low-level, output_stride: high-level}.

  Attributes:
    alpha: width multiplier (> 0). Keras publishes ImageNet weights for 0.35, 0.5, 0.75, 1.0,
      1.3 and 1.4.
    output_stride: 8 or 16 for DeepLab; 32 builds Keras's network unchanged (no atrous).
    dtype: compute dtype (params stay float32).
  """
  alpha: float = 1.0
  output_stride: int = 16
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  def __post_init__(self):
    validate_alpha(self.alpha)
    validate_output_stride(self.output_stride, "MobileNetV2", ENCODER_OUTPUT_STRIDES)
    super().__post_init__()

  @property
  def feature_channels(self) -> dict[int, int]:
    _, widths = block_widths(self.alpha)
    return {4: widths[LOW_LEVEL_BLOCK][0], self.output_stride: widths[-1][1]}

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[int, Array]:
    stem, widths = block_widths(self.alpha)
    schedule = block_strides_and_rates(self.output_stride)
    x = ConvBN(stem, 3, strides=2, activation=relu6, bn_epsilon=KERAS_BN_EPSILON,
               bn_momentum=KERAS_BN_MOMENTUM, bn_options=self.bn_options, dtype=self.dtype,
               name="Conv1")(x, train)
    features = {}
    for index, ((expanded, out), (stride, rate)) in enumerate(zip(widths, schedule)):
      x, depthwise_output = InvertedResidual(
          expanded, out, expand=index > 0, strides=stride, dilation=rate,
          bn_options=self.bn_options, dtype=self.dtype,
          name=f"block_{index}")(x, train)
      if index == LOW_LEVEL_BLOCK:
        features[4] = depthwise_output
    features[self.output_stride] = x
    return features
