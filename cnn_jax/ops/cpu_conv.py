"""The convolution every model layer calls: oneDNN's or XLA's on CPU, XLA's elsewhere.

:func:`conv_general_dilated` is a drop-in for ``lax.conv_general_dilated`` that the models
pass to ``flax.linen.Conv`` (through :class:`cnn_jax.models.layers.Conv`), so parameter
names and shapes are those of ``nn.Conv``. On GPU and TPU, and inside
:func:`cnn_jax.ops.depthwise.xla_convs` (the analysis tools, which count the mathematical
convolution), every call is ``lax.conv_general_dilated`` unchanged.

**Backend** (config key ``conv_backend``; :func:`conv_backend` sets it for the code traced
inside it, :func:`resolve_backend` turns ``'auto'`` into a name). Under ``'onednn'``, every
convolution :func:`cnn_jax.ops.onednn_conv.supports` (dense, grouped and depthwise NHWC
convs in float32 or bfloat16) runs as oneDNN's primitives (:mod:`cnn_jax.ops.onednn_conv`:
2-8x XLA's fp32 speed for the narrow convs of CIFAR networks, and bf16 on AMX / AVX512-BF16,
which XLA's CPU backend computes in fp32); :class:`cnn_jax.models.layers.BatchNorm` reads the
same backend and computes training-mode BatchNorm with oneDNN under it
(:mod:`cnn_jax.ops.onednn_batch_norm`). Under ``'xla'`` (the fallback when oneDNN is not
installed, and for any conv oneDNN does not take), XLA computes it, with two cases rerouted
on CPU:

1. **Depthwise convs** go to :func:`cnn_jax.ops.depthwise.depthwise_conv_taps` (XLA's
   grouped conv is 5-30x slower there; see that module).
2. **Small-output convs**: a dense NHWC conv whose output is smaller than its (dilated)
   window in a spatial dimension (``H_out < d (K - 1) + 1``, e.g. a 3x3 'SAME' conv on a
   2x2 or 1x1 feature map, VGG-16-CIFAR's last stage) is computed as patches x kernel
   (:func:`small_output_conv`: ``im2col`` and one matrix product). For these shapes jaxlib
   0.10's CPU backend swaps the conv's operands (the kernel becomes the input: the
   compiled HLO reads ``convolution(reverse(w), x), dim_labels=01fb_o01i->f01b``), a
   layout its Eigen convolution does not take, and runs a generic loop at 1-5 GFLOP/s
   against 150-190 GFLOP/s for the same layer on a 4x4 map (2-core AMD EPYC Zen 4,
   batch 128, 512->512 channels; ``benchmarks/small_output_conv_bench.py`` measures it).
   The patch matrix is small exactly when the output is (``N * H_out * W_out`` rows), and
   autodiff of the slices and the matmul gives both gradients as matmuls and pads, so
   neither backward conv is emitted.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.ops import depthwise, onednn_conv, onednn_library
from cnn_jax.ops.conv import im2col, resolve_padding

BACKENDS = ("auto", "xla", "onednn")
_BACKEND = contextvars.ContextVar("cnn_jax_conv_backend", default="xla")


def resolve_backend(name: str) -> str:
  """The convolution backend config key ``conv_backend = name`` means in this process.

  ``'auto'`` is ``'onednn'`` when JAX's default backend is CPU with exactly one device
  (XLA's SPMD partitioner cannot split the custom call of a multi-device mesh) and
  :func:`cnn_jax.ops.onednn_library.available`; else ``'xla'``. ``'xla'`` and ``'onednn'``
  are returned as they are (:func:`conv_backend` checks that ``'onednn'`` can run).

  Raises:
    ValueError: ``name`` not in :data:`BACKENDS`.
  """
  if name not in BACKENDS:
    raise ValueError(f"conv_backend must be one of {BACKENDS}, got {name!r}")
  if name != "auto":
    return name
  if jax.default_backend() == "cpu" and jax.device_count() == 1 and onednn_library.available():
    return "onednn"
  return "xla"


@contextlib.contextmanager
def conv_backend(name: str):
  """Within this context (this thread/task), :func:`conv_general_dilated` traces with the
  backend ``name`` (``'auto'``, ``'xla'`` or ``'onednn'``, resolved by
  :func:`resolve_backend`); jitted functions keep the backend they were traced with.

  Yields:
    the resolved name.

  Raises:
    ValueError: an unknown name, or ``'onednn'`` with more than one device.
    RuntimeError: ``'onednn'`` where :func:`cnn_jax.ops.onednn_library.unavailable_reason`
      says why it cannot run (the library is built and loaded here, not at the first conv).
  """
  resolved = resolve_backend(name)
  if resolved == "onednn":
    if jax.device_count() != 1:
      raise ValueError(f"conv_backend='onednn' runs on one device (XLA cannot partition its "
                       f"custom call); this process sees {jax.device_count()} devices: use "
                       "'xla' or 'auto'")
    onednn_library.load()
  token = _BACKEND.set(resolved)
  try:
    yield resolved
  finally:
    _BACKEND.reset(token)


def current_backend() -> str:
  """The backend :func:`conv_general_dilated` traces with here: ``'xla'`` or ``'onednn'``."""
  return _BACKEND.get()


def is_small_output(lhs_shape, rhs_shape, window_strides, padding, rhs_dilation=None) -> bool:
  """Whether an NHWC x HWIO conv's output is smaller than its dilated window in a spatial
  dimension (``H_out < d_h (K_h - 1) + 1`` or the same for W): the case
  :func:`conv_general_dilated` computes by :func:`small_output_conv` on CPU.

  Args:
    lhs_shape: ``(N, H, W, C_in)``.
    rhs_shape: ``(K_h, K_w, C_in / groups, C_out)``.
    window_strides: ``(s_h, s_w)`` pixels.
    padding: ``'SAME'``, ``'VALID'`` or ``((top, bottom), (left, right))`` pixels.
    rhs_dilation: ``(d_h, d_w)`` or ``None`` (1, 1).
  """
  dil = tuple(rhs_dilation or (1, 1))
  k_hw = tuple(rhs_shape[:2])
  pads = resolve_padding(padding, tuple(lhs_shape[1:3]), k_hw, tuple(window_strides), dil)
  out = depthwise.output_hw(lhs_shape, rhs_shape, tuple(window_strides), pads, dil)
  return any(o < d * (k - 1) + 1 for o, k, d in zip(out, k_hw, dil))


def small_output_conv(x: jax.Array, w: jax.Array, strides=(1, 1), padding="VALID",
                      dilation=(1, 1), preferred_element_type=None) -> jax.Array:
  """Dense 2-D convolution as ``im2col(x_pad) @ w.reshape(K_h K_w C_in, C_out)``.

  Equal to ``lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))`` up to float rounding (tested). Meant for
  small outputs (see the module docstring): the patch matrix has ``N * H_out * W_out`` rows
  of ``K_h * K_w * C_in`` values.

  Args:
    x: ``(N, H, W, C_in)``, NHWC.
    w: ``(K_h, K_w, C_in, C_out)``, HWIO (one group).
    strides: ``(s_h, s_w)`` pixels.
    padding: ``'SAME'``, ``'VALID'`` or ``((top, bottom), (left, right))`` pixels (>= 0).
    dilation: ``(d_h, d_w)`` kernel dilation (``rhs_dilation``), pixels.
    preferred_element_type: output dtype; default ``jnp.result_type(x, w)``.

  Returns:
    ``(N, H_out, W_out, C_out)``, ``H_out = floor((H + p_t + p_b - d_h (K_h - 1) - 1) / s_h) + 1``.

  Raises:
    ValueError: ``w`` is not ``(K_h, K_w, C_in, C_out)`` for ``C_in = x.shape[-1]``, or a
      padding :func:`cnn_jax.ops.conv.resolve_padding` rejects (e.g. negative).
  """
  if x.ndim != 4 or w.ndim != 4 or w.shape[2] != x.shape[3]:
    raise ValueError(f"small_output_conv: expected x (N, H, W, C) and w (K_h, K_w, C, C_out) "
                     f"with the same C, got x {x.shape} and w {w.shape}")
  kh, kw, c_in, c_out = w.shape
  strides, dilation = tuple(strides), tuple(dilation)
  pads = resolve_padding(padding, x.shape[1:3], (kh, kw), strides, dilation)
  ho, wo = depthwise.output_hw(x.shape, w.shape, strides, pads, dilation)
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  cols = im2col(xp, kh, kw, ho, wo, strides, dilation)       # (N, Ho, Wo, KhKw, C_in)
  out = lax.dot_general(cols.reshape(-1, kh * kw * c_in), w.reshape(kh * kw * c_in, c_out),
                        (((1,), (0,)), ((), ())),
                        preferred_element_type=preferred_element_type)
  return out.reshape(x.shape[0], ho, wo, c_out)


def takes_onednn(lhs_shape, rhs_shape, dtype, rhs_dtype, padding, lhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                 preferred_element_type=None) -> bool:
  """Whether :func:`conv_general_dilated` traced here computes this conv with oneDNN: CPU,
  not inside :func:`cnn_jax.ops.depthwise.xla_convs`, backend ``'onednn'``, and a conv
  :func:`cnn_jax.ops.onednn_conv.supports` (same arguments)."""
  return (not depthwise.forcing_xla() and jax.default_backend() == "cpu"
          and _BACKEND.get() == "onednn"
          and onednn_conv.supports(lhs_shape, rhs_shape, dtype, rhs_dtype, padding,
                                   lhs_dilation, dimension_numbers, feature_group_count,
                                   batch_group_count, preferred_element_type))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated``, with the CPU cases of the module docstring rerouted.

  Same arguments and result as ``jax.lax.conv_general_dilated``. Under
  :func:`conv_backend` ``'onednn'`` on CPU (not inside
  :func:`cnn_jax.ops.depthwise.xla_convs`), a conv that
  :func:`cnn_jax.ops.onednn_conv.supports` goes to :func:`cnn_jax.ops.onednn_conv.conv`.
  Otherwise depthwise convs go through
  :func:`cnn_jax.ops.depthwise.conv_general_dilated` (its own conditions); a dense conv
  (``feature_group_count == batch_group_count == 1``, NHWC/HWIO, no ``lhs_dilation``,
  non-negative padding) whose output is smaller than its window (:func:`is_small_output`)
  goes to :func:`small_output_conv` when the default backend is CPU and not inside
  :func:`cnn_jax.ops.depthwise.xla_convs`; everything else is ``lax.conv_general_dilated``.
  """
  on_cpu = not depthwise.forcing_xla() and jax.default_backend() == "cpu"
  if takes_onednn(lhs.shape, rhs.shape, lhs.dtype, rhs.dtype, padding, lhs_dilation,
                  dimension_numbers, feature_group_count, batch_group_count,
                  preferred_element_type):
    return onednn_conv.conv(lhs, rhs, window_strides, padding, rhs_dilation or (1, 1),
                            feature_group_count)
  small = (on_cpu and lhs.ndim == 4
           and feature_group_count == 1 and batch_group_count == 1
           and depthwise.is_nhwc(lhs.shape, rhs.shape, dimension_numbers)
           and all(v == 1 for v in (lhs_dilation or (1, 1)))
           and (isinstance(padding, str) or all(p >= 0 for pair in padding for p in pair))
           and is_small_output(lhs.shape, rhs.shape, window_strides, padding, rhs_dilation))
  if small:
    return small_output_conv(lhs, rhs, window_strides, padding, rhs_dilation or (1, 1),
                             preferred_element_type)
  return depthwise.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
