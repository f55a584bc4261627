"""Modified aligned Xception-65, the DeepLabv3+ encoder, in the TF DeepLab layout.

- Entry flow: conv 32 /2, conv 64, then Xception modules [128]*3 /2, [256]*3 /2, [728]*3 /2,
  each with a 1x1 conv shortcut. The decoder's stride-4 feature is the output of the 256 block's
  second separable conv (TF: entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise).
- Middle flow: 16 modules [728]*3 with identity shortcuts.
- Exit flow: [728, 1024, 1024] /2 with a conv shortcut, then [1536, 1536, 2048] with no shortcut
  and ReLU inside the separable convs.
- Separable conv: ReLU -> depthwise 3x3 -> BN -> pointwise 1x1 -> BN (exit block 2: depthwise ->
  BN -> ReLU -> pointwise -> BN -> ReLU). The stride of a module sits on its third conv.
- Stride-2 convs pad explicitly and symmetrically (TF `fixed_padding`), not 'SAME'.
- Once the running stride reaches `output_stride`, later strides become 1 and the rate grows
  (TF `stack_blocks_dense`): OS 16 gives exit rates (1, 2); OS 8 makes entry block 3 stride 1
  and gives middle rate 2 and exit rates (2, 4). Parameter counts do not depend on it.
- BN: eps 1e-3, decay 0.9997 (TF DeepLab's Xception arg scope).
Module names mirror the TF scopes so the pretrained importer maps them one to one.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lesion_jax.models.layers import BatchNormOptions, ConvBN, fixed_padding

Array = jax.Array

OUTPUT_STRIDES = (8, 16)
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.9997
MIDDLE_FLOW_UNITS = 16


def block_plan(output_stride: int, middle_flow_units: int = MIDDLE_FLOW_UNITS
               ) -> list[tuple[str, tuple[int, int, int], str, bool, int, int]]:
  """(name, depths, shortcut, ReLU inside, stride, rate) of every Xception module in order."""
  units = [("entry_flow_block1", (128, 128, 128), "conv", False, 2),
           ("entry_flow_block2", (256, 256, 256), "conv", False, 2),
           ("entry_flow_block3", (728, 728, 728), "conv", False, 2)]
  units += [(f"middle_flow_unit_{i}", (728, 728, 728), "sum", False, 1)
            for i in range(1, middle_flow_units + 1)]
  units += [("exit_flow_block1", (728, 1024, 1024), "conv", False, 2),
            ("exit_flow_block2", (1536, 1536, 2048), "none", True, 1)]
  current_stride, rate, plan = 2, 1, []  # entry_flow/conv1_1 has stride 2
  for name, depths, shortcut, relu_inside, stride in units:
    if current_stride == output_stride:
      plan.append((name, depths, shortcut, relu_inside, 1, rate))
      rate *= stride
    else:
      plan.append((name, depths, shortcut, relu_inside, stride, 1))
      current_stride *= stride
  return plan


class XceptionSeparableConv(nn.Module):
  """Depthwise 3x3 + BN, pointwise 1x1 + BN; ReLU before (default) or inside (exit block 2)."""
  features: int
  strides: int = 1
  dilation: int = 1
  relu_inside: bool = False
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    activation = nn.relu if self.relu_inside else None
    if not self.relu_inside:
      x = nn.relu(x)
    if self.strides == 1:
      padding: Any = "SAME"
    else:
      pad = fixed_padding(3, self.dilation)
      padding = (pad, pad)
    common = dict(bn_epsilon=BN_EPSILON, bn_momentum=BN_MOMENTUM, bn_options=self.bn_options,
                  dtype=self.dtype)
    x = ConvBN(x.shape[-1], 3, strides=self.strides, dilation=self.dilation, padding=padding,
               activation=activation, depthwise=True, name="depthwise", **common)(x, train)
    return ConvBN(self.features, 1, activation=activation, name="pointwise", **common)(x, train)


class XceptionModule(nn.Module):
  """Three separable convs plus a conv / identity / no shortcut.

  Returns (output, output of the second separable conv).
  """
  depths: Sequence[int]
  shortcut: str = "conv"
  strides: int = 1
  dilation: int = 1
  relu_inside: bool = False
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array]:
    inputs = x
    second = x
    for index, depth in enumerate(self.depths):
      x = XceptionSeparableConv(
          depth, strides=self.strides if index == 2 else 1, dilation=self.dilation,
          relu_inside=self.relu_inside, bn_options=self.bn_options, dtype=self.dtype,
          name=f"separable_conv{index + 1}")(x, train)
      if index == 1:
        second = x
    if self.shortcut == "conv":
      x = x + ConvBN(self.depths[-1], 1, strides=self.strides, activation=None,
                     bn_epsilon=BN_EPSILON, bn_momentum=BN_MOMENTUM,
                     bn_options=self.bn_options, dtype=self.dtype,
                     name="shortcut")(inputs, train)
    elif self.shortcut == "sum":
      x = x + inputs
    elif self.shortcut != "none":
      raise ValueError(f"unknown Xception shortcut {self.shortcut!r}")
    return x, second


class Xception65Encoder(nn.Module):
  """Modified aligned Xception-65 returning {4: 256-ch low-level, output_stride: 2048-ch}.

  Attributes:
    output_stride: 8 or 16.
    middle_flow_units: 16 in Xception-65; fewer only to make tests and smoke runs cheap.
    dtype: compute dtype (params stay float32).
  """
  output_stride: int = 16
  middle_flow_units: int = MIDDLE_FLOW_UNITS
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.output_stride not in OUTPUT_STRIDES:
      raise ValueError(f"Xception-65 output_stride must be one of {OUTPUT_STRIDES}, "
                       f"got {self.output_stride!r}")
    if not isinstance(self.middle_flow_units, int) or self.middle_flow_units < 0:
      raise ValueError(f"middle_flow_units must be an int >= 0, got {self.middle_flow_units!r}")
    super().__post_init__()

  @property
  def feature_channels(self) -> dict[int, int]:
    return {4: 256, self.output_stride: 2048}

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> dict[int, Array]:
    common = dict(bn_epsilon=BN_EPSILON, bn_momentum=BN_MOMENTUM, bn_options=self.bn_options,
                  dtype=self.dtype)
    pad = fixed_padding(3)
    x = ConvBN(32, 3, strides=2, padding=(pad, pad), name="entry_flow_conv1_1", **common)(x, train)
    x = ConvBN(64, 3, name="entry_flow_conv1_2", **common)(x, train)
    features = {}
    for name, depths, shortcut, relu_inside, stride, rate in block_plan(
        self.output_stride, self.middle_flow_units):
      x, second = XceptionModule(
          depths, shortcut=shortcut, strides=stride, dilation=rate, relu_inside=relu_inside,
          bn_options=self.bn_options, dtype=self.dtype,
          name=name)(x, train)
      if name == "entry_flow_block2":
        features[4] = second
    features[self.output_stride] = x
    return features
