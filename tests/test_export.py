"""TFLite export of a trained run: parity with JAX, quantised bounds, sidecar, failure modes.

The tests that convert need the `export` extra (TensorFlow, ai-edge-litert); without it they
skip, saying how to install it. CI installs the extra, so there they run.
"""
from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from lesion_jax import data as data_lib
from lesion_jax import export, predict, runs
from lesion_jax.data import pipeline


@pytest.fixture(scope="module")
def tensorflow():
  return pytest.importorskip(
      "tensorflow", reason="TFLite export needs the export extra: pip install -e .[export]")


@pytest.fixture(scope="module")
def trained_run(tiny_run):
  """The session's tiny run (tests/conftest.py): two epochs at a high learning rate, with BN
  statistics that follow them, give probabilities spread around a chosen threshold above 0.5
  and masks that hold both classes."""
  return runs.load_run(tiny_run[0])


@pytest.fixture(scope="module")
def held_out_images(trained_run):
  """4 test-split images at the training size, uint8 (4, 32, 32, 3)."""
  config = trained_run.config
  builder = data_lib.get_builder("synthetic_lesions/dermoscopic", data_dir=config.data.data_dir,
                                 options=config.data.synthetic.to_dict())
  source = builder.as_data_source("test")
  return np.stack([pipeline.resize_pair(np.asarray(source[i]["image"]),
                                        np.asarray(source[i]["mask"]), 32)[0]
                   for i in range(4)])


def _standardize(image):
  """The paper's per-image standardisation in NumPy, std floored at 1/sqrt(N)."""
  x = image.astype(np.float32)
  return (x - x.mean()) / max(float(x.std()), 1.0 / np.sqrt(x.size))


def _jax_probabilities(run, images):
  """The evaluation path, written out independently: NumPy standardize, model, sigmoid."""
  standardized = np.stack([_standardize(image) for image in images])
  apply = jax.jit(lambda variables, x: jax.nn.sigmoid(run.model.apply(variables, x, train=False)))
  return np.asarray(apply(run.variables, standardized))


@pytest.fixture(scope="module")
def jax_test_probabilities(trained_run, held_out_images):
  return _jax_probabilities(trained_run, held_out_images)


def _tflite_outputs(path, images):
  interpreter = export.load_interpreter(path)
  return np.concatenate([export.run_interpreter(interpreter, image[None]) for image in images])


@pytest.fixture(scope="module")
def float32_export(tensorflow, trained_run, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("float32") / "model.tflite")
  report = export.export_run(trained_run.workdir, out, latency_runs=3)
  return out, report


def test_float32_export_matches_jax_on_test_images(float32_export, held_out_images,
                                                   jax_test_probabilities):
  path, report = float32_export
  interpreter = export.load_interpreter(path)
  (image_in,) = interpreter.get_input_details()
  (probs_out,) = interpreter.get_output_details()
  assert tuple(image_in["shape"]) == (1, 32, 32, 3) and image_in["dtype"] == np.uint8
  assert tuple(probs_out["shape"]) == (1, 32, 32, 1) and probs_out["dtype"] == np.float32
  assert interpreter.get_signature_list() == {
      "serving_default": {"inputs": ["image"], "outputs": ["probability"]}}
  tflite = _tflite_outputs(path, held_out_images)
  assert np.max(np.abs(tflite - jax_test_probabilities)) < 1e-4
  assert report.parity.passed and report.parity.max_abs_diff < 1e-4
  assert report.size_bytes == os.path.getsize(path)
  assert report.latency_ms > 0


