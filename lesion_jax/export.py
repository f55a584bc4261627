"""Export a trained run to a TensorFlow Lite (LiteRT) model for phones, and check it.

    python -m lesion_jax.export --workdir runs/quickstart --format tflite --out model.tflite \
        [--step N] [--quantize none|float16|dynamic_int8] [--with_threshold]
    python -m lesion_jax.export --benchmark [--image_size 512]    # sizes and CPU latency

The exported model is the whole on-device computation except the resize, so an app needs no
knowledge of the training code:
- input `image`: uint8 RGB, (1, S, S, 3) with S the run's training size (config.data.image_size);
  the app resizes the photo to SxS (bilinear), as training did (pipeline.resize_pair);
- inside: per-image standardisation exactly as `pipeline.standardize` (mean and std over all
  pixels and channels, std floored at 1/sqrt(N)), then the network and its sigmoid;
- output `probability`: float32 (1, S, S, 1), the lesion probability; with `--with_threshold`,
  output `mask` instead: uint8 (1, S, S, 1), 1 where probability >= the run's threshold.
The signature is `serving_default`. Everything an app needs (size, dtype, preprocessing,
threshold, model, source run and step, quantisation, the parity result) is written to the JSON
sidecar `<out>.json`, and the same description (without the results of the checks) is embedded
in the file's metadata under the name `lesion_jax`.

Route (checked with jax 0.10.2, tensorflow-cpu 2.21.0, ai-edge-litert 2.3.0, numpy 2.4):
`jax2tf.convert` (native serialization, the only mode left in jax 0.10: the graph is one
`XlaCallModule` op carrying StableHLO) inside a `tf.function`, then
`tf.lite.TFLiteConverter.from_concrete_functions`, which legalises the StableHLO into TFLite
builtin ops (CONV_2D, DEPTHWISE_CONV_2D, ...; no Select-TF ops). jax2tf's old non-native mode
(`enable_xla=False`) no longer exists and is not needed. The network is rebuilt for export with
`depthwise_implementation='xla'`, whose grouped convolution becomes DEPTHWISE_CONV_2D (the
'shifted' CPU training form would become slices and multiply-adds); parameters are the same.
Runs trained with a bfloat16/float16 compute dtype are exported (and checked) in float32.

Quantisation (`--quantize`) and the parity bound each export must pass on validation images.
A quantised model's probabilities stray from JAX's; a pixel whose JAX probability lies within
the quantisation's tolerance of the threshold is "undecided" (that error alone may flip it), so
the mask agreement JA(exported mask, JAX mask) counts the decided pixels only; the agreement
over all pixels is reported beside it. Without the band an undertrained model, whose
probabilities all sit within a few 1e-3 of the threshold, would fail any quantisation for
being undecided rather than for a bad conversion.
- none: float32. Probabilities must agree to max |diff| < 1e-4 (with `--with_threshold`: no
  pixel more than 1e-4 from the threshold may change label).
- float16: float16 weights, about half the size; XNNPACK then computes in float16 where the
  CPU can, as phones do. Tolerance 1e-2, mean mask JA >= 0.99.
- dynamic_int8: int8 weights per output channel, activations quantised at run time, about a
  third of the size. Tolerance 3e-2, mean mask JA >= 0.95.
The tolerances are the 99th percentile of |diff| measured on the quickstart model (TJA 0.91,
24 validation images at 128x128): float32 max 2.8e-5; float16 99% within 9.5e-3 (max 0.15),
mask JA 0.999; dynamic_int8 99% within 3.1e-2 (max 0.23), mask JA 0.998. The JA bounds leave
room for other models and sizes yet stop a broken conversion: they allow moving a few border
pixels, an order of magnitude less than annotators of ISIC masks disagree, far from the 0.65
TJA cutoff.

The parity check runs the exported bytes with the LiteRT interpreter (`ai-edge-litert`, else
`tf.lite.Interpreter`) on the first `--parity_images` images of the run's validation split next
to the JAX model, before anything is written: a file that fails is never left behind. The CPU
latency (median of `--latency_runs` invocations, 1 thread, XNNPACK) and the size are reported.

ONNX is not offered. jax2onnx, the JAX -> ONNX converter, does not convert these models
cleanly with our pinned packages: every release from 0.14 (to 0.17.1, the newest) requires
orbax-checkpoint < 0.11.37, a downgrade of a core package (we use 0.12.8); 0.13.0, the newest
that installs beside it, stops at `jax.image.resize` ("resize with antialias=True is not
supported yet"), which every model here uses for its bilinear upsampling, and it pulls in
equinox, huggingface-hub and netron. TFLite covers Android and iOS (LiteRT), which is the
paper's deployment target.

TensorFlow is an optional extra: `pip install -e .[export]`. It is imported only when an export
runs, so training, evaluation and `lesion_jax.predict` (JAX path) never need it.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lesion_jax import __version__
from lesion_jax import config as config_lib
from lesion_jax import metrics as metrics_lib
from lesion_jax.data import pipeline
from lesion_jax.registry import Registry

INSTALL_HINT = "pip install -e .[export]"
METADATA_NAME = "lesion_jax"  # name of the description embedded in the .tflite metadata
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "image"
PROBABILITY_OUTPUT = "probability"
MASK_OUTPUT = "mask"
FLOAT32_TOLERANCE = 1e-4  # max |probability difference| allowed for a float32 export


class ExportError(RuntimeError):
  """An export cannot be made or did not pass its check; the message says why."""


class MissingExtraError(ExportError, ImportError):
  """The optional `export` extra (TensorFlow / LiteRT) is not installed."""


class ParityError(ExportError):
  """The exported model disagrees with the JAX model beyond the stated bound."""


# ----------------------------------------------------------------------------------------------
# Optional dependencies, imported only here.

def require_tensorflow():
  """(tensorflow, jax2tf), or MissingExtraError naming the extra to install."""
  try:
    import tensorflow as tf
    from jax.experimental import jax2tf
  except ImportError as error:
    raise MissingExtraError(
        f"TFLite export needs TensorFlow, which is not installed ({error}). Install the "
        f"export extra: {INSTALL_HINT}") from None
  return tf, jax2tf


def load_interpreter(model: str | bytes, num_threads: int = 1):
  """A LiteRT interpreter for a .tflite path or its bytes, tensors allocated.

  `ai-edge-litert` is preferred (it is small and is TFLite's successor); TensorFlow's own
  `tf.lite.Interpreter` is the fallback.
  """
  kwargs = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {
      "model_path": os.fspath(model)}
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    try:
      import tensorflow as tf
    except ImportError:
      raise MissingExtraError(
          "running a .tflite model needs the LiteRT interpreter: pip install ai-edge-litert "
          f"(or the whole export extra: {INSTALL_HINT})") from None
    Interpreter = tf.lite.Interpreter
  try:
    interpreter = Interpreter(num_threads=num_threads, **kwargs)
  except ValueError as error:
    where = kwargs.get("model_path", "the model bytes")
    raise ExportError(f"{where} is not a TFLite model the interpreter can load ({error})") \
        from None
  interpreter.allocate_tensors()
  return interpreter


def run_interpreter(interpreter, image: np.ndarray) -> np.ndarray:
  """One (1, S, S, 3) uint8 image through the model's single input -> its single output."""
  (input_detail,) = interpreter.get_input_details()
  (output_detail,) = interpreter.get_output_details()
  interpreter.set_tensor(input_detail["index"], image)
  interpreter.invoke()
  return interpreter.get_tensor(output_detail["index"])


# ----------------------------------------------------------------------------------------------
# The exported computation, in JAX.

def standardize_images(images: jax.Array) -> jax.Array:
  """`pipeline.standardize` for a (B, H, W, C) batch, in JAX: each image on its own."""
  images = images.astype(jnp.float32)
  count = math.prod(images.shape[1:])
  axes = tuple(range(1, images.ndim))
  mean = jnp.mean(images, axis=axes, keepdims=True)
  std = jnp.maximum(jnp.std(images, axis=axes, keepdims=True), 1.0 / math.sqrt(count))
  return (images - mean) / std


def inference_function(model, variables: Mapping[str, Any]) -> Callable[[jax.Array], jax.Array]:
  """uint8 (B, S, S, 3) RGB -> float32 logits at the network's output size (the JAX part).

  Standardisation and the network. The TF graph around it (`convert_to_tflite`) resizes the
  logits to S x S where the network stops short of it, applies the sigmoid and, when asked,
  the threshold.
  """
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

  def infer(images: jax.Array) -> jax.Array:
    return model.apply(variables, standardize_images(images), train=False).astype(jnp.float32)

  return infer


def for_export(model) -> Any:
  """`model` as exported: DeepLab's final upsampling is left to TFLite's RESIZE_BILINEAR.

  Inside the JAX graph, `jax.image.resize` becomes two constant interpolation matrices
  (82 KB of a 0.7 MB int8 file at 512x512); the builtin op is the same half-pixel-centre
  bilinear interpolation with no constants.
  """
  return model.clone(upsample_logits=False) if hasattr(model, "upsample_logits") else model


def export_model(config) -> Any:
  """The run's network as exported: float32 compute, depthwise as grouped convolutions."""
  return for_export(config_lib.models_from_config(config, depthwise_implementation="xla",
                                                  dtype="float32"))


def reference_model(config) -> Any:
  """The run's network as JAX evaluates it (default depthwise form), in float32."""
  return config_lib.models_from_config(config, dtype="float32")


def jax_probabilities(run, images: np.ndarray) -> np.ndarray:
  """(N, S, S, 1) probabilities of uint8 `images` as evaluation computes them.

  The reference of the parity check: NumPy `pipeline.standardize`, then the run's network in
  float32 with its default depthwise form. So the check covers the preprocessing inside the
  exported model and the depthwise rewrite, not only the conversion.
  """
  apply = _reference_apply(json.dumps(run.config.model.to_dict(), sort_keys=True))
  variables = {"params": run.variables["params"],
               "batch_stats": run.variables.get("batch_stats", {})}
  return np.asarray(apply(variables, np.stack([pipeline.standardize(im) for im in images])))


@functools.lru_cache(maxsize=4)
def _reference_apply(model_settings: str) -> Callable:
  """One jitted reference per config.model (as JSON), so repeated exports compile it once."""
  config = ml_collections.ConfigDict({"model": json.loads(model_settings)})
  model = reference_model(config)
  return jax.jit(lambda variables, x: jax.nn.sigmoid(
      model.apply(variables, x, train=False).astype(jnp.float32)))


# ----------------------------------------------------------------------------------------------
# Conversion.

@dataclasses.dataclass(frozen=True)
class Quantization:
  """A post-training quantisation and the agreement its export must reach.

  `tolerance` is how far the exported probabilities may stray from JAX's. A pixel whose JAX
  probability lies within `tolerance` of the threshold is undecided: that much error may flip
  its label, so it does not count in the mask agreement.
  """
  name: str
  description: str
  configure: Callable[[Any, Any], None]  # (converter, tf) -> None
  tolerance: float
  min_mask_ja: float | None  # bound on mean JA(exported mask, JAX mask); None: float32 rules


def _no_quantization(converter, tf) -> None:
  del converter, tf


def _float16(converter, tf) -> None:
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.target_spec.supported_types = [tf.float16]


def _dynamic_int8(converter, tf) -> None:
  # DEFAULT without a representative dataset is dynamic-range quantisation: int8 weights,
  # activations quantised at run time, float32 input and output.
  converter.optimizations = [tf.lite.Optimize.DEFAULT]


QUANTIZATIONS: Registry[Quantization] = Registry("quantization")
QUANTIZATIONS.add("none", Quantization(
    "none", "float32 weights and activations", _no_quantization, FLOAT32_TOLERANCE, None))
QUANTIZATIONS.add("float16", Quantization(
    "float16", "float16 weights", _float16, 1e-2, 0.99))
QUANTIZATIONS.add("dynamic_int8", Quantization(
    "dynamic_int8", "int8 weights (per channel), activations quantised at run time",
    _dynamic_int8, 3e-2, 0.95))


def convert_to_tflite(infer: Callable, image_size: int, output_name: str,
                      quantization: Quantization, threshold: float | None = None) -> bytes:
  """The TFLite flatbuffer for one (1, S, S, 3) uint8 image: `infer`, then resize and sigmoid.

  `infer` (from `inference_function`) gives logits; they are resized bilinearly (half-pixel
  centres, as `jax.image.resize`) to S x S when smaller, then turned into float32
  probabilities, or into uint8 {0, 1} masks `probability >= threshold` when `threshold` is given.
  """
  tf, jax2tf = require_tensorflow()
  # Lower for CPU whatever the exporting machine has: the graph must not depend on it.
  converted = jax2tf.convert(infer, with_gradient=False, native_serialization_platforms=("cpu",))

  class Serving(tf.Module):

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec((1, image_size, image_size, 3), tf.uint8, name=INPUT_NAME)])
    def serving_default(self, image):
      logits = converted(image)
      if tuple(logits.shape[1:3]) != (image_size, image_size):
        logits = tf.image.resize(logits, (image_size, image_size), method="bilinear")
      probs = tf.math.sigmoid(logits)
      if threshold is not None:
        probs = tf.cast(probs >= threshold, tf.uint8)
      return {output_name: probs}

  module = Serving()
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [module.serving_default.get_concrete_function()], module)
  quantization.configure(converter, tf)
  try:
    model_bytes = bytes(converter.convert())
  except Exception as error:  # the converter raises its own ConverterError and plain errors
    raise ExportError(f"the TFLite converter failed ({type(error).__name__}: {error})") from None
  return shorten_tensor_names(model_bytes)


