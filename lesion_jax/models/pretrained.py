"""Pretrained weights: Keras ImageNet MobileNetV2 (.h5) and TF DeepLab model-zoo TF1 checkpoints.

    variables = model.init(key, x)
    variables, report = load_deeplab_checkpoint(
        variables, "deeplabv3_mnv2_pascal_train_aug/model.ckpt-30000")
    variables, report = load_keras_mobilenet_v2(
        variables, keras_mobilenet_v2_filename(alpha=0.35))  # a file in ~/.keras/models

Both loaders are pure: they take the Flax variables ({'params', 'batch_stats'}) and return new
ones plus a `LoadReport`. Names are mapped one to one (our module names mirror the Keras layer
names and the TF scopes); depthwise kernels go from TF's (kh, kw, C, 1) to (kh, kw, 1, C); BN
gamma/beta go to `params` (scale/bias) and moving mean/variance to `batch_stats` (mean/var).

Loading fails loudly (big_vision style) and lists the names: a Flax variable with no source, a
shape mismatch, or a source variable that nothing used. Exceptions: optimizer slots and
`global_step` are ignored; the TF logits are skipped when their class count differs from the
model's (21 Pascal VOC, 19 Cityscapes, 1 here); Keras's final 1280-channel conv (`Conv_1`,
`Conv_1_bn`) is skipped because DeepLab does not build it; `dont_load` regexes keep the
initial values of matching Flax variables (e.g. an ASPP the checkpoint does not have).

tensorflow (TF1 checkpoints) and h5py (Keras files) are imported only when a file is read, so
they stay an optional extra (`pretrained`); the mapping itself needs neither, and either loader
also accepts an in-memory {name: array} mapping.

Keras publishes ImageNet weights for alpha in KERAS_ALPHAS at 96..224 rows
(`keras_mobilenet_v2_filename`). Caveat: TF-slim's MobileNetV2 does not round widths to
multiples of 8 when the depth multiplier is not 1.0, so a zoo `dm05` checkpoint does not fit the
Keras alpha=0.5 layout; the shape check reports that.
"""
from __future__ import annotations

import dataclasses
import importlib
import re
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import flax
import jax.numpy as jnp
import numpy as np

KERAS_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
KERAS_ROWS = (96, 128, 160, 192, 224)
# TF optimizer slot variables and bookkeeping that carry no model weights.
IGNORED_SOURCE = re.compile(
    r"(^global_step$|/(Momentum|Adam|Adam_1|RMSProp|RMSProp_1|ExponentialMovingAverage)$"
    r"|^beta[12]_power)")
KERAS_UNBUILT_LAYERS = ("Conv_1", "Conv_1_bn")  # MobileNetV2's 1280-channel conv
TF_LOGITS = ("logits/semantic/weights", "logits/semantic/biases")

_BN_TF = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}


@dataclasses.dataclass
class LoadReport:
  """What a loader did: Flax names filled, kept at init, and source names not used."""
  loaded: list[str] = dataclasses.field(default_factory=list)
  kept_init: list[str] = dataclasses.field(default_factory=list)
  skipped_source: list[str] = dataclasses.field(default_factory=list)
  ignored_source: list[str] = dataclasses.field(default_factory=list)

  def __str__(self) -> str:
    return (f"loaded {len(self.loaded)} variables; kept {len(self.kept_init)} at init "
            f"{self.kept_init}; skipped {self.skipped_source}; ignored "
            f"{len(self.ignored_source)} optimizer/bookkeeping variables")


class PretrainedMismatchError(ValueError):
  """Raised when names or shapes of a pretrained source do not fit the model."""


def _optional_import(module: str, extra_hint: str) -> Any:
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise ImportError(f"reading {extra_hint} needs the optional package {module!r}: "
                      f"pip install 'lesion_jax[pretrained]'") from error


# --------------------------------------------------------------------------- readers


class _LazyArrays(Mapping[str, np.ndarray]):
  """A read-on-access mapping, so unused variables (optimizer slots) are never loaded."""

  def __init__(self, shapes: Mapping[str, tuple[int, ...]], read: Callable[[str], Any]):
    self.shapes = dict(shapes)
    self._read = read

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self.shapes:
      raise KeyError(name)
    return np.asarray(self._read(name))

  def __iter__(self) -> Iterator[str]:
    return iter(self.shapes)

  def __len__(self) -> int:
    return len(self.shapes)


