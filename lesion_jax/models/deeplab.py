"""DeepLab head (image pooling / ASPP) and v3+ decoder over any encoder that keeps the contract.

Encoder contract (see lesion_jax/models/encoders/__init__.py): the encoder module has an
`output_stride` attribute, a `feature_channels` property {stride: channels} and
`__call__(x, train) -> {stride: feature}`; the largest stride is the high-level feature. The head
below reads only that, so a new encoder plugs in without changes here.

Layouts follow the TensorFlow DeepLab code:
- MobileNetV2 ("reduced Mobile DeepLab", the default of `deeplab_mobilenetv2`): no atrous
  branches and no decoder: [image pooling, 1x1 256] -> concat -> 1x1 256 projection -> dropout
  0.1 -> 1x1 logits.
- Xception-65 (DeepLabv3+): full ASPP with separable atrous branches and the decoder.
Both parts are options of one module. Head and decoder BN use TF DeepLab's eps 1e-5 and decay
0.9997. Module names mirror the TF scopes (image_pooling, aspp0, aspp{1,2,3}_{depthwise,pointwise},
concat_projection, decoder/feature_projection0, decoder/decoder_conv{0,1}_*, logits) so the
pretrained importer maps names one to one.

Resizing is bilinear with half-pixel centres (jax.image.resize), not TF1's align_corners=True:
with input sizes that are multiples of the output stride this keeps every feature grid aligned
with the input grid.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lesion_jax.models.layers import BatchNormOptions, ConvBN, check_input_size, resize_bilinear

Array = jax.Array

HEAD_BN_EPSILON = 1e-5
HEAD_BN_MOMENTUM = 0.9997
ASPP_CHANNELS = 256
DECODER_PROJECTION_CHANNELS = 48
DECODER_CHANNELS = 256
DEFAULT_ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


class SplitSeparableConv(nn.Module):
  """TF DeepLab's split_separable_conv2d: depthwise -> BN -> ReLU -> 1x1 -> BN -> ReLU.

  The two halves are siblings named `<name>_depthwise` and `<name>_pointwise` in TF; here they
  are the submodules `depthwise` and `pointwise` of one module, and the importer maps them.
  """
  features: int
  dilation: int = 1
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    common = dict(bn_epsilon=HEAD_BN_EPSILON, bn_momentum=HEAD_BN_MOMENTUM,
                  bn_options=self.bn_options, dtype=self.dtype)
    x = ConvBN(x.shape[-1], 3, dilation=self.dilation, depthwise=True, name="depthwise",
               **common)(x, train)
    return ConvBN(self.features, 1, name="pointwise", **common)(x, train)


class DeepLabHead(nn.Module):
  """Image pooling + 1x1 branch (+ optional separable atrous branches), projection, dropout."""
  atrous_rates: Sequence[int] = ()
  dropout_rate: float = 0.1
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    common = dict(bn_epsilon=HEAD_BN_EPSILON, bn_momentum=HEAD_BN_MOMENTUM,
                  bn_options=self.bn_options, dtype=self.dtype)
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = ConvBN(ASPP_CHANNELS, 1, name="image_pooling", **common)(pooled, train)
    # Bilinear upsampling of a 1x1 map is a broadcast.
    branches = [jnp.broadcast_to(pooled, x.shape[:3] + (ASPP_CHANNELS,)),
                ConvBN(ASPP_CHANNELS, 1, name="aspp0", **common)(x, train)]
    for index, rate in enumerate(self.atrous_rates, start=1):
      branches.append(SplitSeparableConv(
          ASPP_CHANNELS, dilation=rate, bn_options=self.bn_options, dtype=self.dtype,
          name=f"aspp{index}")(x, train))
    x = jnp.concatenate(branches, axis=-1)
    x = ConvBN(ASPP_CHANNELS, 1, name="concat_projection", **common)(x, train)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class DeepLabDecoder(nn.Module):
  """DeepLabv3+ decoder: 1x1 48 on the low-level feature, concat, two separable 256 convs."""
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, low_level: Array, train: bool = False) -> Array:
    low_level = ConvBN(DECODER_PROJECTION_CHANNELS, 1, bn_epsilon=HEAD_BN_EPSILON,
                       bn_momentum=HEAD_BN_MOMENTUM, bn_options=self.bn_options,
                       dtype=self.dtype, name="feature_projection0")(low_level, train)
    x = resize_bilinear(x, *low_level.shape[1:3])
    # TF order: [head output, projected low-level feature].
    x = jnp.concatenate([x, low_level.astype(x.dtype)], axis=-1)
    for index in range(2):
      x = SplitSeparableConv(
          DECODER_CHANNELS, bn_options=self.bn_options, dtype=self.dtype,
          name=f"decoder_conv{index}")(x, train)
    return x


class DeepLab(nn.Module):
  """DeepLab(v3/v3+) over an encoder module; returns float32 logits (B, H, W, num_classes).

  Attributes:
    encoder: a module keeping the encoder contract (module docstring).
    aspp: build the three separable atrous branches.
    atrous_rates: their rates; None takes TF DeepLab's (6, 12, 18) at output stride 16 and
      (12, 24, 36) at 8.
    decoder: build the v3+ decoder on the stride-`low_level_stride` feature.
    low_level_stride: stride of the decoder's low-level feature.
    num_classes: logits channels (1: sigmoid lesion mask).
    dropout_rate: after the projection (TF: keep_prob 0.9).
    upsample_logits: resize the logits bilinearly to the input size (training, evaluation).
      False returns them at the encoder's output stride, for an exporter that resizes with the
      runtime's own op (TFLite RESIZE_BILINEAR instead of two constant interpolation matrices).
    dtype: compute dtype (params stay float32; logits are returned as float32).
  """
  encoder: nn.Module
  aspp: bool = False
  atrous_rates: Sequence[int] | None = None
  decoder: bool = False
  low_level_stride: int = 4
  num_classes: int = 1
  dropout_rate: float = 0.1
  upsample_logits: bool = True
  bn_options: BatchNormOptions = BatchNormOptions()
  dtype: Any = jnp.float32

  def __post_init__(self):
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
    if self.decoder and self.low_level_stride not in self.encoder.feature_channels:
      raise ValueError(
          f"the decoder needs a stride-{self.low_level_stride} feature but "
          f"{type(self.encoder).__name__} provides strides {sorted(self.encoder.feature_channels)}")
    super().__post_init__()

  @property
  def input_divisor(self) -> int:
    """The encoder's total stride: height and width must be multiples of it."""
    return self.encoder.output_stride

  @property
  def resolved_atrous_rates(self) -> tuple[int, ...]:
    if not self.aspp:
      return ()
    if self.atrous_rates is not None:
      return tuple(self.atrous_rates)
    return DEFAULT_ATROUS_RATES[self.encoder.output_stride]

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    if x.ndim != 4:
      raise ValueError(f"{type(self).__name__} expects NHWC input, got shape {x.shape}")
    check_input_size(self, x.shape[1], x.shape[2])
    height, width = x.shape[1:3]
    features = self.encoder(x, train)
    high_level = features[max(features)]
    y = DeepLabHead(self.resolved_atrous_rates, dropout_rate=self.dropout_rate,
                    bn_options=self.bn_options, dtype=self.dtype, name="head")(high_level, train)
    if self.decoder:
      y = DeepLabDecoder(bn_options=self.bn_options, dtype=self.dtype,
                         name="decoder")(y, features[self.low_level_stride], train)
    y = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="logits")(y)
    y = y.astype(jnp.float32)
    return resize_bilinear(y, height, width) if self.upsample_logits else y
