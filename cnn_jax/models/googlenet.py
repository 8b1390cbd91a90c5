"""GoogLeNet / Inception v1 (Szegedy et al. 2015, "Going Deeper with Convolutions"), in
torchvision's layout (``torchvision.models.googlenet``, ``aux_logits=False``): every conv is
a BasicConv2d = conv without bias -> BatchNorm (eps 0.001) -> ReLU; max-pools use PyTorch's
``ceil_mode=True``; the "5x5" branch uses a 3x3 conv, a known quirk of torchvision's port
that its published count and weights include (``branch3_kernel=5`` gives the paper's 5x5).

``(N, 224, 224, 3)`` -> conv 64@7x7/2 -> 112 -> max-pool 3/2 -> 56 -> conv 64@1x1 ->
conv 192@3x3 -> pool -> 28x28x192 -> inception 3a, 3b (256, 480) -> pool -> 14 -> 4a..4e
(512, 512, 512, 528, 832) -> pool 2/2 -> 7 -> 5a, 5b (832, 1024) -> global avg pool ->
dropout 0.2 -> linear. 6,624,904 parameters with 1000 classes (torchvision, no aux heads).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layers import BatchNorm, Conv
from cnn_jax.models.registry import register

# torchvision: trunc_normal_(std=0.01, a=-2, b=2) for convs and the linear layer.
conv_init = nn.initializers.truncated_normal(0.01)

# (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj) per torchvision Inception.
INCEPTION_V1 = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def max_pool_ceil(x, window: int, stride: int):
  """PyTorch ``MaxPool2d(window, stride, ceil_mode=True)`` (no padding) on NHWC.

  Output size ``ceil((H - window) / stride) + 1``: the input is padded at the bottom/right
  with -inf so the last partial window counts.
  """
  pads = []
  for size in x.shape[1:3]:
    out = math.ceil((size - window) / stride) + 1
    if (out - 1) * stride >= size:  # PyTorch drops a window that starts past the input
      out -= 1
    pads.append((0, max(0, (out - 1) * stride + window - size)))
  return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm(eps 1e-3) -> ReLU; ``(N, H, W, C) -> (N, H', W', features)``."""
  features: int
  kernel_size: int = 1
  stride: int = 1
  padding: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    k, p = self.kernel_size, self.padding
    x = Conv(self.features, (k, k), (self.stride, self.stride), padding=((p, p), (p, p)),
             use_bias=False, dtype=self.dtype, kernel_init=conv_init)(x)
    x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-3,
                     dtype=self.dtype)(x)
    return nn.relu(x)


class Inception(nn.Module):
  """Four parallel branches concatenated on channels; ``(N, H, W, C) -> (N, H, W, F)`` with
  ``F = c1 + c3 + c5 + pool_proj``.

  Branches: 1x1; 1x1 -> 3x3; 1x1 -> ``branch3_kernel`` (3 in torchvision, 5 in the paper);
  3x3/1 max-pool -> 1x1.
  """
  c1: int
  c3_reduce: int
  c3: int
  c5_reduce: int
  c5: int
  pool_proj: int
  branch3_kernel: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(BasicConv, dtype=self.dtype)
    k = self.branch3_kernel
    b1 = conv(self.c1)(x, train)
    b2 = conv(self.c3, 3, padding=1)(conv(self.c3_reduce)(x, train), train)
    b3 = conv(self.c5, k, padding=k // 2)(conv(self.c5_reduce)(x, train), train)
    b4 = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    b4 = conv(self.pool_proj)(b4, train)
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class GoogLeNet(nn.Module):
  """Inception v1, torchvision layout without aux heads; ``(N, H, W, 3) -> (N, num_classes)``.

  6,624,904 parameters with 1000 classes; any input of at least ~32x32 works (the global
  average pool absorbs the final spatial size).

  Attributes:
    num_classes: output logits.
    branch3_kernel: kernel of the third Inception branch (3 = torchvision, 5 = paper).
    dropout_rate: dropout before the classifier (torchvision 0.2; 'dropout' rng).
    dtype: compute dtype; parameters stay float32, logits are float32.
  """
  num_classes: int = 1000
  branch3_kernel: int = 3
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv, dtype=self.dtype)
    inception = functools.partial(Inception, branch3_kernel=self.branch3_kernel,
                                  dtype=self.dtype)
    x = x.astype(self.dtype)
    x = conv(64, 7, stride=2, padding=3, name="conv1")(x, train)
    x = max_pool_ceil(x, 3, 2)
    x = conv(64, 1, name="conv2")(x, train)
    x = conv(192, 3, padding=1, name="conv3")(x, train)
    x = max_pool_ceil(x, 3, 2)
    for name in ("3a", "3b"):
      x = inception(*INCEPTION_V1[name], name=f"inception{name}")(x, train)
    x = max_pool_ceil(x, 3, 2)
    for name in ("4a", "4b", "4c", "4d", "4e"):
      x = inception(*INCEPTION_V1[name], name=f"inception{name}")(x, train)
    x = max_pool_ceil(x, 2, 2)
    for name in ("5a", "5b"):
      x = inception(*INCEPTION_V1[name], name=f"inception{name}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=conv_init, name="fc")(x)
    return x.astype(jnp.float32)


register("googlenet", GoogLeNet)
