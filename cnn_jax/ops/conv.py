"""2-D and 1-D convolution three ways: direct tap sum, im2col + matmul, and XLA.

Deep-learning "convolution" is cross-correlation (the kernel is not flipped):

    out[n, i, j, o] = b[o] + sum_{m, k, c} x_pad[n, i*s_h + m*d_h, j*s_w + k*d_w, g(o)*C_g + c]
                                           * w[m, k, c, o]

with ``x_pad`` the zero-padded input, ``C_g = C_in / groups`` input channels per group and
``g(o) = o // (C_out / groups)`` the group of output channel ``o`` (Goodfellow et al.,
"Deep Learning", Eq. 9.6; PyTorch ``torch.nn.Conv2d`` docs for groups/dilation).
Layouts: input NHWC ``(N, H, W, C_in)``, kernel HWIO ``(K_h, K_w, C_in/groups, C_out)``,
output NHWC ``(N, H_out, W_out, C_out)``, as ``flax.linen.Conv``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.ops.formulas import conv_output_size, padding_pair

IntOrPair = Union[int, Sequence[int]]
IMPLS = ("direct", "im2col", "xla")


def _pair(name: str, v: IntOrPair) -> tuple[int, int]:
  if isinstance(v, int):
    v = (v, v)
  v = tuple(int(a) for a in v)
  if len(v) != 2 or min(v) < 1:
    raise ValueError(f"{name} must be a positive int or a pair of them, got {v!r}")
  return v


def resolve_padding(padding, in_hw: tuple[int, int], kernel_hw: tuple[int, int],
                    stride: tuple[int, int], dilation: tuple[int, int]
                    ) -> tuple[tuple[int, int], tuple[int, int]]:
  """Normalises padding to ``((top, bottom), (left, right))`` pixels.

  Args:
    padding: 'VALID', 'SAME' (TF/XLA rule, see ``formulas.same_padding``), an int
      (all sides), a pair ``(pad_h, pad_w)`` (both sides of each axis), or
      ``((top, bottom), (left, right))``.

  Raises:
    ValueError: any other form, or negative amounts.
  """
  if isinstance(padding, str) or isinstance(padding, int):
    per_axis = (padding, padding)
  else:
    per_axis = tuple(padding)
    if len(per_axis) != 2:
      raise ValueError(f"padding must be 'VALID', 'SAME', an int, a pair, or "
                       f"((top, bottom), (left, right)); got {padding!r}")
  return tuple(padding_pair(p, n, k, s, d) for p, n, k, s, d in
               zip(per_axis, in_hw, kernel_hw, stride, dilation))


def _check(x, w, b, groups: int):
  if x.ndim != 4:
    raise ValueError(f"conv2d: x must be NHWC (N, H, W, C_in), got shape {x.shape}")
  if w.ndim != 4:
    raise ValueError(f"conv2d: w must be HWIO (K_h, K_w, C_in/groups, C_out), "
                     f"got shape {w.shape}")
  c_in, c_out = x.shape[-1], w.shape[-1]
  if groups < 1 or c_in % groups:
    raise ValueError(f"conv2d: groups={groups} must divide C_in={c_in}")
  if c_out % groups:
    raise ValueError(f"conv2d: groups={groups} must divide C_out={c_out} (w.shape[3])")
  if w.shape[2] != c_in // groups:
    raise ValueError(
        f"conv2d: kernel has {w.shape[2]} input channels per group (w.shape[2]) but x has "
        f"C_in={c_in} and groups={groups}; expected w.shape[2] == C_in/groups == "
        f"{c_in // groups}")
  if b is not None and tuple(b.shape) != (c_out,):
    raise ValueError(f"conv2d: bias must have shape (C_out,) = ({c_out},), got {b.shape}")


def _taps(xp, kh, kw, ho, wo, s, d):
  """Yields ((m, k), view) where view[n, i, j, c] = xp[n, i*s_h + m*d_h, j*s_w + k*d_w, c]."""
  n, _, _, c = xp.shape
  for m in range(kh):
    for k in range(kw):
      start = (0, m * d[0], k * d[1], 0)
      limit = (n, m * d[0] + (ho - 1) * s[0] + 1, k * d[1] + (wo - 1) * s[1] + 1, c)
      yield (m, k), lax.slice(xp, start, limit, (1, s[0], s[1], 1))


def _direct(xp, w, ho, wo, s, d, groups):
  """Sum over the K_h*K_w taps of a per-tap channel contraction (grouped)."""
  kh, kw, cg, c_out = w.shape
  n = xp.shape[0]
  wg = w.reshape(kh, kw, cg, groups, c_out // groups)
  acc = jnp.zeros((n, ho, wo, groups, c_out // groups), jnp.result_type(xp, w))
  for (m, k), v in _taps(xp, kh, kw, ho, wo, s, d):
    v = v.reshape(n, ho, wo, groups, cg)
    acc = acc + jnp.einsum("nhwgc,cgo->nhwgo", v, wg[m, k],
                           precision=lax.Precision.HIGHEST)
  return acc.reshape(n, ho, wo, c_out)


def im2col(xp, kh: int, kw: int, ho: int, wo: int, stride=(1, 1), dilation=(1, 1)):
  """Patch matrix of a padded NHWC input: ``(N, H_out, W_out, K_h*K_w, C)``.

  Row ``(n, i, j)`` holds the ``K_h*K_w*C`` input values that output pixel ``(i, j)``
  sees, tap-major (``(m, k)`` outer, channel inner) to match ``w.reshape(-1, C_out)``
  of an HWIO kernel.
  """
  return jnp.stack([v for _, v in _taps(xp, kh, kw, ho, wo, stride, dilation)], axis=3)


def _im2col(xp, w, ho, wo, s, d, groups):
  """One (batched-over-groups) matmul: patches ``(NHW, G, K*C_g)`` x ``(G, K*C_g, C_out/G)``."""
  kh, kw, cg, c_out = w.shape
  n = xp.shape[0]
  cols = im2col(xp, kh, kw, ho, wo, s, d)                      # (N, Ho, Wo, KhKw, C_in)
  cols = cols.reshape(n * ho * wo, kh * kw, groups, cg)
  cols = cols.transpose(0, 2, 1, 3).reshape(n * ho * wo, groups, kh * kw * cg)
  wm = w.reshape(kh * kw, cg, groups, c_out // groups).transpose(2, 0, 1, 3)
  wm = wm.reshape(groups, kh * kw * cg, c_out // groups)
  out = jnp.einsum("pgk,gko->pgo", cols, wm, precision=lax.Precision.HIGHEST)
  return out.reshape(n, ho, wo, c_out)


def conv2d(x: jax.Array, w: jax.Array, b: Optional[jax.Array] = None, *,
           stride: IntOrPair = 1, padding="VALID", dilation: IntOrPair = 1,
           groups: int = 1, impl: str = "xla") -> jax.Array:
  """2-D cross-correlation (the deep-learning "convolution"), NHWC x HWIO -> NHWC.

  Args:
    x: input ``(N, H, W, C_in)``, float.
    w: kernel ``(K_h, K_w, C_in/groups, C_out)``, float.
    b: optional bias ``(C_out,)``.
    stride: s, int or ``(s_h, s_w)`` pixels.
    padding: 'VALID', 'SAME' (output ``ceil(H/s)``), int, ``(p_h, p_w)`` or
      ``((top, bottom), (left, right))`` zero padding in pixels.
    dilation: d, int or pair (``rhs_dilation``; gap between kernel taps).
    groups: channel groups (``feature_group_count``); ``groups == C_in`` is depthwise.
    impl: 'direct' (sum over kernel taps), 'im2col' (patch matrix and one matmul), or
      'xla' (``lax.conv_general_dilated``). All three agree to float32 rounding; the
      first two use ``Precision.HIGHEST`` matmuls.

  Returns:
    ``(N, H_out, W_out, C_out)`` with ``H_out = floor((H + p_h - d_h(K_h-1) - 1)/s_h) + 1``.

  Raises:
    ValueError: wrong ranks, ``w.shape[2] != C_in/groups``, groups not dividing the
      channels, bias shape not ``(C_out,)``, unknown ``impl``/padding, or an empty output.
  """
  x = jnp.asarray(x)
  w = jnp.asarray(w)
  b = None if b is None else jnp.asarray(b)
  _check(x, w, b, groups)
  if impl not in IMPLS:
    raise ValueError(f"conv2d: impl must be one of {IMPLS}, got {impl!r}")
  s, d = _pair("stride", stride), _pair("dilation", dilation)
  kh, kw = w.shape[:2]
  pads = resolve_padding(padding, x.shape[1:3], (kh, kw), s, d)
  ho = conv_output_size(x.shape[1], kh, s[0], pads[0], d[0])
  wo = conv_output_size(x.shape[2], kw, s[1], pads[1], d[1])
  if impl == "xla":
    y = lax.conv_general_dilated(
        x, w, window_strides=s, padding=pads, rhs_dilation=d,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        precision=lax.Precision.HIGHEST)
  else:
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    fn = _direct if impl == "direct" else _im2col
    y = fn(xp, w, ho, wo, s, d, groups)
  if b is not None:
    y = y + b
  return y


def conv1d(x: jax.Array, w: jax.Array, b: Optional[jax.Array] = None, *, stride: int = 1,
           padding="VALID", dilation: int = 1, groups: int = 1, impl: str = "xla"
           ) -> jax.Array:
  """1-D cross-correlation (an FIR filter bank), NLC x LIO -> NLC.

  ``out[n, t, o] = b[o] + sum_{m, c} x_pad[n, t*s + m*d, c] * w[m, c, o]``; with one
  channel this is ``numpy.correlate(x, w, 'valid')``, the FIR filter ``y = x * flip(w)``.

  Args:
    x: ``(N, L, C_in)`` signal.
    w: ``(K, C_in/groups, C_out)`` taps.
    b: optional ``(C_out,)``.
    stride, dilation: ints (samples).
    padding: 'VALID', 'SAME', int or ``(left, right)`` samples.
    groups, impl: as :func:`conv2d`.

  Returns:
    ``(N, L_out, C_out)``.

  Raises:
    ValueError: as :func:`conv2d` (ranks checked here: x 3-D, w 3-D).
  """
  x = jnp.asarray(x)
  w = jnp.asarray(w)
  if x.ndim != 3 or w.ndim != 3:
    raise ValueError(f"conv1d: x must be (N, L, C_in) and w (K, C_in/groups, C_out); "
                     f"got x {x.shape}, w {w.shape}")
  pad2 = ((0, 0), padding_pair(padding, x.shape[1], w.shape[0], stride, dilation))
  y = conv2d(x[:, None], w[None], b, stride=(1, stride), padding=pad2,
             dilation=(1, dilation), groups=groups, impl=impl)
  return y[:, 0]


__all__ = ["conv2d", "conv1d", "im2col", "resolve_padding", "IMPLS"]
