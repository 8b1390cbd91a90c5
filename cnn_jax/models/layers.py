"""Layers shared by the model families.

* :class:`Conv`: ``flax.linen.Conv`` computing through
  :func:`cnn_jax.ops.cpu_conv.conv_general_dilated` (on CPU oneDNN's convolution, or XLA's
  with the two cases its CPU backend runs slowly rerouted: depthwise convs and outputs
  smaller than the window), with the bias inside oneDNN's primitives where oneDNN computes
  the conv. Every model builds its convolutions with it; parameters are ``nn.Conv``'s.
* :func:`max_pool`: ``flax.linen.max_pool`` with tiling windows computed by a reshape on CPU
  (:mod:`cnn_jax.ops.cpu_pool`; same value and gradient).
* :class:`BatchNorm`: ``flax.linen.BatchNorm`` whose training-mode batch statistics, output
  and gradient are oneDNN's under ``conv_backend = 'onednn'``
  (:mod:`cnn_jax.ops.onednn_batch_norm`); same variables, same values within rounding.
* :func:`batch_norm`, :data:`conv_init_fan_out`: PyTorch-default BatchNorm, He init.
* :class:`GRN`: Global Response Normalization (Woo et al. 2023, "ConvNeXt V2: Co-designing
  and Scaling ConvNets with Masked Autoencoders", CVPR 2023, Eq. 1-3; reference
  implementation facebookresearch/ConvNeXt-V2 ``models/utils.py::GRN``).
* :class:`DropPath`: stochastic depth per example (Huang et al. 2016, "Deep Networks with
  Stochastic Depth"; reference timm ``layers/drop.py::drop_path``).
* :func:`layer_norm`: LayerNorm with the eps 1e-6 of ConvNeXt / ViT / Mixer (flax's default is
  1e-6 too, PyTorch's 1e-5; spelled out here so it is explicit).
* :func:`gelu_exact`: erf GELU, as PyTorch ``nn.GELU()`` (flax ``nn.gelu`` defaults to the tanh
  approximation).

All layers are channels-last; ``dtype`` is the compute dtype, parameters stay float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.ops import cpu_conv, cpu_pool, onednn_batch_norm, onednn_conv


class Conv(nn.Conv):
  """``flax.linen.Conv`` whose convolution is :func:`cnn_jax.ops.cpu_conv.conv_general_dilated`.

  Same fields, variables (``kernel`` ``(K_h, K_w, C_in / G, C_out)`` HWIO, ``bias``
  ``(C_out,)``), auto-name (``Conv_<i>``) and ``isinstance(m, nn.Conv)`` as ``nn.Conv``, so
  checkpoints and parameter counts are ``nn.Conv``'s. One case differs in how, not what, it
  computes: with a bias, under ``conv_backend = 'onednn'`` on CPU, a ``(N, H, W, C)`` input
  whose conv :func:`cnn_jax.ops.onednn_conv.supports` (no mask, unshared weights or input
  dilation; padding 'SAME', 'VALID' or explicit) goes to
  :func:`cnn_jax.ops.onednn_conv.conv` with ``bias=``: the bias is added inside oneDNN's
  forward primitive and its gradient comes from the kernel-gradient primitive, as PyTorch's
  ``nn.Conv2d`` does. ``nn.Conv`` would add it after the conv and XLA reduce its gradient:
  two more passes over the output (entry 19 of ``experiments/performance_log.md``). The
  output is the same within float rounding (bfloat16: one rounding instead of two).
  """

  conv_general_dilated: Any = cpu_conv.conv_general_dilated

  @nn.nowrap
  def _onednn_bias_route(self, x, kernel_size, padding, dtype) -> bool:
    if not (self.use_bias and self.shared_weights and self.mask is None and x.ndim == 4
            and len(kernel_size) == 2 and not self.is_initializing()
            and self.conv_general_dilated is cpu_conv.conv_general_dilated
            and all(d == 1 for d in _pair(self.input_dilation))
            and (padding in ("SAME", "VALID") or not isinstance(padding, str))):
      return False
    groups = self.feature_group_count
    c_in = x.shape[3]
    return c_in % groups == 0 and cpu_conv.takes_onednn(
        x.shape, (*kernel_size, c_in // groups, self.features), dtype, dtype, padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)

  @nn.compact
  def __call__(self, inputs):
    """``(N, H, W, C_in) -> (N, H_out, W_out, C_out)`` (other ranks: ``nn.Conv``)."""
    kernel_size = ((self.kernel_size,) if isinstance(self.kernel_size, int)
                   else tuple(self.kernel_size))
    padding = nn.linear.canonicalize_padding(self.padding, len(kernel_size))
    dtype = (jnp.dtype(self.dtype) if self.dtype is not None
             else jnp.promote_types(inputs.dtype, self.param_dtype))
    if not self._onednn_bias_route(inputs, kernel_size, padding, dtype):
      return _unwrapped(nn.Conv.__call__)(self, inputs)
    c_in = inputs.shape[3]
    kernel = self.param("kernel", self.kernel_init,
                        (*kernel_size, c_in // self.feature_group_count, self.features),
                        self.param_dtype)
    bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    return onednn_conv.conv(inputs, kernel, _pair(self.strides), padding,
                            _pair(self.kernel_dilation), self.feature_group_count, bias=bias)


def _unwrapped(method):
  """The body of a Flax module method without Flax's wrapper: called from the subclass's own
  (wrapped) ``__call__``, it runs in that call's scope, so method interceptors (the summary,
  the geometry checks, ``materialized_conv_inputs``) see one call per layer, not two."""
  return method.__wrapped__


def _pair(v) -> tuple[int, int]:
  """A Flax ``strides`` / dilation field (None, an int or a sequence) as 2 ints."""
  v = 1 if v is None else v
  return (int(v),) * 2 if isinstance(v, int) else tuple(int(i) for i in v)

# nn.max_pool with a fast path for tiling windows on CPU (same value and gradient).
max_pool = cpu_pool.max_pool

# He et al. 2015 normal init on fan-out, as torchvision's ResNets and fyu/drn:
# kaiming_normal_(mode='fan_out'), std = sqrt(2 / (k * k * out_channels)).
conv_init_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BatchNorm(nn.BatchNorm):
  """``flax.linen.BatchNorm``, computed by oneDNN where that is faster and the same.

  Same fields (plus ``relu``), variables (``params``: ``scale``, ``bias``; ``batch_stats``:
  ``mean``, ``var``) and auto-name (``BatchNorm_<i>``) as ``nn.BatchNorm``, so checkpoints and
  parameter counts do not change. In training mode (batch statistics) under
  ``conv_backend = 'onednn'`` (:func:`cnn_jax.ops.cpu_conv.current_backend` when traced),
  an ``(N, H, W, C)`` float32 or bfloat16 input normalized over N, H, W with no ``axis_name``
  or ``mask`` goes to :func:`cnn_jax.ops.onednn_batch_norm.batch_norm_train` (forward and
  gradient as two oneDNN primitives); everything else, initialization included, is
  ``nn.BatchNorm``'s own code. The running averages update as ``nn.BatchNorm``'s:
  ``ra = momentum * ra + (1 - momentum) * batch`` with the biased batch variance. The output
  dtype is ``nn.BatchNorm``'s (``dtype``, else the input's promoted with the parameters').

  ``relu=True`` applies ReLU to the output: on the oneDNN route inside the same primitives
  (oneDNN's ``fuse_norm_relu``, which saves the ReLU's separate forward and backward passes
  over the activation), elsewhere as ``nn.relu`` after ``nn.BatchNorm``.
  """

  relu: bool = False

  @nn.nowrap
  def _onednn_route(self, x, use_running_average, mask) -> bool:
    axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    return (not use_running_average and mask is None and self.axis_name is None
            and not self.is_initializing() and cpu_conv.current_backend() == "onednn"
            and onednn_batch_norm.supports(x.shape, x.dtype)  # rank 4 among others
            and tuple(a % x.ndim for a in axes) == (x.ndim - 1,)
            and self.force_float32_reductions)

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    """``(N, H, W, C) -> (N, H, W, C)`` (other ranks: ``nn.BatchNorm``)."""
    merged = nn.merge_param("use_running_average", self.use_running_average,
                            use_running_average)
    if not self._onednn_route(x, merged, mask):
      y = _unwrapped(nn.BatchNorm.__call__)(self, x, use_running_average, mask=mask)
      return nn.relu(y) if self.relu else y
    c = x.shape[3]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = (self.param("scale", self.scale_init, (c,), self.param_dtype) if self.use_scale
             else jnp.ones((c,), jnp.float32))
    bias = (self.param("bias", self.bias_init, (c,), self.param_dtype) if self.use_bias
            else jnp.zeros((c,), jnp.float32))
    y, mean, var = onednn_batch_norm.batch_norm_train(x, scale, bias, self.epsilon, self.relu)
    ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
    ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    out_dtype = self.dtype or jnp.promote_types(x.dtype, self.param_dtype)
    return y.astype(out_dtype)


def batch_norm(train: bool, dtype: Any = jnp.float32, *, zero_init: bool = False,
               **kw) -> BatchNorm:
  """:class:`BatchNorm` with PyTorch's defaults (momentum 0.1 -> flax 0.9, eps 1e-5) on NHWC.

  Batch statistics when ``train``, running averages otherwise; ``zero_init`` starts the
  scale at 0 (the last BN of a residual branch, Goyal et al. 2017). ``kw`` goes to
  :class:`BatchNorm` (e.g. ``name``, ``relu=True`` for BN -> ReLU).
  """
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
                      **kw)


def gelu_exact(x):
  """The exact (erf) GELU ``x * Phi(x)``, as PyTorch ``nn.GELU()`` and timm use."""
  return nn.gelu(x, approximate=False)


def layer_norm(dtype: Any = jnp.float32, epsilon: float = 1e-6, **kw) -> nn.LayerNorm:
  """A LayerNorm over the last (channel) axis with ``epsilon`` 1e-6 and ``scale``/``bias``
  parameters (2C parameters), computing its statistics in float32."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, **kw)


