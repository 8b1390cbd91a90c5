"""Depthwise convolution as a sum of shifted elementwise products, for CPU speed.

A depthwise conv (``feature_group_count == C_in == C_out``, one ``K_h x K_w`` filter per
channel; Howard et al. 2017, Sec. 3.1) is

    out[n, i, j, c] = sum_{m, k} x_pad[n, i*s_h + m*d_h, j*s_w + k*d_w, c] * w[m, k, 0, c]

i.e. ``K_h*K_w`` strided slices of the padded input, each scaled per channel and added.
XLA fuses that into one loop nest. On the 2-core x86 CPU used here, XLA's own grouped
convolution (jaxlib 0.10.2) is far slower for this case: ``benchmarks/depthwise_bench.py``
measures both side by side. :func:`conv_general_dilated` is a drop-in replacement for
``lax.conv_general_dilated`` that takes this path for NHWC/HWIO depthwise convs on CPU and
defers to XLA for everything else; models pass it to ``flax.linen.Conv`` through its
``conv_general_dilated`` attribute, so parameter names and shapes do not change.

Analysis (MAC counting, receptive fields, XLA cost cross-checks) is about the mathematical
convolution, not the CPU kernel choice: it traces inside :func:`xla_convs`, under which every
conv stays one ``conv_general_dilated`` op in the jaxpr.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.ops.conv import _taps, resolve_padding
from cnn_jax.ops.formulas import conv_output_size

_NHWC = ("NHWC", "HWIO", "NHWC")
_DW_CHUNK = 2  # images per step of the kernel-gradient scan (see _taps_conv_bwd)
_FORCE_XLA = contextvars.ContextVar("cnn_jax_depthwise_force_xla", default=False)


@contextlib.contextmanager
def xla_convs():
  """Within this context (this thread/task only), :func:`conv_general_dilated` always calls
  ``lax.conv_general_dilated``: traced jaxprs then hold one conv op per convolution."""
  token = _FORCE_XLA.set(True)
  try:
    yield
  finally:
    _FORCE_XLA.reset(token)


def forcing_xla() -> bool:
  """Whether this thread/task is inside :func:`xla_convs` (every conv must stay XLA's)."""
  return _FORCE_XLA.get()


def is_nhwc(lhs_shape, rhs_shape, dimension_numbers) -> bool:
  """Whether ``dimension_numbers`` mean NHWC input, HWIO kernel and NHWC output for these
  shapes (``None``, lax's NCHW/OIHW default, is not)."""
  if dimension_numbers is None:
    return False  # lax's default is NCHW/OIHW
  want = lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC)
  return lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) == want


def depthwise_conv_taps(x: jax.Array, w: jax.Array, strides=(1, 1), padding="VALID",
                        dilation=(1, 1), preferred_element_type=None) -> jax.Array:
  """Depthwise 2-D convolution by shifted elementwise products (see the module docstring).

  Differentiable in reverse mode (``jax.grad``/``jax.vjp``) through a custom VJP whose
  input and kernel gradients are tap sums too; forward mode (``jax.jvp``) is not defined.

  Args:
    x: ``(N, H, W, C)`` input, NHWC.
    w: ``(K_h, K_w, 1, C)`` kernel, HWIO with one input channel per group.
    strides: ``(s_h, s_w)`` in pixels.
    padding: ``'SAME'``, ``'VALID'`` or ``((top, bottom), (left, right))`` pixels (>= 0).
    dilation: ``(d_h, d_w)`` kernel dilation (``rhs_dilation``), pixels.
    preferred_element_type: output dtype; default ``jnp.result_type(x, w)``. Products are
      accumulated in float32 (or wider) whatever the input dtype, as XLA's conv does.

  Returns:
    ``(N, H_out, W_out, C)`` with ``H_out = floor((H + p_t + p_b - d_h (K_h - 1) - 1) / s_h) + 1``.

  Raises:
    ValueError: ``w`` is not ``(K_h, K_w, 1, C)`` for ``C = x.shape[-1]``, or a padding
      :func:`cnn_jax.ops.conv.resolve_padding` rejects (e.g. negative).
  """
  if x.ndim != 4 or w.ndim != 4 or w.shape[2] != 1 or w.shape[3] != x.shape[3]:
    raise ValueError(f"depthwise_conv_taps: expected x (N, H, W, C) and w (K_h, K_w, 1, C), "
                     f"got x {x.shape} and w {w.shape}")
  s, d = tuple(strides), tuple(dilation)
  pads = resolve_padding(padding, x.shape[1:3], w.shape[:2], s, d)
  out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(x, w))
  return _taps_conv(x, w, s, tuple(map(tuple, pads)), d, out_dtype)


def _tap_sum(xp, w, ho, wo, s, d, out_dtype):
  """``sum_{m,k} view_{m,k}(xp) * w[m, k, 0]`` accumulated in float32 (or wider)."""
  acc_dtype = jnp.promote_types(out_dtype, jnp.float32)
  acc = jnp.zeros((xp.shape[0], ho, wo, xp.shape[3]), acc_dtype)
  for (m, k), view in _taps(xp, w.shape[0], w.shape[1], ho, wo, s, d):
    acc = acc + view.astype(acc_dtype) * w[m, k, 0].astype(acc_dtype)
  return acc.astype(out_dtype)


