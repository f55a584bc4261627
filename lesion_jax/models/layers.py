"""Layers shared by the architectures: TF-'SAME' depthwise convolution, conv + BN + activation.

Each layer keeps the parameters and semantics of its flax counterpart (`nn.Conv`,
`nn.BatchNorm`, `nn.Dropout`). Where a faster form was measured on a backend, the layer computes
it with a kernel from models/kernels.py, picked by its `kernels` option (`KernelOptions`: the
plain forms by default; `create_model` sets it for the backend).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lesion_jax.models import kernels as kernels_lib
from lesion_jax.models.kernels import KernelOptions

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
  """
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"max_pool_2x2 needs even height and width, got {h}x{w}")
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Dropout(nn.Module):
  """Inverted dropout like `nn.Dropout`, its mask from `kernels.dropout_keep_mask` (Philox).

  Same interface and semantics as `nn.Dropout` (the 'dropout' RNG stream, `deterministic`,
  scaling kept activations so the expected output equals the input); only the random numbers
  behind the mask differ. Parameter-free, so checkpoints are unaffected.
  """
  rate: float
  deterministic: bool | None = None
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x: Array, deterministic: bool | None = None) -> Array:
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if not 0.0 <= self.rate <= 1.0:
      raise ValueError(f"dropout rate must be in [0, 1], got {self.rate!r}")
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep, keep_probability = kernels_lib.dropout_keep_mask(self.make_rng(self.rng_collection),
                                                           self.rate, x.shape)
    return lax.select(keep, x / jnp.asarray(keep_probability, x.dtype), jnp.zeros_like(x))


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
  if isinstance(value, int):
    pair = (value, value)
  else:
    pair = tuple(value)
  if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
    raise ValueError(f"{what} must be a positive int or a pair of them, got {value!r}")
  return pair  # type: ignore[return-value]


def fixed_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
  """Symmetric padding that TF DeepLab's Xception applies before a stride-2 'VALID' conv."""
  total = dilation * (kernel - 1)
  return total // 2, total - total // 2


class DepthwiseConv2D(nn.Module):
  """Depthwise 2-D convolution (depth multiplier 1) with TensorFlow 'SAME' padding by default.

  The parameter is `kernel` with shape (kh, kw, 1, C), the layout of
  `nn.Conv(feature_group_count=C)`, so checkpoints of either form are interchangeable.

  Attributes:
    features: channel count C; None takes it from the input. When given it must equal the
      input's channel count (depth multiplier 1).
    kernel_size: int or (kh, kw).
    strides: int or pair.
    dilation: int or pair (atrous rate).
    padding: 'SAME' (TensorFlow's rule, `lax.padtype_to_pads`: the extra pixel after, as
      Keras and TF-slim weights were trained with), 'VALID', or explicit
      ((top, bottom), (left, right)).
    kernels: `kernels.depthwise` picks `depthwise_conv_plain` (XLA's grouped convolution, the
      default) or `depthwise_conv_shifted` (shifted multiply-adds, faster on CPU and GPU).
    use_bias: add a per-channel bias (DeepLab and MobileNetV2 use BN instead, so off).
    dtype: compute dtype; param_dtype: parameter dtype (float32).
  """
  features: int | None = None
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  dilation: int | Sequence[int] = 1
  padding: Padding = "SAME"
  kernels: KernelOptions = KernelOptions()
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim != 4:
      raise ValueError(f"DepthwiseConv2D expects NHWC input, got shape {x.shape}")
    channels = x.shape[-1]
    if self.features is not None and self.features != channels:
      raise ValueError(f"DepthwiseConv2D was built for {self.features} channels but the input "
                       f"has {channels} (depth multiplier must be 1)")
    kh, kw = _pair(self.kernel_size, "kernel_size")
    strides = _pair(self.strides, "strides")
    dilation = _pair(self.dilation, "dilation")
    if isinstance(self.padding, str):
      if self.padding == "SAME":
        window = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
        pads = tuple(lax.padtype_to_pads(x.shape[1:3], window, strides, "SAME"))
      elif self.padding == "VALID":
        pads = ((0, 0), (0, 0))
      else:
        raise ValueError(f"padding must be 'SAME', 'VALID' or explicit pairs, got {self.padding!r}")
    else:
      pads = tuple(tuple(p) for p in self.padding)
    kernel = self.param("kernel", self.kernel_init, (kh, kw, 1, channels), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    conv = (kernels_lib.depthwise_conv_shifted if self.kernels.depthwise == "shifted"
            else kernels_lib.depthwise_conv_plain)
    y = conv(x, kernel, strides, dilation, pads)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (channels,), self.param_dtype)
      y = y + bias.astype(y.dtype)
    return y


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


