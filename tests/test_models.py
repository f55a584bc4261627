"""Model registry: parameter counts, forward/backward on non-square input, dtypes, bad input.

Speed notes: counts come from `jax.eval_shape` (nothing runs). Forward/backward runs use narrow
versions of each registered setting (U-Nets cloned to ifc=4, MobileNetV2 at alpha 0.35,
Xception-65 with one middle-flow unit) with variables filled from NumPy, since `model.init`
compiles a random sampler per parameter shape; one jit per model then covers the loss, the
gradients and two dropout keys.
"""
import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lesion_jax.models import (MODELS, check_input_size, count_params, create_model,
                               model_names)
from lesion_jax.models import kernels as kernels_lib
from lesion_jax.models.__main__ import format_millions, paper_settings, table
from lesion_jax.models.encoders import ENCODERS, create_encoder
from lesion_jax.models.kernels import KernelOptions
from lesion_jax.registry import UnknownNameError

# (name, options, exact count, architecture.md target, tolerance of the target).
COUNTS = [
    ("unet", {"ifc": 16}, 1_962_625, 1_962_625, 0.0),
    ("unet", {"ifc": 32}, 7_846_657, 7.85e6, 0.02),
    ("att_unet", {"ifc": 64}, 31_902_629, 31.90e6, 0.02),
    ("r2_unet", {"ifc": 16}, 6_003_041, 6.00e6, 0.02),
    ("att_r2_unet", {"ifc": 64}, 96_509_733, 96.51e6, 0.02),
    ("deeplabv3plus_xception65", {"output_stride": 16}, 41_050_273, 41.05e6, 0.02),
    ("deeplabv3plus_xception65", {"output_stride": 8}, 41_050_273, 41.05e6, 0.02),
    ("deeplab_mobilenetv2", {"alpha": 1.0}, 2_108_417, 2_108_417, 0.0),
    ("deeplab_mobilenetv2", {"alpha": 0.35}, 440_417, 440_417, 0.0),
    ("deeplab_mobilenetv2", {"alpha": 0.35, "output_stride": 8}, 440_417, 440_417, 0.0),
]

# Narrow stand-ins of every registered setting, keeping its layout (block, attention, head).
SMALL = {
    "unet": lambda: create_model("unet").clone(ifc=4),
    "att_unet": lambda: create_model("att_unet").clone(ifc=4),
    "r2_unet": lambda: create_model("r2_unet").clone(ifc=4),
    "att_r2_unet": lambda: create_model("att_r2_unet").clone(ifc=4),
    # 'xla' depthwise: same numbers as the CPU default 'shifted' (tests/test_depthwise.py) but
    # about a third less XLA compile time for a whole-network gradient.
    "deeplab_mobilenetv2": lambda: create_model("deeplab_mobilenetv2", alpha=0.35,
                                                depthwise_implementation="xla"),
    "deeplabv3plus_xception65": lambda: create_model(
        "deeplabv3plus_xception65", middle_flow_units=1, depthwise_implementation="xla"),
}
# These runs check shapes and gradients, not speed: cheaper XLA CPU codegen cuts compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
HAS_DROPOUT = {"unet", "att_unet", "deeplab_mobilenetv2", "deeplabv3plus_xception65"}
BATCH, HEIGHT, WIDTH = 2, 32, 48  # non-square; multiple of 16 (U-Net) and of OS 8/16


def numpy_variables(model, shape, seed=0):
  """Variables with init's tree and shapes, filled from NumPy (LeCun-scaled kernels, unit BN)."""
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                          jax.ShapeDtypeStruct(shape, jnp.float32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.normal(size=leaf.shape) * np.sqrt(1.0 / fan_in)  # Flax's default (LeCun) scale
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, flax.core.unfreeze(shapes))


def intercepted(options, fn):
  """`fn` called under kernels.intercept(options), also while jax traces it."""
  def call(*args, **kwargs):
    with kernels_lib.intercept(options):
      return fn(*args, **kwargs)
  return call


def assert_replaced(injected, plain, *args):
  """The injected call traces to another program than flax's own: a kernel took the layer."""
  programs = [str(jax.make_jaxpr(f)(*args)) for f in (injected, plain)]
  assert programs[0] != programs[1]


