"""cnn_jax.ops.cpu_conv: the models' convolution equals XLA's, and reroutes only what it says."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_jax import models
from cnn_jax.ops import cpu_conv, depthwise

NHWC = ("NHWC", "HWIO", "NHWC")


def _xla(x, w, strides, padding, dilation):
  return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                  dimension_numbers=NHWC)


# (input H=W, kernel, stride, padding, dilation): each output is smaller than its window.
SMALL = [(2, 3, 1, "SAME", 1), (1, 3, 1, "SAME", 1), (4, 5, 1, "SAME", 1),
         (3, 3, 2, ((1, 1), (1, 1)), 1), (4, 3, 1, "SAME", 2), (2, 2, 2, "VALID", 1)]


@pytest.mark.parametrize("h,k,s,padding,d", SMALL)
def test_small_output_conv_equals_xla_in_value_and_gradients(h, k, s, padding, d):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, h, h, 5)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, 5, 7)), jnp.float32)
  assert cpu_conv.is_small_output(x.shape, w.shape, (s, s), padding, (d, d))

  def loss(f):
    return lambda x, w: jnp.sum(jnp.sin(f(x, w, (s, s), padding, (d, d))))

  want, want_g = jax.value_and_grad(loss(_xla), argnums=(0, 1))(x, w)
  got, got_g = jax.value_and_grad(loss(cpu_conv.small_output_conv), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, wg in zip(got_g, want_g):
    np.testing.assert_allclose(g, wg, rtol=1e-4, atol=1e-4 * float(jnp.abs(wg).max()))


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation,small", [
    ((1, 2, 2, 8), (3, 3, 8, 8), (1, 1), "SAME", None, True),    # output 2 < window 3
    ((1, 3, 3, 8), (3, 3, 8, 8), (1, 1), "SAME", None, False),   # output 3 = window 3
    ((1, 4, 4, 8), (3, 3, 8, 8), (1, 1), "SAME", (2, 2), True),  # output 4 < 2*(3-1)+1 = 5
    ((1, 8, 2, 8), (3, 3, 8, 8), (1, 1), "SAME", None, True),    # only W is small
    ((1, 32, 32, 8), (3, 3, 8, 8), (1, 1), "SAME", None, False),
    ((1, 4, 4, 8), (2, 2, 8, 8), (2, 2), "VALID", None, False),  # output 2 = window 2
])
def test_is_small_output(shape, kernel, stride, padding, dilation, small):
  assert cpu_conv.is_small_output(shape, kernel, stride, padding, dilation) is small


def _ops(fn, *args) -> set[str]:
  return {e.primitive.name for e in jax.make_jaxpr(fn)(*args).eqns}


def _conv(x, w):
  return cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)


def test_conv_general_dilated_routes_small_outputs_only_on_cpu_and_outside_xla_convs():
  # A new function object per trace: jax caches traces by function, not by context.
  conv = lambda x, w: _conv(x, w)
  small = (jnp.ones((2, 2, 2, 8)), jnp.ones((3, 3, 8, 16)))
  large = (jnp.ones((2, 8, 8, 8)), jnp.ones((3, 3, 8, 16)))
  assert jax.default_backend() == "cpu"
  assert "conv_general_dilated" not in _ops(conv, *small)
  assert "dot_general" in _ops(conv, *small)
  assert "conv_general_dilated" in _ops(conv, *large)
  with depthwise.xla_convs():
    assert "conv_general_dilated" in _ops(lambda x, w: _conv(x, w), *small)
  # The compiled CPU program of a small-output conv holds no convolution instruction.
  hlo = jax.jit(conv).lower(*small).compile().as_text()
  assert "convolution(" not in hlo
  np.testing.assert_allclose(jax.jit(conv)(*small),
                             _xla(*small, (1, 1), "SAME", (1, 1)), rtol=1e-5)


def test_conv_general_dilated_leaves_grouped_and_nchw_convs_to_xla():
  x = jnp.ones((1, 2, 2, 8))
  grouped = lambda x, w: cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME",
                                                       dimension_numbers=NHWC,
                                                       feature_group_count=2)
  assert "conv_general_dilated" in _ops(grouped, x, jnp.ones((3, 3, 4, 8)))
  nchw = lambda x, w: cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME")
  assert "conv_general_dilated" in _ops(nchw, jnp.ones((1, 8, 2, 2)), jnp.ones((8, 8, 3, 3)))
  # Depthwise still takes the tap path of cnn_jax.ops.depthwise (no conv op either).
  dw = lambda x, w: cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME",
                                                  dimension_numbers=NHWC,
                                                  feature_group_count=8)
  assert "conv_general_dilated" not in _ops(dw, x, jnp.ones((3, 3, 1, 8)))


def test_vgg16_cifar_logits_equal_with_and_without_rerouting():
  # VGG-16-CIFAR's last stage runs 3x3 convs on 2x2 maps: the case this module exists for.
  model = models.create("vgg16_cifar", num_classes=10)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  got = model.apply(variables, x, train=False)
  with depthwise.xla_convs():
    want = model.apply(variables, x, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
