"""The seed material's small CIFAR-10 classifier (``cifar10_cnn``).

Three blocks of two 3x3 conv-BN-ReLU ('SAME' padding) with 32, 64, 128 channels,
2x2 max-pool after blocks 1 and 2, global average pool, one linear layer:
289,194 parameters for 10 classes (the seed text's comment says 309,738; its own code,
and this module, have 289,194).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.registry import register


class ConvBNReLU(nn.Module):
  """3x3 'SAME' conv (with bias, as the seed's Keras code) -> BatchNorm -> ReLU, NHWC.

  Attributes:
    features: output channels.
    dtype: compute dtype (parameters stay float32).
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, self.kernel_size, self.strides, padding="SAME",
                use_bias=True, dtype=self.dtype,
                kernel_init=nn.initializers.he_normal())(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     dtype=self.dtype)(x)
    return nn.relu(x)


class StackedCNN(nn.Module):
  """Blocks of ``convs_per_block`` ConvBNReLU, max-pool between blocks, GAP, linear.

  Input ``(N, H, W, C)`` float, output logits ``(N, num_classes)`` float32.

  Attributes:
    num_classes: number of output logits.
    widths: channels of each block.
    convs_per_block: conv layers per block.
    pool_after: indices of blocks followed by a 2x2 stride-2 max-pool.
    dtype: compute dtype.
  """
  num_classes: int = 10
  widths: Sequence[int] = (32, 64, 128)
  convs_per_block: int = 2
  pool_after: Sequence[int] = (0, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    for i, w in enumerate(self.widths):
      for _ in range(self.convs_per_block):
        x = ConvBNReLU(w, dtype=self.dtype)(x, train)
      if i in self.pool_after:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


register("cifar10_cnn", functools.partial(StackedCNN, widths=(32, 64, 128)))
