"""cnn_jax.ops.onednn_batch_norm and layers.BatchNorm's oneDNN route: BatchNorm's value,
statistics and gradients equal a float64 reference, the route is taken only in training under
the 'onednn' backend, and variables, running averages and dtypes are nn.BatchNorm's."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.models import layers
from cnn_jax.ops import cpu_conv, onednn_batch_norm, onednn_library

pytestmark = pytest.mark.skipif(not onednn_library.available(),
                                reason=f"oneDNN: {onednn_library.unavailable_reason()}")
TARGET = "cnn_jax_onednn_batch_norm_fwd"


def _reference(x, scale, shift, eps):
  # Ioffe & Szegedy 2015, Algorithm 1, in float64 with the two-pass (centered) variance.
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=(0, 1, 2))
  var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + eps) * scale + shift, mean, var


def _reference_vjp(x, scale, eps, g):
  # The BatchNorm gradient (Ioffe & Szegedy 2015, Sec. 3), float64, by hand.
  x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
  m = x.shape[0] * x.shape[1] * x.shape[2]
  mean = x.mean(axis=(0, 1, 2))
  inv = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=(0, 1, 2)) + eps)
  xhat = (x - mean) * inv
  dshift = g.sum(axis=(0, 1, 2))
  dscale = (g * xhat).sum(axis=(0, 1, 2))
  dx = scale * inv / m * (m * g - dshift - xhat * dscale)
  return dx, dscale, dshift


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (2, 1, 1, 3), (8, 4, 4, 64)])
def test_value_statistics_and_gradients_equal_float64_reference(shape, dtype, tol):
  rng = np.random.default_rng(0)
  # Offset mean: E[x^2] - E[x]^2 would lose digits here, a centered variance does not.
  x = jnp.asarray(rng.standard_normal(shape) * 3 + 5, dtype)
  scale = rng.standard_normal(shape[3]).astype(np.float32)
  shift = rng.standard_normal(shape[3]).astype(np.float32)
  g = jnp.asarray(rng.standard_normal(shape), dtype)
  eps = 1e-3
  (y, mean, var), vjp = jax.jit(lambda x, s, b: jax.vjp(
      lambda x, s, b: onednn_batch_norm.batch_norm_train(x, s, b, eps), x, s, b))(
          x, scale, shift)
  assert y.dtype == dtype and mean.dtype == var.dtype == jnp.float32
  want_y, want_mean, want_var = _reference(x, scale, shift, eps)
  dx, dscale, dshift = vjp((g, jnp.zeros_like(mean), jnp.zeros_like(var)))
  want = dict(zip(("dx", "dscale", "dshift"), _reference_vjp(x, scale, eps, g)))
  got = dict(y=y, mean=mean, var=var, dx=dx, dscale=dscale, dshift=dshift)
  want.update(y=want_y, mean=want_mean, var=want_var)
  for name in got:
    a, b = np.asarray(got[name], np.float64), want[name]
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * (np.abs(b).max() + 1e-3), err_msg=name)
  assert dx.dtype == dtype and dscale.dtype == jnp.float32


def test_statistics_carry_no_gradient():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 3, 4)), jnp.float32)
  one = jnp.ones((4,))
  g = jax.grad(lambda x: jnp.sum(onednn_batch_norm.batch_norm_train(x, one, one)[1]))(x)
  assert not np.any(np.asarray(g))


@pytest.mark.parametrize("shape,dtype", [((2, 4, 4), jnp.float32), ((2, 4, 4, 3), jnp.float16),
                                         ((0, 4, 4, 3), jnp.float32)])
def test_rejects_what_it_cannot_compute(shape, dtype):
  assert not onednn_batch_norm.supports(shape, dtype)
  with pytest.raises(ValueError, match=r"must be \(N, H, W, C\) float32 or bfloat16"):
    onednn_batch_norm.batch_norm_train(jnp.ones(shape, dtype), jnp.ones(3), jnp.ones(3))
  with pytest.raises(ValueError, match=r"scale and shift must be \(3,\)"):
    onednn_batch_norm.batch_norm_train(jnp.ones((2, 4, 4, 3)), jnp.ones(4), jnp.ones(3))


def _apply(module, variables, x, train):
  return module.apply(variables, x, use_running_average=not train, mutable=["batch_stats"])


@pytest.mark.parametrize("kwargs,dtype", [
    (dict(momentum=0.9, epsilon=1e-5), jnp.float32),
    (dict(momentum=0.8, epsilon=1e-3, dtype=jnp.bfloat16), jnp.bfloat16),
    (dict(momentum=0.9, use_scale=False), jnp.float32),   # airbench94's frozen scale
    (dict(momentum=0.9), jnp.bfloat16),                   # output promoted to float32
])
def test_layer_route_matches_flax_batch_norm(kwargs, dtype):
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((8, 5, 5, 6)) + 1, dtype)
  ours, theirs = layers.BatchNorm(**kwargs), nn.BatchNorm(**kwargs)
  variables = ours.init(jax.random.key(0), x, use_running_average=False)
  flax_vars = theirs.init(jax.random.key(0), x, use_running_average=False)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, flax_vars)
  variables = {**variables, "params": jax.tree.map(
      lambda p: p + jnp.asarray(rng.standard_normal(p.shape), p.dtype), variables["params"])}
  tol = 1e-5 if dtype == jnp.float32 else 3e-2
  for train in (True, False):
    with cpu_conv.conv_backend("onednn"):
      hlo = jax.jit(lambda v, x: _apply(ours, v, x, train)).lower(variables, x).as_text()
      y, upd = jax.jit(lambda v, x: _apply(ours, v, x, train))(variables, x)
    assert (TARGET in hlo) == train
    y_ref, upd_ref = _apply(theirs, variables, x, train)
    assert y.dtype == y_ref.dtype
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                               atol=tol * 4, rtol=0)
    for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(upd_ref)):
      np.testing.assert_allclose(a, b, atol=tol, rtol=tol)


def test_layer_route_needs_the_onednn_backend_and_nhwc():
  x4, x2 = jnp.ones((2, 4, 4, 3)), jnp.ones((2, 3))
  bn = layers.BatchNorm(use_running_average=False)
  v4 = bn.init(jax.random.key(0), x4)
  v2 = bn.init(jax.random.key(0), x2)
  lower = lambda v, x: jax.jit(lambda v, x: bn.apply(v, x, mutable=["batch_stats"])).lower(
      v, x).as_text()
  with cpu_conv.conv_backend("xla"):
    assert TARGET not in lower(v4, x4)
  with cpu_conv.conv_backend("onednn"):
    assert TARGET in lower(v4, x4)
    assert TARGET not in lower(v2, x2)  # (N, C): flax's own code


def test_model_gradients_under_onednn_equal_float64_reference():
  # ResNet-20 at batch 8, every conv and BatchNorm oneDNN's, against XLA in float64; XLA's
  # own float32 step beside it, as the scale of float32 rounding.
  rng = np.random.default_rng(0)
  x = rng.standard_normal((8, 32, 32, 3))
  y = jnp.asarray(rng.integers(0, 10, 8))
  grads = {}
  for backend, dtype in (("xla", jnp.float64), ("onednn", jnp.float32), ("xla", jnp.float32)):
    with jax.enable_x64(dtype == jnp.float64), cpu_conv.conv_backend(backend):
      model = models.create("resnet20", num_classes=10, dtype=dtype)
      variables = model.init(jax.random.key(0), jnp.asarray(x, jnp.float32), train=False)
      variables = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)

      def loss(p):
        logits, _ = model.apply({**variables, "params": p}, jnp.asarray(x, dtype), train=True,
                                mutable=["batch_stats"])
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), y])

      lowered = jax.jit(jax.grad(loss)).lower(variables["params"])
      assert (TARGET in lowered.as_text()) == (backend == "onednn")
      grads[backend, jnp.dtype(dtype).name] = [np.asarray(g, np.float64) for g in
                                               jax.tree.leaves(lowered.compile()(variables["params"]))]
  ref = grads["xla", "float64"]
  scale = max(np.abs(g).max() for g in ref)
  err = {k: max(np.abs(a - b).max() for a, b in zip(v, ref)) / scale for k, v in grads.items()}
  assert err["onednn", "float32"] < 1e-4 and err["xla", "float32"] < 1e-4, err


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_relu_equals_relu_after_batch_norm(dtype):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((4, 5, 6, 9)), dtype)
  scale = jnp.asarray(rng.standard_normal(9), jnp.float32)
  shift = jnp.asarray(rng.standard_normal(9), jnp.float32)
  g = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

  def loss(fused):
    def f(x, s, b):
      if fused:
        y = onednn_batch_norm.batch_norm_train(x, s, b, relu=True)[0]
      else:
        y = jax.nn.relu(onednn_batch_norm.batch_norm_train(x, s, b)[0])
      return jnp.sum(y.astype(jnp.float32) * g), y
    return jax.jit(jax.value_and_grad(f, (0, 1, 2), has_aux=True))(x, scale, shift)

  (l1, y1), g1 = loss(True)
  (l0, y0), g0 = loss(False)
  assert float(jnp.min(y1)) == 0.0 and y1.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y1, np.float32), np.asarray(y0, np.float32))
  for a, b in zip(g1, g0):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=1e-5, atol=1e-5 * float(np.abs(np.asarray(b, np.float32)).max()))


def test_layer_relu_field_applies_relu_on_both_routes():
  x = jnp.asarray(np.random.default_rng(4).standard_normal((4, 3, 3, 5)), jnp.float32)
  bn = layers.BatchNorm(use_running_average=False, relu=True)
  v = bn.init(jax.random.key(0), x)
  outs = {}
  for backend in ("xla", "onednn"):
    with cpu_conv.conv_backend(backend):
      outs[backend] = jax.jit(lambda v, x: bn.apply(v, x, mutable=["batch_stats"])[0])(v, x)
  ref = jax.nn.relu(nn.BatchNorm(use_running_average=False).apply(v, x, mutable=["batch_stats"])[0])
  for y in outs.values():
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=0)


def test_epsilons_closer_than_six_decimals_get_their_own_primitives():
  # Primitives are cached by shape, dtype and epsilon: 1e-7 and 1e-8 must not share one.
  x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 3, 3, 4)) * 1e-3, jnp.float32)
  one, zero = jnp.ones((4,)), jnp.zeros((4,))
  y7 = onednn_batch_norm.batch_norm_train(x, one, zero, 1e-7)[0]
  y8 = onednn_batch_norm.batch_norm_train(x, one, zero, 1e-8)[0]
  for y, eps in ((y7, 1e-7), (y8, 1e-8)):
    want = _reference(x, np.ones(4), np.zeros(4), eps)[0]
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-4, atol=1e-4)
