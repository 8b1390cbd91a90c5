"""Dilated Residual Networks (Yu, Koltun & Funkhouser 2017, "Dilated Residual Networks",
CVPR 2017, arXiv:1705.09914). Reference implementation: fyu/drn ``drn.py``.

All DRNs have output stride 8: a 224x224 image ends as a 28x28 feature map, because the
strides of the last two ResNet stages are replaced by dilations 2 and 4 (paper Sec. 2).

DRN-A (paper Sec. 2): an ImageNet ResNet (7x7/2 stem, 3x3/2 max pool, stages 64, 128/2,
256, 512) whose stages 4 and 5 keep stride 1 and use dilation 2 and 4; registered as a
partial of the shared :class:`cnn_jax.models.resnet.ResNet` (``strides=(1, 2, 1, 1)``,
``dilations=(1, 1, 2, 4)``). Dilation follows the paper's equations: the first layer of a
de-strided group keeps the previous dilation (G^4_1: 1, G^5_1: 2), all later layers use
the new one (G^4_i: 2, G^5_i: 4), as torchvision's ``replace_stride_with_dilation`` does
(fyu's ``DRN_A`` uses dilation 1 for the first block of both groups; same parameters).
Parameters = ResNet-18/34/50: 11,689,512 / 21,797,672 / 25,557,032.

DRN-C and DRN-D (paper Sec. 4, Fig. 5) have eight levels with channels
16, 32, 64, 128, 256, 512, 512, 512; levels 1-2 at stride 1 and 2 (from a 7x7/1 conv
stem), levels 3-4 stride 2, level 5 dilation 2, level 6 dilation 4, level 7 dilation 2,
level 8 dilation 1 (levels 7-8 remove the gridding artifacts of dilation). DRN-C uses
basic residual blocks in levels 1-2 and basic blocks *without* residual connections in
levels 7-8; DRN-D replaces the residual blocks of levels 1-2 and 7-8 by plain 3x3
conv-BN-ReLU layers. The classifier is fyu's ``fc``: global average pooling then a 1x1 conv
with bias (= a dense layer); ``out_map=True`` applies it at every pixel instead (dense
prediction, (N, H/8, W/8, num_classes)).

Parameter counts (1000 classes, fyu/drn): DRN-C-26 21,126,584; DRN-C-42 31,234,744;
DRN-D-22 16,393,752; DRN-D-38 26,501,912; DRN-D-54 35,809,176; DRN-D-105 54,801,304.

``resnet20_dilated`` is the CIFAR analogue for comparison tables: He et al.'s ResNet-20
(option A shortcuts, :class:`~cnn_jax.models.resnet_cifar.CifarResNet`) whose third stage
keeps stride 1 and uses dilation 2 (its first conv dilation 1, as DRN-A), so the head sees
16x16 instead of 8x8 maps (output stride 2). Option A shortcuts are parameter-free, so the
count is ResNet-20's: 269,722 (10 classes); MACs grow from 40.55 M to 79.48 M (third
stage at 4x the positions).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.blocks_depthwise import ConvBNAct
from cnn_jax.models.layers import Conv, batch_norm, conv_init_fan_out
from cnn_jax.models.registry import register
from cnn_jax.models.resnet import ResNet
from cnn_jax.models.resnet_cifar import CifarResNet

# fyu/drn init: normal(0, sqrt(2 / (k * k * out_channels))), i.e. He normal on fan-out.
conv_init = conv_init_fan_out
_norm = batch_norm


def _conv(features: int, k: int, stride: int = 1, dilation: int = 1, dtype=jnp.float32, **kw):
  p = dilation * (k - 1) // 2
  return Conv(features, (k, k), (stride, stride), padding=((p, p), (p, p)),
              kernel_dilation=(dilation, dilation), use_bias=False, kernel_init=conv_init,
              dtype=dtype, **kw)


class DRNBasicBlock(nn.Module):
  """Two 3x3 conv-BN (dilations ``d1``, ``d2``) with ReLU and an optional residual;
  ``(N, H, W, Cin) -> (N, H/s, W/s, planes)``. Parameters ``9 Cin P + 9 P P + 4 P``
  (+ ``Cin P + 2 P`` with the 1x1 projection shortcut)."""
  planes: int
  stride: int = 1
  dilation: tuple[int, int] = (1, 1)
  residual: bool = True
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = _conv(self.planes, 3, self.stride, self.dilation[0], self.dtype, name="conv1")(x)
    y = nn.relu(_norm(train, self.dtype, name="bn1")(y))
    y = _conv(self.planes, 3, 1, self.dilation[1], self.dtype, name="conv2")(y)
    y = _norm(train, self.dtype, name="bn2")(y)
    if self.residual:
      if self.stride != 1 or x.shape[-1] != self.planes:
        x = _conv(self.planes, 1, self.stride, dtype=self.dtype, name="downsample_conv")(x)
        x = _norm(train, self.dtype, name="downsample_bn")(x)
      y = y + x
    return nn.relu(y)


class DRNBottleneck(nn.Module):
  """1x1, 3x3 (stride s, dilation ``d2``), 1x1 x4 conv-BN with ReLU plus a residual;
  ``(N, H, W, Cin) -> (N, H/s, W/s, 4 planes)`` (stride on the 3x3 as in fyu/drn).
  Parameters ``Cin P + 9 P^2 + 4 P^2 + 12 P`` (+ ``4 Cin P + 8 P`` with the projection)."""
  planes: int
  stride: int = 1
  dilation: tuple[int, int] = (1, 1)
  residual: bool = True
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = self.planes * self.expansion
    y = _conv(self.planes, 1, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(_norm(train, self.dtype, name="bn1")(y))
    y = _conv(self.planes, 3, self.stride, self.dilation[1], self.dtype, name="conv2")(y)
    y = nn.relu(_norm(train, self.dtype, name="bn2")(y))
    y = _conv(out, 1, dtype=self.dtype, name="conv3")(y)
    y = _norm(train, self.dtype, name="bn3")(y)
    if self.residual:
      if self.stride != 1 or x.shape[-1] != out:
        x = _conv(out, 1, self.stride, dtype=self.dtype, name="downsample_conv")(x)
        x = _norm(train, self.dtype, name="downsample_bn")(x)
      y = y + x
    return nn.relu(y)


_BLOCKS = {"basic": DRNBasicBlock, "bottleneck": DRNBottleneck}


def _block_cls(name: str):
  if name not in _BLOCKS:
    raise ValueError(f"DRN: block must be one of {sorted(_BLOCKS)}, got {name!r}")
  return _BLOCKS[name]


def _residual_level(x, train, block, planes, n, name, *, stride=1, dilations=None,
                    residual=True, dtype=jnp.float32):
  """``n`` residual blocks; ``dilations[j]`` is the (d1, d2) pair of block ``j``."""
  dilations = dilations or [(1, 1)] * n
  for j in range(n):
    x = block(planes, stride if j == 0 else 1, tuple(dilations[j]), residual, dtype=dtype,
              name=f"{name}_{j}")(x, train)
  return x


class DRN(nn.Module):
  """DRN-C / DRN-D of fyu/drn. ``(N, H, W, 3) -> (N, num_classes)`` float32 logits
  (``out_map``: ``(N, H/8, W/8, num_classes)``).

  Attributes:
    layers: number of blocks (C) or conv layers (D, levels 1-2 and 7-8) per level, 8 entries.
    arch: 'C' or 'D'.
    block: 'basic' or 'bottleneck' for levels 3-6.
    channels: channels of the 8 levels (bottleneck levels 3-6 output 4x these).
    num_classes: output logits.
    out_map: return per-pixel logits at stride 8 instead of pooled logits.
    dtype: compute dtype; parameters are float32, logits float32.
  """
  layers: Sequence[int] = (1, 1, 2, 2, 2, 2, 1, 1)
  arch: str = "D"
  block: str = "basic"
  channels: Sequence[int] = (16, 32, 64, 128, 256, 512, 512, 512)
  num_classes: int = 1000
  out_map: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.arch not in ("C", "D") or len(self.layers) != 8 or len(self.channels) != 8:
      raise ValueError(f"DRN: arch must be 'C' or 'D' with 8 levels, got arch={self.arch!r}, "
                       f"layers={tuple(self.layers)}, channels={tuple(self.channels)}")
    block, ch, ls, dt = _block_cls(self.block), self.channels, self.layers, self.dtype
    level = functools.partial(_residual_level, train=train, dtype=dt)

    def conv_layers(x, features, n, name, stride=1, dilation=1):
      for j in range(n):
        x = ConvBNAct(features, 3, stride if j == 0 else 1, dilation=dilation, dtype=dt,
                      name=f"{name}_{j}")(x, train)
      return x

    x = x.astype(dt)
    x = ConvBNAct(ch[0], 7, 1, dtype=dt, name="layer0")(x, train)
    if self.arch == "C":
      x = level(x, block=DRNBasicBlock, planes=ch[0], n=ls[0], name="layer1")
      x = level(x, block=DRNBasicBlock, planes=ch[1], n=ls[1], name="layer2", stride=2)
    else:
      x = conv_layers(x, ch[0], ls[0], "layer1")
      x = conv_layers(x, ch[1], ls[1], "layer2", stride=2)
    x = level(x, block=block, planes=ch[2], n=ls[2], name="layer3", stride=2)
    x = level(x, block=block, planes=ch[3], n=ls[3], name="layer4", stride=2)
    # fyu's _make_layer(dilation=d, new_level=False): every conv of the level at dilation d.
    x = level(x, block=block, planes=ch[4], n=ls[4], name="layer5", dilations=[(2, 2)] * ls[4])
    if ls[5]:
      x = level(x, block=block, planes=ch[5], n=ls[5], name="layer6",
                dilations=[(4, 4)] * ls[5])
    if self.arch == "C":
      if ls[6]:
        x = level(x, block=DRNBasicBlock, planes=ch[6], n=ls[6], name="layer7",
                  dilations=[(2, 2)] * ls[6], residual=False)
      if ls[7]:
        x = level(x, block=DRNBasicBlock, planes=ch[7], n=ls[7], name="layer8",
                  residual=False)
    else:
      x = conv_layers(x, ch[6], ls[6], "layer7", dilation=2)
      x = conv_layers(x, ch[7], ls[7], "layer8", dilation=1)
    if not self.out_map:
      x = jnp.mean(x, axis=(1, 2), keepdims=True)
    # fyu's classifier: a 1x1 conv with bias, initialised like every conv (He fan-out).
    x = Conv(self.num_classes, (1, 1), dtype=dt, kernel_init=conv_init, name="fc")(x)
    if not self.out_map:
      x = x[:, 0, 0, :]
    return x.astype(jnp.float32)


# DRN-A: the shared ImageNet ResNet with stages 3-4 de-strided and dilated 2 and 4.
_drn_a = functools.partial(ResNet, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
register("drn_a_18", functools.partial(_drn_a, block="basic", stage_sizes=(2, 2, 2, 2)))
register("drn_a_34", functools.partial(_drn_a, block="basic", stage_sizes=(3, 4, 6, 3)))
register("drn_a_50", functools.partial(_drn_a, block="bottleneck", stage_sizes=(3, 4, 6, 3)))
register("drn_c_26", functools.partial(DRN, arch="C", block="basic",
                                       layers=(1, 1, 2, 2, 2, 2, 1, 1)))
register("drn_c_42", functools.partial(DRN, arch="C", block="basic",
                                       layers=(1, 1, 3, 4, 6, 3, 1, 1)))
register("drn_d_22", functools.partial(DRN, arch="D", block="basic",
                                       layers=(1, 1, 2, 2, 2, 2, 1, 1)))
register("drn_d_38", functools.partial(DRN, arch="D", block="basic",
                                       layers=(1, 1, 3, 4, 6, 3, 1, 1)))
register("drn_d_54", functools.partial(DRN, arch="D", block="bottleneck",
                                       layers=(1, 1, 3, 4, 6, 3, 1, 1)))
register("drn_d_105", functools.partial(DRN, arch="D", block="bottleneck",
                                        layers=(1, 1, 3, 4, 23, 3, 1, 1)))
register("resnet20_dilated", functools.partial(CifarResNet, depth=20, strides=(1, 2, 1),
                                               dilations=(1, 1, 2)))
