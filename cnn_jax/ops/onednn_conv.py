"""2-D convolution by oneDNN on CPU, called from inside XLA programs (an XLA FFI custom call).

Why: jaxlib 0.10's CPU backend runs convolutions through Eigen (or YNNPACK) and computes bf16
ones in fp32 (docs: ``experiments/performance_log.md``, entries 7 and 15). On the 2-core
Xeon of issue #24 its kernel gradient of a 16-channel 3x3 conv reaches 12-43 GFLOP/s where
oneDNN, the library PyTorch calls, reaches 150-200 in fp32, and with AMX about 1,000-1,900
in bf16. This module gives JAX the same kernels: :func:`conv` is a ``jax.custom_vjp``
whose forward, input gradient and kernel gradient are oneDNN primitives
(``convolution_forward``, ``convolution_backward_data``, ``convolution_backward_weights``;
oneDNN developer guide, "Convolution"), run as ``jax.ffi.ffi_call`` custom calls on the
buffers XLA already holds, in JAX's NHWC / HWIO layout (no transposes; oneDNN reorders only
the small kernel tensor to its blocked layout). A conv's bias can go inside the primitives
(``conv(..., bias=)``: added in the forward, its gradient from the kernel gradient).
Everything else around the convolutions (BatchNorm, activations, the optimizer) stays XLA's
and fuses as before, unless BatchNorm also goes to oneDNN
(:mod:`cnn_jax.ops.onednn_batch_norm`).

The handlers are ``onednn_conv.cc``, built and registered with the other oneDNN kernels by
:mod:`cnn_jax.ops.onednn_library` (requirements: a C++ compiler and ``pip install
'cnn_jax[onednn]'``; :func:`cnn_jax.ops.onednn_library.unavailable_reason` says what is
missing).

Scope (:func:`supports`): NHWC / HWIO, float32 or bfloat16 (input and kernel of one dtype),
any stride, non-negative padding, kernel dilation (``rhs_dilation``) and
``feature_group_count`` (grouped and depthwise); not ``lhs_dilation`` (transposed conv),
``batch_group_count`` or a ``preferred_element_type`` other than the input dtype. The kernel
gradient is accumulated in float32 by oneDNN and returned in the kernel's dtype. One device
only: XLA's SPMD partitioner does not know how to split a custom call and would gather the
batch, so :func:`cnn_jax.ops.cpu_conv.conv_backend` refuses ``'onednn'`` on a multi-device
mesh.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.ops import onednn_library
from cnn_jax.ops.conv import resolve_padding
from cnn_jax.ops.depthwise import is_nhwc, output_hw

_SUPPORTED_DTYPES = (jnp.float32, jnp.bfloat16)


def supports(lhs_shape, rhs_shape, dtype, rhs_dtype, padding, lhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, batch_group_count=1,
             preferred_element_type=None) -> bool:
  """Whether :func:`conv` computes this ``lax.conv_general_dilated`` call (see the module
  docstring's scope): 2-D NHWC/HWIO, float32 or bfloat16 operands of one dtype, no
  ``lhs_dilation`` or ``batch_group_count``, non-negative padding, no empty dimension."""
  return (len(lhs_shape) == 4 and len(rhs_shape) == 4
          and is_nhwc(lhs_shape, rhs_shape, dimension_numbers)
          and jnp.dtype(dtype) == jnp.dtype(rhs_dtype)
          and any(jnp.dtype(dtype) == jnp.dtype(d) for d in _SUPPORTED_DTYPES)
          and (preferred_element_type is None
               or jnp.dtype(preferred_element_type) == jnp.dtype(dtype))
          and batch_group_count == 1 and all(v == 1 for v in (lhs_dilation or (1, 1)))
          and feature_group_count >= 1 and lhs_shape[3] == rhs_shape[2] * feature_group_count
          and rhs_shape[3] % feature_group_count == 0
          and (isinstance(padding, str) or all(p >= 0 for pair in padding for p in pair))
          and all(d > 0 for d in (*lhs_shape, *rhs_shape)))


def _attrs(strides, pads, dilation, groups):
  return dict(strides=np.asarray(strides, np.int64),
              padding=np.asarray([p for pair in pads for p in pair], np.int64),
              dilation=np.asarray(dilation, np.int64), groups=np.int64(groups))


def _call(direction, out_shape, out_dtype, *operands, attrs):
  """``out_shape``/``out_dtype``: one result, or tuples of them for several."""
  if isinstance(out_dtype, tuple):
    result = tuple(jax.ShapeDtypeStruct(s, d) for s, d in zip(out_shape, out_dtype))
  else:
    result = jax.ShapeDtypeStruct(out_shape, out_dtype)
  return jax.ffi.ffi_call(onednn_library.FFI_PREFIX + "conv_" + direction, result,
                          vmap_method="sequential")(*operands, **attrs)


def _out_shape(x, w, strides, pads, dilation):
  return (x.shape[0], *output_hw(x.shape, w.shape, strides, pads, dilation), w.shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, pads, dilation, groups):
  return _call("fwd", _out_shape(x, w, strides, pads, dilation), x.dtype, x, w,
               attrs=_attrs(strides, pads, dilation, groups))


def _conv_fwd(x, w, strides, pads, dilation, groups):
  return _conv(x, w, strides, pads, dilation, groups), (x, w)


def _conv_bwd(strides, pads, dilation, groups, res, g):
  x, w = res
  attrs = _attrs(strides, pads, dilation, groups)
  g = g.astype(x.dtype)
  dx = _call("bwd_data", x.shape, x.dtype, g, w, attrs=attrs)
  dw = _call("bwd_weights", w.shape, jnp.float32, x, g, attrs=attrs).astype(w.dtype)
  return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


# With a float32 bias: added inside the forward primitive, its gradient (the sum of the
# output gradient over N, H, W) from the kernel-gradient primitive.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _conv_bias(x, w, b, strides, pads, dilation, groups):
  return _call("fwd_bias", _out_shape(x, w, strides, pads, dilation), x.dtype, x, w, b,
               attrs=_attrs(strides, pads, dilation, groups))


def _conv_bias_fwd(x, w, b, strides, pads, dilation, groups):
  return _conv_bias(x, w, b, strides, pads, dilation, groups), (x, w)


def _conv_bias_bwd(strides, pads, dilation, groups, res, g):
  x, w = res
  attrs = _attrs(strides, pads, dilation, groups)
  g = g.astype(x.dtype)
  dx = _call("bwd_data", x.shape, x.dtype, g, w, attrs=attrs)
  dw, db = _call("bwd_weights_bias", (w.shape, (w.shape[3],)), (jnp.float32, jnp.float32),
                 x, g, attrs=attrs)
  return dx, dw.astype(w.dtype), db


_conv_bias.defvjp(_conv_bias_fwd, _conv_bias_bwd)


def conv(x: jax.Array, w: jax.Array, strides=(1, 1), padding="VALID", dilation=(1, 1),
         feature_group_count: int = 1, bias: jax.Array | None = None) -> jax.Array:
  """``lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=...)`` computed by oneDNN,
  differentiable (first order; ``jax.custom_vjp``), plus ``bias`` if given.

  Args:
    x: ``(N, H, W, C_in)``, float32 or bfloat16.
    w: ``(K_h, K_w, C_in / G, C_out)``, HWIO, the dtype of ``x``; ``C_out`` divisible by G.
    strides: ``(s_h, s_w)`` pixels.
    padding: ``'SAME'``, ``'VALID'`` or ``((top, bottom), (left, right))`` pixels, >= 0.
    dilation: ``(d_h, d_w)`` kernel dilation (``rhs_dilation``), pixels.
    feature_group_count: G (``C_in`` for depthwise).
    bias: ``(C_out,)`` or None. Added to the float32 accumulator inside oneDNN's forward
      primitive (one rounding to the output dtype, where ``conv(x, w) + bias`` rounds twice
      in bfloat16), its gradient (float32, cast to ``bias.dtype``) comes from the
      kernel-gradient primitive: no separate pass over the output in either direction.

  Returns:
    ``(N, H_out, W_out, C_out)`` in the dtype of ``x`` (oneDNN accumulates in float32).

  Raises:
    ValueError: shapes, dtypes or padding outside :func:`supports`, or a bias not of shape
      ``(C_out,)``.
    RuntimeError: the library cannot be built or loaded (:func:`cnn_jax.ops.onednn_library.load`); a oneDNN failure at
      run time surfaces as XLA's error carrying oneDNN's message.
  """
  strides, dilation = tuple(int(s) for s in strides), tuple(int(d) for d in dilation)
  if not supports(x.shape, w.shape, x.dtype, w.dtype, padding,
                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                  feature_group_count=feature_group_count):
    raise ValueError(f"onednn_conv.conv: unsupported convolution x {x.shape} {x.dtype}, "
                     f"w {w.shape} {w.dtype}, padding {padding}, groups {feature_group_count} "
                     "(needs NHWC/HWIO float32 or bfloat16 of one dtype, padding >= 0)")
  if bias is not None and tuple(bias.shape) != (w.shape[3],):
    raise ValueError(f"onednn_conv.conv: bias must have shape (C_out,) = ({w.shape[3]},), "
                     f"got {tuple(bias.shape)}")
  onednn_library.load()
  pads = resolve_padding(padding, tuple(x.shape[1:3]), tuple(w.shape[:2]), strides, dilation)
  pads = tuple(tuple(int(p) for p in pair) for pair in pads)
  if bias is None:
    return _conv(x, w, strides, pads, dilation, int(feature_group_count))
  b32 = bias.astype(jnp.float32)
  return _conv_bias(x, w, b32, strides, pads, dilation, int(feature_group_count))
