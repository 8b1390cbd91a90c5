"""Batch normalization with batch statistics (training mode) by oneDNN on CPU, called from
inside XLA programs (XLA FFI custom calls).

Why: with oneDNN's convolutions (:mod:`cnn_jax.ops.onednn_conv`) a ResNet-20 train step on the
2-core Xeon spends about as long in its convolutions as PyTorch does, and the rest of its gap
is XLA's side of BatchNorm: each BatchNorm's statistics are two separate reductions over the
activation (``sum x`` and ``sum x^2``, run by YNNPACK), then ``x - mean`` is materialized,
and the backward pass adds two more reductions and elementwise passes (35 ms of reductions
and 56 ms of elementwise fusions in a 193 ms fp32 step, where PyTorch spends 79 ms outside
its convolutions; profile in ``experiments/performance_log.md``, entry 18). oneDNN's
``batch_normalization_forward`` (forward training) and ``batch_normalization_backward``
(``prop_kind::backward``: input, scale and shift gradients) do each direction in one
primitive over JAX's NHWC buffer, optionally with the following ReLU fused in
(``fuse_norm_relu``). With them the step took 179.5 instead of 185.6 ms in fp32 and 88.3
instead of 132.7 ms in bf16 (before the fused ReLU; entry 18).

:func:`batch_norm_train` is a ``jax.custom_vjp`` over the two primitives and computes
``y = (x - mean) / sqrt(var + epsilon) * scale + shift`` (then ``max(y, 0)`` with
``relu``) with the batch mean and biased
variance over N, H, W (Ioffe & Szegedy 2015, Algorithm 1; the variance divides by N*H*W as
``flax.linen.BatchNorm`` and oneDNN do). Its gradient is the full BatchNorm gradient through
the batch statistics (Ioffe & Szegedy 2015, Sec. 3, the chain rule above Algorithm 2).
The returned mean and variance are for the running averages only and carry no gradient.
:class:`cnn_jax.models.layers.BatchNorm` routes here in training under ``conv_backend =
'onednn'``.

Scope (:func:`supports`): rank-4 NHWC, float32 or bfloat16 activations; scale, shift, mean
and variance float32 (bf16 activations are normalized in fp32 inside oneDNN). The library is
built and registered by :mod:`cnn_jax.ops.onednn_library`.
"""

from __future__ import annotations

import ctypes
import functools

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.ops import onednn_library

_SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


def supports(shape, dtype) -> bool:
  """Whether :func:`batch_norm_train` computes BatchNorm of an activation of this shape and
  dtype: rank 4 (NHWC, statistics over N, H, W), float32 or bfloat16, no empty dimension."""
  return len(shape) == 4 and jnp.dtype(dtype) in _SUPPORTED_DTYPES and all(d > 0 for d in shape)


def _call(name, outs, *args, epsilon, relu):
  return jax.ffi.ffi_call(onednn_library.FFI_PREFIX + name, outs, vmap_method="sequential")(
      *args, epsilon=np.float32(epsilon), relu=bool(relu))


@functools.lru_cache(maxsize=None)
def _workspace_bytes(shape: tuple[int, ...], dtype: jnp.dtype, relu: bool) -> int:
  # The size of oneDNN's fuse_norm_relu workspace (the ReLU mask: one bit per element in its
  # jit kernels), asked of oneDNN so that the FFI output is exactly that large.
  if not relu:
    return 0
  fn = onednn_library.library().CnnJaxOnednnBatchNormWorkspaceBytes
  fn.restype = ctypes.c_int64
  n, h, w, c = shape
  size = fn(*(ctypes.c_int64(v) for v in (n, h, w, c)), ctypes.c_int(dtype == jnp.bfloat16))
  if size < 0:
    raise RuntimeError(f"onednn_batch_norm: oneDNN has no fused BatchNorm + ReLU for {shape} "
                       f"{dtype}")
  return int(size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn(x, scale, shift, epsilon, relu):
  return _bn_fwd(x, scale, shift, epsilon, relu)[0]


def _bn_fwd(x, scale, shift, epsilon, relu):
  c = jax.ShapeDtypeStruct((x.shape[3],), jnp.float32)
  ws = jax.ShapeDtypeStruct((_workspace_bytes(tuple(x.shape), jnp.dtype(x.dtype), relu),),
                            jnp.uint8)
  y, mean, var, workspace = _call("batch_norm_fwd", (
      jax.ShapeDtypeStruct(x.shape, x.dtype), c, c, ws), x, scale, shift, epsilon=epsilon,
      relu=relu)
  return (y, mean, var), (x, scale, mean, var, workspace)


def _bn_bwd(epsilon, relu, res, g):
  # The mean and variance outputs feed running averages only (stop_gradient in
  # batch_norm_train), so their cotangents are zero and are not propagated.
  x, scale, mean, var, workspace = res
  dy = g[0].astype(x.dtype)
  c = jax.ShapeDtypeStruct((x.shape[3],), jnp.float32)
  dx, dscale, dshift = _call("batch_norm_bwd", (jax.ShapeDtypeStruct(x.shape, x.dtype), c, c),
                             x, dy, mean, var, scale, workspace, epsilon=epsilon, relu=relu)
  return dx, dscale, dshift


_bn.defvjp(_bn_fwd, _bn_bwd)


def batch_norm_train(x: jax.Array, scale: jax.Array, shift: jax.Array, epsilon: float = 1e-5,
                     relu: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """BatchNorm of ``x`` with its own batch statistics, by oneDNN (forward and gradient).

  Args:
    x: ``(N, H, W, C)``, float32 or bfloat16.
    scale, shift: ``(C,)`` (gamma, beta), cast to float32.
    epsilon: added to the variance.
    relu: apply ReLU to the output, inside the same primitives (oneDNN's
      ``fuse_norm_relu``: the backward masks the gradient with the forward's saved mask).

  Returns:
    ``(y, mean, var)``: ``y`` ``(N, H, W, C)`` in the dtype of ``x`` (``max(y, 0)`` with
    ``relu``); the batch ``mean`` and
    biased ``var`` ``(C,)`` float32, without gradient (for the running averages).
    Differentiable in ``x``, ``scale`` and ``shift`` (first order).

  Raises:
    ValueError: ``x`` outside :func:`supports`, or ``scale``/``shift`` not ``(C,)``.
    RuntimeError: the library cannot be built or loaded
      (:func:`cnn_jax.ops.onednn_library.load`).
  """
  if not supports(x.shape, x.dtype):
    raise ValueError(f"onednn_batch_norm: x must be (N, H, W, C) float32 or bfloat16, got "
                     f"{x.shape} {x.dtype}")
  c = x.shape[3]
  if scale.shape != (c,) or shift.shape != (c,):
    raise ValueError(f"onednn_batch_norm: scale and shift must be ({c},), got {scale.shape} "
                     f"and {shift.shape}")
  onednn_library.load()
  y, mean, var = _bn(x, scale.astype(jnp.float32), shift.astype(jnp.float32), float(epsilon),
                     bool(relu))
  return y, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