def test_registry_lists_every_architecture():
  assert model_names() == sorted(["att_r2_unet", "att_unet", "deeplab_mobilenetv2",
                                  "deeplabv3plus_xception65", "r2_unet", "unet"])
  assert set(SMALL) == set(model_names())
  with pytest.raises(UnknownNameError, match="Valid model names: att_r2_unet, att_unet"):
    create_model("unet++")


@pytest.mark.parametrize("name,options,exact,target,tolerance", COUNTS,
                         ids=[f"{c[0]}-{c[1]}" for c in COUNTS])
def test_parameter_counts(name, options, exact, target, tolerance):
  count = count_params(create_model(name, **options))
  assert count == exact
  assert abs(count - target) <= tolerance * target


def test_default_settings_are_the_papers_best():
  expected = {"unet": 32, "att_unet": 64, "r2_unet": 16, "att_r2_unet": 64}
  for name, ifc in expected.items():
    assert create_model(name).ifc == ifc
  assert create_model("unet").dropout_rate == create_model("att_unet").dropout_rate == 0.2
  assert create_model("r2_unet").dropout_rate == 0.0
  assert not create_model("unet").batch_norm
  mobile = create_model("deeplab_mobilenetv2")
  assert (mobile.encoder.alpha, mobile.encoder.output_stride, mobile.aspp, mobile.decoder) == (
      1.0, 16, False, False)


def test_options_change_the_layout_as_documented():
  # R2 weight sharing: one conv per recurrent unit instead of three.
  shared = count_params(create_model("r2_unet", share_recurrent_weights=True))
  assert 2.0 < 6_003_041 / shared < 3.0
  # ASPP (3 separable branches, wider projection) and the v3+ decoder add parameters.
  plain = count_params(create_model("deeplab_mobilenetv2", alpha=0.35))
  with_aspp = count_params(create_model("deeplab_mobilenetv2", alpha=0.35, aspp=True))
  full = count_params(create_model("deeplab_mobilenetv2", alpha=0.35, aspp=True, decoder=True))
  assert plain < with_aspp < full


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name == "deeplabv3plus_xception65" else name
    for name in sorted(SMALL)])  # Xception: ~10 s even with one middle-flow unit
def test_forward_and_backward_on_non_square_input(name):
  model = SMALL[name]()
  shape = (BATCH, HEIGHT, WIDTH, 3)
  variables = numpy_variables(model, shape)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)

  @jax.jit(compiler_options=FAST_COMPILE)
  def loss_and_grads(params, key):
    def loss(params):
      logits, _ = model.apply({"params": params, **state}, x, train=True,
                              mutable=list(state), rngs={"dropout": key})
      return jnp.mean(logits), logits
    return jax.value_and_grad(loss, has_aux=True)(params)

  # rbg keys: the default threefry sampler is slow to compile on CPU.
  (loss_a, logits), grads = loss_and_grads(params, jax.random.key(1, impl="rbg"))
  (loss_b, _), _ = loss_and_grads(params, jax.random.key(2, impl="rbg"))
  assert logits.shape == (BATCH, HEIGHT, WIDTH, 1)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  # Every block takes part: each top-level submodule gets a non-zero gradient (single leaves
  # may legitimately get none, e.g. behind a dead ReLU in a 2-channel attention gate). Checked
  # in NumPy: a jnp check per leaf would compile a program per leaf shape.
  grads = jax.device_get(grads)
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
  for module, subtree in grads.items():
    largest = max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(subtree))
    assert largest > 0, f"no gradient reaches {module}"
  if name in HAS_DROPOUT:
    assert float(loss_a) != float(loss_b)  # the dropout rng is used...
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):  # ...and needed
      jax.eval_shape(lambda: model.apply(variables, x, train=True, mutable=list(state)))
  else:
    assert float(loss_a) == float(loss_b)
  # Inference mode: same shape, no rng needed.
  out = jax.eval_shape(lambda: model.apply(variables, x))
  assert (out.shape, out.dtype) == ((BATCH, HEIGHT, WIDTH, 1), jnp.float32)


