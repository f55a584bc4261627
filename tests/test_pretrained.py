"""Pretrained importers: TF DeepLab zoo names, Keras MobileNetV2 files, loud failures.

The name/shape tables below are written from the TF DeepLab and Keras layouts (docs/
architecture.md), independently of the Flax modules, so they check the mapping. Tests that need
the optional `pretrained` extra (tensorflow, keras, h5py) guard with importorskip; CI installs it.
"""
import os

# Keras 3 on JAX needs no TensorFlow; set before anything (tensorflow included) imports keras.
os.environ.setdefault("KERAS_BACKEND", "jax")

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lesion_jax.models import create_model  # noqa: E402
from lesion_jax.models.encoders import MobileNetV2Encoder  # noqa: E402
from lesion_jax.models.pretrained import (PretrainedMismatchError,  # noqa: E402
                                          keras_mobilenet_v2_filename, load_deeplab_checkpoint,
                                          load_keras_mobilenet_v2)

BN = ("gamma", "beta", "moving_mean", "moving_variance")
# MobileNetV2 at depth multiplier 1.0: (expansion, output channels) of blocks 0..16.
MNV2_BLOCKS = [(1, 16)] + [(6, 24)] * 2 + [(6, 32)] * 3 + [(6, 64)] * 4 + [(6, 96)] * 3 + [
    (6, 160)] * 3 + [(6, 320)]


def conv_vars(scope, shape, depthwise=False):
  """A TF-slim conv with BatchNorm: weights (or depthwise_weights) plus four BN variables."""
  names = {f"{scope}/{'depthwise_weights' if depthwise else 'weights'}": shape}
  names.update({f"{scope}/BatchNorm/{v}": (shape[-2] if depthwise else shape[-1],) for v in BN})
  return names


def tf_mobilenet_v2_deeplab(num_classes=21):
  """Names and shapes of deeplabv3_mnv2_* checkpoints (MobileNetV2 1.0 + image pooling head)."""
  names = conv_vars("MobilenetV2/Conv", (3, 3, 3, 32))
  channels = 32
  for index, (expansion, out) in enumerate(MNV2_BLOCKS):
    scope = "MobilenetV2/expanded_conv" + (f"_{index}" if index else "")
    inner = channels * expansion
    if expansion != 1:
      names.update(conv_vars(f"{scope}/expand", (1, 1, channels, inner)))
    names.update(conv_vars(f"{scope}/depthwise", (3, 3, inner, 1), depthwise=True))
    names.update(conv_vars(f"{scope}/project", (1, 1, inner, out)))
    channels = out
  names.update(conv_vars("image_pooling", (1, 1, 320, 256)))
  names.update(conv_vars("aspp0", (1, 1, 320, 256)))
  names.update(conv_vars("concat_projection", (1, 1, 512, 256)))
  names["logits/semantic/weights"] = (1, 1, 256, num_classes)
  names["logits/semantic/biases"] = (num_classes,)
  return names


