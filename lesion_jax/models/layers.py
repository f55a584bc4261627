"""Layers shared by the architectures: TF-'SAME' depthwise convolution, conv + BN + activation.

The depthwise convolution is the one layer whose speed depends strongly on how it is lowered.
XLA's CPU backend runs a grouped convolution (`feature_group_count == channels`) through a slow
generic path, while a sum of kh*kw shifted multiply-adds is plain elementwise work that vectorises
well. On a GPU the grouped convolution goes to cuDNN, which was expected to win there; measured,
it does not (docs/performance.md, entry 11): on an H200 the shifted form trains the reduced
Mobile DeepLab 1.32x faster at 512x512 and compiles in half the time, and ties on Xception-65.
So `'auto'` picks the shifted form on CPU and GPU, and the grouped convolution only on other
backends (TPU: not measured; its convolution unit handles grouped convolutions natively). Both
give the same numbers (tests/test_depthwise.py checks forward and gradients to 1e-5; those
tests also pass on the H200).

On the 2-core development CPU the shifted form is 5x (stride 1) to 24x (stride 2) faster for
fwd+bwd of a 4x64x64x96 input; the figures are in `DepthwiseConv2D`'s docstring. It costs more
XLA compile time (about 2x for a MobileNetV2 gradient), which only matters for tiny test runs.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lesion_jax.models import philox

Array = jax.Array
Dtype = Any
Padding = str | Sequence[tuple[int, int]]

DEPTHWISE_IMPLEMENTATIONS = ("auto", "shifted", "xla")
# Backends where 'auto' means the shifted form, because it measured faster there (CPU: entry 3 of
# docs/performance.md; H200 GPU: entry 11). Elsewhere 'auto' means XLA's grouped convolution.
SHIFTED_DEPTHWISE_BACKENDS = ("cpu", "gpu")

# XLA's CPU backend hands convolutions, dots and reductions to the YNNPACK library by default,
# and runs what YNNPACK does not take through its own Eigen-based kernels. Which is faster depends
# on the architecture (docs/performance.md, entry 6, 2-core CPU, 256x256, batch 4, train step):
# YNNPACK runs the weight gradient of a dense 3x3 convolution on one thread (a U-Net ifC 16 step
# took ~1.1 s with it, ~0.8 s without), while MobileNetV2's 1x1 convolutions and reductions are
# 2.5x faster with it (reduced Mobile DeepLab: ~0.24 s with, ~0.59 s without). Each model class
# states its preference as `cpu_ynnpack`; `config.cpu_ynnpack` overrides it.
CPU_YNNPACK_CHOICES = ("auto", "on", "off")


def xla_compiler_options(model: Any, cpu_ynnpack: str = "auto",
                         platform: str | None = None) -> dict[str, str]:
  """XLA options to compile `model`'s steps with on `platform` (default: JAX's backend).

  Empty except on the CPU with YNNPACK off (the model's `cpu_ynnpack` preference under 'auto').
  """
  if cpu_ynnpack not in CPU_YNNPACK_CHOICES:
    raise ValueError(f"cpu_ynnpack must be one of {CPU_YNNPACK_CHOICES}, got {cpu_ynnpack!r}")
  if (platform or jax.default_backend()) != "cpu":
    return {}
  # A model without a stated preference keeps XLA's default (YNNPACK on).
  choice = getattr(model, "cpu_ynnpack", "on") if cpu_ynnpack == "auto" else cpu_ynnpack
  # An empty list of library fusion types: XLA emits every op itself.
  return {"xla_cpu_experimental_ynn_fusion_type": ""} if choice == "off" else {}


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


# Dropout draws one 16-bit uniform number per activation from Philox-4x32-10 written in jnp
# (models/philox.py): drawing the random bits was ~13% of a U-Net step on the CPU through XLA's
# generators, and 16 bits resolve the paper's rates to 1/65536 (docs/performance.md, entries 12
# and 16).
DROPOUT_BITS = 16


def dropout_keep_mask(key: Array, rate: float, shape: Sequence[int]) -> tuple[Array, float]:
  """A boolean mask of `shape` that keeps each element with probability ~(1 - rate).

  Returns the mask and its exact keep probability, 1 - round(rate * 2**16) / 2**16 (for the
  paper's 0.2: 0.80000305), which the caller divides by so the expected output equals the input.
  """
  size = math.prod(int(dim) for dim in shape)
  threshold = int(round(rate * 2 ** DROPOUT_BITS))
  uniform16 = philox.uniform_uint16(key, size)
  keep = uniform16.reshape(tuple(shape)) >= jnp.uint16(threshold)
  return keep, 1.0 - threshold / 2 ** DROPOUT_BITS


class Dropout(nn.Module):
  """Inverted dropout like `nn.Dropout`, with 16 random bits per activation from our Philox.

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
    keep, keep_probability = dropout_keep_mask(self.make_rng(self.rng_collection), self.rate,
                                               x.shape)
    return lax.select(keep, x / jnp.asarray(keep_probability, x.dtype), jnp.zeros_like(x))


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
  if isinstance(value, int):
    pair = (value, value)
  else:
    pair = tuple(value)
  if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
    raise ValueError(f"{what} must be a positive int or a pair of them, got {value!r}")
  return pair  # type: ignore[return-value]


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
  """TensorFlow 'SAME' padding of one spatial axis: output ceil(size / stride), extra pixel after.

  With stride 2 on an even size this pads 0 before and 1 after, which is what Keras and TF-slim
  weights were trained with (and what `lax.padtype_to_pads(..., 'SAME')` also does).
  """
  effective = dilation * (kernel - 1) + 1
  out = -(-size // stride)
  total = max((out - 1) * stride + effective - size, 0)
  return total // 2, total - total // 2


def fixed_padding(kernel: int, dilation: int = 1) -> tuple[int, int]:
  """Symmetric padding that TF DeepLab's Xception applies before a stride-2 'VALID' conv."""
  total = dilation * (kernel - 1)
  return total // 2, total - total // 2


def resolve_depthwise_implementation(implementation: str) -> str:
  """'auto' -> 'shifted' on CPU and GPU, 'xla' elsewhere; other names are checked and passed on."""
  if implementation not in DEPTHWISE_IMPLEMENTATIONS:
    raise ValueError(f"depthwise implementation must be one of {DEPTHWISE_IMPLEMENTATIONS}, "
                     f"got {implementation!r}")
  if implementation == "auto":
    return "shifted" if jax.default_backend() in SHIFTED_DEPTHWISE_BACKENDS else "xla"
  return implementation


def depthwise_conv(x: Array, kernel: Array, strides: tuple[int, int], dilation: tuple[int, int],
                   padding: Sequence[tuple[int, int]], implementation: str) -> Array:
  """Depthwise 2-D convolution of NHWC `x` with a (kh, kw, 1, C) kernel (a pure function).

  `implementation` is 'shifted' (sum of kh*kw strided slices times a per-channel weight) or
  'xla' (`lax.conv_general_dilated` with `feature_group_count=C`).
  """
  channels = x.shape[-1]
  if kernel.shape[2:] != (1, channels):
    raise ValueError(f"depthwise kernel must be (kh, kw, 1, {channels}), got {kernel.shape}")
  if implementation == "xla":
    return lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=tuple(padding), rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)
  if implementation != "shifted":
    raise ValueError(f"unknown depthwise implementation {implementation!r}")
  kh, kw = kernel.shape[:2]
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  hp, wp = xp.shape[1:3]
  if hp - dilation[0] * (kh - 1) < 1 or wp - dilation[1] * (kw - 1) < 1:
    raise ValueError(f"input {x.shape[1:3]} is too small for a {kh}x{kw} kernel with dilation "
                     f"{dilation} and padding {padding}")
  return _shifted_depthwise(xp, kernel, tuple(strides), tuple(dilation))


def _shifted_output_size(xp: Array, kernel: Array, strides, dilation) -> tuple[int, int]:
  kh, kw = kernel.shape[:2]
  return ((xp.shape[1] - dilation[0] * (kh - 1) - 1) // strides[0] + 1,
          (xp.shape[2] - dilation[1] * (kw - 1) - 1) // strides[1] + 1)


def _window(xp: Array, i: int, j: int, out_h: int, out_w: int, strides, dilation) -> Array:
  """The input pixels that kernel tap (i, j) multiplies, one per output pixel."""
  top, left = i * dilation[0], j * dilation[1]
  return lax.slice(xp, (0, top, left, 0),
                   (xp.shape[0], top + (out_h - 1) * strides[0] + 1,
                    left + (out_w - 1) * strides[1] + 1, xp.shape[3]),
                   (1, strides[0], strides[1], 1))


def _accumulator(dtype) -> Any:
  # Accumulate in float32 so bfloat16 compute matches the grouped conv (which accumulates wide).
  return jnp.promote_types(dtype, jnp.float32)


def _shifted_forward(xp: Array, kernel: Array, strides, dilation) -> Array:
  kh, kw = kernel.shape[:2]
  out_h, out_w = _shifted_output_size(xp, kernel, strides, dilation)
  acc_dtype = _accumulator(xp.dtype)
  out = jnp.zeros((xp.shape[0], out_h, out_w, xp.shape[3]), acc_dtype)
  for i in range(kh):
    for j in range(kw):
      window = _window(xp, i, j, out_h, out_w, strides, dilation)
      out = out + (window * kernel[i, j, 0]).astype(acc_dtype)
  return out.astype(xp.dtype)


# The gradient is written by hand: autodiff of the forward keeps all kh*kw input windows for the
# kernel gradient, and XLA's CPU backend then writes each window to memory, recomputing the
# BatchNorm + ReLU6 that produced the input in every one (~80 ms of a 256x256 Mobile DeepLab
# step). Here the kernel gradient moves the output gradient to each window's place instead, so
# the input is read as it is (docs/performance.md, entry 9).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shifted_depthwise(xp: Array, kernel: Array, strides, dilation) -> Array:
  """Depthwise 'VALID' convolution of the padded input `xp` as kh*kw shifted multiply-adds."""
  return _shifted_forward(xp, kernel, strides, dilation)


def _shifted_depthwise_fwd(xp, kernel, strides, dilation):
  return _shifted_forward(xp, kernel, strides, dilation), (xp, kernel)


def _shifted_depthwise_bwd(strides, dilation, residuals, dy):
  xp, kernel = residuals
  kh, kw = kernel.shape[:2]
  out_h, out_w = dy.shape[1:3]
  hp, wp = xp.shape[1:3]
  acc_dtype = _accumulator(xp.dtype)
  dy = dy.astype(acc_dtype)
  zero = jnp.zeros((), acc_dtype)
  # Kernel: d k[i, j] = sum(window(i, j) * dy) = sum(xp * dy placed where window (i, j) lies).
  rows = []
  for i in range(kh):
    row = []
    for j in range(kw):
      top, left = i * dilation[0], j * dilation[1]
      placed = lax.pad(dy, zero, (
          (0, 0, 0),
          (top, hp - top - (out_h - 1) * strides[0] - 1, strides[0] - 1),
          (left, wp - left - (out_w - 1) * strides[1] - 1, strides[1] - 1),
          (0, 0, 0)))
      row.append((xp.astype(acc_dtype) * placed).sum(axis=(0, 1, 2)))
    rows.append(jnp.stack(row))
  d_kernel = jnp.stack(rows)[:, :, None, :].astype(kernel.dtype)
  # Input: the same shifted sum over dy spread to the input grid (zeros between strided
  # positions), with the kernel flipped.
  spread = lax.pad(dy, zero, (
      (0, 0, 0),
      ((kh - 1) * dilation[0], hp - (out_h - 1) * strides[0] - 1, strides[0] - 1),
      ((kw - 1) * dilation[1], wp - (out_w - 1) * strides[1] - 1, strides[1] - 1),
      (0, 0, 0)))
  d_xp = jnp.zeros(xp.shape, acc_dtype)
  for i in range(kh):
    for j in range(kw):
      top, left = (kh - 1 - i) * dilation[0], (kw - 1 - j) * dilation[1]
      window = lax.slice(spread, (0, top, left, 0),
                         (spread.shape[0], top + hp, left + wp, spread.shape[3]))
      d_xp = d_xp + window * kernel[i, j, 0].astype(acc_dtype)
  return d_xp.astype(xp.dtype), d_kernel


_shifted_depthwise.defvjp(_shifted_depthwise_fwd, _shifted_depthwise_bwd)


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
    padding: 'SAME' (TensorFlow rule, see `same_padding`), 'VALID', or explicit
      ((top, bottom), (left, right)).
    implementation: 'auto' | 'shifted' | 'xla'. 'auto' uses 'shifted' on CPU and GPU and 'xla'
      elsewhere (TPU). On an H200 at 512x512, batch 4, a whole train step of the reduced Mobile
      DeepLab took 8.8 ms shifted against 11.6 ms xla. Measured on the 2-core development CPU
      (shared, load ~1.5), x 4x64x64x96 float32, 3x3, jit'ed fwd+bwd of sum(y**2) w.r.t. input
      and kernel, median of 20:
      stride 1: shifted 32.4 ms, xla 169.7 ms; stride 2: shifted 5.9 ms, xla 139.8 ms;
      dilation 2: shifted 34.3 ms, xla 170.3 ms.
    use_bias: add a per-channel bias (DeepLab and MobileNetV2 use BN instead, so off).
    dtype: compute dtype; param_dtype: parameter dtype (float32).
  """
  features: int | None = None
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  dilation: int | Sequence[int] = 1
  padding: Padding = "SAME"
  implementation: str = "auto"
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
        pads = (same_padding(x.shape[1], kh, strides[0], dilation[0]),
                same_padding(x.shape[2], kw, strides[1], dilation[1]))
      elif self.padding == "VALID":
        pads = ((0, 0), (0, 0))
      else:
        raise ValueError(f"padding must be 'SAME', 'VALID' or explicit pairs, got {self.padding!r}")
    else:
      pads = tuple(tuple(p) for p in self.padding)
    implementation = resolve_depthwise_implementation(self.implementation)
    kernel = self.param("kernel", self.kernel_init, (kh, kw, 1, channels), self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = depthwise_conv(x, kernel, strides, dilation, pads, implementation)
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


def conv_nhwc(x: Array, kernel: Array, padding: str = "VALID") -> Array:
  """Stride-1 convolution of NHWC `x` with an HWIO `kernel` (lax's 'SAME' is TF's rule)."""
  return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def pointwise_conv(x: Array, kernel: Array) -> Array:
  """A 1x1 convolution of NHWC `x` with a (1, 1, C, F) kernel; on the CPU, matrix-product gradients.

  XLA's CPU backend differentiates a 1x1 convolution into a weight-gradient convolution whose
  window is the whole image, run on one thread after transposing both operands. On the CPU the
  gradients are therefore written as matrix products over the channel axis (one multi-threaded
  GEMM each, no copies), while the forward pass stays a convolution, so exported graphs keep
  their CONV_2D ops (docs/performance.md, entry 14; a dot in the forward pass as well was
  slower). Other backends differentiate the convolution as usual.
  """
  if jax.default_backend() == "cpu":
    return _pointwise_conv_matmul_grads(x, kernel)
  return conv_nhwc(x, kernel)


@jax.custom_vjp
def _pointwise_conv_matmul_grads(x: Array, kernel: Array) -> Array:
  return conv_nhwc(x, kernel)


def _pointwise_forward(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
  return conv_nhwc(x, kernel), (x, kernel)


def _pointwise_backward(residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
  x, kernel = residuals
  d_x = lax.dot_general(dy, kernel[0, 0], (((3,), (1,)), ((), ())))
  d_kernel = lax.dot_general(x, dy, (((0, 1, 2), (0, 1, 2)), ((), ())))
  return d_x.astype(x.dtype), d_kernel[None, None].astype(kernel.dtype)


_pointwise_conv_matmul_grads.defvjp(_pointwise_forward, _pointwise_backward)


class PointwiseConv(nn.Module):
  """`nn.Conv(features, (1, 1))` with the same parameters, computed by `pointwise_conv`."""
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                        jnp.float32)
    bias = (self.param("bias", self.bias_init, (self.features,), jnp.float32)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = pointwise_conv(x, kernel)
    return y if bias is None else y + bias


def _batch_stats(x: Array, axis_name: str | None) -> tuple[Array, Array]:
  """Per-channel mean and variance over all but the last axis, and over `axis_name`'s devices."""
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.float32)
  mean, mean_square = x.mean(axes), jnp.square(x).mean(axes)
  if axis_name is not None:
    mean, mean_square = lax.pmean((mean, mean_square), axis_name)
  return mean, jnp.maximum(mean_square - jnp.square(mean), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float,
                     axis_name: str | None) -> tuple[Array, Array, Array]:
  """Training-mode batch normalisation: (y, batch mean, batch variance).

  The mean and variance outputs feed the running averages only; they carry no gradient.
  """
  return _batch_norm_train_forward(x, scale, bias, epsilon, axis_name)[0]


def _normalize(x: Array, mean: Array, var: Array, scale: Array, bias: Array,
               epsilon: float) -> tuple[Array, Array]:
  """(x - mean) / sqrt(var + epsilon) * scale + bias in float32, cast back; and 1 / sqrt(...)."""
  inverse = lax.rsqrt(var + epsilon)
  y = (x.astype(jnp.float32) - mean) * (inverse * scale) + bias
  return y.astype(x.dtype), inverse


def _batch_norm_train_forward(x, scale, bias, epsilon, axis_name):
  mean, var = _batch_stats(x, axis_name)
  y, inverse = _normalize(x, mean, var, scale, bias, epsilon)
  return (y, mean, var), (x, mean, inverse, scale)


def _batch_norm_train_backward(epsilon, axis_name, residuals, cotangents):
  # The textbook gradient: one fused reduction for sum(dy) and sum(dy * x_hat), one elementwise
  # pass for dx.
  del epsilon
  x, mean, inverse, scale = residuals
  dy = cotangents[0].astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  x_hat = (x.astype(jnp.float32) - mean) * inverse
  d_bias, d_scale = dy.sum(axes), (dy * x_hat).sum(axes)
  count = x.size // x.shape[-1]
  mean_dy, mean_dy_x_hat = d_bias / count, d_scale / count
  if axis_name is not None:  # the statistics were global, so their gradients are too
    mean_dy, mean_dy_x_hat = lax.pmean((mean_dy, mean_dy_x_hat), axis_name)
  d_x = (scale * inverse) * (dy - mean_dy - x_hat * mean_dy_x_hat)
  return d_x.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_train_forward, _batch_norm_train_backward)


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over the last axis with a hand-written training gradient on the CPU.

  XLA's autodiff of flax's BatchNorm materialises x - mean and differentiates the mean and the
  variance as separate reductions; `batch_norm_train`'s gradient makes two passes over the
  activations (docs/performance.md, entry 15).

  Same variables (params `scale`, `bias`; batch_stats `mean`, `var`), initialisation, running
  averages and statistics (float32, the fast E[x^2] - E[x]^2 variance, averaged over
  `axis_name`'s devices) as `nn.BatchNorm`, so checkpoints and imported weights are unchanged;
  tests/test_models.py checks values, gradients and running averages against it.
  """
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

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
      return _normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)[0]
    axis_name = None if self.is_initializing() else self.axis_name
    if jax.default_backend() == "cpu":
      y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, axis_name)
    else:  # autodiff of the same forward pass: the hand-written gradient is measured on CPU only
      (y, mean, var), _ = _batch_norm_train_forward(x, scale, bias, self.epsilon, axis_name)
    if not self.is_initializing():
      mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


class ConvBN(nn.Module):
  """Convolution (no bias) -> BatchNorm -> optional activation: the TF-slim/Keras conv unit.

  Submodules are named `conv` and `bn` so pretrained importers can map `<scope>/weights` and
  `<scope>/BatchNorm/*` onto them. `depthwise=True` uses `DepthwiseConv2D` instead of `nn.Conv`.
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  dilation: int = 1
  padding: Padding = "SAME"
  activation: Callable[[Array], Array] | None = nn.relu
  depthwise: bool = False
  depthwise_implementation: str = "auto"
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
          implementation=self.depthwise_implementation, dtype=self.dtype, name="conv")(x)
    elif self.kernel_size == 1 and self.strides == 1:
      x = PointwiseConv(self.features, use_bias=False, dtype=self.dtype, name="conv")(x)
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
                  dtype=self.dtype, param_dtype=jnp.float32, name="bn")(x)
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
