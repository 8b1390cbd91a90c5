"""The max pooling the models call: ``flax.linen.max_pool``, except non-overlapping windows on CPU.

XLA differentiates ``reduce_window`` max pooling into a ``select_and_scatter``, which its CPU
backend runs as a generic loop: a 2x2 stride-2 max pool of a ``(128, 32, 32, 32)`` map took
70 ms forward + backward in float32 and 101 ms in bfloat16 on a 2-core Intel Xeon
(2026-12-07; a ResNet-20 train step of the same batch takes 180 ms). When the windows tile
the map (window == stride, no padding: VGG, the seed's CIFAR10Net, airbench), the pool is a
reshape to ``(N, H/k_h, k_h, W/k_w, k_w, C)`` and a max over the two window axes, and its
gradient a mask: 8.4 ms forward + backward (8x) in the same measurement.

The gradient is exactly ``select_and_scatter``'s (tested bit for bit, ties included): each
window's cotangent goes to the *first* maximal element in row-major window order, not split
among ties as autodiff of ``jnp.max`` would (a ReLU map has many all-zero windows).
Everything else (overlapping or padded windows, GPU/TPU, and inside
:func:`cnn_jax.ops.depthwise.xla_convs`, where the analysis tools trace the model) is
``flax.linen.max_pool`` unchanged.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.ops import depthwise


def tiles(x_shape, window_shape, strides, padding) -> bool:
  """Whether a 2-D NHWC max pool has windows that tile the map: ``window_shape == strides``,
  no padding (``'VALID'`` or all zeros), and each window fits (``H >= k_h``, ``W >= k_w``;
  rows and columns past the last whole window are dropped, as 'VALID' does)."""
  window_shape = tuple(window_shape)
  strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
  no_pad = padding == "VALID" or (not isinstance(padding, str)
                                  and all(p == 0 for pair in padding for p in pair))
  return (len(x_shape) == 4 and len(window_shape) == 2 and window_shape == strides and no_pad
          and all(x_shape[1 + a] >= window_shape[a] >= 1 for a in (0, 1)))


def _windows(x, kh, kw):
  n, h, w, c = x.shape
  ho, wo = h // kh, w // kw
  return x[:, :ho * kh, :wo * kw].reshape(n, ho, kh, wo, kw, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def tiled_max_pool(x: jax.Array, kh: int, kw: int) -> jax.Array:
  """Max over non-overlapping ``kh x kw`` windows of NHWC ``x``: ``(N, H, W, C) ->
  (N, H // kh, W // kw, C)``, the dtype of ``x``; equal to ``flax.linen.max_pool(x, (kh, kw),
  (kh, kw))`` in value and gradient (see the module docstring)."""
  return _windows(x, kh, kw).max(axis=(2, 4))


def _tiled_fwd(x, kh, kw):
  y = tiled_max_pool(x, kh, kw)
  return y, (x, y)


def _tiled_bwd(kh, kw, res, g):
  x, y = res
  hit = _windows(x, kh, kw) == y[:, :, None, :, None, :]
  seen = None
  rows = []
  for a in range(kh):  # the first maximal element in row-major window order takes g
    row = []
    for b in range(kw):
      tap = hit[:, :, a, :, b]
      row.append(tap if seen is None else tap & ~seen)
      seen = tap if seen is None else seen | tap
    rows.append(jnp.stack(row, axis=3))
  first = jnp.stack(rows, axis=2)  # (N, Ho, kh, Wo, kw, C)
  dx = jnp.where(first, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
  n, ho, _, wo, _, c = dx.shape
  dx = dx.reshape(n, ho * kh, wo * kw, c).astype(x.dtype)
  pad = ((0, 0), (0, x.shape[1] - ho * kh), (0, x.shape[2] - wo * kw), (0, 0))
  return (jnp.pad(dx, pad) if any(p[1] for p in pad) else dx,)


tiled_max_pool.defvjp(_tiled_fwd, _tiled_bwd)


def max_pool(x: jax.Array, window_shape, strides=None, padding="VALID") -> jax.Array:
  """``flax.linen.max_pool(x, window_shape, strides, padding)`` (same arguments, result and
  gradient), computed by :func:`tiled_max_pool` on CPU when :func:`tiles` holds.

  Args:
    x: ``(N, H, W, C)`` (any dtype ``flax.linen.max_pool`` takes; other ranks go to flax).
    window_shape: ``(k_h, k_w)`` pixels.
    strides: ``(s_h, s_w)`` pixels; default 1.
    padding: ``'VALID'``, ``'SAME'`` or ``((top, bottom), (left, right))`` pixels.

  Returns:
    ``(N, H_out, W_out, C)``.
  """
  if (not depthwise.forcing_xla() and jax.default_backend() == "cpu"
      and tiles(x.shape, window_shape, strides, padding)):
    return tiled_max_pool(x, int(window_shape[0]), int(window_shape[1]))
  return nn.max_pool(x, tuple(window_shape), strides=strides, padding=padding)