def safe_l2_norm(x, axis, eps: float = 1e-12, keepdims: bool = True):
  """``sqrt(sum(x**2) + eps)`` over ``axis``: the L2 norm with a finite gradient at 0.

  ``jnp.linalg.norm`` has the gradient ``x / |x|`` = 0/0 = NaN at an all-zero input (e.g.
  a dead GRN channel after a ReLU-like nonlinearity, or zero padding). ``eps`` = 1e-12 is
  below float32 resolution for any non-degenerate norm (``sqrt(s + 1e-12)`` differs from
  ``sqrt(s)`` by less than 5e-7 relative once ``s > 1e-6``), so outputs match the reference
  ``torch.norm`` numerically.
  """
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=keepdims) + eps)


class GRN(nn.Module):
  """Global Response Normalization, ``(N, H, W, C) -> (N, H, W, C)``.

  ``Gx = ||x||_2`` over H and W (per example and channel), ``Nx = Gx / (mean_C(Gx) + 1e-6)``,
  ``out = gamma * (x * Nx) + beta + x``. ``gamma`` and ``beta`` have shape ``(1, 1, 1, C)``
  (as the reference) and start at zero, so GRN is the identity at initialisation.

  Parameters: 2C. Reference: Woo et al. 2023, Sec. 3; facebookresearch/ConvNeXt-V2
  ``models/utils.py::GRN`` (channels-last branch). The norm is
  :func:`safe_l2_norm` (finite gradient at an all-zero input); statistics in float32.

  Attributes:
    epsilon: added to the channel mean of ``Gx`` (1e-6 as the reference).
    norm_eps: inside the square root of the L2 norm (1e-12, see :func:`safe_l2_norm`).
    dtype: compute dtype of the output.
  """
  epsilon: float = 1e-6
  norm_eps: float = 1e-12
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    gamma = self.param("gamma", nn.initializers.zeros, (1, 1, 1, c), jnp.float32)
    beta = self.param("beta", nn.initializers.zeros, (1, 1, 1, c), jnp.float32)
    x32 = x.astype(jnp.float32)
    gx = safe_l2_norm(x32, axis=(1, 2), eps=self.norm_eps)  # (N, 1, 1, C)
    nx = gx / (jnp.mean(gx, axis=-1, keepdims=True) + self.epsilon)
    out = gamma * (x32 * nx) + beta + x32
    return out.astype(self.dtype)


