"""The CPU tap path for depthwise convs equals XLA's grouped convolution, values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_jax import models
from cnn_jax.ops import depthwise

DN = ("NHWC", "HWIO", "NHWC")


def _xla(x, w, s, p, d):
  return lax.conv_general_dilated(x, w, s, p, rhs_dilation=d, dimension_numbers=DN,
                                  feature_group_count=x.shape[-1],
                                  precision=lax.Precision.HIGHEST)


@pytest.mark.parametrize("k,s,p,d", [
    (3, (1, 1), "SAME", (1, 1)),
    (3, (2, 2), "SAME", (1, 1)),          # MobileNet stride-2 depthwise
    (7, (1, 1), ((3, 3), (3, 3)), (1, 1)),  # ConvNeXt
    (3, (1, 2), ((2, 0), (1, 1)), (2, 2)),  # asymmetric padding, dilation 2
    (5, (2, 2), "VALID", (1, 1)),           # last input column unused: zero gradient
    (3, (2, 2), ((3, 1), (0, 4)), (1, 1)),  # padding beyond (K-1)*d (cropped in backward)
    (3, (2, 2), "SAME", (2, 2)),            # stride and dilation together
])
def test_taps_equal_xla_values_and_gradients(k, s, p, d):
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.normal(size=(2, 11, 10, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 1, 6)), jnp.float32)
  np.testing.assert_allclose(depthwise.depthwise_conv_taps(x, w, s, p, d), _xla(x, w, s, p, d),
                             rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, s, p, d)))
  g_taps = jax.grad(loss(depthwise.depthwise_conv_taps), argnums=(0, 1))(x, w)
  g_xla = jax.grad(loss(_xla), argnums=(0, 1))(x, w)
  for a, b in zip(g_taps, g_xla):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_gradients_odd_batch_and_bfloat16():
  """An odd batch (the kernel gradient scans 2-image chunks) and bf16 gradients."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(3, 7, 7, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 1, 5)), jnp.float32)
  args = ((2, 2), "SAME", (1, 1))
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, *args)))
  want = jax.grad(loss(_xla), argnums=(0, 1))(x, w)
  got = jax.grad(loss(depthwise.depthwise_conv_taps), argnums=(0, 1))(x, w)
  got16 = jax.grad(loss(depthwise.depthwise_conv_taps), argnums=(0, 1))(
      x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  for a, a16, b in zip(got, got16, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert a16.dtype == jnp.bfloat16
    np.testing.assert_allclose(a16.astype(jnp.float32), b, rtol=5e-2, atol=2e-1)


@pytest.fixture
def taps_calls(monkeypatch):
  """A list that grows by one at each call of the tap path (which still runs)."""
  calls = []
  real = depthwise.depthwise_conv_taps
  monkeypatch.setattr(depthwise, "depthwise_conv_taps",
                      lambda *a, **kw: calls.append(1) or real(*a, **kw))
  return calls


def test_drop_in_takes_taps_only_for_depthwise(taps_calls):
  calls = taps_calls
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, 8, 8, 4)), jnp.float32)
  dn = lax.conv_dimension_numbers(x.shape, (3, 3, 1, 4), DN)  # what flax passes
  y = depthwise.conv_general_dilated(x, jnp.ones((3, 3, 1, 4)), (1, 1), "SAME",
                                     dimension_numbers=dn, feature_group_count=4)
  assert calls == [1] and y.shape == (1, 8, 8, 4)
  # Grouped (not depthwise) and dense convs go to XLA unchanged.
  for w, groups in [(jnp.ones((3, 3, 2, 4)), 2), (jnp.ones((3, 3, 4, 8)), 1)]:
    got = depthwise.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                         feature_group_count=groups)
    want = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN,
                                    feature_group_count=groups)
    np.testing.assert_array_equal(got, want)
  assert calls == [1]


def test_bfloat16_inputs_give_bfloat16_close_to_float32():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 9, 9, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 1, 8)), jnp.float32)
  y16 = depthwise.depthwise_conv_taps(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16),
                                      (1, 1), "SAME")
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(y16.astype(jnp.float32), _xla(x, w, (1, 1), "SAME", (1, 1)),
                             rtol=5e-2, atol=1e-1)


def test_wrong_kernel_shape_is_named():
  with pytest.raises(ValueError, match=r"w \(K_h, K_w, 1, C\)"):
    depthwise.depthwise_conv_taps(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 3)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2_cifar", "convnextv2_atto_cifar"])
def test_models_match_xla_depthwise(name, taps_calls):
  """The same variables give the same logits with the tap path and with XLA's conv."""
  model = models.create(name, num_classes=10)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  calls = taps_calls
  fast = model.apply(variables, x, train=False)
  n_taps = len(calls)
  assert n_taps > 0  # the model's depthwise convs took the tap path
  with depthwise.xla_convs():
    ref = model.apply(variables, x, train=False)
  assert len(calls) == n_taps
  np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-4)


def test_analysis_sees_one_conv_op_per_depthwise_conv():
  """MAC counting traces under xla_convs, so a depthwise conv counts K*K*C*H_out*W_out."""
  from cnn_jax.models.blocks_depthwise import ConvBNAct  # pylint: disable=g-import-not-at-top
  from cnn_jax.summary import count_macs  # pylint: disable=g-import-not-at-top
  layer = ConvBNAct(features=16, kernel_size=3, stride=2, groups=16)
  assert count_macs(layer, (8, 8, 16)) == 3 * 3 * 16 * 4 * 4
  assert depthwise._FORCE_XLA.get() is False  # the context was left


def test_negative_padding_is_named():
  with pytest.raises(ValueError, match="padding must be >= 0"):
    depthwise.depthwise_conv_taps(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 1, 3)), (1, 1),
                                  ((-1, 1), (1, 1)))