@pytest.mark.parametrize("name", ["unet", "deeplab_mobilenetv2"])
def test_bfloat16_compute_keeps_float32_params_and_finite_output(name):
  options = {"alpha": 0.35} if name == "deeplab_mobilenetv2" else {}
  model = create_model(name, dtype=jnp.bfloat16, **options)
  if name == "deeplab_mobilenetv2":  # the CPU default 'shifted' path, in bfloat16
    assert model.kernels == KernelOptions.for_backend(jax.default_backend())
  if name == "unet":
    model = model.clone(ifc=4)
  shape = (1, HEIGHT, WIDTH, 3)
  param_dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x), jax.ShapeDtypeStruct(shape, jnp.float32)))}
  assert param_dtypes == {jnp.dtype(jnp.float32)}
  variables = numpy_variables(model, shape)
  x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
  logits = jax.jit(model.apply, compiler_options=FAST_COMPILE)(variables, x)
  assert logits.dtype == jnp.float32 and logits.shape == (1, HEIGHT, WIDTH, 1)
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("name,options,message", [
    ("unet", {"ifc": 8}, r"ifc .*one of \(16, 32, 64\).*got 8"),
    ("r2_unet", {"ifc": 128}, r"ifc .*got 128"),
    ("deeplab_mobilenetv2", {"alpha": 0}, r"alpha must be a number > 0, got 0"),
    ("deeplab_mobilenetv2", {"alpha": -0.5}, r"alpha .*got -0.5"),
    ("deeplab_mobilenetv2", {"output_stride": 12},
     r"output_stride must be one of \(8, 16\), got 12"),
    ("deeplabv3plus_xception65", {"output_stride": 12}, r"output_stride .*got 12"),
    ("unet", {"dtype": "int32"}, r"dtype must be one of"),
    ("deeplab_mobilenetv2", {"depthwise_implementation": "cuda"}, r"depthwise_implementation"),
])
def test_bad_options_raise_value_error_naming_the_value(name, options, message):
  with pytest.raises(ValueError, match=message):
    create_model(name, **options)


def test_unknown_option_names_the_accepted_ones():
  with pytest.raises(TypeError, match=r"'deeplab_mobilenetv2' got unknown option\(s\) \['ifc'\]"):
    create_model("deeplab_mobilenetv2", ifc=16)


@pytest.mark.parametrize("name,divisor", [("unet", 16), ("deeplab_mobilenetv2", 16),
                                          ("deeplabv3plus_xception65", 16)])
def test_input_size_not_divisible_is_rejected_before_running(name, divisor):
  model = create_model(name)
  assert model.input_divisor == divisor
  check_input_size(model, 64, 96)
  with pytest.raises(ValueError, match=rf"input size 40x96 .*multiples of {divisor}"):
    check_input_size(model, 40, 96)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 64, 64, 3))))
  with pytest.raises(ValueError, match=rf"input size 64x72 does not suit \w+"):
    jax.eval_shape(lambda: model.apply(variables, jnp.ones((1, 64, 72, 3))))


def test_input_divisor_follows_the_output_stride():
  assert create_model("deeplab_mobilenetv2", output_stride=8).input_divisor == 8
  assert create_model("deeplabv3plus_xception65", output_stride=8).input_divisor == 8