class DropPath(nn.Module):
  """Stochastic depth on a residual branch: ``(N, ...) -> (N, ...)``, no parameters.

  In training each example's branch is kept with probability ``1 - rate`` and the kept ones
  are scaled by ``1 / (1 - rate)`` (expected value unchanged); in evaluation (or with
  ``rate == 0``) it is the identity. Draws from the ``'dropout'`` rng stream.
  Reference: Huang et al. 2016; timm ``layers/drop.py::drop_path`` (``scale_by_keep=True``).

  Attributes:
    rate: drop probability in ``[0, 1)``.
  """
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    if deterministic or self.rate == 0.0:
      return x
    if not 0.0 <= self.rate < 1.0:
      raise ValueError(f"DropPath: rate must be in [0, 1), got {self.rate}")
    keep_prob = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, shape)
    return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))


def drop_path_rates(drop_path_rate: float, num_blocks: int) -> list[float]:
  """Linearly rising stochastic-depth rates ``linspace(0, drop_path_rate, num_blocks)``
  (first block 0, last block ``drop_path_rate``), as ConvNeXt and timm's ViT."""
  if num_blocks == 1:
    return [0.0]
  return [drop_path_rate * i / (num_blocks - 1) for i in range(num_blocks)]


dense_init_02 = nn.initializers.normal(0.02)
"""Plain normal(0, 0.02): the ``trunc_normal_(std=.02)`` of PyTorch references, whose
truncation at +-2 (absolute, i.e. 100 sigma) never bites. Flax's ``truncated_normal(0.02)``
truncates at 2 sigma and has a real std of about 0.0176."""


def scaled_init(init, scale: float):
  """An initializer returning ``scale * init(...)`` (ConvNeXt's ``head_init_scale``)."""
  def _init(key, shape, dtype=jnp.float32):
    return init(key, shape, dtype) * jnp.asarray(scale, dtype)
  return _init