def read_tf1_checkpoint(prefix: str) -> Mapping[str, np.ndarray]:
  """Variables of a TF1 checkpoint (`model.ckpt-N`, i.e. the prefix of .index/.data-*)."""
  tf = _optional_import("tensorflow", "TF1 checkpoints")
  reader = tf.train.load_checkpoint(prefix)
  shapes = {name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
  return _LazyArrays(shapes, reader.get_tensor)


def read_keras_h5(path: str) -> dict[str, np.ndarray]:
  """Weights of a Keras legacy-H5 file as {'<layer>/<weight>': array}.

  Handles the published weights-only files (Keras 2 names like 'Conv1/kernel:0') and full models
  saved by `model.save('x.h5')` (a 'model_weights' group; Keras 3 names like 'Conv1/kernel').
  """
  h5py = _optional_import("h5py", "Keras .h5 files")

  def names(group: Any, attribute: str) -> list[str]:
    values = group.attrs.get(attribute, [])
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]

  arrays = {}
  with h5py.File(path, "r") as handle:
    root = handle["model_weights"] if "model_weights" in handle else handle
    layer_names = names(root, "layer_names")
    if not layer_names:
      raise PretrainedMismatchError(f"{path} has no 'layer_names': not a Keras legacy-H5 file")
    for layer in layer_names:
      group = root[layer]
      for weight in names(group, "weight_names"):
        short = weight.rsplit("/", 1)[-1].split(":")[0]
        arrays[f"{layer}/{short}"] = np.asarray(group[weight])
  return arrays


def keras_mobilenet_v2_filename(alpha: float, rows: int = 224) -> str:
  """Name of Keras's ImageNet MobileNetV2 file without the classifier (as Keras caches it)."""
  if alpha not in KERAS_ALPHAS:
    raise ValueError(f"Keras publishes MobileNetV2 weights for alpha in {KERAS_ALPHAS}, "
                     f"got {alpha!r}")
  if rows not in KERAS_ROWS:
    raise ValueError(f"Keras publishes MobileNetV2 weights for rows in {KERAS_ROWS}, got {rows!r}")
  return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


# --------------------------------------------------------------------------- name mapping


def _leaf_suffix(collection: str, leaf_path: tuple[str, ...], depthwise: bool) -> str:
  """TF-slim name of a leaf of one of our ConvBN units ('conv'/'bn' + leaf) below its scope."""
  part, leaf = leaf_path
  if part == "conv" and leaf == "kernel" and collection == "params":
    return "depthwise_weights" if depthwise else "weights"
  if part == "bn":
    return "BatchNorm/" + _BN_TF[leaf]
  raise KeyError(leaf_path)


def keras_mobilenet_v2_name(collection: str, path: tuple[str, ...]) -> str:
  """Keras name '<layer>/<weight>' of an encoder variable.

  E.g. ('block_3', 'expand', 'conv', 'kernel') -> 'block_3_expand/kernel' and
  ('block_0', 'depthwise', 'bn', 'mean') -> 'expanded_conv_depthwise_BN/moving_mean'.
  """
  del collection  # the leaf name already tells params from batch_stats
  unit = path[0]
  if unit == "Conv1":
    part, leaf = path[1:]
    layer, depthwise = ("Conv1" if part == "conv" else "bn_Conv1"), False
  else:
    kind, part, leaf = path[1:]
    index = int(unit.split("_")[1])
    stem = "expanded_conv" if index == 0 else f"block_{index}"
    layer = f"{stem}_{kind}" if part == "conv" else f"{stem}_{kind}_BN"
    depthwise = kind == "depthwise"
  if part == "conv":
    return f"{layer}/{'depthwise_kernel' if depthwise else 'kernel'}"
  return f"{layer}/{_BN_TF[leaf]}"


