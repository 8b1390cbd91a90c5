"""DenseNet-BC (Huang, Liu, van der Maaten, Weinberger 2017, "Densely Connected
Convolutional Networks"), ImageNet layout of torchvision (``torchvision.models.densenet*``).

Stem: conv 7x7/2 (no bias) -> BN -> ReLU -> max-pool 3/2 p1 (224 -> 56). Four dense blocks;
each layer is BN -> ReLU -> 1x1 conv (``bn_size * growth`` channels) -> BN -> ReLU -> 3x3
conv (``growth`` channels), its output concatenated to its input. Between blocks a
transition: BN -> ReLU -> 1x1 conv to ``floor(compression * C)`` channels -> 2x2 avg-pool.
Final BN -> ReLU -> global average pool -> linear. Convs have no bias.

Parameters with 1000 classes (torchvision): DenseNet-121 (growth 32, blocks 6/12/24/16,
64 stem channels) 7,978,856; DenseNet-169 (6/12/32/32) 14,149,480; DenseNet-201
(6/12/48/32) 20,013,928; DenseNet-161 (growth 48, 6/12/36/24, 96 stem channels) 28,681,000.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layers import Conv, batch_norm
from cnn_jax.models.registry import register

conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # kaiming_normal_


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv-BN-ReLU-3x3 conv, concatenated: ``(N, H, W, C) -> (N, H, W, C + growth)``."""
  growth_rate: int
  bn_size: int = 4
  drop_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(batch_norm, train, self.dtype)
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
    y = conv(self.bn_size * self.growth_rate, (1, 1))(nn.relu(norm()(x)))
    y = conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)))(nn.relu(norm()(y)))
    if self.drop_rate:
      y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
    return jnp.concatenate([x, y], axis=-1)


class Transition(nn.Module):
  """BN-ReLU-1x1 conv-2x2 avg-pool: ``(N, H, W, C) -> (N, H/2, W/2, features)``."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = batch_norm(train, self.dtype)(x)
    x = Conv(self.features, (1, 1), use_bias=False, dtype=self.dtype,
             kernel_init=conv_init)(nn.relu(x))
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """DenseNet-BC; ``(N, H, W, 3) -> (N, num_classes)`` float32 logits (224x224 nominal).

  Attributes:
    num_classes: output logits.
    growth_rate: channels each dense layer adds (k).
    block_config: dense layers per block.
    num_init_features: stem channels.
    bn_size: bottleneck width multiplier (1x1 conv outputs ``bn_size * k``).
    compression: transition output fraction (0.5 in DenseNet-BC).
    drop_rate: dropout after each dense layer ('dropout' rng; torchvision default 0).
    dtype: compute dtype; parameters stay float32, logits are float32.
  """
  num_classes: int = 1000
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  compression: float = 0.5
  drop_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(batch_norm, train, self.dtype)
    x = x.astype(self.dtype)
    x = Conv(self.num_init_features, (7, 7), (2, 2), padding=((3, 3), (3, 3)),
             use_bias=False, dtype=self.dtype, kernel_init=conv_init)(x)
    x = nn.relu(norm()(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, n_layers in enumerate(self.block_config):
      for _ in range(n_layers):
        x = DenseLayer(self.growth_rate, self.bn_size, self.drop_rate, dtype=self.dtype)(
            x, train)
      if i != len(self.block_config) - 1:
        x = Transition(int(x.shape[-1] * self.compression), dtype=self.dtype)(x, train)
    x = nn.relu(norm()(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, bias_init=nn.initializers.zeros)(x)
    return x.astype(jnp.float32)


register("densenet121", functools.partial(DenseNet, growth_rate=32,
                                          block_config=(6, 12, 24, 16), num_init_features=64))
register("densenet169", functools.partial(DenseNet, growth_rate=32,
                                          block_config=(6, 12, 32, 32), num_init_features=64))
register("densenet201", functools.partial(DenseNet, growth_rate=32,
                                          block_config=(6, 12, 48, 32), num_init_features=64))
register("densenet161", functools.partial(DenseNet, growth_rate=48,
                                          block_config=(6, 12, 36, 24), num_init_features=96))