def tf_xception_65_deeplab(middle_units, num_classes=21):
  """Names and shapes of deeplabv3_* Xception-65 checkpoints (ASPP + decoder)."""
  names = conv_vars("xception_65/entry_flow/conv1_1", (3, 3, 3, 32))
  names.update(conv_vars("xception_65/entry_flow/conv1_2", (3, 3, 32, 64)))
  modules = [(f"entry_flow/block{i}/unit_1", depths, True) for i, depths in
             enumerate([(128,) * 3, (256,) * 3, (728,) * 3], start=1)]
  modules += [(f"middle_flow/block1/unit_{i}", (728,) * 3, False)
              for i in range(1, middle_units + 1)]
  modules += [("exit_flow/block1/unit_1", (728, 1024, 1024), True),
              ("exit_flow/block2/unit_1", (1536, 1536, 2048), False)]
  channels = 64
  for unit, depths, conv_shortcut in modules:
    scope = f"xception_65/{unit}/xception_module"
    inputs = channels
    for j, depth in enumerate(depths, start=1):
      names.update(conv_vars(f"{scope}/separable_conv{j}_depthwise", (3, 3, channels, 1), True))
      names.update(conv_vars(f"{scope}/separable_conv{j}_pointwise", (1, 1, channels, depth)))
      channels = depth
    if conv_shortcut:
      names.update(conv_vars(f"{scope}/shortcut", (1, 1, inputs, channels)))
  names.update(conv_vars("image_pooling", (1, 1, 2048, 256)))
  names.update(conv_vars("aspp0", (1, 1, 2048, 256)))
  for k in (1, 2, 3):
    names.update(conv_vars(f"aspp{k}_depthwise", (3, 3, 2048, 1), True))
    names.update(conv_vars(f"aspp{k}_pointwise", (1, 1, 2048, 256)))
  names.update(conv_vars("concat_projection", (1, 1, 5 * 256, 256)))
  names.update(conv_vars("decoder/feature_projection0", (1, 1, 256, 48)))
  for k, channels in ((0, 256 + 48), (1, 256)):
    names.update(conv_vars(f"decoder/decoder_conv{k}_depthwise", (3, 3, channels, 1), True))
    names.update(conv_vars(f"decoder/decoder_conv{k}_pointwise", (1, 1, channels, 256)))
  names["logits/semantic/weights"] = (1, 1, 256, num_classes)
  names["logits/semantic/biases"] = (num_classes,)
  return names


def random_arrays(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}