def test_logits_are_upsampled_by_the_builtin_resize_and_inner_names_are_short(float32_export):
  path, _ = float32_export
  schema = export.tflite._tflite_schema()
  with open(path, "rb") as f:
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(f.read(), 0))
  ops = {max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes}
  # DeepLab's final upsampling is TFLite's op, not a pair of constant interpolation matrices.
  assert schema.BuiltinOperator.RESIZE_BILINEAR in ops
  (subgraph,) = model.subgraphs
  names = [t.name.decode() for t in subgraph.tensors]
  # Inputs and outputs keep the converter's names (the signature maps image / probability).
  assert "image" in names[subgraph.inputs[0]] and not names[subgraph.outputs[0]].isdigit()
  inner = [n for i, n in enumerate(names) if i not in (subgraph.inputs[0], subgraph.outputs[0])]
  assert inner == [str(i) for i, n in enumerate(names) if n in inner]


def test_sidecar_and_embedded_metadata_describe_the_export(float32_export, trained_run):
  path, _ = float32_export
  with open(path + ".json") as f:
    sidecar = json.load(f)
  assert sidecar["threshold"] == trained_run.results["threshold"] == trained_run.threshold
  assert sidecar["image_size"] == 32
  assert sidecar["input"] == {"name": "image", "shape": [1, 32, 32, 3], "dtype": "uint8",
                              "layout": "NHWC", "channels": "RGB, 0-255"}
  assert sidecar["output"]["dtype"] == "float32" and not sidecar["thresholded_output"]
  assert "1/sqrt(N)" in sidecar["preprocessing"]["standardization"]
  assert sidecar["model"]["name"] == "deeplab_mobilenetv2"
  assert sidecar["model"]["params"] == trained_run.results["model"]["params"]
  assert sidecar["source"]["step"] == trained_run.results["best_step"]
  assert sidecar["source"]["workdir"] == os.path.abspath(trained_run.workdir)
  assert sidecar["quantization"] == "none"
  assert sidecar["parity"]["passed"] is True
  assert sidecar["size_bytes"] == os.path.getsize(path)
  embedded = export.read_embedded_metadata(path)
  assert embedded["threshold"] == sidecar["threshold"]
  assert embedded["input"] == sidecar["input"]


def test_dynamic_int8_export_passes_its_bound(tensorflow, float32_export, trained_run,
                                              held_out_images, jax_test_probabilities, tmp_path):
  out = str(tmp_path / "int8.tflite")
  report = export.export_run(trained_run.workdir, out, quantize="dynamic_int8", latency_runs=1)
  assert report.parity.passed
  assert report.parity.mean_mask_ja >= 0.95
  assert report.metadata["quantization"] == "dynamic_int8"
  # int8 weights: well under half the float32 file.
  assert report.size_bytes < 0.45 * float32_export[1].size_bytes
  # The bound, recomputed here on test images the export never saw.
  parity = export.compare_outputs(_tflite_outputs(out, held_out_images), jax_test_probabilities,
                                  export.QUANTIZATIONS.get("dynamic_int8"),
                                  trained_run.threshold, thresholded=False)
  assert parity.mean_mask_ja >= 0.95


def test_with_threshold_outputs_the_runs_mask(tensorflow, trained_run, held_out_images,
                                              jax_test_probabilities, tmp_path, capsys):
  out = str(tmp_path / "mask.tflite")
  report = export.export_run(trained_run.workdir, out, with_threshold=True, latency_runs=0)
  assert report.metadata["output"]["name"] == "mask" and report.metadata["thresholded_output"]
  masks = _tflite_outputs(out, held_out_images)
  assert masks.dtype == np.uint8 and set(np.unique(masks)) <= {0, 1}
  reference = jax_test_probabilities
  decided = np.abs(reference - trained_run.threshold) > 1e-4
  np.testing.assert_array_equal(masks[decided], (reference >= trained_run.threshold)[decided])
  # A mask model cannot serve `predict`, which needs probabilities.
  Image.fromarray(held_out_images[0]).save(tmp_path / "photo.png")
  assert predict.main(["--workdir", trained_run.workdir, "--model", out, "--images",
                       str(tmp_path / "photo.png"), "--out", str(tmp_path / "p")]) == 2
  assert "export it again without --with_threshold" in capsys.readouterr().err