def _edit_model(model_bytes: bytes, edit: Callable[[Any, Any], None]) -> bytes:
  """The .tflite `model_bytes` unpacked, changed in place by `edit(model, schema)`, repacked."""
  import flatbuffers

  schema = _tflite_schema()
  model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
  edit(model, schema)
  builder = flatbuffers.Builder(len(model_bytes) + 1024)
  builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
  return bytes(builder.Output())


def shorten_tensor_names(model_bytes: bytes) -> bytes:
  """The model with every inner tensor named by its index instead of its TF/StableHLO path.

  The converter names tensors after long op paths (~36 KB of a 0.6 MB int8 file). Inputs and
  outputs keep theirs, which the serving signature maps to `image` and `probability` / `mask`.
  """
  def edit(model, schema):
    del schema
    for subgraph in model.subgraphs:
      keep = set(subgraph.inputs.tolist()) | set(subgraph.outputs.tolist())
      for index, tensor in enumerate(subgraph.tensors):
        if index not in keep:
          tensor.name = str(index)

  return _edit_model(model_bytes, edit)


def _tflite_schema():
  """The generated flatbuffer classes of the .tflite format (from LiteRT, else TensorFlow)."""
  try:
    from ai_edge_litert import schema_py_generated
  except ImportError:
    try:
      from tensorflow.lite.python import schema_py_generated
    except ImportError:
      raise MissingExtraError("reading .tflite metadata needs ai-edge-litert or TensorFlow: "
                              f"{INSTALL_HINT}") from None
  return schema_py_generated


