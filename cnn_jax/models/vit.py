"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers
for Image Recognition at Scale", ICLR 2021, arXiv:2010.11929); reference implementations
timm ``models/vision_transformer.py`` (layout, names, init) and
google-research/vision_transformer ``vit_jax/models_vit.py``.

``(N, H, W, 3) -> (N, num_classes)`` float32 logits; H and W divisible by ``patch_size``.

* patch embedding: ``patch x patch`` conv with stride ``patch`` -> ``T = (H/p)(W/p)`` tokens;
* a learned class token prepended (``pool='token'``; or ``pool='gap'``: no class token,
  mean over tokens), plus learned position embeddings ``(1, T [+1], D)``;
* ``depth`` pre-norm blocks: ``x + DropPath(MHSA(LN(x)))`` then ``x + DropPath(MLP(LN(x)))``,
  MHSA with a qkv bias, MLP D->4D->D with exact GELU, LayerNorm eps 1e-6;
* final LayerNorm, then the class token (or token mean) -> Linear head.

Init as timm: linear weights normal(0, 0.02) (timm's ``trunc_normal_(std=.02)``), biases
zero, position embeddings normal(0, 0.02), class token normal(0, 1e-6), patch-embedding
conv lecun-normal. Position embeddings are sized from the input at ``init`` (no resizing).

Parameters: per block ``12 D^2 + 13 D`` (two LNs 4D, qkv 3D^2+3D, proj D^2+D, MLP 8D^2+5D);
plus patch embedding ``3 p^2 D + D``, class token D, position embeddings ``(T + 1) D``,
final LN 2D, head ``D K + K``:

==========================  ===  =====  =====  =====  =======  ===========
name                        D    depth  heads  patch  input    params
==========================  ===  =====  =====  =====  =======  ===========
vit_tiny_patch16_224        192  12     3      16     224      5,717,416 (1000 classes)
vit_small_patch16_224       384  12     6      16     224      22,050,664 (1000 classes)
vit_base_patch16_224        768  12     12     16     224      86,567,656 (1000 classes)
vit_tiny_patch4_cifar       192  12     3      4      32       5,362,762 (10 classes)
vit_small_patch4_cifar      384  12     6      4      32       21,342,346 (10 classes)
==========================  ===  =====  =====  =====  =======  ===========

The 224 counts equal timm's. The CIFAR variants use 4x4 patches on 32x32 inputs (64 patch
tokens + the class token), the usual small-image choice. MACs (``cnn_jax.summary.count_macs``,
attention matmuls included): vit_tiny_patch16_224 1.25 G, vit_tiny_patch4_cifar 365 M.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.models.layers import (Conv, DropPath, dense_init_02, drop_path_rates, gelu_exact,
                                   layer_norm)
from cnn_jax.models.registry import register

_dense = functools.partial(nn.Dense, kernel_init=dense_init_02, bias_init=nn.initializers.zeros)


