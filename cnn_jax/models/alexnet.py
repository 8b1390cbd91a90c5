"""AlexNet (Krizhevsky, Sutskever, Hinton 2012, "ImageNet Classification with Deep
Convolutional Neural Networks"), in torchvision's single-GPU layout (``torchvision.models.
alexnet``, after Krizhevsky 2014 "One weird trick"): 64/192/384/256/256 channels, no LRN,
adaptive average pool to 6x6, dropout 0.5 before the two 4096-wide layers.

``(N, 224, 224, 3)`` -> conv 64@11x11/4 p2 -> 55 -> max-pool 3/2 -> 27 -> conv 192@5x5 p2
-> pool -> 13 -> conv 384, 256, 256 @3x3 p1 -> pool -> 6x6x256 -> adaptive avg-pool 6x6
-> 9216 -> 4096 -> 4096 -> ``num_classes``. 61,100,840 parameters with 1000 classes
(torchvision's number); 0.714 GMACs at 224x224.

Also holds two helpers the torchvision-style models share: :func:`adaptive_avg_pool`
(PyTorch ``AdaptiveAvgPool2d`` semantics) and :data:`torch_default_init` (PyTorch's
default ``Conv``/``Linear`` weight init, uniform with bound ``1/sqrt(fan_in)``).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layers import Conv
from cnn_jax.models.registry import register

# PyTorch's default weight init, kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
# (PyTorch also draws biases from that range; biases here start at zero.)
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def adaptive_avg_pool(x, output_size: tuple[int, int]):
  """PyTorch ``AdaptiveAvgPool2d`` on NHWC: ``(N, H, W, C) -> (N, oh, ow, C)``.

  Output cell ``i`` averages input rows ``floor(i*H/oh) .. ceil((i+1)*H/oh) - 1`` (same for
  columns); when ``H % oh == 0`` this is an ordinary ``H/oh`` average pool, and when
  ``H == oh`` the identity. A smaller input is upsampled by repetition, as in PyTorch.
  """
  n, h, w, c = x.shape
  oh, ow = output_size
  if h % oh == 0 and w % ow == 0:
    return x.reshape(n, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))

  def bounds(size, out):
    return [(math.floor(i * size / out), math.ceil((i + 1) * size / out)) for i in range(out)]

  rows = [jnp.mean(x[:, a:b], axis=1) for a, b in bounds(h, oh)]
  x = jnp.stack(rows, axis=1)  # (N, oh, W, C)
  cols = [jnp.mean(x[:, :, a:b], axis=2) for a, b in bounds(w, ow)]
  return jnp.stack(cols, axis=2)


class AlexNet(nn.Module):
  """torchvision AlexNet; ``(N, H, W, 3)`` (224x224 nominal, >= 63x63) -> ``(N, num_classes)``.

  61,100,840 parameters with 1000 classes. Init as torchvision (PyTorch defaults).

  Attributes:
    num_classes: output logits.
    dropout_rate: dropout before each of the first two dense layers ('dropout' rng).
    dtype: compute dtype; parameters stay float32, logits are float32.
  """
  num_classes: int = 1000
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(Conv, dtype=self.dtype, kernel_init=torch_default_init)
    pool = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2))
    x = x.astype(self.dtype)
    x = pool(nn.relu(conv(64, (11, 11), (4, 4), padding=((2, 2), (2, 2)))(x)))
    x = pool(nn.relu(conv(192, (5, 5), padding=((2, 2), (2, 2)))(x)))
    x = nn.relu(conv(384, (3, 3), padding=((1, 1), (1, 1)))(x))
    x = nn.relu(conv(256, (3, 3), padding=((1, 1), (1, 1)))(x))
    x = pool(nn.relu(conv(256, (3, 3), padding=((1, 1), (1, 1)))(x)))
    x = adaptive_avg_pool(x, (6, 6))
    x = x.reshape((x.shape[0], -1))  # NHWC flatten (torchvision flattens NCHW: same count)
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=torch_default_init)
    for _ in range(2):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(dense(4096)(x))
    x = dense(self.num_classes)(x)
    return x.astype(jnp.float32)


register("alexnet", AlexNet)