@pytest.mark.parametrize("encoder,options", [
    ("mobilenet_v2", {"alpha": 0.35, "output_stride": 16}),
    ("mobilenet_v2", {"alpha": 1.0, "output_stride": 8}),
    ("xception_65", {"output_stride": 16, "middle_flow_units": 1}),
    ("xception_65", {"output_stride": 8, "middle_flow_units": 1}),
])
def test_encoders_keep_the_contract(encoder, options):
  module = create_encoder(encoder, **options)
  x = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
  features = jax.eval_shape(lambda v, x: module.apply(v, x), variables, x)
  assert sorted(features) == sorted(module.feature_channels) == [4, module.output_stride]
  for stride, feature in features.items():
    assert feature.shape == (1, 64 // stride, 96 // stride, module.feature_channels[stride])
  assert set(ENCODERS) == {"mobilenet_v2", "xception_65"}


def test_mobilenet_v2_low_level_feature_is_block_2_depthwise_output():
  # alpha 1.0: block 2 expands 24 -> 144 channels (TF-slim's layer_4/depthwise_output).
  assert create_encoder("mobilenet_v2", alpha=1.0).feature_channels == {4: 144, 16: 320}
  assert create_encoder("mobilenet_v2", alpha=0.35).feature_channels == {4: 48, 16: 112}


def test_table_covers_every_registered_model_in_table_2_style():
  assert {name for name, _ in paper_settings()} == set(MODELS)
  text = table([("deeplab_mobilenetv2", {"alpha": 0.35, "output_stride": 16}),
                ("unet", {"ifc": 32})])
  mobile, unet = text.splitlines()[2:]
  assert mobile.split()[-3:] == ["0.4M", "440,417", "0.4M"]   # P, exact count, paper's P
  assert unet.split()[-3:] == ["8M", "7,846,657", "8M"]
  assert format_millions(96_509_733) == "97M" and format_millions(1_301_409) == "1M"


def test_max_pool_2x2_matches_flax_max_pool_in_values_and_gradients_after_relu():
  from flax import linen as nn
  from lesion_jax.models.layers import max_pool_2x2
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=(2, 6, 8, 3)).astype(np.float32))
  weights = jnp.asarray(rng.normal(size=(2, 3, 4, 3)).astype(np.float32))
  # After a ReLU many windows are all zeros (tied maxima), as in the U-Net.
  reference = lambda z: (nn.max_pool(jax.nn.relu(z), (2, 2), strides=(2, 2)) * weights).sum()
  reshaped = lambda z: (max_pool_2x2(jax.nn.relu(z)) * weights).sum()
  np.testing.assert_array_equal(max_pool_2x2(z), nn.max_pool(z, (2, 2), strides=(2, 2)))
  np.testing.assert_allclose(jax.grad(reshaped)(z), jax.grad(reference)(z), rtol=0, atol=1e-7)
  with pytest.raises(ValueError, match="even height and width, got 5x8"):
    max_pool_2x2(z[:, :5])


def test_the_kernels_attach_to_the_model_and_leave_its_variables_alone():
  from lesion_jax.models import DeepLab, UNet
  model = create_model("unet", ifc=16, batch_norm=True)
  # Still a UNet with the same fields, plus the kernels it computes with.
  assert isinstance(model, UNet) and type(model).__name__ == "UNet"
  assert model.kernels == KernelOptions.for_backend(jax.default_backend())
  assert model.clone(ifc=32).kernels == model.kernels and model == model.clone()
  plain = KernelOptions()
  assert model.clone(kernels=plain).kernels == plain
  assert create_model("unet", ifc=16, batch_norm=True, kernels=plain) == model.clone(kernels=plain)
  assert kernels_lib.attach(model, plain) == model.clone(kernels=plain)
  assert isinstance(create_model("deeplab_mobilenetv2"), DeepLab)
  # The module built directly computes as flax does: the same variables, and the same numbers
  # as the CPU's kernels (dropout off: its masks differ by design).
  model = create_model("att_unet", batch_norm=True, dropout_rate=0.0,
                       kernels=KernelOptions.for_backend("cpu")).clone(ifc=2)
  direct = UNet(ifc=2, attention=True, batch_norm=True, dropout_rate=0.0)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 32, 32, 3)), jnp.float32)
  shapes = [jax.eval_shape(lambda x, m=m: m.init(jax.random.key(0), x), x)
            for m in (model, direct)]
  assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
  assert jax.tree.leaves(shapes[0]) == jax.tree.leaves(shapes[1])
  variables = numpy_variables(direct, x.shape)

  @jax.jit(compiler_options=FAST_COMPILE)  # one compile for both
  def outputs_and_gradients(variables):
    def loss(params, m):
      y, _ = m.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(y ** 2), y
    return [jax.grad(loss, has_aux=True)(variables["params"], m) for m in (model, direct)]

  (got, got_y), (want, want_y) = outputs_and_gradients(variables)
  np.testing.assert_allclose(got_y, want_y, rtol=1e-4, atol=1e-5)
  for path, g in flax.traverse_util.flatten_dict(got).items():
    w = flax.traverse_util.flatten_dict(want)[path]
    scale = float(jnp.abs(w).max()) + 1e-12
    # Batch 2 at 32x32: BatchNorm over the bottleneck's few values (batch 1 at 16x32 gave 2)
    # amplifies rounding differences; here they stay near 1e-5.
    np.testing.assert_allclose(g / scale, w / scale, atol=1e-4, err_msg=str(path))


