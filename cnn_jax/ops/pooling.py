"""Pooling on NHWC feature maps: max, average, L_p (power-average), global, adaptive.

All windows act on H and W of ``(N, H, W, C)`` input, per channel. Window and stride are
in pixels; padding takes the forms of :func:`cnn_jax.ops.conv.resolve_padding`
('VALID', 'SAME', int, pair, ``((top, bottom), (left, right))``). Semantics follow
PyTorch's ``torch.nn.functional`` pooling (``max_pool2d`` pads with -inf,
``avg_pool2d(count_include_pad=...)``, ``lp_pool2d``, ``adaptive_{avg,max}_pool2d``).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from cnn_jax.ops.conv import _pair, resolve_padding


def _setup(x, window, stride, padding):
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"pooling expects NHWC (N, H, W, C), got shape {x.shape}")
  k = _pair("window", window)
  s = k if stride is None else _pair("stride", stride)
  pads = resolve_padding(padding, x.shape[1:3], k, s, (1, 1))
  for ax, (kk, (lo, hi)) in enumerate(zip(k, pads)):
    if x.shape[1 + ax] + lo + hi < kk:
      raise ValueError(f"pooling window {k} larger than the padded input "
                       f"{x.shape[1:3]} + padding {pads} along axis {1 + ax}")
  return x, (1, *k, 1), (1, *s, 1), ((0, 0), *pads, (0, 0))


def max_pool2d(x, window, stride=None, padding="VALID"):
  """Max over each window; padded positions are -inf (never selected).

  Args:
    x: ``(N, H, W, C)`` float.
    window: ``k`` or ``(k_h, k_w)`` pixels.
    stride: default = window (non-overlapping, as PyTorch).
    padding: see module docstring.

  Returns:
    ``(N, H_out, W_out, C)``, ``H_out = floor((H + p_h - k_h)/s_h) + 1``.

  Raises:
    ValueError: not NHWC, a window larger than the padded input, bad window/stride/padding.
  """
  x, k, s, pads = _setup(x, window, stride, padding)
  return lax.reduce_window(x, -jnp.inf, lax.max, k, s, pads)


def avg_pool2d(x, window, stride=None, padding="VALID", count_include_pad: bool = True):
  """Mean over each window.

  Args:
    x, window, stride, padding: as :func:`max_pool2d`.
    count_include_pad: divide by the full window size ``k_h*k_w`` (zero padding counts,
      PyTorch's default) or, if False, by the number of real input pixels in the window.

  Returns:
    ``(N, H_out, W_out, C)``.

  Raises:
    ValueError: as :func:`max_pool2d`.
  """
  x, k, s, pads = _setup(x, window, stride, padding)
  total = lax.reduce_window(x, 0.0, lax.add, k, s, pads)
  if count_include_pad:
    return total / (k[1] * k[2])
  ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
  count = lax.reduce_window(ones, 0.0, lax.add, k, s, pads)
  return total / count


def lp_pool2d(x, p: float, window, stride=None, padding="VALID"):
  """Power-average (L_p) pooling: ``(sum_window x^p)^(1/p)``; p=1 is sum pooling,
  p=2 the L2 norm of the window, p -> inf approaches max pooling of ``|x|``.

  Follows ``torch.nn.functional.lp_pool2d``: ``x^p`` without an absolute value (use even
  ``p`` or nonnegative ``x``), negative window sums clamp to 0.

  Args:
    x: ``(N, H, W, C)``.
    p: the power (> 0).
    window, stride, padding: as :func:`max_pool2d` (zero padding adds nothing).

  Returns:
    ``(N, H_out, W_out, C)``.

  Raises:
    ValueError: ``p <= 0`` or as :func:`max_pool2d`.
  """
  if not p > 0:
    raise ValueError(f"lp_pool2d: p must be > 0, got {p}")
  x, k, s, pads = _setup(x, window, stride, padding)
  total = lax.reduce_window(x ** p, 0.0, lax.add, k, s, pads)
  return jnp.maximum(total, 0.0) ** (1.0 / p)


def global_avg_pool(x):
  """Mean over H and W: ``(N, H, W, C) -> (N, C)`` (Lin et al. 2013, Network in Network)."""
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"global_avg_pool expects (N, H, W, C), got shape {x.shape}")
  return x.mean(axis=(1, 2))


def global_max_pool(x):
  """Max over H and W: ``(N, H, W, C) -> (N, C)``."""
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"global_max_pool expects (N, H, W, C), got shape {x.shape}")
  return x.max(axis=(1, 2))


def adaptive_bins(n: int, out: int) -> list[tuple[int, int]]:
  """PyTorch's adaptive-pooling bins along one axis: ``[floor(i*n/out), ceil((i+1)*n/out))``.

  Bins cover the input, may overlap by one pixel, and are never empty.

  Raises:
    ValueError: ``out < 1`` or ``n < 1``.
  """
  if out < 1 or n < 1:
    raise ValueError(f"adaptive pooling needs input and output sizes >= 1, got n={n}, "
                     f"out={out}")
  return [((i * n) // out, -(-((i + 1) * n) // out)) for i in range(out)]


def _adaptive(x, output_size, reduce):
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"adaptive pooling expects (N, H, W, C), got shape {x.shape}")
  oh, ow = _pair("output_size", output_size)
  rows = adaptive_bins(x.shape[1], oh)
  cols = adaptive_bins(x.shape[2], ow)
  # Static Python loops over bins: output sizes are small (1x1 .. 7x7 in practice).
  out = [[reduce(x[:, r0:r1, c0:c1, :], axis=(1, 2)) for c0, c1 in cols] for r0, r1 in rows]
  return jnp.stack([jnp.stack(r, axis=1) for r in out], axis=1)


def adaptive_avg_pool2d(x, output_size):
  """Average pooling to a fixed ``output_size`` (int or ``(H_out, W_out)``) for any input
  size, with PyTorch's bins (:func:`adaptive_bins`). ``(N, H, W, C) -> (N, H_out, W_out, C)``.

  Raises:
    ValueError: not NHWC or an output size < 1.
  """
  return _adaptive(x, output_size, jnp.mean)


def adaptive_max_pool2d(x, output_size):
  """Max pooling to a fixed ``output_size``; see :func:`adaptive_avg_pool2d`."""
  return _adaptive(x, output_size, jnp.max)


__all__ = ["max_pool2d", "avg_pool2d", "lp_pool2d", "global_avg_pool", "global_max_pool",
           "adaptive_bins", "adaptive_avg_pool2d", "adaptive_max_pool2d"]
