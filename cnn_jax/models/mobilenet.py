"""MobileNet V1 and V2: depthwise-separable and inverted-residual networks.

MobileNet V1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for
Mobile Vision Applications", arXiv:1704.04861, Table 1): a 3x3 stride-2 conv to 32 channels
then 13 depthwise-separable blocks
(:class:`~cnn_jax.models.blocks_depthwise.DepthwiseSeparableConv`) 64, 128/2, 128, 256/2,
256, 512/2, 5 x 512, 1024/2, 1024; global average pool, linear.
Reference implementations: TF-slim ``mobilenet_v1.py`` / ``keras.applications.MobileNet``
(dropout 1e-3 before the classifier). 1.0-224: 4,231,976 parameters, 569 M mult-adds.

MobileNet V2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", arXiv:1801.04381, Table 2): inverted residual blocks (1x1 expansion by t,
3x3 depthwise, 1x1 *linear* projection, identity shortcut when stride 1 and in == out),
ReLU6, last 1x1 conv to 1280, dropout 0.2, linear. Reference implementation:
torchvision ``mobilenetv2.py`` (no expansion conv when t = 1, channels rounded to
multiples of 8). 1.0-224: 3,504,872 parameters, 300 M MACs.

CIFAR adaptation (``mobilenet_v2_cifar``): the same blocks with stride 1 in the stem and in
the 24-channel stage (the first two of torchvision's five stride-2 places), as in
kuangliu/pytorch-cifar, so a 32x32 image reaches the head at 4x4 (output stride 8). The
parameter count is torchvision's with a 10-way classifier: 2,236,682 (88.0 M MACs at
32x32). kuangliu's own model
differs in its blocks (it keeps the 1x1 expansion conv for t = 1 and adds 1x1-conv+BN
projection shortcuts where stride is 1 and channels change) and has 2,296,922 parameters;
we keep the paper/torchvision block so ImageNet and CIFAR variants share one module.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.blocks_depthwise import ConvBNAct, DepthwiseSeparableConv, relu6
from cnn_jax.models.registry import register


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
  """torchvision ``_make_divisible``: round ``v`` to the nearest multiple of ``divisor``,
  never going below 90% of ``v`` (or below ``min_value``)."""
  min_value = min_value or divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


# (output channels, stride) of the 13 depthwise-separable blocks (Howard et al., Table 1).
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
  """MobileNet V1. ``(N, H, W, 3) -> (N, num_classes)`` float32 logits (output stride 32).

  Parameter count (1000 classes): 4,231,976 at width 1.0 (independent of resolution).

  Attributes:
    num_classes: output logits.
    width_multiplier: alpha of the paper (channels ``int(c * alpha)``, at least 8).
    blocks: ``(channels, stride)`` of the separable blocks.
    stem_stride: stride of the first 3x3 conv.
    dropout_rate: dropout before the classifier (TF-slim keep_prob 0.999).
    dtype: compute dtype; parameters are float32, logits float32.
  """
  num_classes: int = 1000
  width_multiplier: float = 1.0
  blocks: Sequence[tuple[int, int]] = MOBILENET_V1_BLOCKS
  stem_stride: int = 2
  dropout_rate: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    width = lambda c: max(8, int(c * self.width_multiplier))
    x = x.astype(self.dtype)
    x = ConvBNAct(width(32), 3, self.stem_stride, dtype=self.dtype, name="stem")(x, train)
    for i, (c, s) in enumerate(self.blocks):
      x = DepthwiseSeparableConv(width(c), s, dtype=self.dtype, name=f"block{i + 1}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return x.astype(jnp.float32)


class InvertedResidual(nn.Module):
  """MobileNet V2 block: ``(N, H, W, Cin) -> (N, H/s, W/s, features)``.

  1x1 expansion to ``round(Cin * t)`` + BN + ReLU6 (omitted for t = 1), 3x3 depthwise
  (stride s, dilation d) + BN + ReLU6, 1x1 linear projection + BN (no activation: the
  "linear bottleneck"); identity shortcut when ``s == 1 and Cin == features``.
  Parameters: ``Cin*h + 2h`` (expansion, if t != 1) ``+ 9h + 2h + h*F + 2F`` with
  ``h = round(Cin * t)``.
  """
  features: int
  stride: int = 1
  expand_ratio: float = 6
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    cin = x.shape[-1]
    hidden = int(round(cin * self.expand_ratio))
    unit = functools.partial(ConvBNAct, act=relu6, dtype=self.dtype)
    y = x
    if self.expand_ratio != 1:
      y = unit(hidden, 1, name="expand")(y, train)
    y = unit(hidden, 3, self.stride, groups=hidden, dilation=self.dilation,
             name="depthwise")(y, train)
    y = unit(self.features, 1, act=None, name="project")(y, train)
    if self.stride == 1 and cin == self.features:
      y = x + y
    return y


# (expansion t, channels c, repeats n, stride s) of Sandler et al. Table 2.
MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
  """MobileNet V2 (torchvision layout). ``(N, H, W, 3) -> (N, num_classes)`` float32 logits.

  Parameter counts: 3,504,872 (width 1.0, 1000 classes); 2,236,682 with 10 classes (the
  CIFAR variant: strides change no parameter). MACs at 224x224: 300.8 M.

  Attributes:
    num_classes: output logits.
    width_multiplier: channel multiplier (channels rounded to multiples of 8).
    setting: ``(t, c, n, s)`` rows of the inverted-residual stages.
    strides: per-stage stride overriding the ``s`` column (``None``: use ``setting``).
    stem_stride: stride of the first 3x3 conv (2 on ImageNet, 1 for CIFAR).
    last_channel: channels of the final 1x1 conv (scaled up, never down, by the width).
    dropout_rate: dropout before the classifier (0.2 as torchvision).
    dtype: compute dtype; parameters are float32, logits float32.
  """
  num_classes: int = 1000
  width_multiplier: float = 1.0
  setting: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTING
  strides: Sequence[int] | None = None
  stem_stride: int = 2
  last_channel: int = 1280
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    wm = self.width_multiplier
    if self.strides is not None and len(self.strides) != len(self.setting):
      raise ValueError(f"MobileNetV2: strides has {len(self.strides)} entries, setting has "
                       f"{len(self.setting)} stages")
    x = x.astype(self.dtype)
    x = ConvBNAct(make_divisible(32 * wm), 3, self.stem_stride, act=relu6, dtype=self.dtype,
                  name="stem")(x, train)
    for i, (t, c, n, s) in enumerate(self.setting):
      s = s if self.strides is None else self.strides[i]
      for j in range(n):
        x = InvertedResidual(make_divisible(c * wm), s if j == 0 else 1, t, dtype=self.dtype,
                             name=f"stage{i + 1}_block{j + 1}")(x, train)
    x = ConvBNAct(make_divisible(self.last_channel * max(1.0, wm)), 1, act=relu6,
                  dtype=self.dtype, name="head")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier",
                 kernel_init=nn.initializers.normal(0.01))(x)
    return x.astype(jnp.float32)


register("mobilenet_v1", functools.partial(MobileNetV1, width_multiplier=1.0))
register("mobilenet_v2", functools.partial(MobileNetV2, width_multiplier=1.0))
register("mobilenet_v2_cifar", functools.partial(MobileNetV2, stem_stride=1,
                                                 strides=(1, 1, 2, 2, 1, 2, 1)))
