"""Translation equivariance of convolution, and why pooling with a stride breaks it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.ops import avg_pool2d, conv2d, max_pool2d


def circular_conv(x, w, stride=1):
  """'SAME'-size convolution with circular (wrap-around) padding, odd square kernels."""
  r = w.shape[0] // 2
  xp = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="wrap")
  return conv2d(xp, w, stride=stride)


def roll(x, dy, dx):
  return jnp.roll(x, (dy, dx), axis=(1, 2))


def _weights(seed, shapes):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


def test_circular_padding_every_feature_map_shifts_exactly():
  w1, w2, w3 = _weights(0, [(3, 3, 2, 4), (5, 5, 4, 4), (3, 3, 4, 3)])
  x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 16, 16, 2)), jnp.float32)

  @jax.jit
  def maps(x):
    a = jax.nn.relu(circular_conv(x, w1))
    b = jax.nn.relu(circular_conv(a, w2))
    return a, b, circular_conv(b, w3)

  base = maps(x)
  for dy, dx in ((1, 0), (0, 3), (-2, 5), (7, -4)):
    for f, g in zip(base, maps(roll(x, dy, dx))):
      np.testing.assert_allclose(np.asarray(g), np.asarray(roll(f, dy, dx)),
                                 rtol=1e-5, atol=1e-5)


def test_strided_circular_conv_is_equivariant_only_to_multiples_of_the_stride():
  (w,) = _weights(2, [(3, 3, 1, 2)])
  x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 12, 12, 1)), jnp.float32)
  y = circular_conv(x, w, stride=2)
  # A shift by 2 input pixels is a shift by 1 output unit...
  np.testing.assert_allclose(np.asarray(circular_conv(roll(x, 2, 4), w, stride=2)),
                             np.asarray(roll(y, 1, 2)), rtol=1e-5, atol=1e-5)
  # ... while a 1-pixel shift samples the other phase: no output shift reproduces it.
  y1 = np.asarray(circular_conv(roll(x, 1, 0), w, stride=2))
  assert all(np.abs(y1 - np.asarray(roll(y, a, b))).max() > 1e-2
             for a in range(6) for b in range(6))


def test_zero_padding_equivariant_away_from_the_border():
  (w,) = _weights(4, [(3, 3, 1, 2)])
  x = jnp.asarray(np.random.default_rng(5).standard_normal((1, 20, 20, 1)), jnp.float32)
  dy, dx = 2, -3
  y = np.asarray(conv2d(x, w, padding="SAME"))
  ys = np.asarray(conv2d(roll(x, dy, dx), w, padding="SAME"))
  shifted = np.roll(y, (dy, dx), axis=(1, 2))
  # Rows/cols whose 3x3 window (radius 1) and its pre-shift source avoid the border
  # and the wrapped-around pixels: [1 + |d|, H - 1 - |d|).
  r0, r1 = 1 + abs(dy), 20 - 1 - abs(dy)
  c0, c1 = 1 + abs(dx), 20 - 1 - abs(dx)
  np.testing.assert_allclose(ys[:, r0:r1, c0:c1], shifted[:, r0:r1, c0:c1], rtol=1e-5, atol=1e-5)
  # At the border it fails: zero padding is not part of the shifted signal.
  assert np.abs(ys - shifted).max() > 1e-2


def test_pooling_is_not_shift_invariant_counterexample():
  """A 1-pixel shift changes the 2x2 / stride-2 max-pool output, and not by a shift
  (Azulay & Weiss 2019; Zhang 2019, "Making Convolutional Networks Shift-Invariant Again")."""
  row = np.array([0, 1, 1, 0, 0, 0, 0, 0], np.float32)
  x = np.tile(row, (8, 1))[None, :, :, None]          # vertical bar 2 pixels wide
  p = np.asarray(max_pool2d(x, 2))[0, 0, :, 0]
  ps = np.asarray(max_pool2d(np.roll(x, 1, axis=2), 2))[0, 0, :, 0]
  np.testing.assert_array_equal(p, [1, 1, 0, 0])
  np.testing.assert_array_equal(ps, [0, 1, 0, 0])       # the bar half disappeared
  assert not any(np.array_equal(ps, np.roll(p, k)) for k in range(4))
  assert p.sum() != ps.sum()                            # not even the total is invariant
  # Average pooling with a stride fails the same way; with stride 1 and circular
  # padding it is a convolution, hence equivariant.
  a = np.asarray(avg_pool2d(x, 2))[0, 0, :, 0]
  a_s = np.asarray(avg_pool2d(np.roll(x, 1, axis=2), 2))[0, 0, :, 0]
  np.testing.assert_allclose(a, [0.5, 0.5, 0, 0])
  np.testing.assert_allclose(a_s, [0, 1, 0, 0])
  xc = jnp.asarray(np.random.default_rng(6).standard_normal((1, 8, 8, 1)), jnp.float32)
  pool_c = lambda v: avg_pool2d(jnp.pad(v, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="wrap"),  # noqa
                                2, stride=1)
  np.testing.assert_allclose(np.asarray(pool_c(roll(xc, 3, 1))),
                             np.asarray(roll(pool_c(xc), 3, 1)), rtol=1e-5, atol=1e-6)
