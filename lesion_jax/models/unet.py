"""The U-Net family of the paper as ONE configurable module: U-Net, AttU-Net, R2U-Net, AttR2U-Net.

Layout (docs/architecture.md; it reproduces every count of the paper's Table 2):
- Four levels with f, 2f, 4f, 8f channels (f = ifC, "initial feature channels"), a 16f
  bottleneck, 2x2 max-pool between levels. 3x3 'same' convs with bias, ReLU.
- Decoder step: nearest x2 upsampling (no parameters) -> concat [upsampled, skip] (the attention
  variants gate the skip first) -> the level's block. A 'conv' block gets the parts and joins
  them in its first convolution (`layers.UpsampleConcatConv`), an R2 block the concatenation.
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

from lesion_jax.models.layers import (BatchNormOptions, UpsampleConcatConv, check_input_size,
                                      max_pool_2x2, upsample_nearest)

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
  def __call__(self, x: Array, train: bool = False, skip: Array | None = None,
               upsampled: Array | None = None) -> Array:
    """`skip` given: x is the decoder's low-resolution input, upsampled and joined to `skip`."""
    conv = dict(features=self.features, kernel_size=(3, 3), padding="SAME",
                use_bias=not self.batch_norm, dtype=self.dtype, param_dtype=jnp.float32,
                name="conv")
    if skip is None:
      x = nn.Conv(**conv)(x)
    else:
      x = UpsampleConcatConv(**conv)(x, skip, upsampled)
    if self.batch_norm:
      momentum = self.bn_options.momentum
      x = nn.BatchNorm(use_running_average=not train,
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
  def __call__(self, x: Array, train: bool = False, skip: Array | None = None,
               upsampled: Array | None = None) -> Array:
    """`skip` given: x is the decoder's low-resolution input, upsampled and joined to `skip`."""
    x = ConvUnit(self.features, self.batch_norm, self.bn_options, self.dtype,
                 name="conv1")(x, train, skip, upsampled)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return ConvUnit(self.features, self.batch_norm, self.bn_options, self.dtype,
                    name="conv2")(x, train)


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
    unit = lambda name: ConvUnit(self.features, self.batch_norm, self.bn_options,  # noqa: E731
                                 self.dtype, name=name)
    if self.share_weights:
      convs = [unit("conv")] * (self.recurrent_t + 1)
    else:
      convs = [unit(f"conv{i + 1}") for i in range(self.recurrent_t + 1)]
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
      x = nn.Conv(self.features, (1, 1), dtype=self.dtype, name="shortcut")(x)
    shortcut = x
    for index in range(self.recurrent_units):
      if index and self.dropout_rate:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = RecurrentUnit(self.features, self.recurrent_t, self.share_weights, self.batch_norm,
                        self.bn_options, self.dtype, name=f"recurrent{index + 1}")(x, train)
    return x + shortcut


class AttentionGate(nn.Module):
  """Additive attention gate (Oktay et al.): scales the skip by a one-channel sigmoid map."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, skip: Array, gate: Array) -> Array:
    inter = max(gate.shape[-1] // 4, 1)
    conv = lambda features, name: nn.Conv(features, (1, 1), dtype=self.dtype,  # noqa: E731
                                          name=name)
    theta = conv(inter, "theta")(skip)
    phi = conv(inter, "phi")(gate)
    psi = nn.sigmoid(conv(1, "psi")(nn.relu(theta + phi)))
    return skip * psi


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

  def __post_init__(self):
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
    for level in reversed(range(LEVELS)):
      block = self._block(self.ifc * 2 ** level, f"decoder{level + 1}")
      low, x = x, upsample_nearest(x)
      skip = skips[level]
      if self.attention:
        skip = AttentionGate(self.dtype, name=f"attention{level + 1}")(skip, x)
      if self.block == "conv":
        # The parts, not their concatenation: the block's first convolution joins them
        # (layers.UpsampleConcatConv), which lets kernels.py skip building it.
        x = block(low, train, skip=skip, upsampled=x)
      else:  # the R2 block reads its input in the shortcut and in every recurrent step
        x = block(jnp.concatenate([x, skip.astype(x.dtype)], axis=-1), train)
    x = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)
