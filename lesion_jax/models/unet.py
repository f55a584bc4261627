"""The U-Net family of the paper as ONE configurable module: U-Net, AttU-Net, R2U-Net, AttR2U-Net.

Layout (docs/architecture.md; it reproduces every count of the paper's Table 2):
- Four levels with f, 2f, 4f, 8f channels (f = ifC, "initial feature channels"), a 16f
  bottleneck, 2x2 max-pool between levels. 3x3 'same' convs with bias, ReLU.
- Decoder step: nearest x2 upsampling (no parameters) -> concat [upsampled, skip] (the attention
  variants gate the skip first) -> the level's block.
- Head: 1x1 conv to `num_classes` logits.
- `block='conv'` (U-Net, AttU-Net): conv -> Dropout -> conv.
- `block='recurrent_residual'` (R2U-Net, AttR2U-Net): a 1x1 conv shortcut (when the channel
  count changes), then `recurrent_units` recurrent units; a unit with recurrent_t=t is
  x1 = conv(x); then t times x1 = conv(x1 + x), every conv with its own weights unless
  `share_recurrent_weights` (some PyTorch ports share one conv per unit, which gives ~2.4x fewer
  parameters than the paper). Output = last unit + shortcut.
- Attention gate on the skip: with g the upsampled tensor and inter = channels(g) // 4,
  psi = sigmoid(1x1(relu(1x1(skip) + 1x1(g)))) with one output channel; skip * psi.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lesion_jax.models.layers import (BatchNorm, BatchNormOptions, Dropout, PointwiseConv,
                                      check_input_size, conv_nhwc, max_pool_2x2)

Array = jax.Array

IFC_CHOICES = (16, 32, 64)
BLOCKS = ("conv", "recurrent_residual")
LEVELS = 4


class ConvUnit(nn.Module):
  """3x3 'same' conv -> (optional BN) -> ReLU. With BN the conv has no bias (BN's offset is one)."""
  features: int
  batch_norm: bool = False
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, skip: Array | None = None) -> Array:
    if skip is None:
      x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=not self.batch_norm,
                  dtype=self.dtype, param_dtype=jnp.float32, name="conv")(x)
    else:
      x = UpsampleConcatConv(self.features, use_bias=not self.batch_norm, dtype=self.dtype,
                             name="conv")(x, skip)
    if self.batch_norm:
      momentum = self.bn_options.momentum
      x = BatchNorm(use_running_average=not train,
                    momentum=0.99 if momentum is None else momentum,
                    axis_name=self.bn_options.axis_name, dtype=self.dtype,
                    param_dtype=jnp.float32, name="bn")(x)
    return nn.relu(x)


class ConvBlock(nn.Module):
  """U-Net / AttU-Net block: conv -> Dropout -> conv."""
  features: int
  dropout_rate: float = 0.2
  batch_norm: bool = False
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False, skip: Array | None = None) -> Array:
    """`skip` given: x is the decoder's low-resolution input, upsampled and joined to `skip`."""
    x = ConvUnit(self.features, self.batch_norm, self.bn_options, self.dtype,
                 name="conv1")(x, train, skip)
    x = Dropout(self.dropout_rate, deterministic=not train)(x)
    return ConvUnit(self.features, self.batch_norm, self.bn_options, self.dtype, name="conv2")(x, train)


class RecurrentUnit(nn.Module):
  """x1 = conv(x); t times: x1 = conv(x1 + x)."""
  features: int
  recurrent_t: int = 2
  share_weights: bool = False
  batch_norm: bool = False
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if self.share_weights:
      shared = ConvUnit(self.features, self.batch_norm, self.bn_options, self.dtype, name="conv")
      convs = [shared] * (self.recurrent_t + 1)
    else:
      convs = [ConvUnit(self.features, self.batch_norm, self.bn_options, self.dtype, name=f"conv{i + 1}")
               for i in range(self.recurrent_t + 1)]
    x1 = convs[0](x, train)
    for conv in convs[1:]:
      x1 = conv(x1 + x, train)
    return x1


class RecurrentResidualBlock(nn.Module):
  """R2 block: 1x1 shortcut when channels change, recurrent units, residual sum.

  Dropout (off by default for R2 settings) is applied between recurrent units when asked for.
  """
  features: int
  recurrent_units: int = 2
  recurrent_t: int = 2
  share_weights: bool = False
  dropout_rate: float = 0.0
  batch_norm: bool = False
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if x.shape[-1] != self.features:
      x = PointwiseConv(self.features, dtype=self.dtype, name="shortcut")(x)
    shortcut = x
    for index in range(self.recurrent_units):
      if index and self.dropout_rate:
        x = Dropout(self.dropout_rate, deterministic=not train)(x)
      x = RecurrentUnit(self.features, self.recurrent_t, self.share_weights, self.batch_norm,
                        self.bn_options, self.dtype, name=f"recurrent{index + 1}")(x, train)
    return x + shortcut


