"""The seed material's small CIFAR-10 classifiers (``cifar10_cnn``, ``small_cnn``).

Three blocks of two 3x3 conv-BN-ReLU ('SAME' padding) with 32, 64, 128 channels,
2x2 max-pool after blocks 1 and 2, global average pool, one linear layer:
289,194 parameters for 10 classes (the seed text's comment says 309,738; its own code,
and this module, have 289,194).

``small_cnn`` (:class:`ConvPoolMLP`): the seed's SmallCNN (PyTorch, seed 001), two conv + 2x2
max-pool stages and a flatten -> dense MLP head: 545,098 parameters on 32x32x3 with 10
classes. LeNet-5 (``cnn_jax.models.lenet``) is the same family.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layers import Conv, batch_norm, max_pool
from cnn_jax.models.registry import register


class ConvBNReLU(nn.Module):
  """3x3 'SAME' conv (with bias, as the seed's PyTorch CIFAR10Net) -> BatchNorm -> ReLU, NHWC.

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
    x = Conv(self.features, self.kernel_size, self.strides, padding="SAME",
             use_bias=True, dtype=self.dtype,
             kernel_init=nn.initializers.he_normal())(x)
    return batch_norm(train, self.dtype, relu=True)(x)


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
        x = max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


register("cifar10_cnn", functools.partial(StackedCNN, widths=(32, 64, 128)))


class ConvPoolMLP(nn.Module):
  """Stages of conv (with bias) -> ReLU -> 2x2 max-pool, flatten, ReLU MLP, linear, NHWC.

  ``(N, H, W, C)`` float -> ``(N, num_classes)`` float32 logits. No normalisation layers.
  ``small_cnn`` (seed material's SmallCNN): conv 3->32 3x3 'SAME' + pool, conv 32->64
  3x3 'SAME' + pool, flatten (8x8x64 = 4096 on 32x32 input) -> 128 -> 10: 545,098 params.
  LeNet-5 (LeCun et al. 1998, modern ReLU/max-pool form) is ``features=(6, 16)``,
  ``kernel_size=5``, ``padding='VALID'``, ``hidden=(120, 84)``: 61,706 params on 32x32x1.

  Attributes:
    num_classes: number of output logits.
    features: output channels of each conv stage.
    kernel_size: square conv kernel size.
    padding: conv padding, 'SAME' or 'VALID'.
    hidden: widths of the hidden dense layers (each followed by ReLU and dropout).
    dropout_rate: dropout after each hidden dense layer ('dropout' rng; 0 disables).
    dtype: compute dtype; parameters stay float32, logits are float32.
  """
  num_classes: int = 10
  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  padding: str = "SAME"
  hidden: Sequence[int] = (128,)
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    k = (self.kernel_size, self.kernel_size)
    for f in self.features:
      x = Conv(f, k, padding=self.padding, dtype=self.dtype,
               kernel_init=nn.initializers.he_normal())(x)
      x = max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for h in self.hidden:
      x = nn.relu(nn.Dense(h, dtype=self.dtype)(x))
      if self.dropout_rate:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    return x.astype(jnp.float32)


register("small_cnn", functools.partial(ConvPoolMLP, features=(32, 64), kernel_size=3,
                                        padding="SAME", hidden=(128,)))