class MultiHeadSelfAttention(nn.Module):
  """Multi-head self-attention, ``(N, T, D) -> (N, T, D)``: qkv Linear D->3D (with bias),
  scaled dot-product softmax attention per head (softmax in float32), proj Linear D->D.
  Parameters ``4 D^2 + 4 D``. Reference: timm ``Attention`` (``qkv_bias=True``).

  Attributes:
    num_heads: heads; D must be divisible by it.
    attn_dropout: dropout on the attention weights.
    proj_dropout: dropout after the output projection.
    dtype: compute dtype.
  """
  num_heads: int
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    n, t, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"MultiHeadSelfAttention: dim {d} not divisible by "
                       f"num_heads {self.num_heads}")
    hd = d // self.num_heads
    qkv = _dense(3 * d, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(n, t, 3, self.num_heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (N, T, heads, hd)
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) * jnp.asarray(hd ** -0.5, self.dtype)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    attn = nn.Dropout(self.attn_dropout)(attn, deterministic=not train)
    y = jnp.einsum("nhqk,nkhd->nqhd", attn, v).reshape(n, t, d)
    y = _dense(d, dtype=self.dtype, name="proj")(y)
    return nn.Dropout(self.proj_dropout)(y, deterministic=not train)


class TransformerMlp(nn.Module):
  """``(N, T, D) -> (N, T, D)``: Linear D->hidden -> exact GELU -> dropout -> Linear
  hidden->D -> dropout. Parameters ``2 D hidden + hidden + D``.

  Attributes:
    hidden_dim: hidden width (4D in ViT).
    dropout: dropout rate.
    dtype: compute dtype.
  """
  hidden_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    d = x.shape[-1]
    x = _dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x)
    x = gelu_exact(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    x = _dense(d, dtype=self.dtype, name="fc2")(x)
    return nn.Dropout(self.dropout)(x, deterministic=not train)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block, ``(N, T, D) -> (N, T, D)``; ``12 D^2 + 13 D`` parameters
  with ``mlp_ratio`` 4.

  Attributes:
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / D.
    dropout: dropout in the MLP and after the attention projection.
    attn_dropout: dropout on the attention weights.
    drop_path: stochastic-depth rate of both residual branches.
    dtype: compute dtype.
  """
  num_heads: int
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  attn_dropout: float = 0.0
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    d = x.shape[-1]
    y = layer_norm(self.dtype, name="norm1")(x)
    y = MultiHeadSelfAttention(self.num_heads, self.attn_dropout, self.dropout,
                               dtype=self.dtype, name="attn")(y, train)
    x = x + DropPath(self.drop_path, name="drop_path1")(y, deterministic=not train)
    y = layer_norm(self.dtype, name="norm2")(x)
    y = TransformerMlp(int(d * self.mlp_ratio), self.dropout, dtype=self.dtype,
                       name="mlp")(y, train)
    return x + DropPath(self.drop_path, name="drop_path2")(y, deterministic=not train)


class VisionTransformer(nn.Module):
  """ViT, ``(N, H, W, C) -> (N, num_classes)`` float32 logits (see module docstring).

  Attributes:
    patch_size: patch side p (conv kernel and stride of the patch embedding).
    embed_dim: token width D.
    depth: number of transformer blocks.
    num_heads: attention heads.
    mlp_ratio: MLP hidden width / D (4).
    num_classes: classifier outputs.
    pool: 'token' (class token, ViT default) or 'gap' (mean over patch tokens, no class token).
    dropout: dropout after the position embedding, in the MLPs and after attention.
    attn_dropout: dropout on attention weights.
    drop_path_rate: stochastic depth rising linearly from 0 to this over the blocks.
    dtype: compute dtype; parameters float32, logits float32.
  """
  patch_size: int = 16
  embed_dim: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  pool: str = "token"
  dropout: float = 0.0
  attn_dropout: float = 0.0
  drop_path_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.pool not in ("token", "gap"):
      raise ValueError(f"VisionTransformer: pool must be 'token' or 'gap', got {self.pool!r}")
    _, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"VisionTransformer: input {h}x{w} not divisible by patch_size {p}")
    x = x.astype(self.dtype)
    x = Conv(self.embed_dim, (p, p), (p, p), padding="VALID", dtype=self.dtype,
             kernel_init=nn.initializers.lecun_normal(), bias_init=nn.initializers.zeros,
             name="patch_embed")(x)
    n = x.shape[0]
    x = x.reshape(n, -1, self.embed_dim)
    if self.pool == "token":
      cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.embed_dim),
                       jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, self.embed_dim)), x],
                          axis=1)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, x.shape[1], self.embed_dim),
                     jnp.float32)
    x = x + pos.astype(self.dtype)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    for i, rate in enumerate(drop_path_rates(self.drop_path_rate, self.depth)):
      x = EncoderBlock(self.num_heads, self.mlp_ratio, self.dropout, self.attn_dropout, rate,
                       dtype=self.dtype, name=f"block{i}")(x, train)
    x = layer_norm(self.dtype, name="norm")(x)
    x = x[:, 0] if self.pool == "token" else jnp.mean(x, axis=1)
    x = _dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


_VIT = functools.partial(VisionTransformer, depth=12, mlp_ratio=4.0)
register("vit_tiny_patch16_224", functools.partial(_VIT, patch_size=16, embed_dim=192,
                                                   num_heads=3))
register("vit_small_patch16_224", functools.partial(_VIT, patch_size=16, embed_dim=384,
                                                    num_heads=6))
register("vit_base_patch16_224", functools.partial(_VIT, patch_size=16, embed_dim=768,
                                                   num_heads=12))
register("vit_tiny_patch4_cifar", functools.partial(_VIT, patch_size=4, embed_dim=192,
                                                    num_heads=3))
register("vit_small_patch4_cifar", functools.partial(_VIT, patch_size=4, embed_dim=384,
                                                     num_heads=6))
