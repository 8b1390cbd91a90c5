"""Pre-activation ResNets (He, Zhang, Ren, Sun 2016, "Identity Mappings in Deep Residual
Networks", arXiv:1603.05027) for 32x32 CIFAR input.

Each block is BN -> ReLU -> conv -> BN -> ReLU -> conv (basic), or the three-conv
bottleneck 1x1 -> 3x3 (stride here) -> 1x1 with 4x expansion, each conv preceded by BN ->
ReLU; the addition is not followed by a ReLU. Where the shape changes the shortcut is a 1x1
strided conv (no bias, no BN) on the *pre-activated* input (reference: KaimingHe/
resnet-1k-layers ``resnet-pre-act.lua`` / fb.resnet.torch ``preresnet.lua``, whose convs
have their biases removed). Stem: one 3x3 conv; head: BN -> ReLU -> global average pool ->
linear.

Parameters with 10 classes (16/32/64-plane stages, the paper's CIFAR nets):
``preact_resnet110`` (basic, 18 blocks per stage) 1,730,522; ``preact_resnet164``
(bottleneck, 18 per stage, 64/128/256 output channels) 1,703,258; ``preact_resnet1001``
(bottleneck, 111 per stage) 10,327,706. (Option A's parameter-free shortcut would give
ResNet-110 exactly the counts of ``cnn_jax.models.resnet_cifar``; the published counts need
the 1x1 projection conv.)

``preact_resnet18`` is kuangliu/pytorch-cifar's ``PreActResNet18`` (64/128/256/512 planes,
two basic blocks per stage, stride 1/2/2/2, no BN-ReLU before the pool): 11,171,146
parameters with 10 classes; a strong, cheap CIFAR baseline (~95% in 200 epochs there).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.alexnet import torch_default_init
from cnn_jax.models.layers import Conv, batch_norm
from cnn_jax.models.registry import register

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # He normal, fan-out


class PreActBlock(nn.Module):
  """Pre-activation basic block; ``(N, H, W, C) -> (N, H/stride, W/stride, planes)``.

  Attributes:
    planes: output channels.
    stride: stride of the first 3x3 conv (and of the projection).
    dtype: compute dtype.
  """
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(batch_norm, train, self.dtype)
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    s = (self.stride, self.stride)
    out = norm(relu=True)(x)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = conv(self.planes, (1, 1), s, name="shortcut")(out)
    y = conv(self.planes, (3, 3), s, padding=((1, 1), (1, 1)))(out)
    y = conv(self.planes, (3, 3), padding=((1, 1), (1, 1)))(norm(relu=True)(y))
    return y + shortcut


class PreActBottleneck(nn.Module):
  """Pre-activation bottleneck; ``(N, H, W, C) -> (N, H/stride, W/stride, 4 * planes)``.

  Attributes:
    planes: inner width (output is ``4 * planes``).
    stride: stride of the 3x3 conv (and of the projection).
    dtype: compute dtype.
  """
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(batch_norm, train, self.dtype)
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    s = (self.stride, self.stride)
    out_ch = self.planes * self.expansion
    out = norm(relu=True)(x)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_ch:
      shortcut = conv(out_ch, (1, 1), s, name="shortcut")(out)
    y = conv(self.planes, (1, 1))(out)
    y = conv(self.planes, (3, 3), s, padding=((1, 1), (1, 1)))(norm(relu=True)(y))
    y = conv(out_ch, (1, 1))(norm(relu=True)(y))
    return y + shortcut


class PreActResNet(nn.Module):
  """Pre-activation ResNet for CIFAR; ``(N, 32, 32, 3) -> (N, num_classes)`` float32 logits.

  Attributes:
    num_classes: output logits.
    block: 'basic' (:class:`PreActBlock`) or 'bottleneck' (:class:`PreActBottleneck`).
    stage_sizes: blocks per stage; depth = 2 * sum + 2 (basic) or 3 * sum + 2 (bottleneck).
    widths: planes of each stage.
    strides: stride of the first block of each stage.
    stem_width: channels of the 3x3 stem conv.
    final_norm: BN -> ReLU before the pool (He et al.; kuangliu's PreActResNet18 has none).
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int = 10
  block: str = "basic"
  stage_sizes: Sequence[int] = (18, 18, 18)
  widths: Sequence[int] = (16, 32, 64)
  strides: Sequence[int] = (1, 2, 2)
  stem_width: int = 16
  final_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    blocks = {"basic": PreActBlock, "bottleneck": PreActBottleneck}
    if self.block not in blocks:
      raise ValueError(f"PreActResNet: block must be 'basic' or 'bottleneck', "
                       f"got {self.block!r}")
    x = x.astype(self.dtype)
    x = Conv(self.stem_width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
             dtype=self.dtype, kernel_init=conv_init, name="conv1")(x)
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(n):
        x = blocks[self.block](width, self.strides[i] if b == 0 else 1, dtype=self.dtype,
                               name=f"layer{i + 1}_{b}")(x, train)
    if self.final_norm:
      x = batch_norm(train, self.dtype, name="final_bn", relu=True)(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=torch_default_init,
                 name="fc")(x)
    return x.astype(jnp.float32)


# The depth-20 member (same stages and widths as the CIFAR ResNet-20 of He et al. 2015): the
# small pre-activation ResNet of the equal-budget family comparison.
register("preact_resnet20", functools.partial(PreActResNet, block="basic",
                                              stage_sizes=(3, 3, 3)))
register("preact_resnet110", functools.partial(PreActResNet, block="basic",
                                               stage_sizes=(18, 18, 18)))
register("preact_resnet164", functools.partial(PreActResNet, block="bottleneck",
                                               stage_sizes=(18, 18, 18)))
register("preact_resnet1001", functools.partial(PreActResNet, block="bottleneck",
                                                stage_sizes=(111, 111, 111)))
register("preact_resnet18", functools.partial(
    PreActResNet, block="basic", stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512),
    strides=(1, 2, 2, 2), stem_width=64, final_norm=False))
