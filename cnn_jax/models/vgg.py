"""VGG (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", configurations A/B/D/E = VGG-11/13/16/19), in torchvision's layout
(``torchvision.models.vgg*``): five stages of 3x3 'SAME' convs (with bias) + ReLU, each
followed by a 2x2 max-pool, with 64/128/256/512/512 channels; adaptive average pool to 7x7;
classifier 25088 -> 4096 -> 4096 -> ``num_classes`` with ReLU and dropout 0.5.
``_bn`` variants put a BatchNorm between each conv and its ReLU.

Parameters with 1000 classes (torchvision): VGG-11 132,863,336, VGG-13 133,047,848,
VGG-16 138,357,544, VGG-19 143,667,240; VGG-16-BN 138,365,992 (+2 per conv channel).
VGG-16 is 15.47 GMACs at 224x224.

CIFAR variant (``vgg*_cifar``, as kuangliu/pytorch-cifar ``models/vgg.py``): the same conv
stacks always with BN (conv-BN-ReLU), on 32x32 input the five pools leave 1x1x512, then one
512 -> ``num_classes`` linear: VGG-16 14,728,266 parameters with 10 classes.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.alexnet import adaptive_avg_pool
from cnn_jax.models.layers import Conv, batch_norm, max_pool
from cnn_jax.models.registry import register

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision VGG
linear_init = nn.initializers.normal(0.01)

VGG_STAGES = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}


class VGG(nn.Module):
  """VGG-N; ``(N, H, W, 3) -> (N, num_classes)`` float32 logits, NHWC.

  ``head='imagenet'``: adaptive avg-pool 7x7 (224x224 input gives 7x7 already), flatten
  25088, two 4096 ReLU+dropout layers, linear. ``head='cifar'``: global average pool (the
  1x1x512 map at 32x32 input), one linear layer.

  Attributes:
    num_classes: output logits.
    stages: number of 3x3 convs in each of the five stages (see ``VGG_STAGES``).
    widths: channels of the five stages.
    batch_norm: conv -> BN -> ReLU instead of conv -> ReLU.
    head: 'imagenet' or 'cifar' (see above).
    dropout_rate: dropout in the 'imagenet' classifier ('dropout' rng).
    dtype: compute dtype; parameters stay float32, logits are float32.
  """
  num_classes: int = 1000
  stages: Sequence[int] = VGG_STAGES[16]
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  batch_norm: bool = False
  head: str = "imagenet"
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.head not in ("imagenet", "cifar"):
      raise ValueError(f"VGG: head must be 'imagenet' or 'cifar', got {self.head!r}")
    x = x.astype(self.dtype)
    for n_conv, width in zip(self.stages, self.widths):
      for _ in range(n_conv):
        x = Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                 kernel_init=conv_init)(x)
        x = batch_norm(train, self.dtype, relu=True)(x) if self.batch_norm else nn.relu(x)
      x = max_pool(x, (2, 2), strides=(2, 2))
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=linear_init)
    if self.head == "cifar":
      x = jnp.mean(x, axis=(1, 2))
    else:
      x = adaptive_avg_pool(x, (7, 7)).reshape((x.shape[0], -1))
      for _ in range(2):
        x = nn.relu(dense(4096)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = dense(self.num_classes)(x)
    return x.astype(jnp.float32)


for _depth, _stages in VGG_STAGES.items():
  register(f"vgg{_depth}", functools.partial(VGG, stages=_stages))
  register(f"vgg{_depth}_bn", functools.partial(VGG, stages=_stages, batch_norm=True))
  register(f"vgg{_depth}_cifar", functools.partial(VGG, stages=_stages, batch_norm=True,
                                                   head="cifar", num_classes=10))
