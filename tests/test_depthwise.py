"""DepthwiseConv2D: the shifted multiply-add form equals XLA's grouped convolution (TF 'SAME')."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lesion_jax.models.layers import (DepthwiseConv2D, depthwise_conv, fixed_padding,
                                      resolve_depthwise_implementation, same_padding)

CHANNELS = 5


def grouped_conv_reference(x, kernel, stride, dilation):
  """Independent reference: lax's grouped conv with its own 'SAME' rule (TF's)."""
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), "SAME", rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


def shifted(x, kernel, stride, dilation):
  pads = (same_padding(x.shape[1], kernel.shape[0], stride, dilation),
          same_padding(x.shape[2], kernel.shape[1], stride, dilation))
  return depthwise_conv(x, kernel, (stride, stride), (dilation, dilation), pads, "shifted")


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("size", [(8, 10), (7, 9)], ids=["even", "odd"])
def test_shifted_matches_grouped_conv_forward_and_gradients(stride, dilation, size):
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
    return with_grads(grouped_conv_reference), with_grads(shifted)

  expected, actual = outputs_and_gradients(x, kernel)
  assert actual[0].shape == expected[0].shape == out_shape
  for got, want in zip(actual, expected):  # output, d/dx, d/dkernel
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_tf_same_padding_puts_the_extra_pixel_after():
  assert same_padding(8, 3, 2, 1) == (0, 1)   # stride 2 on an even size: 0 before, 1 after
  assert same_padding(7, 3, 2, 1) == (1, 1)
  assert same_padding(8, 3, 1, 2) == (2, 2)   # dilation 2: effective kernel 5
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


@pytest.mark.parametrize("implementation", ["shifted", "xla", "auto"])
def test_module_has_grouped_conv_layout_and_matches_nn_conv(implementation):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 6, 8, CHANNELS)), jnp.float32)
  layer = DepthwiseConv2D(CHANNELS, kernel_size=3, strides=2, implementation=implementation)
  reference = nn.Conv(CHANNELS, (3, 3), strides=2, padding="SAME",
                      feature_group_count=CHANNELS, use_bias=False)
  params = layer.init(jax.random.key(2), x)
  reference_params = reference.init(jax.random.key(2), x)
  assert jax.tree_util.tree_map(jnp.shape, params) == jax.tree_util.tree_map(
      jnp.shape, reference_params)
  assert params["params"]["kernel"].shape == (3, 3, 1, CHANNELS)
  np.testing.assert_allclose(layer.apply(params, x), reference.apply(params, x), atol=1e-5)


@pytest.mark.parametrize("backend, expected",
                         [("cpu", "shifted"), ("gpu", "shifted"), ("tpu", "xla")])
def test_auto_picks_the_measured_faster_form_per_backend(monkeypatch, backend, expected):
  # The choice follows the measurements in docs/performance.md (CPU: entry 3, H200: entry 11).
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  assert resolve_depthwise_implementation("auto") == expected
  assert resolve_depthwise_implementation("xla") == "xla"  # explicit names are kept


def test_unknown_depthwise_implementation_lists_the_valid_names():
  with pytest.raises(ValueError, match="'cudnn'.*|.*one of"):
    resolve_depthwise_implementation("cudnn")


def test_channel_mismatch_is_rejected():
  with pytest.raises(ValueError, match="built for 4 channels but the input has 5"):
    DepthwiseConv2D(4).init(jax.random.key(0), jnp.ones((1, 4, 4, 5)))


def test_bfloat16_compute_keeps_float32_kernel():
  layer = DepthwiseConv2D(dilation=2, dtype=jnp.bfloat16)
  x = jnp.ones((1, 6, 6, CHANNELS))
  variables = layer.init(jax.random.key(0), x)
  y = layer.apply(variables, x)
  assert variables["params"]["kernel"].dtype == jnp.float32
  assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y)))
