"""Channel / spatial attention blocks that gate a residual branch: Squeeze-and-Excitation
and CBAM. Each is shape-preserving, ``(N, H, W, C) -> (N, H, W, C)``, infers ``C`` from its
input and is called as ``block(x, train)``, so a residual block takes any of them as a
factory (``cnn_jax.models.resnet.ResNet(attention=functools.partial(SqueezeExcite, ...))``)
and applies it to the residual branch after its last BN, before the addition.

* :class:`SqueezeExcite` (Hu, Shen, Sun 2018, "Squeeze-and-Excitation Networks"; reference
  hujie-frank/SENet and Cadene/pretrained-models.pytorch ``SEModule``): global average pool
  -> FC ``C -> C/r`` (bias) -> ReLU -> FC ``C/r -> C`` (bias) -> sigmoid -> rescale.
  ``2 C^2 / r + C / r + C`` parameters; in ResNet-50 (r = 16) 2,530,992 in all, giving
  SE-ResNet-50 28,088,024.
* :class:`ChannelGate`, :class:`SpatialGate`, :class:`CBAM` (Woo, Park, Lee, Kweon 2018,
  "CBAM: Convolutional Block Attention Module"; reference Jongchan/attention-module
  ``MODELS/cbam.py``): a shared MLP (with biases, as the reference's ``nn.Linear``) on the
  average- and max-pooled descriptors, summed, sigmoid; then a 7x7 conv (no bias) + BN over
  the channel-wise [max, mean] maps, sigmoid. The channel gate has the SE count; the spatial
  gate adds 7*7*2 + 2 = 100 per block: CBAM-ResNet-50 28,089,624 (16 blocks).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layers import Conv, batch_norm


class SqueezeExcite(nn.Module):
  """Squeeze-and-Excitation gate, ``(N, H, W, C) -> (N, H, W, C)``.

  Attributes:
    reduction: bottleneck ratio r (hidden width ``C // r``, at least ``min_hidden``).
    min_hidden: smallest hidden width.
    use_bias: biases in the two FC layers (True in the SENet reference).
    dtype: compute dtype (the gate is computed in float32 and cast back).
  """
  reduction: int = 16
  min_hidden: int = 1
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    c = x.shape[-1]
    hidden = max(self.min_hidden, c // self.reduction)
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(nn.Dense(hidden, use_bias=self.use_bias, dtype=self.dtype, name="fc1")(s))
    s = nn.Dense(c, use_bias=self.use_bias, dtype=self.dtype, name="fc2")(s)
    return x * nn.sigmoid(s.astype(jnp.float32)).astype(x.dtype)


class ChannelGate(nn.Module):
  """CBAM channel attention: ``sigmoid(MLP(avgpool x) + MLP(maxpool x)) * x``, shared MLP.

  Attributes:
    reduction: MLP bottleneck ratio r (hidden width ``C // r``).
    use_bias: biases in the MLP (True in the CBAM reference).
    dtype: compute dtype.
  """
  reduction: int = 16
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    c = x.shape[-1]
    fc1 = nn.Dense(max(1, c // self.reduction), use_bias=self.use_bias, dtype=self.dtype,
                   name="fc1")
    fc2 = nn.Dense(c, use_bias=self.use_bias, dtype=self.dtype, name="fc2")
    mlp = lambda v: fc2(nn.relu(fc1(v)))
    att = (mlp(jnp.mean(x, axis=(1, 2), keepdims=True))
           + mlp(jnp.max(x, axis=(1, 2), keepdims=True)))
    return x * nn.sigmoid(att.astype(jnp.float32)).astype(x.dtype)


class SpatialGate(nn.Module):
  """CBAM spatial attention: ``sigmoid(BN(conv7x7([max_c x, mean_c x]))) * x``.

  Attributes:
    kernel_size: conv kernel (7 in the paper), 'SAME' padding, no bias.
    dtype: compute dtype.
  """
  kernel_size: int = 7
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    pooled = jnp.concatenate([jnp.max(x, axis=-1, keepdims=True),
                              jnp.mean(x, axis=-1, keepdims=True)], axis=-1)
    p = self.kernel_size // 2
    s = Conv(1, (self.kernel_size, self.kernel_size), padding=((p, p), (p, p)),
             use_bias=False, dtype=self.dtype)(pooled)
    s = batch_norm(train, self.dtype)(s)
    return x * nn.sigmoid(s.astype(jnp.float32)).astype(x.dtype)


class CBAM(nn.Module):
  """Channel gate then spatial gate, ``(N, H, W, C) -> (N, H, W, C)``.

  Attributes:
    reduction: channel-gate MLP ratio (16).
    kernel_size: spatial-gate conv kernel (7).
    use_bias: channel-gate MLP biases (True, as the reference).
    spatial: apply the spatial gate (False leaves the channel gate only).
    dtype: compute dtype.
  """
  reduction: int = 16
  kernel_size: int = 7
  use_bias: bool = True
  spatial: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = ChannelGate(self.reduction, self.use_bias, dtype=self.dtype)(x, train)
    if self.spatial:
      x = SpatialGate(self.kernel_size, dtype=self.dtype)(x, train)
    return x
