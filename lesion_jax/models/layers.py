"""Layers shared by the architectures: conv + BN + activation, and a few plain helpers.

Plain Flax: the architectures build `nn.Conv`, `nn.BatchNorm` and `nn.Dropout`, and the U-Net
decoder's `UpsampleConcatConv` (an `nn.Conv`). Where a faster form of one of them was measured,
models/kernels.py computes it instead while a model from `create_model` runs
(`kernels.intercept`); a module built directly computes as flax does.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any
Padding = str | Sequence[tuple[int, int]]


def max_pool_2x2(x: Array) -> Array:
  """2x2 max pooling with stride 2 of NHWC `x` (even height and width) as a reshape + max.

  Same values as `nn.max_pool(x, (2, 2), (2, 2))`. XLA's reduce-window max differentiates
  through select-and-scatter plus four index arrays of the input's size (~45 ms of a 256x256
  U-Net step on the CPU); the reshape form differentiates through a comparison mask. The two
  gradients differ only where a window holds tied maxima (the reshape form splits the gradient
  between them); after a ReLU those ties are zeros, whose ReLU gradient is zero either way.
  Still the faster form: relu + pooling + gradient of a 4x256x256x32 input, XLA's own CPU
  kernels (the U-Nets' setting), 2-core CPU: 45 ms here, 267 ms through `nn.max_pool`.
  """
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"max_pool_2x2 needs even height and width, got {h}x{w}")
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def fixed_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
  """Symmetric padding that TF DeepLab's Xception applies before a stride-2 'VALID' conv."""
  total = dilation * (kernel - 1)
  return total // 2, total - total // 2


@dataclasses.dataclass(frozen=True)
class BatchNormOptions:
  """Run-level BatchNorm settings that override an architecture's own defaults.

  momentum: running-average momentum; None keeps the architecture's (Keras 0.999, TF DeepLab
    0.9997). Those suit the paper's long runs, but after a few hundred steps their running
    statistics are still mostly the initial (0, 1), so short runs need a smaller value.
  axis_name: the pmap axis to compute batch statistics over, so data-parallel training
    normalises over the global batch and matches single-device training.
  """
  momentum: float | None = None
  axis_name: str | None = None

  def __post_init__(self):
    if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
      raise ValueError(f"bn_momentum must be in [0, 1), got {self.momentum!r}")


def relu6(x: Array) -> Array:
  return jnp.clip(x, 0, 6)


class ConvBN(nn.Module):
  """Convolution (no bias) -> BatchNorm -> optional activation: the TF-slim/Keras conv unit.

  Submodules are named `conv` and `bn` so pretrained importers can map `<scope>/weights` and
  `<scope>/BatchNorm/*` onto them. `depthwise=True` makes the convolution depthwise (one
  group per channel, depth multiplier 1: kernel (k, k, 1, C), as TF's (k, k, C, 1) imports).
  'SAME' padding is lax's, i.e. TF's rule (the extra pixel after), which Keras/TF weights expect.
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  dilation: int = 1
  padding: Padding = "SAME"
  activation: Callable[[Array], Array] | None = nn.relu
  depthwise: bool = False
  bn_epsilon: float = 1e-3
  bn_momentum: float = 0.999
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size),
                strides=(self.strides, self.strides), padding=self.padding,
                kernel_dilation=(self.dilation, self.dilation),
                feature_group_count=x.shape[-1] if self.depthwise else 1, use_bias=False,
                dtype=self.dtype, param_dtype=jnp.float32, name="conv")(x)
    momentum = self.bn_options.momentum
    x = nn.BatchNorm(use_running_average=not train,
                     momentum=self.bn_momentum if momentum is None else momentum,
                     axis_name=self.bn_options.axis_name, epsilon=self.bn_epsilon,
                     dtype=self.dtype, param_dtype=jnp.float32, name="bn")(x)
    if self.activation is not None:
      x = self.activation(x)
    return x


def upsample_nearest(x: Array) -> Array:
  """x2 nearest-neighbour upsampling of NHWC `x`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class UpsampleConcatConv(nn.Conv):
  """`nn.Conv` of concat([upsample_nearest(low), skip]): a U-Net decoder's first convolution.

  Called as (low, skip, upsampled), with `upsampled` the caller's upsample_nearest(low) when it
  has one (the attention gate needs it too). The layer takes the concatenation's parts rather
  than the concatenation so that kernels.py can compute it without building it (its
  'subpixel' form); its parameters are those of the `nn.Conv` over the concatenation.
  """

  @nn.compact
  def __call__(self, low: Array, skip: Array,  # type: ignore[override]
               upsampled: Array | None = None) -> Array:
    if upsampled is None:
      upsampled = upsample_nearest(low)
    return super().__call__(jnp.concatenate([upsampled, skip.astype(upsampled.dtype)], axis=-1))


def resize_bilinear(x: Array, height: int, width: int) -> Array:
  """Bilinear resize of NHWC `x` (half-pixel centres, i.e. align_corners=False)."""
  if x.shape[1:3] == (height, width):
    return x
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), method="bilinear")


def check_input_size(model: Any, height: int, width: int) -> None:
  """Raise ValueError unless `height` and `width` are positive multiples of `model.input_divisor`.

  Each architecture strides its input down (U-Net by 16, DeepLab by its output stride); a size
  that is not a multiple would make the skip / decoder features fail to line up.
  """
  divisor = model.input_divisor
  name = type(model).__name__
  encoder = getattr(model, "encoder", None)
  if encoder is not None:
    name += f" with {type(encoder).__name__}"
  if height < 1 or width < 1 or height % divisor or width % divisor:
    raise ValueError(
        f"input size {height}x{width} does not suit {name}: height and width must be positive "
        f"multiples of {divisor} (its total stride); e.g. "
        f"{max(divisor, -(-height // divisor) * divisor)}x"
        f"{max(divisor, -(-width // divisor) * divisor)}")