def output_hw(x_shape, w_shape, s, pads, d) -> tuple[int, int]:
  """``(H_out, W_out)`` of an NHWC input ``x_shape`` and HWIO kernel ``w_shape`` at strides
  ``s``, paddings ``pads`` (``((top, bottom), (left, right))``) and dilations ``d``
  (:func:`cnn_jax.ops.formulas.conv_output_size` per axis)."""
  return tuple(conv_output_size(x_shape[1 + a], w_shape[a], s[a], pads[a], d[a])
               for a in (0, 1))


# Autodiff of the tap sum gives an input gradient of K*K zero-padded, input-sized scatters
# and a kernel gradient of K*K whole-tensor reductions, which left the tap path's fwd+bwd
# far behind its forward. The VJP below computes the input gradient as one more tap sum and
# the kernel gradient chunk by chunk. Reverse mode only: jax.jvp/jacfwd of it raise.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _taps_conv(x, w, s, pads, d, out_dtype):
  return _taps_conv_fwd(x, w, s, pads, d, out_dtype)[0]


def _taps_conv_fwd(x, w, s, pads, d, out_dtype):
  """Output and residuals (padded input, kernel); plain jax, so autodiff of it is the
  backward pass the custom VJP replaces."""
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  return _tap_sum(xp, w, *output_hw(x.shape, w.shape, s, pads, d), s, d, out_dtype), (xp, w)


def _taps_conv_bwd(s, pads, d, out_dtype, res, g):
  """Input and kernel gradients of ``out = sum_{m,k} view_{m,k}(pad(x)) * w[m, k]``.

  Input: ``dx[h] = sum_m g_s[h + p_t - m d]  w[m]`` where ``g_s`` is ``g`` with ``s - 1``
  zeros between rows (the transpose of a stride-``s`` slice): a stride-1 tap sum of
  ``g_s``, padded by ``(K - 1) d - p_t`` in front (cropped where negative), with the
  flipped kernel (columns alike). Kernel: ``dw[m, k] = sum_{n,i,j} g * view_{m,k}(pad(x))``,
  one reduction per tap.
  """
  xp, w = res
  kh, kw = w.shape[:2]
  ho, wo = g.shape[1:3]
  h, wd = (xp.shape[1 + a] - sum(pads[a]) for a in (0, 1))  # unpadded input size
  lo = [(k - 1) * dd - p[0] for k, dd, p in zip((kh, kw), d, pads)]
  hi = [size + pads[a][0] - (g.shape[1 + a] - 1) * s[a] - 1 for a, size in enumerate((h, wd))]
  g_s = lax.pad(g, jnp.zeros((), g.dtype),
                ((0, 0, 0), (lo[0], hi[0], s[0] - 1), (lo[1], hi[1], s[1] - 1), (0, 0, 0)))
  dx = _tap_sum(g_s, w[::-1, ::-1], h, wd, (1, 1), d, xp.dtype)

  # K*K reductions over whole (N, H, W, C) tensors stream x and g from memory K*K times;
  # scanning over chunks of _DW_CHUNK images keeps each chunk in cache for all taps
  # (2.4x less CPU time for 32x32x96 3x3, 3.9x for 16x16x40 7x7 at batch 128, measured
  # against the unchunked sum on the 2-core CPU; 2 images beat 1, 4 and 8).
  acc_dtype = jnp.promote_types(g.dtype, jnp.float32)
  extra = -xp.shape[0] % _DW_CHUNK  # zero images add nothing to the sums
  split = lambda a: jnp.pad(a, ((0, extra), (0, 0), (0, 0), (0, 0))).reshape(
      -1, _DW_CHUNK, *a.shape[1:])

  def chunk_sums(acc, chunk):
    xc, gc = chunk
    gc = gc.astype(acc_dtype)
    return acc + jnp.stack([jnp.sum(view.astype(acc_dtype) * gc, axis=(0, 1, 2))
                            for _, view in _taps(xc, kh, kw, ho, wo, s, d)]), None

  dw, _ = lax.scan(chunk_sums, jnp.zeros((kh * kw, xp.shape[3]), acc_dtype),
                   (split(xp), split(g)))
  return dx, dw.reshape(w.shape).astype(w.dtype)


_taps_conv.defvjp(_taps_conv_fwd, _taps_conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated`` with depthwise convs on CPU done by :func:`depthwise_conv_taps`.

  Same arguments and result as ``jax.lax.conv_general_dilated``. The tap path is taken when
  not inside :func:`xla_convs`, the default backend is CPU, the layout is NHWC/HWIO,
  ``feature_group_count == C_in == C_out`` (``rhs`` is ``(K_h, K_w, 1, C)``), there is no
  ``lhs_dilation`` or ``batch_group_count`` and padding is non-negative; everything else
  (and every convolution on GPU/TPU, where XLA's own depthwise kernels are the fast path)
  goes to ``lax.conv_general_dilated`` unchanged.
  """
  rhs_dilation = tuple(rhs_dilation or (1,) * (lhs.ndim - 2))
  taps = (not forcing_xla() and jax.default_backend() == "cpu" and lhs.ndim == 4
          and is_nhwc(lhs.shape, rhs.shape, dimension_numbers)
          and feature_group_count == lhs.shape[-1] == rhs.shape[-1] and rhs.shape[2] == 1
          and batch_group_count == 1 and all(v == 1 for v in (lhs_dilation or (1, 1)))
          and (isinstance(padding, str) or all(p >= 0 for pair in padding for p in pair)))
  if taps:
    return depthwise_conv_taps(lhs, rhs, window_strides, padding, rhs_dilation,
                               preferred_element_type)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
