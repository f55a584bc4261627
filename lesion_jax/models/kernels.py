"""Speed kernels: faster forms of a few layers, each computing the numbers of a plain form.

The model files are plain Flax (`nn.Conv`, `nn.BatchNorm`, `nn.Dropout`, and the U-Net
decoder's `layers.UpsampleConcatConv`). This module is where their faster forms live and where
they are injected: `intercept(options)` makes those layers compute with the kernels below, and
`attach(model, options)` gives a model whose every call runs inside it. `create_model` chooses
the options once, from the backend (`KernelOptions.for_backend`, with the registry's
overrides), and attaches them; a module built directly computes as flax does. Each kernel names
the PLAIN form it is tested against (a library call, autodiff of the same forward pass, or the
literal formula). The measurements are in docs/performance.md, by entry number.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lesion_jax.models import philox
from lesion_jax.models.layers import UpsampleConcatConv, upsample_nearest

Array = jax.Array

DEPTHWISE_FORMS = ("shifted", "xla")
POINTWISE_GRADS = ("matmul", "autodiff")
BATCH_NORM_GRADS = ("hand_written", "autodiff")
DECODER_CONV_FORMS = ("subpixel", "concat")


@dataclasses.dataclass(frozen=True)
class KernelOptions:
  """Which form each layer computes with under `intercept`; the defaults are the plain forms.

  depthwise: a depthwise `nn.Conv` (feature_group_count == channels) as 'shifted'
    (`depthwise_conv_shifted`) or 'xla' (`depthwise_conv_plain`).
  pointwise_grads: a 1x1, stride-1 `nn.Conv`'s gradients as 'matmul'
    (`pointwise_conv_matmul_grads`) or 'autodiff' (`pointwise_conv_plain`).
  batch_norm_grad: `nn.BatchNorm`'s training gradient 'hand_written' (`batch_norm_train`) or
    'autodiff' (`batch_norm_train_plain`).
  decoder_conv: `layers.UpsampleConcatConv`, the U-Net decoder's first convolution of
    concat([upsampled, skip]), as 'subpixel' (`conv_upsampled`) or 'concat' (the literal
    concatenation and `nn.Conv`). The R2 blocks build the concatenation and take `nn.Conv`.
  """
  depthwise: str = "xla"
  pointwise_grads: str = "autodiff"
  batch_norm_grad: str = "autodiff"
  decoder_conv: str = "concat"

  def __post_init__(self):
    for field, choices in (("depthwise", DEPTHWISE_FORMS), ("pointwise_grads", POINTWISE_GRADS),
                           ("batch_norm_grad", BATCH_NORM_GRADS),
                           ("decoder_conv", DECODER_CONV_FORMS)):
      if getattr(self, field) not in choices:
        raise ValueError(f"KernelOptions.{field} must be one of {choices}, got "
                         f"{getattr(self, field)!r}")

  @classmethod
  def for_backend(cls, backend: str) -> KernelOptions:
    """The forms measured faster on `backend` ('cpu', 'gpu', ...); plain where not measured."""
    if backend == "cpu":
      return cls(depthwise="shifted",             # 2-core development CPU: entries 3 and 9
                 pointwise_grads="matmul",        # 2-core development CPU: entry 14
                 batch_norm_grad="hand_written",  # 2-core development CPU: entry 15
                 decoder_conv="subpixel")         # 2-core development CPU: entry 13
    if backend == "gpu":
      # H200: entry 11. The other three kernels were measured on the CPU only, so a GPU keeps
      # their plain forms until they are measured there.
      return cls(depthwise="shifted")
    # Not measured (TPU: its convolution unit handles grouped convolutions natively).
    return cls()


# --- Depthwise convolution --------------------------------------------------------------------

def _check_depthwise_kernel(x: Array, kernel: Array) -> None:
  channels = x.shape[-1]
  if kernel.shape[2:] != (1, channels):
    raise ValueError(f"depthwise kernel must be (kh, kw, 1, {channels}), got {kernel.shape}")


def depthwise_conv_plain(x: Array, kernel: Array, strides: tuple[int, int],
                         dilation: tuple[int, int], padding: Sequence[tuple[int, int]]) -> Array:
  """Depthwise convolution of NHWC `x` with a (kh, kw, 1, C) kernel: XLA's grouped convolution."""
  _check_depthwise_kernel(x, kernel)
  return lax.conv_general_dilated(
      x, kernel, window_strides=strides, padding=tuple(padding), rhs_dilation=dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def depthwise_conv_shifted(x: Array, kernel: Array, strides: tuple[int, int],
                           dilation: tuple[int, int], padding: Sequence[tuple[int, int]]) -> Array:
  """`depthwise_conv_plain` as a sum of kh*kw strided slices times a per-channel weight.

  XLA's CPU backend runs a grouped convolution (`feature_group_count == channels`) through a
  slow generic path, while shifted multiply-adds are elementwise work that vectorises and fuses
  with the BatchNorm and ReLU6 around it. Measured on the 2-core development CPU (entry 3;
  shared, load ~1.5; x 4x64x64x96 float32, 3x3, jit'ed fwd+bwd of sum(y**2) w.r.t. input and
  kernel, median of 20): stride 1: shifted 32.4 ms, xla 169.7 ms; stride 2: shifted 5.9 ms,
  xla 139.8 ms; dilation 2: shifted 34.3 ms, xla 170.3 ms. On an H200 (entry 11), where the
  grouped convolution goes to cuDNN, a train step of the reduced Mobile DeepLab at 512x512,
  batch 4, took 8.8 ms shifted against 11.6 ms xla (1.32x), compiled in half the time, and
  tied on Xception-65. The cost: about 2x the XLA compile time of a MobileNetV2 gradient on the
  CPU. Its gradient is written by hand (entry 9). Tested against `depthwise_conv_plain`
  (tests/test_depthwise.py: forward and gradients to 1e-5, strides 1 and 2, dilations 1 and 2,
  even and odd sizes; those tests also pass on the H200).
  """
  _check_depthwise_kernel(x, kernel)
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


# --- 1x1 convolution ---------------------------------------------------------------------------

def conv_nhwc(x: Array, kernel: Array, padding: str = "VALID") -> Array:
  """Stride-1 convolution of NHWC `x` with an HWIO `kernel` (lax's 'SAME' is TF's rule)."""
  return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def pointwise_conv_plain(x: Array, kernel: Array) -> Array:
  """A 1x1 convolution of NHWC `x` with a (1, 1, C, F) kernel, differentiated by autodiff."""
  return conv_nhwc(x, kernel)


@jax.custom_vjp
def pointwise_conv_matmul_grads(x: Array, kernel: Array) -> Array:
  """`pointwise_conv_plain` whose gradients are matrix products over the channel axis.

  XLA's CPU backend differentiates a 1x1 convolution into a weight-gradient convolution whose
  window is the whole image, run on one thread after transposing both operands (147 ms of the
  alpha 1.0 Mobile DeepLab's ~500 ms step at 256x256, batch 4). Here each gradient is one
  multi-threaded GEMM with no copies, while the forward pass stays a convolution, so exported
  graphs keep their CONV_2D ops (docs/performance.md, entry 14: alpha 1.0 457-502 ms ->
  391-405 ms, alpha 0.35 178-187 ms -> 153-161 ms; a dot in the forward pass as well was
  slower). Tested against `pointwise_conv_plain` and `nn.Conv` (tests/test_models.py).
  """
  return conv_nhwc(x, kernel)


def _pointwise_forward(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
  return conv_nhwc(x, kernel), (x, kernel)


def _pointwise_backward(residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
  x, kernel = residuals
  d_x = lax.dot_general(dy, kernel[0, 0], (((3,), (1,)), ((), ())))
  d_kernel = lax.dot_general(x, dy, (((0, 1, 2), (0, 1, 2)), ((), ())))
  return d_x.astype(x.dtype), d_kernel[None, None].astype(kernel.dtype)


pointwise_conv_matmul_grads.defvjp(_pointwise_forward, _pointwise_backward)


# --- BatchNorm ---------------------------------------------------------------------------------

def batch_stats(x: Array, axis_name: str | None) -> tuple[Array, Array]:
  """Per-channel mean and variance over all but the last axis, and over `axis_name`'s devices.

  float32, with flax's fast E[x^2] - E[x]^2 variance.
  """
  axes = tuple(range(x.ndim - 1))
  x = x.astype(jnp.float32)
  mean, mean_square = x.mean(axes), jnp.square(x).mean(axes)
  if axis_name is not None:
    mean, mean_square = lax.pmean((mean, mean_square), axis_name)
  return mean, jnp.maximum(mean_square - jnp.square(mean), 0.0)


def normalize(x: Array, mean: Array, var: Array, scale: Array, bias: Array,
              epsilon: float) -> tuple[Array, Array]:
  """(x - mean) / sqrt(var + epsilon) * scale + bias in float32, cast back; and 1 / sqrt(...)."""
  inverse = lax.rsqrt(var + epsilon)
  y = (x.astype(jnp.float32) - mean) * (inverse * scale) + bias
  return y.astype(x.dtype), inverse


def _batch_norm_train_forward(x, scale, bias, epsilon, axis_name):
  mean, var = batch_stats(x, axis_name)
  y, inverse = normalize(x, mean, var, scale, bias, epsilon)
  return (y, mean, var), (x, mean, inverse, scale)


def batch_norm_train_plain(x: Array, scale: Array, bias: Array, epsilon: float,
                           axis_name: str | None) -> tuple[Array, Array, Array]:
  """Training-mode batch normalisation: (y, batch mean, batch variance), by autodiff.

  The mean and variance outputs feed the running averages only; the caller stops their
  gradient.
  """
  return _batch_norm_train_forward(x, scale, bias, epsilon, axis_name)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float,
                     axis_name: str | None) -> tuple[Array, Array, Array]:
  """`batch_norm_train_plain` with the textbook gradient written by hand.

  XLA's autodiff of the training forward pass materialises x - mean (19 ms of the reduced
  Mobile DeepLab's CPU step, 48 ms of alpha 1.0's, 256x256, batch 4) and differentiates the
  mean and the variance as separate chains of reductions; this gradient makes two passes over
  the activations: one fused reduction for sum(dy) and sum(dy * x_hat), one elementwise pass
  for dx, with the two sums averaged over the devices when the statistics were
  (docs/performance.md, entry 15: reduced Mobile DeepLab 178-211 ms -> 165-188 ms, alpha 1.0
  433-469 ms -> 409-428 ms). The mean and variance outputs carry no gradient. Tested against
  `batch_norm_train_plain` and `nn.BatchNorm` (tests/test_models.py: values, gradients,
  running averages, and two devices against one).
  """
  return _batch_norm_train_forward(x, scale, bias, epsilon, axis_name)[0]


def _batch_norm_train_backward(epsilon, axis_name, residuals, cotangents):
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


# --- Sub-pixel convolution of a nearest-upsampled input ----------------------------------------

def conv_upsampled_plain(low: Array, kernel: Array) -> Array:
  """conv3x3_same(upsample_nearest(low), kernel), literally."""
  return conv_nhwc(upsample_nearest(low), kernel, "SAME")


# Output row 2i of a 3x3 'same' convolution of a nearest-upsampled input sees upsampled rows
# 2i-1, 2i, 2i+1, i.e. low-resolution rows i-1, i, i; output row 2i+1 sees rows i, i, i+1. So
# each output phase (a, b) in {0, 1}^2 is a 2x2 convolution of the low-resolution input whose
# taps are sums of the 3x3 taps; PHASE_TAPS[a][r] lists the 3x3 rows (or columns) that tap r of
# phase a adds up.
PHASE_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))


