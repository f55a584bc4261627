"""Export a trained run to a TensorFlow Lite (LiteRT) model for phones, and check it.

    python -m lesion_jax.export --workdir runs/quickstart --format tflite --out model.tflite \
        [--step N] [--quantize none|float16|dynamic_int8] [--with_threshold]
    python -m lesion_jax.export --benchmark [--image_size 512]    # sizes and CPU latency

The exported model is the whole on-device computation except the resize, so an app needs no
knowledge of the training code:
- input `image`: uint8 RGB, (1, S, S, 3) with S the run's training size (config.data.image_size);
  the app resizes the photo to SxS (bilinear), as training did (pipeline.resize_pair);
- inside: per-image standardisation exactly as `inference.standardize` (mean and std over all
  pixels and channels, std floored at 1/sqrt(N)), then the network and its sigmoid;
- output `probability`: float32 (1, S, S, 1), the lesion probability; with `--with_threshold`,
  output `mask` instead: uint8 (1, S, S, 1), 1 where probability >= the run's threshold.
The signature is `serving_default`. Everything an app needs (size, dtype, preprocessing,
threshold, model, source run and step, quantisation, the parity result) is written to the JSON
sidecar `<out>.json`, and the same description (without the results of the checks) is embedded
in the file's metadata under the name `lesion_jax`.

Modules: `tflite` (the exported computation, the converter and the flatbuffer edits), `parity`
(the check against the JAX model, below), `run` (the export of a run: convert, check, describe,
write), `benchmark` (sizes and latency), `cli`.

Quantisation (`--quantize`) and the parity bound each export must pass on validation images
(the rule for undecided pixels near the threshold is in `parity`):
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
from lesion_jax.export import parity, tflite
from lesion_jax.export.benchmark import benchmark, benchmark_table
from lesion_jax.export.cli import main
from lesion_jax.export.parity import (Parity, ParityError, check_parity, compare_outputs,
                                      jax_probabilities, mask_agreement, median_latency_ms,
                                      validation_images)
from lesion_jax.export.run import ExportReport, describe_export, export_run
from lesion_jax.export.tflite import (INSTALL_HINT, METADATA_NAME, QUANTIZATIONS, ExportError,
                                      MissingExtraError, Quantization, convert_to_tflite,
                                      embed_metadata, export_model, for_export,
                                      inference_function, load_interpreter,
                                      read_embedded_metadata, require_tensorflow,
                                      run_interpreter, sidecar_path)

__all__ = [
    "INSTALL_HINT", "METADATA_NAME", "QUANTIZATIONS", "ExportError", "ExportReport",
    "MissingExtraError", "Parity", "ParityError", "Quantization", "benchmark", "benchmark_table",
    "check_parity", "compare_outputs", "convert_to_tflite", "describe_export", "embed_metadata",
    "export_model", "export_run", "for_export", "inference_function", "jax_probabilities",
    "load_interpreter", "main", "mask_agreement", "median_latency_ms", "parity",
    "read_embedded_metadata", "require_tensorflow", "run_interpreter", "sidecar_path",
    "tflite", "validation_images",
]