def abstract_variables(model, side=32):
  """init's variable tree as shapes only: loading must replace every leaf it touches."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, side, side, 3))))


def concrete_variables(model, side=32):
  """Zero-filled variables, for loads that keep some leaves at their initial value."""
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                flax.core.unfreeze(abstract_variables(model, side)))


def flax_names(variables):
  return {"/".join((collection, *path))
          for collection in ("params", "batch_stats")
          for path in flax.traverse_util.flatten_dict(variables[collection])}


def test_mobilenet_v2_zoo_names_fill_every_variable_and_skip_foreign_logits():
  model = create_model("deeplab_mobilenetv2", alpha=1.0)
  shapes = tf_mobilenet_v2_deeplab(num_classes=21)
  source = random_arrays(shapes)
  slots = {f"{name}/Momentum": np.zeros(shape, np.float32) for name, shape in
           list(shapes.items())[:3]}
  source.update(slots, global_step=np.array(30000))
  variables = concrete_variables(model)
  loaded, report = load_deeplab_checkpoint(variables, source)

  logits = {"params/logits/kernel", "params/logits/bias"}
  assert set(report.loaded) == flax_names(variables) - logits
  assert set(report.kept_init) == logits                      # 21 Pascal classes vs 1 here
  assert set(report.skipped_source) == {"logits/semantic/weights", "logits/semantic/biases"}
  assert set(report.ignored_source) == set(slots) | {"global_step"}
  # Depthwise kernels turn from TF's (3, 3, C, 1) into (3, 3, 1, C); BN stats go to batch_stats.
  block = loaded["params"]["encoder"]["block_5"]
  np.testing.assert_array_equal(
      block["depthwise"]["conv"]["kernel"],
      source["MobilenetV2/expanded_conv_5/depthwise/depthwise_weights"].transpose(0, 1, 3, 2))
  np.testing.assert_array_equal(block["depthwise"]["bn"]["scale"],
                                source["MobilenetV2/expanded_conv_5/depthwise/BatchNorm/gamma"])
  np.testing.assert_array_equal(
      loaded["batch_stats"]["encoder"]["block_5"]["project"]["bn"]["var"],
      source["MobilenetV2/expanded_conv_5/project/BatchNorm/moving_variance"])
  np.testing.assert_array_equal(loaded["params"]["head"]["concat_projection"]["conv"]["kernel"],
                                source["concat_projection/weights"])
  np.testing.assert_array_equal(loaded["params"]["logits"]["kernel"], 0.0)  # kept at init


def test_logits_load_when_the_class_count_matches():
  model = create_model("deeplab_mobilenetv2", alpha=1.0, num_classes=21)
  source = random_arrays(tf_mobilenet_v2_deeplab(num_classes=21))
  loaded, report = load_deeplab_checkpoint(abstract_variables(model), source)
  assert "params/logits/kernel" in report.loaded and not report.skipped_source
  np.testing.assert_array_equal(loaded["params"]["logits"]["bias"],
                                source["logits/semantic/biases"])


def test_xception_zoo_names_fill_every_variable():
  model = create_model("deeplabv3plus_xception65", middle_flow_units=2)
  source = random_arrays(tf_xception_65_deeplab(middle_units=2, num_classes=19))
  variables = concrete_variables(model)
  loaded, report = load_deeplab_checkpoint(variables, source)
  assert set(report.loaded) == flax_names(variables) - {"params/logits/kernel",
                                                         "params/logits/bias"}
  name = ("xception_65/middle_flow/block1/unit_2/xception_module/"
          "separable_conv3_depthwise/depthwise_weights")
  np.testing.assert_array_equal(
      loaded["params"]["encoder"]["middle_flow_unit_2"]["separable_conv3"]["depthwise"]["conv"][
          "kernel"], source[name].transpose(0, 1, 3, 2))
  np.testing.assert_array_equal(
      loaded["batch_stats"]["encoder"]["exit_flow_block1"]["shortcut"]["bn"]["mean"],
      source["xception_65/exit_flow/block1/unit_1/xception_module/shortcut/BatchNorm/moving_mean"])


def test_missing_unused_and_mismatched_names_fail_loudly():
  source = random_arrays(tf_mobilenet_v2_deeplab())
  # The zoo MobileNetV2 checkpoints have no ASPP: every missing name is listed...
  with_aspp = create_model("deeplab_mobilenetv2", alpha=1.0, aspp=True)
  with pytest.raises(PretrainedMismatchError, match=r"(?s)no match.*aspp1_depthwise/"
                     r"depthwise_weights.*shapes differ.*concat_projection/weights"):
    load_deeplab_checkpoint(abstract_variables(with_aspp), source)
  # ...and dont_load keeps them (and the wider projection) at init.
  _, report = load_deeplab_checkpoint(
      concrete_variables(with_aspp), source,
      dont_load=[r"head/aspp[123]/", r"head/concat_projection/"])
  assert any("aspp2" in name for name in report.kept_init)
  assert "concat_projection/weights" in report.skipped_source
  # A checkpoint variable that fits nothing is an error, not silently dropped.
  extra = dict(source, **{"MobilenetV2/Conv_1/weights": np.zeros((1, 1, 320, 1280), np.float32)})
  model = create_model("deeplab_mobilenetv2", alpha=1.0)
  with pytest.raises(PretrainedMismatchError, match=r"match nothing in the model:\s+"
                     r"MobilenetV2/Conv_1/weights"):
    load_deeplab_checkpoint(abstract_variables(model), extra)
  # The alpha=1.0 checkpoint does not fit alpha=0.35: shapes are listed.
  small = create_model("deeplab_mobilenetv2", alpha=0.35)
  with pytest.raises(PretrainedMismatchError,
                     match=r"params/encoder/Conv1/conv/kernel \(3, 3, 3, 16\) <- "
                           r"MobilenetV2/Conv/weights \(3, 3, 3, 32\)"):
    load_deeplab_checkpoint(abstract_variables(small), source)


def test_keras_filenames_cover_every_published_alpha():
  assert keras_mobilenet_v2_filename(0.35) == (
      "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
  assert keras_mobilenet_v2_filename(1, rows=96).endswith("_1.0_96_no_top.h5")
  with pytest.raises(ValueError, match=r"alpha in \(0.35, 0.5, 0.75, 1.0, 1.3, 1.4\), got 0.25"):
    keras_mobilenet_v2_filename(0.25)


def test_tf1_checkpoint_file_round_trip(tmp_path):
  tf = pytest.importorskip("tensorflow")
  shapes = tf_mobilenet_v2_deeplab(num_classes=19)
  source = random_arrays(shapes)
  source["concat_projection/weights/Momentum"] = np.zeros((1, 1, 512, 256), np.float32)
  source["global_step"] = np.array(1000, np.int64)
  prefix = str(tmp_path / "model.ckpt-1000")
  names = sorted(source)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(source[name]) for name in names])
  assert os.path.exists(prefix + ".index")
  model = create_model("deeplab_mobilenetv2", alpha=1.0)
  variables = concrete_variables(model)
  loaded, report = load_deeplab_checkpoint(variables, prefix)
  assert set(report.loaded) == flax_names(variables) - {"params/logits/kernel",
                                                         "params/logits/bias"}
  assert set(report.ignored_source) == {"concat_projection/weights/Momentum", "global_step"}
  np.testing.assert_array_equal(loaded["batch_stats"]["head"]["aspp0"]["bn"]["mean"],
                                source["aspp0/BatchNorm/moving_mean"])


def _random_keras_mobilenet_v2(keras, alpha, shape, seed):
  model = keras.applications.MobileNetV2(weights=None, alpha=alpha, include_top=False,
                                         input_shape=shape)
  rng = np.random.default_rng(seed)
  for weight in model.weights:  # every weight random, BN statistics included
    value_shape = tuple(weight.shape)
    leaf = weight.path.rsplit("/", 1)[-1]
    if leaf in ("gamma", "moving_variance"):
      value = rng.uniform(0.5, 1.5, value_shape)
    elif leaf in ("beta", "moving_mean"):
      value = rng.normal(0, 0.1, value_shape)
    else:
      value = rng.normal(0, 1, value_shape) / np.sqrt(np.prod(value_shape[:-1]))
    weight.assign(value.astype(np.float32))
  return model


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras's own numpy-2 copy warning
@pytest.mark.parametrize("alpha", [0.35, 1.0])
def test_keras_mobilenet_v2_features_match(alpha, tmp_path):
  # Keras is the reference whatever backend it runs on (TensorFlow's here: tests/conftest.py).
  keras = pytest.importorskip("keras")
  h5py = pytest.importorskip("h5py")
  shape = (64, 96, 3)
  keras_model = _random_keras_mobilenet_v2(keras, alpha, shape, seed=int(alpha * 100))
  files = [tmp_path / "full_model.h5"]
  keras_model.save(files[0])  # legacy H5 with a 'model_weights' group, Keras 3 names
  try:  # the published files' weights-only layout
    from keras.src.legacy.saving import legacy_h5_format
    files.append(tmp_path / "weights_only.h5")
    with h5py.File(files[1], "w") as handle:
      legacy_h5_format.save_weights_to_hdf5_group(handle, keras_model)
  except ImportError:
    pass
  probe = keras.Model(keras_model.input, [keras_model.get_layer("block_2_depthwise_relu").output,
                                          keras_model.get_layer("block_16_project_BN").output])
  x = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
  expected_low, expected_high = probe.predict(x, verbose=0)

  encoder = MobileNetV2Encoder(alpha=alpha, output_stride=32)  # Keras's network: no atrous
  for path in files:
    variables, report = load_keras_mobilenet_v2(abstract_variables(encoder), str(path), prefix=())
    assert set(report.loaded) == flax_names(variables)
    assert {name.split("/")[0] for name in report.skipped_source} == {"Conv_1", "Conv_1_bn"}
    features = jax.jit(encoder.apply)(variables, x)
    for got, want in ((features[4], expected_low), (features[32], expected_high)):
      scale = max(1.0, float(np.max(np.abs(want))))
      np.testing.assert_allclose(np.asarray(got), want, atol=1e-4 * scale, rtol=1e-4)