def test_xla_compiler_options_follow_the_model_and_the_override():
  from lesion_jax.models import xla_compiler_options
  unet = create_model("unet", ifc=16)
  deeplab = create_model("deeplab_mobilenetv2", alpha=0.35)
  off = {"xla_cpu_experimental_ynn_fusion_type": ""}
  assert xla_compiler_options(unet, "auto", "cpu") == off
  assert xla_compiler_options(deeplab, "auto", "cpu") == {}
  assert xla_compiler_options(unet, "on", "cpu") == {}
  assert xla_compiler_options(deeplab, "off", "cpu") == off
  assert xla_compiler_options(unet, "auto", "gpu") == {}  # a CPU-only choice
  with pytest.raises(ValueError, match=r"one of \('auto', 'on', 'off'\), got 'yes'"):
    xla_compiler_options(unet, "yes", "cpu")


def test_conv_upsampled_equals_conv_of_nearest_upsampling():
  from lesion_jax.models import kernels
  rng = np.random.default_rng(0)
  low = jnp.asarray(rng.normal(size=(2, 3, 5, 4)).astype(np.float32))  # odd, non-square
  kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 6)).astype(np.float32))
  cotangent = jnp.asarray(rng.normal(size=(2, 6, 10, 6)).astype(np.float32))
  # The plain form is the literal conv3x3_same(upsample_nearest(low)).
  np.testing.assert_array_equal(
      kernels.conv_upsampled_plain(low, kernel),
      nn_conv_same(jnp.repeat(jnp.repeat(low, 2, axis=1), 2, axis=2), kernel))

  want, want_vjp = jax.vjp(kernels.conv_upsampled_plain, low, kernel)
  got, got_vjp = jax.vjp(kernels.conv_upsampled, low, kernel)
  assert got.shape == (2, 6, 10, 6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for g, w in zip(got_vjp(cotangent), want_vjp(cotangent)):  # d/dlow, d/dkernel
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
  # The interleave's hand-written backward against autodiff of the same forward.
  phases = jnp.asarray(rng.normal(size=(2, 4, 6, 2, 2, 6)).astype(np.float32))
  want, want_vjp = jax.vjp(kernels.interleave_phases_plain, phases)
  got, got_vjp = jax.vjp(kernels.interleave_phases, phases)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(got_vjp(cotangent)[0], want_vjp(cotangent)[0])


@pytest.mark.parametrize("name", ["unet", "att_unet"])
def test_subpixel_decoder_keeps_the_parameter_tree(name):
  # Same names and shapes (from shapes alone, nothing compiles): checkpoints move between forms.
  shapes = [jax.eval_shape(lambda x, m=m: m.init(jax.random.key(0), x),
                           jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
            for m in (create_model(name, ifc=16, decoder_conv=d) for d in ("concat", "subpixel"))]
  assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1])
  assert jax.tree.leaves(shapes[0]) == jax.tree.leaves(shapes[1])


def test_subpixel_decoder_gives_the_same_outputs_and_gradients_as_the_concat_form():
  # AttU-Net gates the skip before the same decoder call; the U-Net's numbers cover both.
  concat = create_model("unet", ifc=16, decoder_conv="concat").clone(ifc=2)
  subpixel = concat.clone(kernels=dataclasses.replace(concat.kernels, decoder_conv="subpixel"))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 16, 32, 3)).astype(np.float32))
  params = numpy_variables(concat, x.shape)["params"]

  @jax.jit  # one compile for both forms' outputs and gradients
  def outputs_and_gradients(params):
    def loss(model, params):
      return jnp.sum(model.apply({"params": params}, x) ** 2)
    return [(m.apply({"params": params}, x), jax.grad(lambda p, m=m: loss(m, p))(params))
            for m in (concat, subpixel)]

  (want_y, want_grads), (got_y, got_grads) = outputs_and_gradients(params)
  np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-6)
  flat = [dict(flax.traverse_util.flatten_dict(g)) for g in (want_grads, got_grads)]
  for path, want in flat[0].items():
    scale = float(jnp.abs(want).max()) + 1e-12
    np.testing.assert_allclose(flat[1][path] / scale, want / scale, atol=1e-5, err_msg=str(path))