def _mobilenet_v2_tf_scope(path: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
  unit, *rest = path
  if unit == "Conv1":
    return "MobilenetV2/Conv", tuple(rest)
  index = int(unit.split("_")[1])
  block = "expanded_conv" if index == 0 else f"expanded_conv_{index}"
  kind, *rest = rest
  return f"MobilenetV2/{block}/{kind}", tuple(rest)


def _xception_tf_scope(path: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
  unit, *rest = path
  if unit.startswith("entry_flow_conv"):
    return f"xception_65/entry_flow/{unit[len('entry_flow_'):]}", tuple(rest)
  if unit.startswith("middle_flow_unit_"):
    module = f"xception_65/middle_flow/block1/unit_{unit.rsplit('_', 1)[1]}/xception_module"
  else:
    flow, block = unit.rsplit("_", 1)  # e.g. entry_flow, block2
    module = f"xception_65/{flow}/{block}/unit_1/xception_module"
  first, *rest = rest
  if first == "shortcut":
    return f"{module}/shortcut", tuple(rest)
  kind, *rest = rest  # separable_convN / {depthwise, pointwise}
  return f"{module}/{first}_{kind}", tuple(rest)


def deeplab_tf_name(collection: str, path: tuple[str, ...]) -> str:
  """TF DeepLab checkpoint name of one of our DeepLab variables (path below the collection)."""
  top, *rest = path
  rest = tuple(rest)
  if top == "logits":
    return TF_LOGITS[0] if rest == ("kernel",) else TF_LOGITS[1]
  if top == "encoder":
    if rest[0] == "Conv1" or rest[0].startswith("block_"):
      scope, leaf = _mobilenet_v2_tf_scope(rest)
    else:
      scope, leaf = _xception_tf_scope(rest)
  elif top == "head":
    name, *leaf = rest
    if name.startswith("aspp") and name != "aspp0":
      kind, *leaf = leaf
      name = f"{name}_{kind}"
    scope, leaf = name, tuple(leaf)
  elif top == "decoder":
    name, *leaf = rest
    if name.startswith("decoder_conv"):
      kind, *leaf = leaf
      name = f"{name}_{kind}"
    scope, leaf = f"decoder/{name}", tuple(leaf)
  else:
    raise KeyError(path)
  depthwise = scope.endswith("depthwise")
  return f"{scope}/{_leaf_suffix(collection, leaf, depthwise)}"


# --------------------------------------------------------------------------- assignment


def _is_depthwise_kernel(name: str) -> bool:
  return name.endswith(("depthwise_weights", "depthwise_kernel"))


def _check_every_variable_matched(source: Mapping[str, Any], used: set[str],
                                  skip_source: set[str], missing: list[str],
                                  mismatched: list[str], report: LoadReport, what: str) -> None:
  """Sorts the source variables `_assign` did not use into the report; raises one error that
  lists every model variable without a match, every shape mismatch and every unused source
  variable."""
  unused = []
  for name in source:
    if name in used:
      continue
    if IGNORED_SOURCE.search(name):
      report.ignored_source.append(name)
    elif name in skip_source:
      report.skipped_source.append(name)
    else:
      unused.append(name)
  problems = []
  if missing:
    problems.append(f"{len(missing)} model variables have no match in the {what}:\n  "
                    + "\n  ".join(missing))
  if mismatched:
    problems.append(f"{len(mismatched)} shapes differ (model <- {what}):\n  "
                    + "\n  ".join(mismatched))
  if unused:
    problems.append(f"{len(unused)} {what} variables match nothing in the model:\n  "
                    + "\n  ".join(sorted(unused)))
  if problems:
    raise PretrainedMismatchError(
        "\n".join(problems) + "\n(use dont_load=[regex] to keep model variables at init)")


def _assign(variables: Mapping[str, Any], source: Mapping[str, Any],
            name_of: Callable[[str, tuple[str, ...]], str], *, prefix: tuple[str, ...],
            dont_load: Sequence[str], skip_source: Iterable[str], what: str
            ) -> tuple[dict[str, Any], LoadReport]:
  """Fill every variable below `prefix` from `source` via `name_of`; fail loudly otherwise.

  Flax names matching a `dont_load` regex keep their values, and their source counterparts
  count as skipped, not unused. Names are '<collection>/<module path>', e.g.
  'params/head/aspp1/depthwise/conv/kernel'.
  """
  variables = flax.core.unfreeze(variables)
  patterns = [re.compile(p) for p in dont_load]
  report = LoadReport()
  skip_source = set(skip_source)
  used: set[str] = set()
  missing, mismatched = [], []
  new = {}
  for collection in ("params", "batch_stats"):
    flat = flax.traverse_util.flatten_dict(variables.get(collection, {}))
    for path, value in flat.items():
      flax_name = "/".join((collection, *path))
      if path[:len(prefix)] != prefix:  # outside the part being loaded: untouched
        new.setdefault(collection, {})[path] = value
        continue
      try:
        name = name_of(collection, path[len(prefix):])
      except (KeyError, ValueError, IndexError):
        name = None
      if any(p.search(flax_name) for p in patterns):
        if name is not None:
          skip_source.add(name)  # its source counterpart is skipped, not "unused"
        new.setdefault(collection, {})[path] = value
        report.kept_init.append(flax_name)
        continue
      if name in skip_source:
        new.setdefault(collection, {})[path] = value
        report.kept_init.append(flax_name)
        continue
      if name is None or name not in source:
        missing.append(f"{flax_name} <- {name or '(no mapping)'}")
        new.setdefault(collection, {})[path] = value
        continue
      array = np.asarray(source[name])
      if _is_depthwise_kernel(name) and array.ndim == 4:
        array = array.transpose(0, 1, 3, 2)  # (kh, kw, C, 1) -> (kh, kw, 1, C)
      if array.shape != tuple(value.shape):
        mismatched.append(f"{flax_name} {tuple(value.shape)} <- {name} {array.shape}")
        new.setdefault(collection, {})[path] = value
        continue
      used.add(name)
      report.loaded.append(flax_name)
      new.setdefault(collection, {})[path] = jnp.asarray(array, dtype=value.dtype)
  _check_every_variable_matched(source, used, skip_source, missing, mismatched, report, what)
  result = {collection: flax.traverse_util.unflatten_dict(flat)
            for collection, flat in new.items()}
  for collection, value in variables.items():  # other collections pass through untouched
    result.setdefault(collection, value)
  return result, report


def load_keras_mobilenet_v2(variables: Mapping[str, Any], source: str | Mapping[str, Any], *,
                            prefix: Sequence[str] = ("encoder",), dont_load: Sequence[str] = ()
                            ) -> tuple[dict[str, Any], LoadReport]:
  """Load Keras MobileNetV2 weights (.h5 path or {'<layer>/<weight>': array}) into the encoder.

  `prefix` is the encoder's place in the variable tree: ('encoder',) inside DeepLab, () for a
  bare MobileNetV2Encoder. Everything outside it is left as it is. The Keras model's alpha must
  equal the encoder's (else the shape check lists every differing layer).
  """
  arrays = read_keras_h5(source) if isinstance(source, str) else dict(source)
  # Keras 2 names a depthwise kernel 'depthwise_kernel', Keras 3 plain 'kernel'.
  arrays = {re.sub(r"_depthwise/kernel$", "_depthwise/depthwise_kernel", name): value
            for name, value in arrays.items()}
  skip = {name for name in arrays if name.split("/")[0] in KERAS_UNBUILT_LAYERS}
  return _assign(variables, arrays, keras_mobilenet_v2_name, prefix=tuple(prefix),
                 dont_load=dont_load, skip_source=skip, what="Keras file")


def load_deeplab_checkpoint(variables: Mapping[str, Any], source: str | Mapping[str, Any], *,
                            dont_load: Sequence[str] = ()) -> tuple[dict[str, Any], LoadReport]:
  """Load a TF DeepLab model-zoo checkpoint (MobileNetV2 or Xception-65) into a DeepLab model.

  `source` is a TF1 checkpoint prefix (needs tensorflow) or a {name: array} mapping. The logits
  are skipped (kept at init) when the checkpoint's class count differs from the model's.
  """
  arrays = read_tf1_checkpoint(source) if isinstance(source, str) else dict(source)
  skip: set[str] = set()
  kernel = variables["params"].get("logits", {}).get("kernel") if "params" in variables else None
  if TF_LOGITS[0] in arrays and kernel is not None:
    shape = (arrays.shapes[TF_LOGITS[0]] if isinstance(arrays, _LazyArrays)
             else np.shape(arrays[TF_LOGITS[0]]))
    if shape[-1] != kernel.shape[-1]:
      skip = {name for name in TF_LOGITS if name in arrays}
  return _assign(variables, arrays, deeplab_tf_name, prefix=(), dont_load=dont_load,
                 skip_source=skip, what="checkpoint")
