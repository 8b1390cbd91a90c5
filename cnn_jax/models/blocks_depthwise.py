"""Depthwise building blocks shared by MobileNet V1/V2 and EfficientNet.

``ConvBNAct`` is the conv -> BatchNorm -> activation unit of torchvision's
``Conv2dNormActivation`` (bias-free conv, symmetric "same" padding ``d * (k - 1) // 2``, so
stride 2 halves an even size exactly as in PyTorch). ``DepthwiseSeparableConv`` is the
MobileNet V1 block (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural
Networks for Mobile Vision Applications", arXiv:1704.04861, Fig. 3): a ``K x K`` depthwise
conv (``feature_group_count = M``, one filter per input channel) + BN + ReLU, then a
``1 x 1`` pointwise conv to ``N`` channels + BN + ReLU.

Cost (paper Eq. 5 / Eq. 4), for an ``H x W`` output, ``M`` inputs, ``N`` outputs::

  standard conv:        H W K^2 M N              MACs,  K^2 M N parameters
  depthwise separable:  H W K^2 M + H W M N      MACs,  K^2 M + M N parameters
  ratio:                1/N + 1/K^2              (3x3: 8-9x cheaper for large N)

Parameter count of ``DepthwiseSeparableConv(N)`` on ``M`` inputs: ``9 M + 2 M + M N + 2 N``
(BatchNorm scale and offset included, running statistics are not parameters).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layers import BatchNorm, Conv

# torchvision MobileNet / EfficientNet init: kaiming_normal_(mode='fan_out'). For a depthwise
# kernel (K, K, 1, C) flax's fan_out is K*K*C, torch's is K*K*C/groups = K*K; the difference
# is a constant scale of the initial weights and is absorbed by the following BatchNorm.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def relu6(x):
  """ReLU6 = min(max(x, 0), 6) (MobileNet V2)."""
  return jnp.minimum(jnp.maximum(x, 0), 6)


def same_padding(kernel_size: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
  """PyTorch-style symmetric padding ``d * (k - 1) // 2`` on both spatial axes."""
  p = dilation * (kernel_size - 1) // 2
  return ((p, p), (p, p))


class ConvBNAct(nn.Module):
  """Bias-free conv + BatchNorm + activation; ``(N, H, W, Cin) -> (N, H/s, W/s, features)``.

  torchvision ``Conv2dNormActivation``. Parameters ``K^2 (Cin / groups) F + 2 F``.

  Attributes:
    features: output channels.
    kernel_size: square kernel size K.
    stride: spatial stride.
    groups: ``feature_group_count``; ``groups == Cin == features`` is a depthwise conv.
    dilation: kernel dilation (atrous rate).
    act: activation applied after BN, or ``None`` for a linear (no activation) output.
    bn_momentum: flax momentum (= 1 - PyTorch momentum), default 0.9 (PyTorch 0.1).
    bn_epsilon: BatchNorm epsilon.
    dtype: compute dtype (parameters stay float32).
  """
  features: int
  kernel_size: int = 3
  stride: int = 1
  groups: int = 1
  dilation: int = 1
  act: Callable | None = nn.relu
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    k, s, d = self.kernel_size, self.stride, self.dilation
    x = Conv(self.features, (k, k), (s, s), padding=same_padding(k, d),
             kernel_dilation=(d, d), feature_group_count=self.groups, use_bias=False,
             kernel_init=conv_init, dtype=self.dtype, name="conv")(x)
    x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_epsilon, dtype=self.dtype, name="bn")(x)
    return x if self.act is None else self.act(x)


class DepthwiseSeparableConv(nn.Module):
  """MobileNet V1 block: depthwise ``K x K`` conv-BN-act, pointwise ``1 x 1`` conv-BN-act.

  ``(N, H, W, M) -> (N, H/s, W/s, features)``; the stride (and dilation) sit on the
  depthwise conv. Parameters: ``K^2 M + 2 M + M N + 2 N``. MACs: ``H' W' (K^2 M + M N)``,
  a fraction ``1/N + 1/K^2`` of a standard ``K x K`` conv (Howard et al. 2017, Eq. 5).

  Attributes:
    features: output channels N.
    stride: stride of the depthwise conv.
    kernel_size: depthwise kernel size K (3 in MobileNet).
    dilation: dilation of the depthwise conv.
    act: activation after each BN (ReLU in the paper).
    dtype: compute dtype.
  """
  features: int
  stride: int = 1
  kernel_size: int = 3
  dilation: int = 1
  act: Callable = nn.relu
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit = functools.partial(ConvBNAct, act=self.act, bn_momentum=self.bn_momentum,
                             bn_epsilon=self.bn_epsilon, dtype=self.dtype)
    m = x.shape[-1]
    x = unit(m, self.kernel_size, self.stride, groups=m, dilation=self.dilation,
             name="depthwise")(x, train)
    return unit(self.features, 1, name="pointwise")(x, train)