def _read_png(path) -> np.ndarray:
  return np.asarray(Image.open(path), np.int32)


def test_predict_with_the_exported_model_agrees_with_jax(float32_export, trained_run,
                                                         held_out_images, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  for i, image in enumerate(held_out_images):
    Image.fromarray(image).save(images / f"img{i}.png")
  path, _ = float32_export
  for name, extra in (("jax", []), ("tflite", ["--model", path])):
    assert predict.main(["--workdir", trained_run.workdir, "--images", str(images),
                         "--out", str(tmp_path / name)] + extra) == 0
  for i in range(len(held_out_images)):
    probability = f"probability/img{i}_probability.png"
    assert np.max(np.abs(_read_png(tmp_path / "jax" / probability)
                         - _read_png(tmp_path / "tflite" / probability))) <= 1
    mask = f"img{i}_segmentation.png"
    assert np.mean(_read_png(tmp_path / "jax" / mask)
                   == _read_png(tmp_path / "tflite" / mask)) >= 0.999


def test_a_failed_parity_check_writes_nothing(tensorflow, trained_run, tmp_path, monkeypatch):
  real = export.parity.jax_probabilities
  monkeypatch.setattr(export.parity, "jax_probabilities",
                      lambda run, images: real(run, images) + np.float32(1e-3))
  out = tmp_path / "model.tflite"
  with pytest.raises(export.ParityError, match="was not written"):
    export.export_run(trained_run.workdir, str(out), latency_runs=0)
  assert not out.exists() and not (tmp_path / "model.tflite.json").exists()


def test_quantized_parity_counts_only_decided_pixels():
  int8 = export.QUANTIZATIONS.get("dynamic_int8")
  reference = np.full((1, 4, 4, 1), 0.9, np.float32)
  reference[0, 0] = 0.605  # undecided at threshold 0.6: within 1e-2
  shifted = reference.copy()
  shifted[0, 0] = 0.59  # flips the undecided row: allowed
  parity = export.compare_outputs(shifted, reference, int8, 0.6, thresholded=False)
  assert parity.passed and parity.mean_mask_ja == 1.0 and parity.undecided_fraction == 0.25
  assert parity.mean_mask_ja_all_pixels == pytest.approx(12 / 16)
  shifted[0, 1:] = 0.1  # flips 12 decided pixels: JA 0 over decided pixels
  parity = export.compare_outputs(shifted, reference, int8, 0.6, thresholded=False)
  assert not parity.passed and parity.flipped_decided_pixels == 12


def test_missing_tensorflow_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
  with pytest.raises(export.MissingExtraError, match=r"pip install -e \.\[export\]"):
    export.require_tensorflow()


def test_cli_refuses_onnx_and_unknown_names(tmp_path, capsys):
  common = ["--workdir", str(tmp_path), "--out", str(tmp_path / "m")]
  assert export.main(common + ["--format", "onnx"]) == 2
  assert "jax2onnx" in capsys.readouterr().err
  assert export.main(common + ["--format", "coreml"]) == 2
  assert "Valid export format names: tflite" in capsys.readouterr().err
  assert export.main(common + ["--quantize", "int4"]) == 2
  assert "dynamic_int8, float16, none" in capsys.readouterr().err


def test_benchmark_reports_sizes_and_latency(tensorflow):
  rows = export.benchmark(image_size=32, runs=2, quantizations=("none", "dynamic_int8"))
  by_name = {row["quantization"]: row for row in rows}
  # 440,417 float32 parameters: about 1.8 MB; int8 weights: about a third of that.
  assert 1.7e6 < by_name["none"]["size_bytes"] < 2.0e6
  assert by_name["dynamic_int8"]["size_bytes"] < 0.4 * by_name["none"]["size_bytes"]
  assert all(row["latency_ms"] > 0 for row in rows)
  table = export.benchmark_table(rows)
  assert table.count("\n") == 3 and "| dynamic_int8 | 32x32 |" in table
