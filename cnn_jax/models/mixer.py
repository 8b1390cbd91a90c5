"""MLP-Mixer (Tolstikhin et al. 2021, "MLP-Mixer: An all-MLP Architecture for Vision",
NeurIPS 2021, arXiv:2105.01601); reference implementation google-research/vision_transformer
``vit_jax/models_mixer.py`` (and timm ``models/mlp_mixer.py``, whose counts these match).

``(N, H, W, 3) -> (N, num_classes)`` float32 logits; H and W divisible by ``patch_size``.

* per-patch embedding ("stem"): ``p x p`` conv with stride p -> ``S = (H/p)(W/p)`` tokens of
  width C;
* ``depth`` Mixer blocks: token mixing ``x + MLP_S(LN(x)^T)^T`` (an MLP S->D_S->S shared over
  channels), then channel mixing ``x + MLP_C(LN(x))`` (C->D_C->C shared over tokens); MLPs are
  Linear -> GELU -> Linear; optional stochastic depth on both branches;
* LayerNorm (eps 1e-6) -> global average pool over tokens -> Linear head.

GELU: the exact (erf) GELU of the paper and timm; the JAX reference's ``nn.gelu`` is flax's
tanh approximation (no parameter difference). Init as the JAX reference: stem lecun-normal,
MLP weights xavier-uniform, biases zero (the reference uses normal(1e-6)), head zeros.

Parameters: stem ``3 p^2 C + C``; per block ``4C`` (two LNs) ``+ 2 S D_S + D_S + S``
(token MLP) ``+ 2 C D_C + D_C + C`` (channel MLP); final LN ``2C``; head ``C K + K``:

=======================  ==  ====  ===  ====  ====  =====  ===========
name                     p   C     D_S  D_C   depth input  params
=======================  ==  ====  ===  ====  ====  =====  ===========
mixer_s16_224            16  512   256  2048  8     224    18,528,264 (1000 classes)
mixer_b16_224            16  768   384  3072  12    224    59,880,472 (1000 classes)
mixer_l16_224            16  1024  512  4096  24    224    208,196,168 (1000 classes)
mixer_s4_cifar           4   512   256  2048  8     32     17,110,026 (10 classes)
mixer_tiny_patch4_cifar  4   256   128  1024  8     32     4,360,970 (10 classes)
=======================  ==  ====  ===  ====  ====  =====  ===========

MACs (``cnn_jax.summary.count_macs``): mixer_b16_224 12.6 G, mixer_tiny_patch4_cifar 303 M.
The token-mixing MLP is sized by S, so a model's parameter count depends on the input size:
the table gives it for the named input.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layers import Conv, DropPath, drop_path_rates, gelu_exact, layer_norm
from cnn_jax.models.registry import register


class MlpBlock(nn.Module):
  """``(..., F) -> (..., F)``: Linear F->mlp_dim -> exact GELU -> dropout -> Linear mlp_dim->F.
  Parameters ``2 F mlp_dim + mlp_dim + F``.

  Attributes:
    mlp_dim: hidden width.
    dropout: dropout rate after the GELU.
    dtype: compute dtype.
  """
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              kernel_init=nn.initializers.xavier_uniform(),
                              bias_init=nn.initializers.zeros)
    y = dense(self.mlp_dim, name="fc1")(x)
    y = gelu_exact(y)
    y = nn.Dropout(self.dropout)(y, deterministic=not train)
    return dense(x.shape[-1], name="fc2")(y)


class MixerBlock(nn.Module):
  """Token mixing then channel mixing, ``(N, S, C) -> (N, S, C)``.

  Attributes:
    tokens_mlp_dim: hidden width D_S of the token-mixing MLP.
    channels_mlp_dim: hidden width D_C of the channel-mixing MLP.
    dropout: dropout inside both MLPs.
    drop_path: stochastic-depth rate of both residual branches.
    dtype: compute dtype.
  """
  tokens_mlp_dim: int
  channels_mlp_dim: int
  dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = layer_norm(self.dtype, name="norm1")(x)
    y = jnp.swapaxes(y, 1, 2)  # (N, C, S): mix along tokens
    y = MlpBlock(self.tokens_mlp_dim, self.dropout, self.dtype, name="token_mixing")(y, train)
    y = jnp.swapaxes(y, 1, 2)
    x = x + DropPath(self.drop_path, name="drop_path1")(y, deterministic=not train)
    y = layer_norm(self.dtype, name="norm2")(x)
    y = MlpBlock(self.channels_mlp_dim, self.dropout, self.dtype, name="channel_mixing")(y, train)
    return x + DropPath(self.drop_path, name="drop_path2")(y, deterministic=not train)


class MlpMixer(nn.Module):
  """MLP-Mixer, ``(N, H, W, C_in) -> (N, num_classes)`` float32 logits (module docstring).

  Attributes:
    patch_size: patch side p.
    hidden_dim: token width C.
    depth: number of Mixer blocks.
    tokens_mlp_dim: D_S.
    channels_mlp_dim: D_C.
    num_classes: classifier outputs.
    dropout: dropout inside the MLPs.
    drop_path_rate: stochastic depth rising linearly from 0 to this over the blocks.
    dtype: compute dtype; parameters float32, logits float32.
  """
  patch_size: int = 16
  hidden_dim: int = 768
  depth: int = 12
  tokens_mlp_dim: int = 384
  channels_mlp_dim: int = 3072
  num_classes: int = 1000
  dropout: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    _, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"MlpMixer: input {h}x{w} not divisible by patch_size {p}")
    x = x.astype(self.dtype)
    x = Conv(self.hidden_dim, (p, p), (p, p), padding="VALID", dtype=self.dtype,
             kernel_init=nn.initializers.lecun_normal(), bias_init=nn.initializers.zeros,
             name="stem")(x)
    x = x.reshape(x.shape[0], -1, self.hidden_dim)
    for i, rate in enumerate(drop_path_rates(self.drop_path_rate, self.depth)):
      x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim, self.dropout, rate,
                     dtype=self.dtype, name=f"block{i}")(x, train)
    x = layer_norm(self.dtype, name="pre_head_norm")(x)
    x = jnp.mean(x, axis=1)
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                 bias_init=nn.initializers.zeros, name="head")(x)
    return x.astype(jnp.float32)


def _mixer(patch_size, hidden_dim, depth, tokens_mlp_dim, channels_mlp_dim):
  return functools.partial(MlpMixer, patch_size=patch_size, hidden_dim=hidden_dim, depth=depth,
                           tokens_mlp_dim=tokens_mlp_dim, channels_mlp_dim=channels_mlp_dim)


register("mixer_s16_224", _mixer(16, 512, 8, 256, 2048))
register("mixer_b16_224", _mixer(16, 768, 12, 384, 3072))
register("mixer_l16_224", _mixer(16, 1024, 24, 512, 4096))
register("mixer_s4_cifar", _mixer(4, 512, 8, 256, 2048))
register("mixer_tiny_patch4_cifar", _mixer(4, 256, 8, 128, 1024))
