"""CIFAR ResNets of He et al. 2015 ("Deep Residual Learning for Image Recognition",
arXiv:1512.03385, Sec. 4.2): a 3x3 16-channel stem, three stages of n basic blocks with
16/32/64 channels (stride 2 at the start of stages 2 and 3), global average pool, linear;
depth = 6n + 2.

Shortcut option A (the paper's CIFAR choice): identity, subsampled by 2 and zero-padded
in channels when the shape changes, parameter-free. Option B: 1x1 strided projection + BN
where the shape changes. Reference counts (10 classes): ResNet-20 269,722 (A) and 272,474 (B).
Reference implementation followed: akamaster/pytorch_resnet_cifar10.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layers import Conv, batch_norm, conv_init_fan_out
from cnn_jax.models.registry import register

conv_init = conv_init_fan_out  # He normal, fan-out


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN with ReLU, plus a shortcut; ``(N, H, W, C) -> (N, H/s, W/s, F)``.

  Attributes:
    features: output channels F.
    stride: stride of the first conv (1 or 2).
    shortcut: 'A' (zero-pad identity) or 'B' (1x1 projection where the shape changes).
    zero_init_last_bn: initialise the second BN's scale at zero (block starts as identity).
    dilation: dilations (d1, d2) of the two 3x3 convs (padding d keeps the size).
  """
  features: int
  stride: int = 1
  shortcut: str = "A"
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32
  dilation: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(batch_norm, train, self.dtype)
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    d1, d2 = self.dilation
    y = conv(self.features, (3, 3), (self.stride, self.stride), padding=((d1, d1), (d1, d1)),
             kernel_dilation=(d1, d1))(x)
    y = norm(relu=True)(y)
    y = conv(self.features, (3, 3), padding=((d2, d2), (d2, d2)), kernel_dilation=(d2, d2))(y)
    y = norm(zero_init=self.zero_init_last_bn)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      if self.shortcut == "A":
        x = x[:, ::self.stride, ::self.stride, :]
        extra = self.features - x.shape[-1]
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
      elif self.shortcut == "B":
        x = conv(self.features, (1, 1), (self.stride, self.stride), name="proj_conv")(x)
        x = norm(name="proj_bn")(x)
      else:
        raise ValueError(f"BasicBlock: shortcut must be 'A' or 'B', got {self.shortcut!r}")
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """He et al. 2015 CIFAR ResNet of depth 6n+2. ``(N, 32, 32, 3) -> (N, num_classes)`` logits.

  Attributes:
    depth: 20, 32, 44, 56, 110, 1202, ... (must be 6n + 2).
    num_classes: output logits.
    widths: channels of the three stages.
    shortcut: 'A' or 'B' (see module docstring).
    zero_init_last_bn: zero-init the last BN scale of each block (Goyal et al. 2017).
    dtype: compute dtype; parameters are float32, logits float32.
    strides: stride of the first block of each stage.
    dilations: dilation of each stage; the first conv of a stage keeps the previous
      stage's dilation (Yu et al. 2017, Sec. 2), e.g. ``strides=(1, 2, 1),
      dilations=(1, 1, 2)`` is ``resnet20_dilated`` (output stride 2, 16x16 at the head).

  Raises:
    ValueError: depth is not 6n + 2.
  """
  depth: int = 20
  num_classes: int = 10
  widths: tuple[int, int, int] = (16, 32, 64)
  shortcut: str = "A"
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32
  strides: tuple[int, int, int] = (1, 2, 2)
  dilations: tuple[int, int, int] = (1, 1, 1)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 2) % 6 != 0:
      raise ValueError(f"CifarResNet: depth must be 6n+2 (20, 32, 44, 56, 110, ...), "
                       f"got {self.depth}")
    n = (self.depth - 2) // 6
    x = x.astype(self.dtype)
    x = Conv(self.widths[0], (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
             dtype=self.dtype, kernel_init=conv_init)(x)
    x = batch_norm(train, self.dtype, relu=True)(x)
    prev = 1
    for stage, width in enumerate(self.widths):
      d = self.dilations[stage]
      for b in range(n):
        stride = self.strides[stage] if b == 0 else 1
        x = BasicBlock(width, stride, self.shortcut, self.zero_init_last_bn,
                       dtype=self.dtype, dilation=(prev, d) if b == 0 else (d, d))(x, train)
      prev = d
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


for _depth in (20, 32, 44, 56, 110, 1202):
  register(f"resnet{_depth}", functools.partial(CifarResNet, depth=_depth))
