"""Model registry: every architecture of the paper as a named, configurable flax.linen setting.

    model = create_model("deeplab_mobilenetv2", alpha=0.35, output_stride=16)
    variables = model.init(jax.random.key(0), x)             # x: (B, H, W, 3) float32, NHWC
    logits = model.apply(variables, x)                         # (B, H, W, 1) float32
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": key})

Every model has `__call__(x, train=False)`, an `input_divisor` (H and W must be multiples of it)
and a `dtype` (compute dtype; parameters stay float32). Variables are `params` and, where BN is
used, `batch_stats`; dropout draws from the rng stream 'dropout'. The architectures are plain
Flax. The speed kernels a model computes with are chosen in one place, `_choose_kernels`
(models/kernels.py's choice for JAX's backend, with the factory's overrides), and each factory
attaches them to the model it builds (`kernels.attach`: the model's `kernels` field). A module
class built directly computes as flax does.

Registered settings (defaults are the paper's best settings, Table 2):
  unet (ifc 32), att_unet (ifc 64), r2_unet (ifc 16), att_r2_unet (ifc 64),
  deeplabv3plus_xception65 (OS 16), deeplab_mobilenetv2 (alpha 1.0, OS 16; paper: alpha 0.35).
`python -m lesion_jax.models` prints every setting with its parameter count.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lesion_jax.models import kernels as kernels_lib
from lesion_jax.models.deeplab import DeepLab
from lesion_jax.models.encoders import MobileNetV2Encoder, Xception65Encoder
from lesion_jax.models.encoders.mobilenet_v2 import validate_alpha, validate_output_stride
from lesion_jax.models.kernels import KernelOptions
from lesion_jax.models.layers import BatchNormOptions, check_input_size
from lesion_jax.models.unet import IFC_CHOICES, UNet
from lesion_jax.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
# The factories' overrides of the backend's kernels ('auto' keeps the backend's choice).
DEPTHWISE_IMPLEMENTATIONS = ("auto", "shifted", "xla")
DECODER_CONVS = ("auto", "subpixel", "concat")

# XLA's CPU backend hands convolutions, dots and reductions to the YNNPACK library by default,
# and runs what YNNPACK does not take through its own Eigen-based kernels. Which is faster depends
# on the architecture (docs/performance.md, entry 6, 2-core CPU, 256x256, batch 4, train step):
# YNNPACK runs the weight gradient of a dense 3x3 convolution on one thread (a U-Net ifC 16 step
# took ~1.1 s with it, ~0.8 s without), while MobileNetV2's 1x1 convolutions and reductions are
# 2.5x faster with it (reduced Mobile DeepLab: ~0.24 s with, ~0.59 s without). `config.cpu_ynnpack`
# overrides the architecture's preference.
CPU_YNNPACK_CHOICES = ("auto", "on", "off")
CPU_YNNPACK_PREFERENCE: dict[type, str] = {UNet: "off", DeepLab: "on"}


def _compute_dtype(dtype: Any) -> Any:
  try:
    name = jnp.dtype(dtype).name
  except TypeError as error:
    raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}") from error
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {dtype!r}")
  return jnp.dtype(name)


def xla_compiler_options(model: Any, cpu_ynnpack: str = "auto",
                         platform: str | None = None) -> dict[str, str]:
  """XLA options to compile `model`'s steps with on `platform` (default: JAX's backend).

  Empty except on the CPU with YNNPACK off (the architecture's preference under 'auto').
  """
  if cpu_ynnpack not in CPU_YNNPACK_CHOICES:
    raise ValueError(f"cpu_ynnpack must be one of {CPU_YNNPACK_CHOICES}, got {cpu_ynnpack!r}")
  if (platform or jax.default_backend()) != "cpu":
    return {}
  # An architecture without a stated preference keeps XLA's default (YNNPACK on).
  preference = next((choice for module, choice in CPU_YNNPACK_PREFERENCE.items()
                     if isinstance(model, module)), "on")
  choice = preference if cpu_ynnpack == "auto" else cpu_ynnpack
  # An empty list of library fusion types: XLA emits every op itself.
  return {"xla_cpu_experimental_ynn_fusion_type": ""} if choice == "off" else {}


def _choose_kernels(kernels: KernelOptions | None, depthwise_implementation: str = "auto",
                    decoder_conv: str = "auto") -> KernelOptions:
  """The kernels a model computes with: `kernels`, by default the forms measured faster on JAX's
  backend (`KernelOptions.for_backend`), with a factory's overrides other than 'auto'."""
  if depthwise_implementation not in DEPTHWISE_IMPLEMENTATIONS:
    raise ValueError(f"depthwise_implementation must be one of {DEPTHWISE_IMPLEMENTATIONS}, "
                     f"got {depthwise_implementation!r}")
  if decoder_conv not in DECODER_CONVS:
    raise ValueError(f"UNet decoder_conv must be one of {DECODER_CONVS}, got {decoder_conv!r}")
  if kernels is None:
    kernels = KernelOptions.for_backend(jax.default_backend())
  if depthwise_implementation != "auto":
    kernels = dataclasses.replace(kernels, depthwise=depthwise_implementation)
  if decoder_conv != "auto":
    kernels = dataclasses.replace(kernels, decoder_conv=decoder_conv)
  return kernels


def _check_ifc(name: str, ifc: int) -> None:
  if ifc not in IFC_CHOICES:
    raise ValueError(f"{name}: ifc (initial feature channels) must be one of {IFC_CHOICES} "
                     f"(the paper's settings), got {ifc!r}")


def _register_unet(name: str, *, attention: bool, block: str, default_ifc: int,
                   default_dropout: float) -> None:
  def factory(ifc: int = default_ifc, dropout_rate: float = default_dropout,
              batch_norm: bool = False, recurrent_units: int = 2, recurrent_t: int = 2,
              share_recurrent_weights: bool = False, num_classes: int = 1,
              bn_momentum: float | None = None, bn_axis_name: str | None = None,
              decoder_conv: str = "auto", dtype: Any = jnp.float32,
              kernels: KernelOptions | None = None) -> UNet:
    _check_ifc(name, ifc)
    unet = UNet(ifc=ifc, block=block, attention=attention, dropout_rate=dropout_rate,
                batch_norm=batch_norm, recurrent_units=recurrent_units, recurrent_t=recurrent_t,
                share_recurrent_weights=share_recurrent_weights, num_classes=num_classes,
                bn_options=BatchNormOptions(bn_momentum, bn_axis_name),
                dtype=_compute_dtype(dtype))
    return kernels_lib.attach(unet, _choose_kernels(kernels, decoder_conv=decoder_conv))
  factory.__name__ = name
  factory.__doc__ = (f"{name}: UNet(block={block!r}, attention={attention}); default ifc "
                     f"{default_ifc}, dropout {default_dropout}. `kernels` defaults to the "
                     "backend's; `decoder_conv` other than 'auto' overrides its `decoder_conv`.")
  MODELS.add(name, factory)


_register_unet("unet", attention=False, block="conv", default_ifc=32, default_dropout=0.2)
_register_unet("att_unet", attention=True, block="conv", default_ifc=64, default_dropout=0.2)
_register_unet("r2_unet", attention=False, block="recurrent_residual", default_ifc=16,
               default_dropout=0.0)
_register_unet("att_r2_unet", attention=True, block="recurrent_residual", default_ifc=64,
               default_dropout=0.0)


@MODELS.register("deeplab_mobilenetv2")
def deeplab_mobilenetv2(alpha: float = 1.0, output_stride: int = 16, aspp: bool = False,
                        decoder: bool = False, num_classes: int = 1, dropout_rate: float = 0.1,
                        depthwise_implementation: str = "auto",
                        bn_momentum: float | None = None, bn_axis_name: str | None = None,
                        dtype: Any = jnp.float32,
                        kernels: KernelOptions | None = None) -> DeepLab:
  """DeepLab with a Keras-layout MobileNetV2 encoder; TF DeepLab's MobileNetV2 head by default.

  The paper's "reduced Mobile DeepLab" is alpha=0.35, output_stride=16 (0.44M parameters).
  `aspp` adds separable atrous branches (rates by output stride), `decoder` the v3+ decoder.
  `kernels` defaults to the backend's; `depthwise_implementation` other than 'auto' overrides
  its `depthwise`.
  """
  validate_alpha(alpha)
  validate_output_stride(output_stride, "deeplab_mobilenetv2")
  kernels = _choose_kernels(kernels, depthwise_implementation=depthwise_implementation)
  dtype = _compute_dtype(dtype)
  bn_options = BatchNormOptions(bn_momentum, bn_axis_name)
  encoder = MobileNetV2Encoder(alpha=alpha, output_stride=output_stride, bn_options=bn_options,
                               dtype=dtype)
  return kernels_lib.attach(
      DeepLab(encoder, aspp=aspp, decoder=decoder, num_classes=num_classes,
              dropout_rate=dropout_rate, bn_options=bn_options, dtype=dtype), kernels)


@MODELS.register("deeplabv3plus_xception65")
def deeplabv3plus_xception65(output_stride: int = 16, num_classes: int = 1,
                             dropout_rate: float = 0.1, middle_flow_units: int = 16,
                             depthwise_implementation: str = "auto",
                             bn_momentum: float | None = None, bn_axis_name: str | None = None,
                             dtype: Any = jnp.float32,
                             kernels: KernelOptions | None = None) -> DeepLab:
  """DeepLabv3+ with the modified aligned Xception-65 encoder, ASPP and decoder (41.05M).

  `middle_flow_units` is 16 in Xception-65; smaller values only serve smoke tests.
  `kernels` defaults to the backend's; `depthwise_implementation` other than 'auto' overrides
  its `depthwise`.
  """
  validate_output_stride(output_stride, "deeplabv3plus_xception65")
  kernels = _choose_kernels(kernels, depthwise_implementation=depthwise_implementation)
  dtype = _compute_dtype(dtype)
  bn_options = BatchNormOptions(bn_momentum, bn_axis_name)
  encoder = Xception65Encoder(output_stride=output_stride, middle_flow_units=middle_flow_units,
                              bn_options=bn_options, dtype=dtype)
  return kernels_lib.attach(
      DeepLab(encoder, aspp=True, decoder=True, num_classes=num_classes,
              dropout_rate=dropout_rate, bn_options=bn_options, dtype=dtype), kernels)


def model_names() -> list[str]:
  """Registered model names, sorted."""
  return MODELS.names()


def create_model(name: str, **kwargs: Any) -> nn.Module:
  """The model registered as `name`, configured by `kwargs`.

  The model computes with the speed kernels measured faster on JAX's backend
  (`KernelOptions.for_backend`), held in its `kernels` field; `kernels=KernelOptions()` asks
  for the plain forms, `model.clone(kernels=...)` changes them.

  Raises:
    UnknownNameError (a KeyError) listing the valid names for an unknown `name`; TypeError
    listing the accepted options for an unknown keyword; ValueError for a bad value.
  """
  factory = MODELS.get(name, where="create_model")
  signature = inspect.signature(factory)
  unknown = sorted(set(kwargs) - set(signature.parameters))
  if unknown:
    raise TypeError(f"model {name!r} got unknown option(s) {unknown}; it accepts "
                    f"{list(signature.parameters)}")
  return factory(**kwargs)


def variables_input_side(model: nn.Module) -> int | None:
  """The side of the square input a registry model's variables are traced at: 2 x its
  `input_divisor` (its variables do not depend on the input size). None for a module without
  an `input_divisor`."""
  divisor = getattr(model, "input_divisor", None)
  return 2 * divisor if divisor else None


@functools.lru_cache(maxsize=32)  # tracing a model to count it takes ~1 s; runs ask repeatedly
def count_params(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> int:
  """Number of scalars in the `params` collection, from shapes only (`jax.eval_shape`).

  `input_shape` defaults to (1, d, d, 3) with d = 2 * model.input_divisor; parameter counts do
  not depend on the spatial size.
  """
  if input_shape is None:
    side = variables_input_side(model) or 32
    input_shape = (1, side, side, 3)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  shapes = jax.eval_shape(lambda inputs: model.init(jax.random.key(0), inputs), x)
  return int(sum(np.prod(leaf.shape, dtype=np.int64)
                 for leaf in jax.tree_util.tree_leaves(shapes.get("params", {}))))


def config_kwargs(config: Any) -> tuple[dict, list[str]]:
  """The config.model entries (an ml_collections ConfigDict) the named model accepts, and the
  names of those it ignores (a U-Net has no `alpha`)."""
  accepted = inspect.signature(MODELS.get(config.model.name, where="config.model.name")).parameters
  takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
  kwargs, ignored = {}, []
  for key, value in config.model.items():
    if key in ("name", "init_from") or value is None:
      continue
    if takes_any or key in accepted:
      kwargs[key] = value
    else:
      ignored.append(key)
  if "dtype" in kwargs:
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  return kwargs, ignored


def from_config(config: Any, **extra: Any) -> nn.Module:
  """The model config.model describes; `extra` options apply where the model takes them."""
  kwargs, _ = config_kwargs(config)
  accepted = inspect.signature(MODELS.get(config.model.name, where="config.model.name")).parameters
  kwargs.update({k: v for k, v in extra.items() if k in accepted})
  return create_model(config.model.name, **kwargs)


__all__ = [
    "CPU_YNNPACK_CHOICES", "MODELS", "DeepLab", "KernelOptions",
    "MobileNetV2Encoder", "UNet", "Xception65Encoder",
    "check_input_size", "config_kwargs", "count_params", "create_model", "deeplab_mobilenetv2",
    "from_config",
    "deeplabv3plus_xception65", "model_names", "variables_input_side", "xla_compiler_options",
]
