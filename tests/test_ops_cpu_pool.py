"""cnn_jax.ops.cpu_pool: the tiled max pool equals flax's in value and gradient, bit for bit
and ties included, and is taken only where its windows tile the map."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.ops import cpu_pool, depthwise


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape,k", [((2, 8, 8, 3), 2), ((2, 9, 7, 4), 2), ((1, 9, 9, 2), 3),
                                     ((3, 4, 6, 5), (2, 3)), ((1, 2, 2, 1), 2)])
def test_tiled_max_pool_equals_flax_bit_for_bit_with_ties(shape, k, dtype):
  kh, kw = (k, k) if isinstance(k, int) else k
  # Small integers: most windows hold ties, as a ReLU map's all-zero windows do.
  x = jnp.asarray(np.random.default_rng(0).integers(0, 3, shape), dtype)
  ref = lambda x: nn.max_pool(x, (kh, kw), strides=(kh, kw))
  want, want_vjp = jax.vjp(ref, x)
  got, got_vjp = jax.vjp(lambda x: cpu_pool.tiled_max_pool(x, kh, kw), x)
  g = jnp.asarray(np.random.default_rng(1).standard_normal(want.shape), dtype)
  assert got.dtype == want.dtype
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  np.testing.assert_array_equal(np.asarray(got_vjp(g)[0], np.float32),
                                np.asarray(want_vjp(g)[0], np.float32))


@pytest.mark.parametrize("window,strides,padding,want", [
    ((2, 2), (2, 2), "VALID", True),
    ((2, 2), (2, 2), ((0, 0), (0, 0)), True),
    ((3, 3), (2, 2), "VALID", False),            # overlapping (AlexNet, ResNet stem)
    ((2, 2), (2, 2), "SAME", False),
    ((2, 2), (2, 2), ((1, 1), (1, 1)), False),
    ((2, 2), None, "VALID", False),              # stride 1
    ((16, 16), (16, 16), "VALID", False),        # window larger than the 8x8 map
])
def test_tiles(window, strides, padding, want):
  assert cpu_pool.tiles((2, 8, 8, 3), window, strides, padding) is want


def test_max_pool_takes_the_tiled_path_only_on_cpu_outside_xla_convs():
  x = jnp.ones((2, 8, 8, 3))
  pooled = lambda x: cpu_pool.max_pool(x, (2, 2), strides=(2, 2))
  grad = lambda f: lambda x: jax.grad(lambda x: jnp.sum(f(x) ** 2))(x)
  assert "select_and_scatter" not in str(jax.make_jaxpr(grad(pooled))(x))
  overlapping = lambda x: cpu_pool.max_pool(x, (3, 3), strides=(2, 2))
  assert "reduce_window_max" in str(jax.make_jaxpr(overlapping)(x))
  with depthwise.xla_convs():  # the analysis tools see flax's reduce_window
    assert "reduce_window_max" in str(jax.make_jaxpr(lambda x: pooled(x))(x))