class AttentionGate(nn.Module):
  """Additive attention gate (Oktay et al.): scales the skip by a one-channel sigmoid map."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, skip: Array, gate: Array) -> Array:
    inter = max(gate.shape[-1] // 4, 1)
    conv = lambda features, name: PointwiseConv(features, dtype=self.dtype,  # noqa: E731
                                                name=name)
    theta = conv(inter, "theta")(skip)
    phi = conv(inter, "phi")(gate)
    psi = nn.sigmoid(conv(1, "psi")(nn.relu(theta + phi)))
    return skip * psi


def upsample_nearest(x: Array) -> Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# Sub-pixel form of a 3x3 'same' convolution applied to a nearest-upsampled input. Output row 2i
# sees upsampled rows 2i-1, 2i, 2i+1, i.e. low-resolution rows i-1, i, i; output row 2i+1 sees
# rows i, i, i+1. So each output phase (a, b) in {0, 1}^2 is a 2x2 convolution of the
# low-resolution input whose taps are sums of the 3x3 taps; PHASE_TAPS[a][r] lists the 3x3 rows
# (or columns) that tap r of phase a adds up.
PHASE_TAPS = (((0,), (1, 2)), ((0, 1), (2,)))
DECODER_CONVS = ("auto", "subpixel", "concat")


def resolve_decoder_conv(choice: str) -> str:
  """'auto' -> 'subpixel' on the CPU, where it was measured faster, 'concat' elsewhere.

  On a GPU the plain form is kept until the sub-pixel form is measured there.
  """
  if choice not in DECODER_CONVS:
    raise ValueError(f"decoder_conv must be one of {DECODER_CONVS}, got {choice!r}")
  if choice == "auto":
    return "subpixel" if jax.default_backend() == "cpu" else "concat"
  return choice


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
  """conv3x3_same(upsample_nearest(low), kernel) with 2.25x fewer multiply-adds.

  One 2x2 'VALID' convolution of the once-padded low-resolution input computes all four
  phases as 4F output channels; phase (a, b) is its window starting at row a, column b, and the
  phases interleave into the 2H x 2W output.
  """
  n, h, w, _ = low.shape
  features = kernel.shape[3]
  padded = jnp.pad(low, ((0, 0), (1, 1), (1, 1), (0, 0)))
  # The taps are summed in the kernel's own precision (float32 parameters) before the cast to
  # the compute dtype, so bfloat16 compute rounds each phase kernel once.
  z = conv_nhwc(padded, phase_kernels(kernel).astype(low.dtype))
  return interleave_phases(z.reshape(n, h + 1, w + 1, 2, 2, features))


@jax.custom_vjp
def interleave_phases(z: Array) -> Array:
  """(N, H+1, W+1, 2, 2, F) phase outputs -> (N, 2H, 2W, F); phase (a, b) starts at (a, b)."""
  n, h, w, _, _, features = z.shape
  h, w = h - 1, w - 1
  rows = [jnp.stack([z[:, a:a + h, b:b + w, a, b] for b in (0, 1)], axis=3) for a in (0, 1)]
  return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, features)


def _interleave_forward(z: Array) -> tuple[Array, None]:
  return interleave_phases(z), None


def _interleave_backward(_, dy: Array) -> tuple[Array]:
  # Autodiff would pad every phase's cotangent to the whole (..., 2, 2, F) array and add the
  # four; writing each phase into its own slot is one fusion and a quarter of the traffic.
  n, h2, w2, features = dy.shape
  h, w = h2 // 2, w2 // 2
  dy = dy.reshape(n, h, 2, w, 2, features)
  rows = [jnp.stack([jnp.pad(dy[:, :, a, :, b], ((0, 0), (a, 1 - a), (b, 1 - b), (0, 0)))
                     for b in (0, 1)], axis=3) for a in (0, 1)]
  return (jnp.stack(rows, axis=3),)


interleave_phases.defvjp(_interleave_forward, _interleave_backward)


class UpsampleConcatConv(nn.Module):
  """conv3x3_same(concat([upsample_nearest(low), skip])) without building the concatenation.

  Holds the same `kernel` (3, 3, C_low + C_skip, F) and `bias` as the `nn.Conv` it replaces,
  initialised alike, so checkpoints and parameter counts are unchanged. The kernel's first C_low
  input channels act on the upsampled half through `conv_upsampled`, the rest on `skip`
  directly: the same sum in another order (tests/test_models.py checks it against the plain
  form). On the CPU this removes the largest tensors of the decoder's backward pass
  (docs/performance.md, entry 13).
  """
  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, low: Array, skip: Array) -> Array:
    if skip.shape[1:3] != (2 * low.shape[1], 2 * low.shape[2]):
      raise ValueError(f"UpsampleConcatConv: skip {skip.shape} must be twice the size of the "
                       f"low-resolution input {low.shape}")
    low_channels = low.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (3, 3, low_channels + skip.shape[-1], self.features), jnp.float32)
    bias = (self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
            if self.use_bias else None)
    low, skip, skip_kernel, bias = nn.dtypes.promote_dtype(
        low, skip, kernel[:, :, low_channels:], bias, dtype=self.dtype)
    y = conv_upsampled(low, kernel[:, :, :low_channels])
    y = y + conv_nhwc(skip, skip_kernel, "SAME")
    return y if bias is None else y + bias


class UNet(nn.Module):
  """One configurable U-Net; the registered settings pick `block` and `attention`.

  Attributes:
    ifc: initial feature channels f. The registry allows the paper's 16/32/64; the class takes
      any positive int so tests and smoke runs can build narrow models.
    block: 'conv' (U-Net, AttU-Net) or 'recurrent_residual' (R2U-Net, AttR2U-Net).
    attention: gate the skips (AttU-Net, AttR2U-Net).
    dropout_rate: dropout inside each block (0.2 in the paper's U-Net / AttU-Net).
    batch_norm: BN after every 3x3 conv (off in the paper).
    recurrent_units, recurrent_t: R2 block shape (2 units of t+1 = 3 convs).
    share_recurrent_weights: one conv per recurrent unit instead of t+1.
    num_classes: logit channels.
    bn_options: BatchNorm momentum / pmap axis overrides (used when batch_norm is on).
    dtype: compute dtype (params float32, logits returned as float32).
    decoder_conv: how a 'conv' block computes its first convolution of concat([upsampled,
      skip]): 'concat' literally, 'subpixel' through `UpsampleConcatConv` (same parameters and
      numbers, fewer operations), 'auto' by backend (`resolve_decoder_conv`). The R2 blocks
      always use the literal form.
  """
  ifc: int = 32
  block: str = "conv"
  attention: bool = False
  dropout_rate: float = 0.2
  batch_norm: bool = False
  recurrent_units: int = 2
  recurrent_t: int = 2
  share_recurrent_weights: bool = False
  num_classes: int = 1
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32
  decoder_conv: str = "auto"

  def __post_init__(self):
    if self.decoder_conv not in DECODER_CONVS:
      raise ValueError(f"UNet decoder_conv must be one of {DECODER_CONVS}, got "
                       f"{self.decoder_conv!r}")
    if not isinstance(self.ifc, int) or isinstance(self.ifc, bool) or self.ifc < 1:
      raise ValueError(f"UNet ifc must be a positive int, got {self.ifc!r}")
    if self.block not in BLOCKS:
      raise ValueError(f"UNet block must be one of {BLOCKS}, got {self.block!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"UNet dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
    if self.recurrent_units < 1 or self.recurrent_t < 0:
      raise ValueError(f"UNet needs recurrent_units >= 1 and recurrent_t >= 0, got "
                       f"{self.recurrent_units} and {self.recurrent_t}")
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
    super().__post_init__()

  # Dense 3x3 convolutions train faster through XLA's own CPU kernels than through YNNPACK
  # (layers.xla_compiler_options).
  cpu_ynnpack = "off"

  @property
  def input_divisor(self) -> int:
    """Four 2x2 poolings: height and width must be multiples of 16."""
    return 2 ** LEVELS

  def _block(self, features: int, name: str) -> nn.Module:
    if self.block == "conv":
      return ConvBlock(features, self.dropout_rate, self.batch_norm, self.bn_options, self.dtype,
                       name=name)
    return RecurrentResidualBlock(features, self.recurrent_units, self.recurrent_t,
                                  self.share_recurrent_weights, self.dropout_rate,
                                  self.batch_norm, self.bn_options, self.dtype, name=name)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if x.ndim != 4:
      raise ValueError(f"UNet expects NHWC input, got shape {x.shape}")
    check_input_size(self, x.shape[1], x.shape[2])
    skips = []
    for level in range(LEVELS):
      x = self._block(self.ifc * 2 ** level, f"encoder{level + 1}")(x, train)
      skips.append(x)
      x = max_pool_2x2(x)
    x = self._block(self.ifc * 2 ** LEVELS, "bottleneck")(x, train)
    subpixel = self.block == "conv" and resolve_decoder_conv(self.decoder_conv) == "subpixel"
    for level in reversed(range(LEVELS)):
      block = self._block(self.ifc * 2 ** level, f"decoder{level + 1}")
      low, x = x, upsample_nearest(x)
      skip = skips[level]
      if self.attention:
        skip = AttentionGate(self.dtype, name=f"attention{level + 1}")(skip, x)
      if subpixel:  # the same block, without materialising the upsampled concatenation
        x = block(low, train, skip=skip.astype(low.dtype))
      else:
        x = block(jnp.concatenate([x, skip.astype(x.dtype)], axis=-1), train)
    x = PointwiseConv(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)