def embed_metadata(model_bytes: bytes, name: str, payload: Mapping[str, Any]) -> bytes:
  """The model with `payload` (as JSON) added to its flatbuffer metadata under `name`."""
  def edit(model, schema):
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(payload, sort_keys=True).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() != name] + [entry]

  return _edit_model(model_bytes, edit)


def read_embedded_metadata(model: str | bytes, name: str = METADATA_NAME) -> dict | None:
  """The JSON stored by `embed_metadata` under `name`, or None when there is none."""
  schema = _tflite_schema()
  if not isinstance(model, (bytes, bytearray)):
    with open(model, "rb") as f:
      model = f.read()
  root = schema.Model.GetRootAsModel(model, 0)
  for i in range(root.MetadataLength()):
    entry = root.Metadata(i)
    if entry.Name().decode() == name:
      return json.loads(root.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
  return None


def sidecar_path(model_path: str) -> str:
  return os.fspath(model_path) + ".json"


# ----------------------------------------------------------------------------------------------
# Checks.

@dataclasses.dataclass
class Parity:
  """How the exported model agrees with the JAX model on a few validation images."""
  quantization: str
  n_images: int
  max_abs_diff: float | None  # probabilities; None for a mask model
  mean_mask_ja: float  # JA(exported mask, JAX mask) over decided pixels, mean over images
  min_mask_ja: float
  mean_mask_ja_all_pixels: float  # the same over every pixel, for information
  undecided_fraction: float  # pixels within the tolerance of the threshold
  flipped_decided_pixels: int
  bound: str
  passed: bool

  def summary(self) -> str:
    diff = "" if self.max_abs_diff is None else f"max |diff| {self.max_abs_diff:.2e}; "
    verdict = "passed" if self.passed else "FAILED"
    return (f"parity on {self.n_images} validation images: {diff}mask JA {self.mean_mask_ja:.4f} "
            f"(min {self.min_mask_ja:.4f}; {self.mean_mask_ja_all_pixels:.4f} counting the "
            f"{100 * self.undecided_fraction:.1f}% undecided pixels); bound {self.bound}: "
            f"{verdict}")


def mask_agreement(masks: np.ndarray, reference: np.ndarray,
                   counted: np.ndarray | None = None) -> np.ndarray:
  """Per-image JA of binary `masks` against `reference` over the `counted` pixels, (N,).

  An image with no lesion pixel in either mask (among those counted) scores 1.0, as in the
  ISIC metrics.
  """
  n = len(masks)
  masks = masks.reshape(n, -1).astype(bool)
  reference = reference.reshape(n, -1).astype(bool)
  counted = np.ones_like(masks) if counted is None else counted.reshape(n, -1).astype(bool)
  tp = np.count_nonzero(masks & reference & counted, axis=1)
  fp = np.count_nonzero(masks & ~reference & counted, axis=1)
  fn = np.count_nonzero(~masks & reference & counted, axis=1)
  tn = np.count_nonzero(counted, axis=1) - tp - fp - fn
  return metrics_lib.isic_metrics(np.stack([tp, fp, fn, tn], axis=-1))["ja"]


def compare_outputs(outputs: np.ndarray, reference_probs: np.ndarray,
                    quantization: Quantization, threshold: float, thresholded: bool) -> Parity:
  """Exported outputs against JAX probabilities of the same images; both (N, S, S, 1).

  float32 probability models: max |diff| < tolerance. float32 mask models: no decided pixel
  (JAX probability more than the tolerance from the threshold) may change label. Quantised
  models: mean JA over decided pixels >= the quantisation's bound.
  """
  reference_probs = np.asarray(reference_probs, np.float32)
  reference_masks = reference_probs >= np.float32(threshold)
  if thresholded:
    masks, max_abs_diff = np.asarray(outputs).astype(bool), None
  else:
    outputs = np.asarray(outputs, np.float32)
    masks = outputs >= np.float32(threshold)
    max_abs_diff = float(np.max(np.abs(outputs - reference_probs)))
  decided = np.abs(reference_probs - np.float32(threshold)) > quantization.tolerance
  ja = mask_agreement(masks, reference_masks, decided)
  flipped = int(np.count_nonzero((masks != reference_masks) & decided))
  if quantization.min_mask_ja is not None:
    bound = (f"mean mask JA >= {quantization.min_mask_ja} over pixels more than "
             f"{quantization.tolerance:g} from the threshold")
    passed = float(ja.mean()) >= quantization.min_mask_ja
  elif thresholded:
    bound = f"same label wherever |probability - threshold| > {quantization.tolerance:g}"
    passed = flipped == 0
  else:
    bound = f"max |diff| < {quantization.tolerance:g}"
    passed = max_abs_diff < quantization.tolerance
  return Parity(quantization=quantization.name, n_images=len(reference_probs),
                max_abs_diff=max_abs_diff, mean_mask_ja=float(ja.mean()),
                min_mask_ja=float(ja.min()),
                mean_mask_ja_all_pixels=float(mask_agreement(masks, reference_masks).mean()),
                undecided_fraction=float(1 - decided.mean()), flipped_decided_pixels=flipped,
                bound=bound, passed=bool(passed))


def check_parity(interpreter, reference_probs: np.ndarray, images: np.ndarray,
                 quantization: Quantization, threshold: float, thresholded: bool) -> Parity:
  """Runs `images` (N, S, S, 3) uint8 through the interpreter and compares with the JAX model.

  Args:
    reference_probs: (N, S, S, 1) JAX probabilities of the same images.
    thresholded: the model outputs {0, 1} masks rather than probabilities.
  """
  outputs = np.concatenate([run_interpreter(interpreter, image[None]) for image in images])
  return compare_outputs(outputs, reference_probs, quantization, threshold, thresholded)


def median_latency_ms(interpreter, image_size: int, runs: int = 20, warmup: int = 2) -> float:
  """Median wall time of one invocation, in ms, after `warmup` untimed ones."""
  image = np.random.default_rng(0).integers(0, 256, (1, image_size, image_size, 3), np.uint8)
  (input_detail,) = interpreter.get_input_details()
  interpreter.set_tensor(input_detail["index"], image)
  for _ in range(warmup):
    interpreter.invoke()
  times = []
  for _ in range(max(1, runs)):
    start = time.perf_counter()
    interpreter.invoke()
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


# ----------------------------------------------------------------------------------------------
# Data for the check.

def validation_images(config, count: int) -> np.ndarray:
  """The first `count` validation images of the run's training datasets, (N, S, S, 3) uint8.

  The builders are opened as `train.load_datasets` opens them (same options), but only the
  validation splits are read; images are resized as evaluation resizes them.
  """
  from lesion_jax import data as data_lib

  size = int(config.data.image_size)
  images = []
  for name in config_lib.dataset_names(config.data.train, "data.train"):
    if len(images) >= count:
      break
    options = dict(config.data.options.get(name, {})) if name in config.data.options else {}
    if name.startswith("synthetic_lesions/"):
      options = {**config.data.synthetic.to_dict(), **options}
    builder = data_lib.get_builder(
        name, data_dir=config.data.data_dir, manual_dir=config.data.manual_dir,
        manual_dirs=config.data.manual_dirs.to_dict(), options=options)
    if "validation" not in builder.info.splits:
      continue
    source = builder.as_data_source("validation")
    for i in range(min(count - len(images), len(source))):
      example = source[i]
      image, _ = pipeline.resize_pair(np.asarray(example["image"]), np.asarray(example["mask"]),
                                      size)
      images.append(image)
  if not images:
    raise ExportError(f"the run's datasets {tuple(config.data.train)} have no validation images "
                      "for the parity check")
  return np.stack(images).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# The export of a run.

@dataclasses.dataclass
class ExportReport:
  path: str
  sidecar: str
  size_bytes: int
  parity: Parity | None
  latency_ms: float | None
  metadata: dict

  def summary(self) -> str:
    lines = [f"wrote {self.path} ({self.size_bytes / 1e6:.3f} MB) and {self.sidecar}"]
    if self.parity is not None:
      lines.append(self.parity.summary())
    else:
      lines.append("parity NOT checked (--parity_images 0)")
    if self.latency_ms is not None:
      lines.append(f"CPU latency: {self.latency_ms:.2f} ms per image (median, 1 thread)")
    return "\n".join(lines)


def _versions() -> dict:
  versions = {"lesion_jax": __version__, "jax": jax.__version__}
  try:
    import tensorflow as tf
    versions["tensorflow"] = tf.__version__
  except ImportError:
    pass
  return versions


def describe_export(run, quantization: Quantization, thresholded: bool, model_file: str,
                    step: int | None = None) -> dict:
  """The sidecar / embedded description of an export of `run` (its best checkpoint, or `step`)."""
  size = run.image_size
  output = {
      "name": MASK_OUTPUT, "shape": [1, size, size, 1], "dtype": "uint8",
      "meaning": "1 where the lesion probability >= threshold, else 0",
  } if thresholded else {
      "name": PROBABILITY_OUTPUT, "shape": [1, size, size, 1], "dtype": "float32",
      "meaning": "sigmoid lesion probability in [0, 1]",
  }
  return {
      "format": "tflite",
      "file": os.path.basename(model_file),
      "signature": SIGNATURE_KEY,
      "image_size": size,
      "input": {"name": INPUT_NAME, "shape": [1, size, size, 3], "dtype": "uint8",
                "layout": "NHWC", "channels": "RGB, 0-255"},
      "output": output,
      "preprocessing": {
          "resize": f"the app resizes the image to {size}x{size}, bilinear (as in training)",
          "standardization": "inside the model: per image, (x - mean) / max(std, 1/sqrt(N)) "
                             f"over all N = {size}*{size}*3 values (pipeline.standardize)",
      },
      "postprocessing": "resize the probability map back to the image size (bilinear), then "
                        "lesion where probability >= threshold",
      "threshold": run.threshold,
      "threshold_source": (
          "default 0.5: the run has no results.json yet" if not run.results else
          "results.json (chosen on validation)" if step is None else
          f"results.json (chosen on validation for the best checkpoint, step "
          f"{run.results.get('best_step')}, not for step {step})"),
      "thresholded_output": thresholded,
      "model": {"name": run.config.model.name,
                "params": int(sum(np.size(x) for x in jax.tree.leaves(run.variables["params"]))),
                "settings": run.config.model.to_dict()},
      "source": {"workdir": os.path.abspath(run.workdir),
                 "checkpoint": "best" if step is None else "latest",
                 "step": int(run.meta["step"]) if step is None else int(step),
                 "val_ja": run.meta.get("val_ja") if step is None else None},
      "quantization": quantization.name,
      "quantization_description": quantization.description,
      "exported_with": _versions(),
  }


def export_run(workdir: str, out: str, *, step: int | None = None, quantize: str = "none",
               with_threshold: bool = False, parity_images: int = 4,
               latency_runs: int = 20) -> ExportReport:
  """Exports the run in `workdir` to `out` (.tflite) and its sidecar, after checking it.

  Raises:
    ExportError: a missing extra, bad arguments, or a parity failure (then nothing is written).
    FileNotFoundError: `workdir` is not a run, or has no (such) checkpoint.
  """
  from lesion_jax import runs

  quantization = QUANTIZATIONS.get(quantize, where="--quantize")
  if parity_images < 0:
    raise ExportError(f"--parity_images must be >= 0, got {parity_images}")
  out_dir = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(out_dir):
    raise ExportError(f"--out {out!r}: folder {out_dir!r} does not exist")
  require_tensorflow()  # before the checkpoint is read: the cheap check first
  run = runs.load_run(workdir, step=step)
  threshold = run.threshold if with_threshold else None
  infer = inference_function(export_model(run.config), run.variables)
  metadata = describe_export(run, quantization, with_threshold, out, step)
  model_bytes = convert_to_tflite(infer, run.image_size,
                                  MASK_OUTPUT if with_threshold else PROBABILITY_OUTPUT,
                                  quantization, threshold)
  model_bytes = embed_metadata(model_bytes, METADATA_NAME, metadata)
  interpreter = load_interpreter(model_bytes, num_threads=1)

  parity = None
  if parity_images:
    images = validation_images(run.config, parity_images)
    parity = check_parity(interpreter, jax_probabilities(run, images), images, quantization,
                          run.threshold, with_threshold)
    if not parity.passed:
      raise ParityError(f"{out} was not written: the exported model disagrees with the JAX "
                        f"model. {parity.summary()}")
  latency = median_latency_ms(interpreter, run.image_size, latency_runs) if latency_runs else None

  with open(out, "wb") as f:
    f.write(model_bytes)
  sidecar = {**metadata, "size_bytes": len(model_bytes),
             "parity": dataclasses.asdict(parity) if parity else None,
             "latency_ms_median_1_thread": latency}
  with open(sidecar_path(out), "w") as f:
    json.dump(sidecar, f, indent=2)
  return ExportReport(path=out, sidecar=sidecar_path(out), size_bytes=len(model_bytes),
                      parity=parity, latency_ms=latency, metadata=sidecar)


# ----------------------------------------------------------------------------------------------
# Size and latency of the paper's mobile model.

def benchmark(image_size: int = 512, alpha: float = 0.35, runs: int = 20,
              quantizations: Sequence[str] = ("none", "float16", "dynamic_int8"),
              out_dir: str | None = None) -> list[dict]:
  """Exports a freshly initialised reduced Mobile DeepLab at each quantisation; sizes, latency.

  Neither size nor speed depends on the weights' values, so no training is needed, and the
  weights are drawn with NumPy (normal, std 0.1; BN statistics 0 and 1): running flax's
  initialisers would cost a 20 s XLA compilation on a CPU.
  """
  from lesion_jax import models

  model = for_export(models.create_model("deeplab_mobilenetv2", alpha=alpha, output_stride=16,
                                         depthwise_implementation="xla"))
  models.check_input_size(model, image_size, image_size)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                          jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  rng = np.random.default_rng(0)
  variables = {
      "params": jax.tree.map(lambda s: rng.normal(0.0, 0.1, s.shape).astype(s.dtype),
                             shapes["params"]),
      "batch_stats": jax.tree_util.tree_map_with_path(
          lambda path, s: np.full(s.shape, 1.0 if path[-1].key == "var" else 0.0, s.dtype),
          shapes.get("batch_stats", {})),
  }
  infer = inference_function(model, variables)
  rows = []
  for name in quantizations:
    quantization = QUANTIZATIONS.get(name, where="benchmark")
    model_bytes = convert_to_tflite(infer, image_size, PROBABILITY_OUTPUT, quantization)
    if out_dir:
      with open(os.path.join(out_dir, f"mobile_deeplab_{image_size}_{name}.tflite"), "wb") as f:
        f.write(model_bytes)
    interpreter = load_interpreter(model_bytes, num_threads=1)
    rows.append({"quantization": name, "image_size": image_size, "size_bytes": len(model_bytes),
                 "latency_ms": median_latency_ms(interpreter, image_size, runs)})
  return rows


def benchmark_table(rows: Sequence[Mapping[str, Any]]) -> str:
  lines = ["| quantization | input | size (MB) | CPU latency, 1 thread (ms, median) |",
           "|---|---|---|---|"]
  for row in rows:
    size = row["image_size"]
    lines.append(f"| {row['quantization']} | {size}x{size} | {row['size_bytes'] / 1e6:.3f} | "
                 f"{row['latency_ms']:.1f} |")
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command line.

FORMATS = Registry("export format")
FORMATS.add("tflite", export_run)
ONNX_NOT_OFFERED = ("ONNX export is not offered: jax2onnx needs an older orbax-checkpoint than "
                    "lesion_jax uses, and its newest compatible release cannot convert "
                    "jax.image.resize (see the docstring of lesion_jax/export.py). Use "
                    "--format tflite.")


def main(argv: Sequence[str] | None = None) -> int:
  """Command line entry point; returns the exit code (0, 1 when the parity check fails, 2 on
  bad input)."""
  parser = argparse.ArgumentParser(
      prog="python -m lesion_jax.export",
      description="Export a trained run to TensorFlow Lite, checked against the JAX model.")
  parser.add_argument("--workdir", help="the training run (its best checkpoint is exported)")
  parser.add_argument("--step", type=int, default=None,
                      help="export this step of checkpoints/latest instead of the best")
  parser.add_argument("--format", default="tflite", help="tflite (the only format offered)")
  parser.add_argument("--quantize", default="none",
                      help=f"one of {', '.join(QUANTIZATIONS.names())} (default none)")
  parser.add_argument("--with_threshold", action="store_true",
                      help="output the binary mask at the run's threshold, not probabilities")
  parser.add_argument("--out", help="the .tflite file to write (its sidecar is OUT.json)")
  parser.add_argument("--parity_images", type=int, default=4,
                      help="validation images for the parity check (0 skips it)")
  parser.add_argument("--latency_runs", type=int, default=20,
                      help="timed invocations for the median CPU latency (0 skips it)")
  parser.add_argument("--benchmark", action="store_true",
                      help="instead: sizes and latency of a fresh reduced Mobile DeepLab")
  parser.add_argument("--image_size", type=int, default=512, help="--benchmark input size")
  args = parser.parse_args(argv)
  try:
    if args.benchmark:
      rows = benchmark(args.image_size, runs=max(1, args.latency_runs))
      print(benchmark_table(rows))
      return 0
    if args.format.lower() == "onnx":
      raise ExportError(ONNX_NOT_OFFERED)
    exporter = FORMATS.get(args.format, where="--format")
    missing = [flag for flag, value in (("--workdir", args.workdir), ("--out", args.out))
               if not value]
    if missing:
      parser.error(f"{' and '.join(missing)} required (or --benchmark)")
    report = exporter(args.workdir, args.out, step=args.step, quantize=args.quantize,
                      with_threshold=args.with_threshold, parity_images=args.parity_images,
                      latency_runs=args.latency_runs)
  except ParityError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  except (ExportError, FileNotFoundError, KeyError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(report.summary())
  return 0


if __name__ == "__main__":
  sys.exit(main())