def nn_conv_same(x, kernel):
  from jax import lax
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_decoder_conv_choice_by_backend_and_unknown_names(monkeypatch):
  from lesion_jax.models import layers
  for backend, expected in [("cpu", "subpixel"), ("gpu", "concat"), ("tpu", "concat")]:
    assert KernelOptions.for_backend(backend).decoder_conv == expected
    monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
    assert create_model("unet", ifc=16).kernels.decoder_conv == expected  # 'auto'
  assert create_model("unet", ifc=16, decoder_conv="concat").kernels.decoder_conv == "concat"
  # bfloat16 compute: the phase kernels are summed in float32 before the cast, so the sub-pixel
  # layer stays within bfloat16's rounding of the literal form.
  rng = np.random.default_rng(2)
  low = jnp.asarray(rng.normal(size=(1, 4, 6, 8)).astype(np.float32))
  skip = jnp.asarray(rng.normal(size=(1, 8, 12, 4)).astype(np.float32))
  layer = layers.UpsampleConcatConv(5, (3, 3), dtype=jnp.bfloat16)
  subpixel = KernelOptions(decoder_conv="subpixel")
  variables = intercepted(subpixel, layer.init)(jax.random.key(0), low, skip)
  # The same initial values as the nn.Conv of the concatenation, given the same key.
  from flax import linen as nn
  joined = jnp.concatenate([layers.upsample_nearest(low), skip], -1)
  assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), variables,
                                   nn.Conv(5, (3, 3)).init(jax.random.key(0), joined)))
  literal = nn_conv_same(joined, variables["params"]["kernel"]) + variables["params"]["bias"]
  apply = intercepted(subpixel, layer.apply)
  assert_replaced(apply, layer.apply, variables, low, skip)
  got = apply(variables, low, skip)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(got.astype(np.float32), literal,
                             atol=0.02 * float(jnp.abs(literal).max()))
  with pytest.raises(ValueError, match=r"decoder_conv must be one of \('auto', 'subpixel', "):
    create_model("unet", ifc=16, decoder_conv="pixelshuffle")


