"""ConvNeXt V2 (Woo et al. 2023, "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked
Autoencoders", CVPR 2023, arXiv:2301.00808); reference implementation
facebookresearch/ConvNeXt-V2 ``models/convnextv2.py`` and ``models/utils.py`` (GRN).

Network, ``(N, H, W, 3) -> (N, num_classes)`` float32 logits (H, W divisible by 32 for the
ImageNet stem, by ``8 * stem_patch`` in general):

* stem: ``stem_patch x stem_patch`` conv with stride ``stem_patch`` (4 in the paper) + LayerNorm;
* four stages of ``depths[i]`` blocks with ``dims[i]`` channels; before stages 2-4 a
  downsampling LayerNorm + 2x2 stride-2 conv;
* head: global average pool -> LayerNorm -> Linear.

Block (no layer scale, unlike V1): depthwise 7x7 conv (pad 3, bias) -> LayerNorm -> Linear
dim->4dim -> exact GELU -> GRN -> Linear 4dim->dim -> drop path -> residual add. All
LayerNorms have eps 1e-6. Init as the reference: conv and linear weights normal(0, 0.02),
biases zero, head weight and bias multiplied by ``head_init_scale``.

Parameter counts (1000 classes, 224x224; the paper's Table / the reference code):

=================  ==============  ==========================  ===========  =========
name               depths          dims                        params       MACs@224
=================  ==============  ==========================  ===========  =========
convnextv2_atto    2, 2, 6, 2      40, 80, 160, 320              3,708,400  0.55 G
convnextv2_femto   2, 2, 6, 2      48, 96, 192, 384              5,233,240  0.78 G
convnextv2_pico    2, 2, 6, 2      64, 128, 256, 512             9,066,280  1.37 G
convnextv2_nano    2, 2, 8, 2      80, 160, 320, 640            15,623,800  2.45 G
convnextv2_tiny    3, 3, 9, 3      96, 192, 384, 768            28,635,496  4.47 G
convnextv2_base    3, 3, 27, 3     128, 256, 512, 1024          88,717,800  15.4 G
convnextv2_large   3, 3, 27, 3     192, 384, 768, 1536         197,956,840  34.4 G
convnextv2_huge    3, 3, 27, 3     352, 704, 1408, 2816        660,289,640  115 G
=================  ==============  ==========================  ===========  =========

CIFAR variants (32x32 input, 10 classes by default, ``stem_patch=2`` so stage 1 runs at
16x16 and stage 4 at 2x2): ``convnextv2_atto_cifar`` 3,389,170 params and
``convnextv2_femto_cifar`` 4,850,362 params (the ImageNet count with the stem conv
``p*p*3*C0`` instead of ``4*4*3*C0`` and a 10-way head). ``stem_patch=1`` (pass
``--config.model.kwargs.stem_patch=1``) keeps 32x32 in stage 1: 4x the MACs.
MACs from ``cnn_jax.summary.count_macs``: atto 0.547 G, tiny 4.456 G, base 15.35 G at 224
(the published 0.55 / 4.47 / 15.4 G within 0.5%; normalisation and GELU are not counted);
``convnextv2_atto_cifar`` 44.3 M at 32x32.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layers import (Conv, DropPath, GRN, dense_init_02, drop_path_rates,
                                   gelu_exact, layer_norm, scaled_init)
from cnn_jax.models.registry import register


class ConvNeXtV2Block(nn.Module):
  """ConvNeXt V2 block, ``(N, H, W, C) -> (N, H, W, C)``.

  dwconv 7x7 -> LayerNorm -> Linear C->4C -> GELU (exact) -> GRN(4C) -> Linear 4C->C ->
  drop path -> ``x + branch``. Parameters: ``49C + C`` (dwconv) ``+ 2C`` (LN)
  ``+ 4C^2 + 4C`` (pwconv1) ``+ 8C`` (GRN) ``+ 4C^2 + C`` (pwconv2) = ``8C^2 + 65C``.

  Attributes:
    dim: channels C.
    drop_path: stochastic-depth rate of this block.
    dtype: compute dtype.
  """
  dim: int
  drop_path: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dense = functools.partial(nn.Dense, dtype=self.dtype, kernel_init=dense_init_02,
                              bias_init=nn.initializers.zeros)
    y = Conv(self.dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=self.dim,
             dtype=self.dtype, kernel_init=dense_init_02, bias_init=nn.initializers.zeros,
             name="dwconv")(x)
    y = layer_norm(self.dtype, name="norm")(y)
    y = dense(4 * self.dim, name="pwconv1")(y)
    y = gelu_exact(y)
    y = GRN(dtype=self.dtype, name="grn")(y)
    y = dense(self.dim, name="pwconv2")(y)
    y = DropPath(self.drop_path, name="drop_path")(y, deterministic=not train)
    return x + y


class ConvNeXtV2(nn.Module):
  """ConvNeXt V2, ``(N, H, W, 3) -> (N, num_classes)`` float32 logits (see module docstring).

  Attributes:
    depths: blocks per stage (4 stages).
    dims: channels per stage.
    num_classes: classifier outputs.
    drop_path_rate: stochastic depth, rising linearly from 0 (first block) to this value
      (last block) over all ``sum(depths)`` blocks.
    head_init_scale: multiplies the head weight and bias at initialisation (the reference
      uses 0.001 when fine-tuning the large models; 1.0 from scratch).
    stem_patch: stem conv kernel and stride (4 on ImageNet; 1 or 2 for 32x32 CIFAR inputs).
    dtype: compute dtype; parameters are float32, logits float32.
  """
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  num_classes: int = 1000
  drop_path_rate: float = 0.0
  head_init_scale: float = 1.0
  stem_patch: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.depths) != len(self.dims):
      raise ValueError(f"ConvNeXtV2: depths {tuple(self.depths)} and dims {tuple(self.dims)} "
                       f"must have the same length")
    conv = functools.partial(Conv, dtype=self.dtype, kernel_init=dense_init_02,
                             bias_init=nn.initializers.zeros, padding="VALID")
    x = x.astype(self.dtype)
    p = self.stem_patch
    x = conv(self.dims[0], (p, p), (p, p), name="stem_conv")(x)
    x = layer_norm(self.dtype, name="stem_norm")(x)
    rates = drop_path_rates(self.drop_path_rate, sum(self.depths))
    k = 0
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i > 0:
        x = layer_norm(self.dtype, name=f"downsample{i}_norm")(x)
        x = conv(dim, (2, 2), (2, 2), name=f"downsample{i}_conv")(x)
      for j in range(depth):
        x = ConvNeXtV2Block(dim, rates[k], dtype=self.dtype, name=f"stage{i}_block{j}")(x, train)
        k += 1
    x = jnp.mean(x, axis=(1, 2))
    x = layer_norm(self.dtype, name="norm")(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=scaled_init(dense_init_02, self.head_init_scale),
                 bias_init=nn.initializers.zeros, name="head")(x)
    return x.astype(jnp.float32)


_VARIANTS = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}

for _name, (_depths, _dims) in _VARIANTS.items():
  register(f"convnextv2_{_name}", functools.partial(ConvNeXtV2, depths=_depths, dims=_dims))

for _name in ("atto", "femto"):
  register(f"convnextv2_{_name}_cifar",
           functools.partial(ConvNeXtV2, depths=_VARIANTS[_name][0], dims=_VARIANTS[_name][1],
                             stem_patch=2))
