"""TFLite conversion: the exported computation in JAX, the converter, the flatbuffer edits.

Route (checked with jax 0.10.2, tensorflow-cpu 2.21.0, ai-edge-litert 2.3.0, numpy 2.4):
`jax2tf.convert` (native serialization, the only mode left in jax 0.10: the graph is one
`XlaCallModule` op carrying StableHLO) inside a `tf.function`, then
`tf.lite.TFLiteConverter.from_concrete_functions`, which legalises the StableHLO into TFLite
builtin ops (CONV_2D, DEPTHWISE_CONV_2D, ...; no Select-TF ops). The network is rebuilt for
export with `depthwise_implementation='xla'`, whose grouped convolution becomes
DEPTHWISE_CONV_2D (the 'shifted' training form would become slices and multiply-adds);
parameters are the same. Runs trained with a bfloat16/float16 compute dtype are exported in
float32.

TensorFlow is an optional extra (`pip install -e .[export]`), imported only when an export runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lesion_jax import models as models_lib
from lesion_jax import inference
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

def inference_function(model, variables: Mapping[str, Any]) -> Callable[[jax.Array], jax.Array]:
  """uint8 (B, S, S, 3) RGB -> float32 logits at the network's output size (the JAX part).

  Standardisation and the network. The TF graph around it (`convert_to_tflite`) resizes the
  logits to S x S where the network stops short of it, applies the sigmoid and, when asked,
  the threshold.
  """
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

  def infer(images: jax.Array) -> jax.Array:
    # The same standardisation as training and evaluation (inference.standardize).
    return model.apply(variables, inference.standardize(images),
                       train=False).astype(jnp.float32)

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
  return for_export(models_lib.from_config(config, depthwise_implementation="xla",
                                                  dtype="float32"))


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



def convert_to_tflite(infer: Callable, image_size, output_name: str,
                      quantization: Quantization, threshold: float | None = None) -> bytes:
  """The TFLite flatbuffer for one (1, H, W, 3) uint8 image: `infer`, then resize and sigmoid.

  `image_size` is S or (H, W). `infer` (from `inference_function`) gives logits; they are
  resized bilinearly (half-pixel centres, as `jax.image.resize`) to H x W when smaller, then
  turned into float32 probabilities, or into uint8 {0, 1} masks `probability >= threshold`
  when `threshold` is given.
  """
  from lesion_jax.data import pipeline
  height, width = pipeline.image_shape(image_size)
  tf, jax2tf = require_tensorflow()
  # Lower for CPU whatever the exporting machine has: the graph must not depend on it.
  converted = jax2tf.convert(infer, with_gradient=False, native_serialization_platforms=("cpu",))

  class Serving(tf.Module):

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec((1, height, width, 3), tf.uint8, name=INPUT_NAME)])
    def serving_default(self, image):
      logits = converted(image)
      if tuple(logits.shape[1:3]) != (height, width):
        logits = tf.image.resize(logits, (height, width), method="bilinear")
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