def test_dropout_keeps_the_rate_and_the_mean_and_matches_flax_semantics():
  from flax import linen as nn
  from lesion_jax.models.kernels import dropout_keep_mask
  x = jnp.ones((4, 64, 64, 16))  # 262,144 draws: the kept fraction is known to ~0.001
  key = jax.random.key(0)
  keep, keep_probability = dropout_keep_mask(key, 0.2, x.shape)
  assert keep_probability == 1 - 13107 / 65536  # 0.2 resolved to 1/65536
  assert abs(float(keep.mean()) - keep_probability) < 0.004
  # nn.Dropout under the kernels draws its mask with dropout_keep_mask (on every backend).
  dropout = lambda rate, x, **kwargs: intercepted(  # noqa: E731
      KernelOptions(), nn.Dropout(rate).apply)({}, x, **kwargs)
  y = dropout(0.2, x, deterministic=False, rngs={"dropout": key})
  kept = np.asarray(y) != 0
  assert abs(kept.mean() - keep_probability) < 0.004
  # Scaled by the mask's exact keep probability, not flax's 1 / 0.8.
  np.testing.assert_allclose(np.asarray(y)[kept], 1 / keep_probability, rtol=1e-6)
  assert float(jnp.abs(y.mean() - 1)) < 0.01  # inverted dropout: expected output = input
  # Neighbouring values (the two halves of one 32-bit word) are not correlated.
  flat = np.asarray(keep).reshape(-1, 2).astype(np.float64)
  assert abs(np.corrcoef(flat[:, 0], flat[:, 1])[0, 1]) < 0.01
  # Another key, another mask; odd sizes; the deterministic path and the edge rates.
  other, _ = dropout_keep_mask(jax.random.key(1), 0.2, x.shape)
  assert 0.25 < float((other != keep).mean()) < 0.4
  assert dropout(0.5, jnp.ones((3, 5, 7)), deterministic=False,
                 rngs={"dropout": key}).shape == (3, 5, 7)
  np.testing.assert_array_equal(dropout(0.2, x, deterministic=True), x)
  np.testing.assert_array_equal(nn.Dropout(0.2).apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(dropout(1.0, x, deterministic=False), 0 * x)
  with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\], got 1.5"):
    dropout(1.5, x, deterministic=False, rngs={"dropout": key})


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_pointwise_conv_equals_flax_1x1_conv_in_parameters_values_and_gradients(backend):
  from flax import linen as nn
  # 'cpu' takes the matrix-product gradients, any other backend the convolution's own.
  kernels = KernelOptions.for_backend(backend)
  assert kernels.pointwise_grads == ("matmul" if backend == "cpu" else "autodiff")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 7, 6)).astype(np.float32))
  cotangent = jnp.asarray(rng.normal(size=(2, 5, 7, 4)).astype(np.float32))
  # The reference is the same nn.Conv computed by flax.
  layer = nn.Conv(4, (1, 1))
  variables = layer.init(jax.random.key(0), x)
  assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), variables,
                                   intercepted(kernels, layer.init)(jax.random.key(0), x)))
  apply = intercepted(kernels, layer.apply)
  assert_replaced(apply, layer.apply, variables, x)
  want, want_vjp = jax.vjp(layer.apply, variables, x)
  got, got_vjp = jax.vjp(jax.jit(apply), variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  for g, w in zip(jax.tree.leaves(got_vjp(cotangent)), jax.tree.leaves(want_vjp(cotangent))):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_batch_norm_matches_flax_in_values_gradients_running_averages_and_across_devices(
    backend):
  from flax import linen as nn
  # 'cpu' takes the hand-written gradient, any other backend autodiff of the same forward pass.
  kernels = KernelOptions.for_backend(backend)
  assert kernels.batch_norm_grad == ("hand_written" if backend == "cpu" else "autodiff")
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 6, 5, 8)).astype(np.float32) * 3 + 1)
  cotangent = jnp.asarray(rng.normal(size=x.shape).astype(np.float32))
  params = {"scale": jnp.asarray(rng.normal(size=8).astype(np.float32)),
            "bias": jnp.asarray(rng.normal(size=8).astype(np.float32))}
  stats = {"mean": jnp.full((8,), 0.5), "var": jnp.full((8,), 2.0)}

  # The reference is the same nn.BatchNorm computed by flax.
  module = nn.BatchNorm(momentum=0.9, epsilon=1e-3)

  def train_mode(params, x, axis_name=None):
    return module.clone(axis_name=axis_name).apply(
        {"params": params, "batch_stats": stats}, x, use_running_average=False,
        mutable=["batch_stats"])

  injected = intercepted(kernels, train_mode)
  init = lambda key, x: module.init(key, x, use_running_average=False)  # noqa: E731
  assert jax.tree.all(jax.tree.map(  # same variables, same initial values
      lambda a, b: np.array_equal(a, b),
      init(jax.random.key(0), x), intercepted(kernels, init)(jax.random.key(0), x)))
  assert_replaced(injected, train_mode, params, x)
  results = []
  for form in (train_mode, injected):
    (y, updates), vjp = jax.vjp(form, params, x)
    results.append((y, updates, vjp((cotangent, jax.tree.map(jnp.zeros_like, updates)))))
  (y_ref, updates_ref, grads_ref), (y, updates, grads) = results
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.tree.leaves((updates, grads)),
                       jax.tree.leaves((updates_ref, grads_ref))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Evaluation uses the running averages, as flax does.
  evaluate = lambda params, x: module.apply(  # noqa: E731
      {"params": params, "batch_stats": stats}, x, use_running_average=True)
  assert_replaced(intercepted(kernels, evaluate), evaluate, params, x)
  np.testing.assert_allclose(intercepted(kernels, evaluate)(params, x), evaluate(params, x),
                             rtol=1e-5, atol=1e-5)
  # Data parallel: two "devices" (a named vmap axis) with half the batch each normalise with
  # the global statistics, so outputs and input gradients equal the one-device ones, and the
  # parameter gradients are per-device parts of the one-device gradient.
  halves = x.reshape(2, 2, *x.shape[1:])

  def per_device(x, dy):
    (y, _), vjp = jax.vjp(lambda p, x: injected(p, x, "devices"), params, x)
    d_params, d_x = vjp((dy, {"batch_stats": jax.tree.map(jnp.zeros_like, stats)}))
    return y, d_x, d_params

  y2, dx2, dp2 = jax.vmap(per_device, axis_name="devices")(halves, cotangent.reshape(halves.shape))
  np.testing.assert_allclose(y2.reshape(x.shape), y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx2.reshape(x.shape), grads[1], rtol=1e-4, atol=1e-5)
  for got, want in zip(jax.tree.leaves(dp2), jax.tree.leaves(grads[0])):
    np.testing.assert_allclose(got.sum(0), want, rtol=1e-4, atol=1e-4)
