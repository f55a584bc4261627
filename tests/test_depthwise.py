"""Depthwise convolution: the shifted multiply-add form equals XLA's grouped convolution (TF
'SAME'), and a depthwise nn.Conv computes with the form the kernels choose."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lesion_jax.models import create_model
from lesion_jax.models.kernels import (KernelOptions, depthwise_conv_plain,
                                       depthwise_conv_shifted, intercept)
from lesion_jax.models.layers import fixed_padding

CHANNELS = 5


def grouped_conv_reference(x, kernel, stride, dilation):
  """Independent reference: lax's grouped conv with its own 'SAME' rule (TF's)."""
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), "SAME", rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def same_pads(x, kernel, stride, dilation):
  window = tuple(dilation * (k - 1) + 1 for k in kernel.shape[:2])
  return lax.padtype_to_pads(x.shape[1:3], window, (stride, stride), "SAME")


def shifted(x, kernel, stride, dilation):
  pads = same_pads(x, kernel, stride, dilation)
  return depthwise_conv_shifted(x, kernel, (stride, stride), (dilation, dilation), pads)


def plain(x, kernel, stride, dilation):
  pads = same_pads(x, kernel, stride, dilation)
  return depthwise_conv_plain(x, kernel, (stride, stride), (dilation, dilation), pads)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("size", [(8, 10), (7, 9)], ids=["even", "odd"])
def test_shifted_matches_grouped_conv_forward_and_gradients(stride, dilation, size):
  # The kernel and its plain form, each against lax's own 'SAME' grouped convolution.
  # NumPy inputs: jax.random would compile a sampler for every new shape.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, *size, CHANNELS)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 1, CHANNELS)).astype(np.float32)
  out_shape = (2, -(-size[0] // stride), -(-size[1] // stride), CHANNELS)
  # A random cotangent so every output position weighs differently in the gradients.
  cotangent = rng.normal(size=out_shape).astype(np.float32)

  @jax.jit  # one compile per case instead of one per eager op
  def outputs_and_gradients(x, kernel):
    def with_grads(conv):
      loss = lambda x, k: jnp.sum(conv(x, k, stride, dilation) * cotangent)  # noqa: E731
      return (conv(x, kernel, stride, dilation), *jax.grad(loss, argnums=(0, 1))(x, kernel))
    return with_grads(grouped_conv_reference), with_grads(shifted), with_grads(plain)

  expected, actual, plain_form = outputs_and_gradients(x, kernel)
  assert actual[0].shape == expected[0].shape == plain_form[0].shape == out_shape
  for got, want in zip(actual, expected):  # output, d/dx, d/dkernel
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  for got, want in zip(actual, plain_form):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_tf_same_padding_puts_the_extra_pixel_after():
  # The depthwise kernels pad 'SAME' by lax.padtype_to_pads, given the dilated kernel's extent.
  same = lambda size, kernel, stride: tuple(  # noqa: E731
      lax.padtype_to_pads((size,), (kernel,), (stride,), "SAME")[0])
  assert same(8, 3, 2) == (0, 1)   # stride 2 on an even size: 0 before, 1 after
  assert same(7, 3, 2) == (1, 1)
  assert same(8, 5, 1) == (2, 2)   # 3x3 with dilation 2: effective kernel 5
  assert fixed_padding(3, 1) == (1, 1) and fixed_padding(3, 2) == (2, 2)


def test_stride_two_on_even_input_against_numpy():
  # y[i, j] = sum_{a,b} xpad[2i + a, 2j + b] * k[a, b] with xpad = x padded (0, 1) on each axis.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 4, 6, 2)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 1, 2)).astype(np.float32)
  xpad = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  expected = np.zeros((1, 2, 3, 2), np.float32)
  for i in range(2):
    for j in range(3):
      window = xpad[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
      expected[0, i, j] = np.einsum("abc,abc->c", window, kernel[:, :, 0, :])
  np.testing.assert_allclose(shifted(jnp.asarray(x), jnp.asarray(kernel), 2, 1), expected,
                             atol=1e-5)


def depthwise_conv(channels=CHANNELS, **options):
  """The depthwise nn.Conv of the models (layers.ConvBN with depthwise=True)."""
  return nn.Conv(channels, (3, 3), feature_group_count=channels, use_bias=False, **options)


def with_kernels(options, fn):
  """`fn` called under kernels.intercept(options), also while jax traces it."""
  def call(*args):
    with intercept(options):
      return fn(*args)
  return call


@pytest.mark.parametrize("implementation", ["shifted", "xla", "auto"])
def test_depthwise_nn_conv_takes_the_chosen_form_with_its_own_parameters(implementation):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 6, 8, CHANNELS)), jnp.float32)
  kernels = (KernelOptions.for_backend(jax.default_backend()) if implementation == "auto"
             else KernelOptions(depthwise=implementation))
  layer = depthwise_conv(strides=2)
  params = layer.init(jax.random.key(2), x)
  # The same variables and initial values as flax's; the kernel has the grouped layout.
  assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), params,
                                   with_kernels(kernels, layer.init)(jax.random.key(2), x)))
  assert params["params"]["kernel"].shape == (3, 3, 1, CHANNELS)
  injected = with_kernels(kernels, layer.apply)
  # The chosen form, not flax's own call: the shifted form has no convolution at all.
  program = str(jax.make_jaxpr(injected)(params, x))
  assert ("conv_general_dilated" in program) == (kernels.depthwise == "xla")
  np.testing.assert_allclose(injected(params, x), layer.apply(params, x), atol=1e-5)


@pytest.mark.parametrize("backend, expected",
                         [("cpu", "shifted"), ("gpu", "shifted"), ("tpu", "xla")])
def test_auto_picks_the_measured_faster_form_per_backend(monkeypatch, backend, expected):
  # The choice follows the measurements in docs/performance.md (CPU: entry 3, H200: entry 11).
  assert KernelOptions.for_backend(backend).depthwise == expected
  # create_model chooses for JAX's backend; 'auto' keeps that choice, explicit names are kept.
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  model = create_model("deeplab_mobilenetv2", alpha=0.35)
  assert model.kernels.depthwise == expected
  assert create_model("deeplab_mobilenetv2", alpha=0.35,
                      depthwise_implementation="xla").kernels.depthwise == "xla"


def test_unknown_depthwise_implementation_lists_the_valid_names():
  with pytest.raises(ValueError, match="'cudnn'.*|.*one of"):
    KernelOptions(depthwise="cudnn")
  with pytest.raises(ValueError, match="'cudnn'.*|.*one of"):
    create_model("deeplab_mobilenetv2", depthwise_implementation="cudnn")


def test_grouped_convolutions_that_are_not_depthwise_stay_flax():
  # Two groups of two channels: not a form the kernels cover, so flax computes it.
  x = jnp.ones((1, 6, 6, 4))
  layer = nn.Conv(4, (3, 3), feature_group_count=2)
  params = layer.init(jax.random.key(0), x)
  shifted = KernelOptions(depthwise="shifted")
  assert (str(jax.make_jaxpr(with_kernels(shifted, layer.apply))(params, x))
          == str(jax.make_jaxpr(layer.apply)(params, x)))


def test_bfloat16_compute_keeps_float32_kernel():
  layer = depthwise_conv(kernel_dilation=2, dtype=jnp.bfloat16)
  x = jnp.ones((1, 6, 6, CHANNELS))
  shifted = KernelOptions(depthwise="shifted")
  variables = with_kernels(shifted, layer.init)(jax.random.key(0), x)
  y = with_kernels(shifted, layer.apply)(variables, x)
  assert variables["params"]["kernel"].dtype == jnp.float32
  assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y)))