class PointwiseConv(nn.Module):
  """`nn.Conv(features, (1, 1))` with the same parameters and initialisation.

  `kernels.pointwise_grads` picks its gradients: autodiff of the convolution (the default) or
  matrix products (`kernels.pointwise_conv_matmul_grads`, faster on the CPU).
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernels: KernelOptions = KernelOptions()
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                        jnp.float32)
    bias = (self.param("bias", self.bias_init, (self.features,), jnp.float32)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    conv = (kernels_lib.pointwise_conv_matmul_grads if self.kernels.pointwise_grads == "matmul"
            else kernels_lib.pointwise_conv_plain)
    y = conv(x, kernel)
    return y if bias is None else y + bias


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over the last axis, its training gradient picked by `kernels.batch_norm_grad`.

  Same variables (params `scale`, `bias`; batch_stats `mean`, `var`), initialisation, running
  averages and statistics (float32, the fast E[x^2] - E[x]^2 variance, averaged over
  `axis_name`'s devices) as `nn.BatchNorm`, so checkpoints and imported weights are unchanged;
  the training gradient is autodiff (the default) or `kernels.batch_norm_train`'s hand-written
  one (faster on the CPU). tests/test_models.py checks values, gradients and running averages
  of both against `nn.BatchNorm`.
  """
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernels: KernelOptions = KernelOptions()

  @nn.compact
  def __call__(self, x: Array, use_running_average: bool | None = None) -> Array:
    use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                         use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    scale = self.param("scale", nn.initializers.ones_init(), features, self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), features, self.param_dtype)
    x = x.astype(self.dtype)
    scale, bias = scale.astype(jnp.float32), bias.astype(jnp.float32)
    if use_running_average:
      return kernels_lib.normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)[0]
    axis_name = None if self.is_initializing() else self.axis_name
    train = (kernels_lib.batch_norm_train if self.kernels.batch_norm_grad == "hand_written"
             else kernels_lib.batch_norm_train_plain)
    y, mean, var = train(x, scale, bias, self.epsilon, axis_name)
    if not self.is_initializing():
      mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


class ConvBN(nn.Module):
  """Convolution (no bias) -> BatchNorm -> optional activation: the TF-slim/Keras conv unit.

  Submodules are named `conv` and `bn` so pretrained importers can map `<scope>/weights` and
  `<scope>/BatchNorm/*` onto them. `depthwise=True` uses `DepthwiseConv2D` instead of `nn.Conv`;
  `kernels` goes to the depthwise, 1x1 and BatchNorm layers.
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  dilation: int = 1
  padding: Padding = "SAME"
  activation: Callable[[Array], Array] | None = nn.relu
  depthwise: bool = False
  kernels: KernelOptions = KernelOptions()
  bn_epsilon: float = 1e-3
  bn_momentum: float = 0.999
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if self.depthwise:
      x = DepthwiseConv2D(
          self.features, kernel_size=self.kernel_size, strides=self.strides,
          dilation=self.dilation, padding=self.padding,
          kernels=self.kernels, dtype=self.dtype, name="conv")(x)
    elif self.kernel_size == 1 and self.strides == 1:
      x = PointwiseConv(self.features, use_bias=False, dtype=self.dtype, kernels=self.kernels,
                        name="conv")(x)
    else:
      # lax's 'SAME' follows the TF rule (extra pixel after), which Keras/TF weights expect.
      x = nn.Conv(self.features, (self.kernel_size, self.kernel_size),
                  strides=(self.strides, self.strides), padding=self.padding,
                  kernel_dilation=(self.dilation, self.dilation), use_bias=False,
                  dtype=self.dtype, param_dtype=jnp.float32, name="conv")(x)
    momentum = self.bn_options.momentum
    x = BatchNorm(use_running_average=not train,
                  momentum=self.bn_momentum if momentum is None else momentum,
                  axis_name=self.bn_options.axis_name, epsilon=self.bn_epsilon,
                  dtype=self.dtype, param_dtype=jnp.float32, kernels=self.kernels,
                  name="bn")(x)
    if self.activation is not None:
      x = self.activation(x)
    return x


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