def phase_kernels(kernel: Array) -> Array:
  """(3, 3, C, F) kernel -> (2, 2, C, 4F): the four phases' 2x2 kernels side by side."""
  combine = np.zeros((2, 2, 3), np.float32)  # [phase, tap, 3x3 index]
  for phase, taps in enumerate(PHASE_TAPS):
    for tap, rows in enumerate(taps):
      combine[phase, tap, list(rows)] = 1.0
  combine = jnp.asarray(combine, kernel.dtype)
  phases = jnp.einsum("arh,bsw,hwcf->rscabf", combine, combine, kernel)
  return phases.reshape(2, 2, kernel.shape[2], 4 * kernel.shape[3])


def conv_upsampled(low: Array, kernel: Array) -> Array:
  """`conv_upsampled_plain` in the sub-pixel form: 2.25x fewer multiply-adds.

  One 2x2 'VALID' convolution of the once-padded low-resolution input computes all four phases
  as 4F output channels; phase (a, b) is its window starting at row a, column b, and
  `interleave_phases` lays them out as the 2H x 2W output. In the U-Net decoder this also
  removes the largest tensors of the backward pass, the transposed [upsampled, skip]
  concatenations (docs/performance.md, entry 13: a U-Net ifC 16 CPU step at 256x256, batch 4,
  'concat' 693 ms, 'subpixel' 620 ms, 601-618 ms with the hand-written interleave backward).
  Tested against `conv_upsampled_plain` (values and gradients on odd, non-square sizes) and,
  through `layers.UpsampleConcatConv`, the whole U-Net against the literal concatenation and 3x3
  convolution (tests/test_models.py).
  """
  n, h, w, _ = low.shape
  features = kernel.shape[3]
  padded = jnp.pad(low, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # The taps are summed in the kernel's own precision (float32 parameters) before the cast to
  # the compute dtype, so bfloat16 compute rounds each phase kernel once.
  z = conv_nhwc(padded, phase_kernels(kernel).astype(low.dtype))
  return interleave_phases(z.reshape(n, h + 1, w + 1, 2, 2, features))


def interleave_phases_plain(z: Array) -> Array:
  """(N, H+1, W+1, 2, 2, F) phase outputs -> (N, 2H, 2W, F); phase (a, b) starts at (a, b)."""
  n, h, w, _, _, features = z.shape
  h, w = h - 1, w - 1
  rows = [jnp.stack([z[:, a:a + h, b:b + w, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]
  return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, features)


@jax.custom_vjp
def interleave_phases(z: Array) -> Array:
  """`interleave_phases_plain` with its backward pass written by hand.

  Autodiff pads every phase's cotangent to the whole (..., 2, 2, F) array and adds the four
  (`bitcast_pad_fusion`, 16.5 ms of the U-Net step of entry 13); writing each phase into its
  own slot is one fusion and a quarter of the traffic. Tested against
  `interleave_phases_plain` (tests/test_models.py).
  """
  return interleave_phases_plain(z)


def _interleave_forward(z: Array) -> tuple[Array, None]:
  return interleave_phases(z), None


def _interleave_backward(_, dy: Array) -> tuple[Array]:
  n, h2, w2, features = dy.shape
  h, w = h2 // 2, w2 // 2
  dy = dy.reshape(n, h, 2, w, 2, features)
  rows = [jnp.stack([jnp.pad(dy[:, :, a, :, b], ((0, 0), (a, 1 - a), (b, 1 - b), (0, 0)))
                     for b in (0, 1)], axis=3) for a in (0, 1)]
  return (jnp.stack(rows, axis=3),)


interleave_phases.defvjp(_interleave_forward, _interleave_backward)


# --- Dropout masks -----------------------------------------------------------------------------

DROPOUT_BITS = 16


def dropout_keep_mask(key: Array, rate: float, shape: Sequence[int]) -> tuple[Array, float]:
  """A boolean mask of `shape` that keeps each element with probability ~(1 - rate).

  Returns the mask and its exact keep probability, 1 - round(rate * 2**16) / 2**16 (for the
  paper's 0.2: 0.80000305), which the caller divides by so the expected output equals the
  input. One 16-bit uniform number per activation from Philox-4x32-10 written in jnp
  (models/philox.py): drawing the random bits through XLA's generators was ~13% of a U-Net
  step on the CPU, and 16 bits resolve the paper's rates to 1/65536 (docs/performance.md,
  entries 12 and 16: 733 ms -> 690 ms with 16 bits, then the generator's thunks from ~107 ms
  to ~35 ms with Philox). Its plain form is `nn.Dropout`, whose bits differ; so
  tests/test_models.py checks the kept fraction, the scaling, the independence of neighbours
  and flax's semantics, and tests/test_philox.py the generator against Random123's known
  answers.
  """
  size = math.prod(int(dim) for dim in shape)
  threshold = int(round(rate * 2 ** DROPOUT_BITS))
  uniform16 = philox.uniform_uint16(key, size)
  keep = uniform16.reshape(tuple(shape)) >= jnp.uint16(threshold)
  return keep, 1.0 - threshold / 2 ** DROPOUT_BITS


# --- Injection into flax's layers --------------------------------------------------------------
#
# Each rule below computes one flax layer's call with the kernels of this module, from the
# layer's own fields and under its own scope, so it creates the same variables (names, shapes,
# initialisers) as the layer. A rule returns None for a call it does not cover (other settings
# of the layer), which then runs as flax's own.


def _pair(value: int | Sequence[int] | None) -> tuple[int, ...]:
  if value is None:
    return (1, 1)
  return (value, value) if isinstance(value, int) else tuple(value)


def _plain_conv_fields(conv: nn.Conv) -> bool:
  """No masking, precision, custom convolution or input dilation: the settings covered here."""
  return (conv.mask is None and conv.precision is None and conv.conv_general_dilated is None
          and conv.conv_general_dilated_cls is None
          and conv.promote_dtype is nn.dtypes.promote_dtype
          and _pair(conv.input_dilation) == (1, 1))


def _explicit_padding(conv: nn.Conv, x: Array, strides, dilation) -> tuple | None:
  """The convolution's ((top, bottom), (left, right)); lax's 'SAME' is TF's rule."""
  if isinstance(conv.padding, str):
    if conv.padding == "VALID":
      return ((0, 0), (0, 0))
    if conv.padding != "SAME":
      return None
    window = tuple(d * (k - 1) + 1 for k, d in zip(conv.kernel_size, dilation))
    return tuple(lax.padtype_to_pads(x.shape[1:3], window, strides, "SAME"))
  # Explicit ((top, bottom), (left, right)); flax's other forms (ints) are left to flax.
  if (isinstance(conv.padding, int) or len(conv.padding) != 2
      or not all(isinstance(pair, Sequence) and len(pair) == 2 for pair in conv.padding)):
    return None
  return tuple(tuple(pair) for pair in conv.padding)


def _conv_parameters(conv: nn.Conv, x: Array, kernel_shape: tuple[int, ...]):
  """`conv`'s kernel and bias (None without one), promoted with `x` to its compute dtype."""
  kernel = conv.param("kernel", conv.kernel_init, kernel_shape, conv.param_dtype)
  bias = (conv.param("bias", conv.bias_init, (conv.features,), conv.param_dtype)
          if conv.use_bias else None)
  return nn.dtypes.promote_dtype(x, kernel, bias, dtype=conv.dtype)


def _conv_rule(options: KernelOptions, conv: nn.Conv, x: Array, *args, **kwargs) -> Array | None:
  """A 1x1 stride-1 `nn.Conv` and a depthwise one (depth multiplier 1), in NHWC."""
  if (args or kwargs or x.ndim != 4 or isinstance(conv.kernel_size, int)
      or len(conv.kernel_size) != 2 or not _plain_conv_fields(conv)):
    return None
  kernel_size, strides = tuple(conv.kernel_size), _pair(conv.strides)
  dilation, channels = _pair(conv.kernel_dilation), x.shape[-1]
  pads = _explicit_padding(conv, x, strides, dilation)
  if pads is None:
    return None
  if (kernel_size == (1, 1) and strides == (1, 1) and conv.feature_group_count == 1
      and pads == ((0, 0), (0, 0))):
    x, kernel, bias = _conv_parameters(conv, x, (1, 1, channels, conv.features))
    form = (pointwise_conv_matmul_grads if options.pointwise_grads == "matmul"
            else pointwise_conv_plain)
  elif conv.feature_group_count == channels == conv.features > 1:
    x, kernel, bias = _conv_parameters(conv, x, (*kernel_size, 1, channels))
    depthwise = (depthwise_conv_shifted if options.depthwise == "shifted"
                 else depthwise_conv_plain)
    form = lambda x, kernel: depthwise(x, kernel, strides, dilation, pads)  # noqa: E731
  else:
    return None
  y = form(x, kernel)
  return y if bias is None else y + bias


def _upsample_concat_conv_rule(options: KernelOptions, conv: UpsampleConcatConv, low: Array,
                               skip: Array | None = None, upsampled: Array | None = None
                               ) -> Array | None:
  """'subpixel': conv_upsampled(low) + conv(skip), the two halves of the concatenation's conv.

  Its kernel's first C_low input channels act on the upsampled half through the sub-pixel
  kernel `conv_upsampled`, the rest on `skip` directly: the same sum in another order.
  """
  del upsampled  # the sub-pixel form reads the low-resolution input instead
  # skip None: the literal form's own nn.Conv call on the concatenation.
  if (skip is None or options.decoder_conv != "subpixel" or not _plain_conv_fields(conv)
      or tuple(conv.kernel_size) != (3, 3) or conv.padding != "SAME"
      or _pair(conv.strides) != (1, 1) or _pair(conv.kernel_dilation) != (1, 1)
      or conv.feature_group_count != 1):
    return None
  if skip.shape[1:3] != (2 * low.shape[1], 2 * low.shape[2]):
    raise ValueError(f"UpsampleConcatConv: skip {skip.shape} must be twice the size of the "
                     f"low-resolution input {low.shape}")
  skip = skip.astype(low.dtype)
  low_channels = low.shape[-1]
  kernel = conv.param("kernel", conv.kernel_init,
                      (3, 3, low_channels + skip.shape[-1], conv.features), conv.param_dtype)
  bias = (conv.param("bias", conv.bias_init, (conv.features,), conv.param_dtype)
          if conv.use_bias else None)
  low, skip, skip_kernel, bias = nn.dtypes.promote_dtype(
      low, skip, kernel[:, :, low_channels:], bias, dtype=conv.dtype)
  y = conv_upsampled(low, kernel[:, :, :low_channels])
  y = y + conv_nhwc(skip, skip_kernel, "SAME")
  return y if bias is None else y + bias


def _batch_norm_rule(options: KernelOptions, bn: nn.BatchNorm, x: Array,
                     use_running_average: bool | None = None, *,
                     mask: Array | None = None) -> Array | None:
  """`nn.BatchNorm` over the last axis through `batch_stats`, `normalize` and the chosen gradient.

  Float32 statistics with the fast E[x^2] - E[x]^2 variance, averaged over `axis_name`'s
  devices, and flax's running averages, as `nn.BatchNorm` computes them.
  """
  if (mask is not None or bn.axis not in (-1, x.ndim - 1) or not (bn.use_bias and bn.use_scale)
      or bn.axis_index_groups is not None or not bn.use_fast_variance
      or not bn.force_float32_reductions):
    return None
  # Without a dtype flax computes in the promotion of the input and the parameters.
  dtype = jnp.result_type(x.dtype, bn.param_dtype) if bn.dtype is None else bn.dtype
  use_running_average = nn.merge_param("use_running_average", bn.use_running_average,
                                       use_running_average)
  features = (x.shape[-1],)
  ra_mean = bn.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
  ra_var = bn.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
  scale = bn.param("scale", bn.scale_init, features, bn.param_dtype)
  bias = bn.param("bias", bn.bias_init, features, bn.param_dtype)
  x = x.astype(dtype)
  scale, bias = scale.astype(jnp.float32), bias.astype(jnp.float32)
  if use_running_average:
    return normalize(x, ra_mean.value, ra_var.value, scale, bias, bn.epsilon)[0]
  axis_name = None if bn.is_initializing() else bn.axis_name
  train = (batch_norm_train if options.batch_norm_grad == "hand_written"
           else batch_norm_train_plain)
  y, mean, var = train(x, scale, bias, bn.epsilon, axis_name)
  if not bn.is_initializing():
    mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
    ra_mean.value = bn.momentum * ra_mean.value + (1 - bn.momentum) * mean
    ra_var.value = bn.momentum * ra_var.value + (1 - bn.momentum) * var
  return y


def _dropout_rule(options: KernelOptions, dropout: nn.Dropout, x: Array,
                  deterministic: bool | None = None, rng: Array | None = None) -> Array | None:
  """`nn.Dropout` with its mask from `dropout_keep_mask` (Philox), on every backend.

  Not an option: these masks are the same on every backend and XLA version (the runs so far
  trained with them), and flax's generator was the slower one on the CPU (entries 12 and 16).
  Same semantics as `nn.Dropout`: the 'dropout' stream, `deterministic`, kept values scaled so
  the expected output equals the input.
  """
  del options
  if rng is not None or tuple(dropout.broadcast_dims):
    return None
  deterministic = nn.merge_param("deterministic", dropout.deterministic, deterministic)
  if not 0.0 <= dropout.rate <= 1.0:
    raise ValueError(f"dropout rate must be in [0, 1], got {dropout.rate!r}")
  if deterministic or dropout.rate == 0.0:
    return x
  if dropout.rate == 1.0:
    return jnp.zeros_like(x)
  keep, keep_probability = dropout_keep_mask(dropout.make_rng(dropout.rng_collection),
                                             dropout.rate, x.shape)
  return lax.select(keep, x / jnp.asarray(keep_probability, x.dtype), jnp.zeros_like(x))


# By exact class: a subclass of a layer may compute something else (UpsampleConcatConv is an
# nn.Conv whose input differs).
_RULES: dict[type, Callable[..., Array | None]] = {
    nn.Conv: _conv_rule,
    UpsampleConcatConv: _upsample_concat_conv_rule,
    nn.BatchNorm: _batch_norm_rule,
    nn.Dropout: _dropout_rule,
}


def _interceptor(options: KernelOptions, next_fun, args, kwargs, context) -> Any:
  """An `nn.intercept_methods` interceptor: a covered layer call takes its rule's form."""
  rule = _RULES.get(type(context.module)) if context.method_name == "__call__" else None
  y = None if rule is None else rule(options, context.module, *args, **kwargs)
  return next_fun(*args, **kwargs) if y is None else y


def intercept(options: KernelOptions):
  """Context manager: the flax layers called inside compute with `options`' kernels.

  `nn.Conv` (1x1 stride 1; depthwise), `layers.UpsampleConcatConv`, `nn.BatchNorm` and
  `nn.Dropout` compute through this module's forms, `options` choosing between each one's plain
  form and its speed form; their other settings, and every other layer, run as flax's own.
  Variables are unchanged: the same names, shapes and initial values.
  """
  return nn.intercept_methods(functools.partial(_interceptor, options))


@functools.cache
def _attached_class(cls: type) -> type:
  """`cls` with a `kernels` field, computing every call under `intercept(kernels)`."""

  class Attached(cls):
    kernels: KernelOptions = KernelOptions()

    def __call__(self, *args, **kwargs):
      with intercept(self.kernels):
        return super().__call__(*args, **kwargs)

  # The model keeps its class's name and docs (error messages, reprs, isinstance checks).
  Attached.__name__, Attached.__qualname__ = cls.__name__, cls.__qualname__
  Attached.__doc__ = cls.__doc__
  Attached._kernels_base = cls
  return Attached


def attach(model: nn.Module, options: KernelOptions) -> nn.Module:
  """`model` computing with `options`: the same fields and variables, plus a `kernels` field.

  Its class subclasses `model`'s, so `clone` keeps the kernels (`clone(kernels=...)` changes
  them) and isinstance checks hold.
  """
  if hasattr(type(model), "_kernels_base"):
    return model.clone(kernels=options)
  fields = {field.name: getattr(model, field.name) for field in dataclasses.fields(model)
            if field.init and field.name not in ("parent", "name")}
  return _attached_class(type(model))(**fields, kernels=options)


__all__ = [
    "KernelOptions", "attach", "batch_norm_train", "batch_norm_train_plain", "conv_nhwc",
    "conv_upsampled", "conv_upsampled_plain", "depthwise_conv_plain", "depthwise_conv_shifted",
    "dropout_keep_mask", "intercept", "interleave_phases", "interleave_phases_plain",
    "normalize", "phase_kernels", "pointwise_conv_matmul_grads", "pointwise_conv_plain",
    "upsample_nearest",
]
