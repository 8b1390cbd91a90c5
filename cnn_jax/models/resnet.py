"""ImageNet ResNets (He, Zhang, Ren, Sun 2015, "Deep Residual Learning for Image
Recognition") in torchvision's layout (``torchvision.models.resnet``), i.e. ResNet v1.5:
bottleneck blocks stride on their 3x3 conv; projection shortcuts (1x1 conv + BN) wherever
the shape changes; Kaiming-normal fan-out conv init; optional zero-init of each block's last
BN scale (torchvision ``zero_init_residual``, here ``zero_init_last_bn``).

``(N, 224, 224, 3)`` -> conv 64@7x7/2 -> BN -> ReLU -> max-pool 3/2 -> 56x56x64 -> four
stages (64/128/256/512 planes, stride 1/2/2/2; x4 channels in bottleneck nets) -> 7x7 ->
global average pool -> linear. Parameters with 1000 classes (torchvision):
ResNet-18 11,689,512; -34 21,797,672; -50 25,557,032; -101 44,549,160; -152 60,192,808.
MACs at 224x224: 1.814 / 3.664 / 4.089 / 7.801 / 11.514 G.

``stem='cifar'`` (kuangliu/pytorch-cifar ``models/resnet.py``): 3x3/1 conv + BN + ReLU, no
max-pool, so 32x32 input keeps 32x32 in stage 1: ``resnet18_cifar`` has 11,173,962
parameters with 10 classes.

Attention variants put a gate from :mod:`cnn_jax.models.attention_blocks` on the residual
branch after its last BN, before the addition: ``seresnet50`` (SE, r = 16) 28,088,024 and
``cbam_resnet50`` (CBAM, r = 16, 7x7 spatial gate) 28,089,624 parameters.

Dilation (for dilated ResNets, Yu, Koltun, Funkhouser 2017 DRN-A, and DeepLab): per-stage
``strides`` and ``dilations``, or torchvision's ``replace_stride_with_dilation``; the first
block of a stage uses the previous stage's dilation (torchvision's ``previous_dilation``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.alexnet import torch_default_init
from cnn_jax.models.attention_blocks import CBAM, SqueezeExcite
from cnn_jax.models.layers import Conv, batch_norm, conv_init_fan_out
from cnn_jax.models.registry import register

conv_init = conv_init_fan_out


def _norm(train: bool, dtype, zero: bool = False, name: Optional[str] = None):
  return batch_norm(train, dtype, zero_init=zero, name=name)


class ResidualBlock(nn.Module):
  """torchvision BasicBlock: 3x3 conv-BN-ReLU, 3x3 conv-BN, [+gate], add, ReLU.

  ``(N, H, W, C) -> (N, H/stride, W/stride, planes)``; projection shortcut (1x1 conv + BN)
  when the stride or channel count changes.

  Attributes:
    planes: output channels.
    stride: stride of the first conv.
    dilation: dilation (and padding) of both 3x3 convs (DRN; torchvision allows only 1).
    first_dilation: dilation of the first conv (default ``dilation``).
    groups, base_width: only the defaults 1 and 64 are valid (as in torchvision).
    attention: optional gate factory called as ``attention(dtype=...)(y, train)``.
    zero_init_last_bn: zero-init the last BN scale (the block starts as the identity).
    dtype: compute dtype.
  """
  planes: int
  stride: int = 1
  dilation: int = 1
  first_dilation: Optional[int] = None
  groups: int = 1
  base_width: int = 64
  attention: Optional[Callable[..., nn.Module]] = None
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    if self.groups != 1 or self.base_width != 64:
      raise ValueError("ResidualBlock (basic) only supports groups=1 and base_width=64")
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    d1 = self.first_dilation or self.dilation
    d2 = self.dilation
    s = (self.stride, self.stride)
    y = conv(self.planes, (3, 3), s, padding=((d1, d1), (d1, d1)), kernel_dilation=(d1, d1))(x)
    y = nn.relu(_norm(train, self.dtype)(y))
    y = conv(self.planes, (3, 3), padding=((d2, d2), (d2, d2)), kernel_dilation=(d2, d2))(y)
    y = _norm(train, self.dtype, self.zero_init_last_bn)(y)
    if self.attention is not None:
      y = self.attention(dtype=self.dtype)(y, train)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = conv(self.planes, (1, 1), s, name="downsample_conv")(x)
      x = _norm(train, self.dtype, name="downsample_bn")(x)
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  """torchvision Bottleneck (v1.5): 1x1 conv-BN-ReLU, 3x3/stride conv-BN-ReLU, 1x1 conv-BN
  (``4 * planes`` channels), [+gate], add, ReLU.

  ``(N, H, W, C) -> (N, H/stride, W/stride, 4 * planes)``; inner width
  ``planes * base_width / 64 * groups`` (ResNeXt / wide ResNet when not 64 / 1).

  Attributes: as :class:`ResidualBlock`; ``first_dilation`` is the 3x3 conv's dilation in the
  first block of a stage (default ``dilation``).
  """
  planes: int
  stride: int = 1
  dilation: int = 1
  first_dilation: Optional[int] = None
  groups: int = 1
  base_width: int = 64
  attention: Optional[Callable[..., nn.Module]] = None
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    width = int(self.planes * (self.base_width / 64.0)) * self.groups
    out = self.planes * self.expansion
    d = self.first_dilation or self.dilation
    s = (self.stride, self.stride)
    y = nn.relu(_norm(train, self.dtype)(conv(width, (1, 1))(x)))
    y = conv(width, (3, 3), s, padding=((d, d), (d, d)), kernel_dilation=(d, d),
             feature_group_count=self.groups)(y)
    y = nn.relu(_norm(train, self.dtype)(y))
    y = _norm(train, self.dtype, self.zero_init_last_bn)(conv(out, (1, 1))(y))
    if self.attention is not None:
      y = self.attention(dtype=self.dtype)(y, train)
    if self.stride != 1 or x.shape[-1] != out:
      x = conv(out, (1, 1), s, name="downsample_conv")(x)
      x = _norm(train, self.dtype, name="downsample_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """General ResNet; ``(N, H, W, 3) -> (N, num_classes)`` float32 logits, NHWC.

  Attributes:
    num_classes: output logits.
    block: 'basic' (:class:`ResidualBlock`) or 'bottleneck' (:class:`BottleneckBlock`), or
      a block class with the same attributes.
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    widths: planes of each stage (64, 128, 256, 512).
    strides: stride of the first block of each stage (1, 2, 2, 2).
    dilations: dilation of each stage (1, 1, 1, 1); DRN-A uses (1, 1, 2, 4) with strides
      (1, 2, 1, 1). The first block of stage i uses ``dilations[i-1]`` (torchvision rule).
    replace_stride_with_dilation: torchvision's 3 booleans for stages 2-4; when given it
      overrides ``strides``/``dilations`` (stride 2 becomes stride 1 and dilation x2).
    stem: 'imagenet' (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) or 'cifar' (3x3/1 conv, BN,
      ReLU, no pool).
    stem_width: stem output channels.
    groups, width_per_group: bottleneck cardinality and width (ResNeXt); 1 and 64 for ResNet.
    attention: gate factory applied in every block (see :mod:`attention_blocks`), or None.
    zero_init_last_bn: zero-init each block's last BN scale.
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int = 1000
  block: Any = "basic"
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  widths: Sequence[int] = (64, 128, 256, 512)
  strides: Sequence[int] = (1, 2, 2, 2)
  dilations: Sequence[int] = (1, 1, 1, 1)
  replace_stride_with_dilation: Optional[Sequence[bool]] = None
  stem: str = "imagenet"
  stem_width: int = 64
  groups: int = 1
  width_per_group: int = 64
  attention: Optional[Callable[..., nn.Module]] = None
  zero_init_last_bn: bool = False
  dtype: Any = jnp.float32

  def stage_strides_dilations(self) -> tuple[list[int], list[int]]:
    """The per-stage (strides, dilations) after applying ``replace_stride_with_dilation``."""
    strides, dilations = list(self.strides), list(self.dilations)
    if self.replace_stride_with_dilation is not None:
      if len(self.replace_stride_with_dilation) != len(self.stage_sizes) - 1:
        raise ValueError("ResNet: replace_stride_with_dilation needs one boolean per stage "
                         f"after the first, got {self.replace_stride_with_dilation}")
      d = dilations[0]
      for i, rep in enumerate(self.replace_stride_with_dilation, start=1):
        if rep:
          d *= strides[i]
          strides[i] = 1
        dilations[i] = d
    return strides, dilations

  @nn.compact
  def __call__(self, x, train: bool = False):
    block_cls = {"basic": ResidualBlock, "bottleneck": BottleneckBlock}.get(
        self.block, self.block) if isinstance(self.block, str) else self.block
    if isinstance(block_cls, str):
      raise ValueError(f"ResNet: block must be 'basic' or 'bottleneck', got {self.block!r}")
    if not (len(self.widths) == len(self.strides) == len(self.dilations)
            == len(self.stage_sizes)):
      raise ValueError("ResNet: stage_sizes, widths, strides and dilations need equal length")
    strides, dilations = self.stage_strides_dilations()
    x = x.astype(self.dtype)
    if self.stem == "imagenet":
      x = Conv(self.stem_width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
               dtype=self.dtype, kernel_init=conv_init, name="conv1")(x)
      x = nn.relu(_norm(train, self.dtype, name="bn1")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == "cifar":
      x = Conv(self.stem_width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
               dtype=self.dtype, kernel_init=conv_init, name="conv1")(x)
      x = nn.relu(_norm(train, self.dtype, name="bn1")(x))
    else:
      raise ValueError(f"ResNet: stem must be 'imagenet' or 'cifar', got {self.stem!r}")
    prev_dilation = dilations[0]
    for i, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(n_blocks):
        x = block_cls(width, stride=strides[i] if b == 0 else 1, dilation=dilations[i],
                      first_dilation=prev_dilation if b == 0 else None, groups=self.groups,
                      base_width=self.width_per_group, attention=self.attention,
                      zero_init_last_bn=self.zero_init_last_bn, dtype=self.dtype,
                      name=f"layer{i + 1}_{b}")(x, train)
      prev_dilation = dilations[i]
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=torch_default_init,
                 name="fc")(x)
    return x.astype(jnp.float32)


RESNET_SPECS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
                152: ("bottleneck", (3, 8, 36, 3))}

for _depth, (_block, _sizes) in RESNET_SPECS.items():
  register(f"resnet{_depth}", functools.partial(ResNet, block=_block, stage_sizes=_sizes))
register("resnet18_cifar", functools.partial(ResNet, block="basic", stage_sizes=(2, 2, 2, 2),
                                             stem="cifar"))
register("resnet34_cifar", functools.partial(ResNet, block="basic", stage_sizes=(3, 4, 6, 3),
                                             stem="cifar"))
register("seresnet50", functools.partial(
    ResNet, block="bottleneck", stage_sizes=(3, 4, 6, 3),
    attention=functools.partial(SqueezeExcite, reduction=16)))
register("cbam_resnet50", functools.partial(
    ResNet, block="bottleneck", stage_sizes=(3, 4, 6, 3),
    attention=functools.partial(CBAM, reduction=16, kernel_size=7)))
