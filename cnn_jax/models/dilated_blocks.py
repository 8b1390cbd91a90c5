"""Dilated-convolution blocks for dense prediction: the context module and DeepLab v3 ASPP.

Context module (Yu & Koltun 2016, "Multi-Scale Context Aggregation by Dilated
Convolutions", ICLR 2016, arXiv:1511.07122, Sec. 3 and Table 1; reference implementation
fyu/dilation). Seven 3x3 convolutions with dilations 1, 1, 2, 4, 8, 16, 1, each followed by
ReLU ("truncation"), then a 1x1 convolution; zero padding keeps the resolution, so
``(N, H, W, C) -> (N, H, W, C)``. Receptive field after each layer: 3, 5, 9, 17, 33, 65, 67,
67 (``RF_l = RF_{l-1} + (k - 1) d_l``). The *basic* module has C channels in every layer
(parameters ``7 (9 C^2 + C) + C^2 + C``, e.g. 28,392 for the C = 21 classes of VOC); the
*large* one has 2C, 2C, 4C, 8C, 16C, 32C, 32C, C.

Identity initialisation (paper Eq. 4): ``k(t, a, b) = 1[t = 0] 1[a = b]`` (only the centre
tap, channel to itself), biases zero. Since every layer but the last is followed by ReLU,
the initialised basic module is exactly the identity on non-negative inputs (such as the
ReLU features or softmax scores it is meant to refine); on signed inputs it is
``x -> max(x, 0)``. For the large module the generalisation of Eq. 5 is used:
``k(t, a, b) = C / c_out`` if ``t = 0`` and ``floor(a C / c_in) = floor(b C / c_out)``, else
``eps ~ N(0, sigma^2)`` with ``sigma << C / c_out``.

ASPP (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation",
arXiv:1706.05587, Sec. 3.3; reference implementation torchvision
``segmentation/deeplabv3.py``): parallel branches 1x1 conv, three 3x3 atrous convs at rates
6, 12, 18 (output stride 16; double them at output stride 8), and image pooling (global
average, 1x1 conv, bilinear upsampling, which for a 1x1 map is a broadcast), each with 256
filters + BN + ReLU; concatenation (5 x 256) then a 1x1 projection to 256 + BN + ReLU (+
dropout 0.5 as torchvision). ``(N, H, W, Cin) -> (N, H, W, 256)``; parameters
``29 Cin F + 5 F^2 + 12 F`` for F = 256 features (15,535,104 on a ResNet-50's 2048 channels).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.models.blocks_depthwise import ConvBNAct
from cnn_jax.models.layers import Conv

CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)
CONTEXT_LARGE_WIDTHS = (2, 2, 4, 8, 16, 32, 32)  # multiples of C for layers 1-7 (Table 1)


def identity_kernel_init(base_channels: int, noise_std: float = 0.0):
  """The Yu & Koltun identity initialiser for a ``(k, k, c_in, c_out)`` kernel.

  ``base_channels`` is C, the channel count of the module's input and output: weight
  ``C / c_out`` on the centre tap from input ``a`` to output ``b`` when
  ``floor(a C / c_in) == floor(b C / c_out)`` (Eq. 5; for ``c_in = c_out = C`` this is Eq. 4,
  the identity), plus Gaussian noise of std ``noise_std * C / c_out`` everywhere.
  """
  def init(key, shape, dtype=jnp.float32):
    kh, kw, cin, cout = shape
    a = jnp.arange(cin)[:, None] * base_channels // cin
    b = jnp.arange(cout)[None, :] * base_channels // cout
    centre = jnp.where(a == b, base_channels / cout, 0.0)
    k = jnp.zeros(shape, jnp.float32).at[kh // 2, kw // 2].set(centre)
    if noise_std:
      k = k + noise_std * base_channels / cout * jax.random.normal(key, shape, jnp.float32)
    return k.astype(dtype)
  return init


class ContextModule(nn.Module):
  """Yu & Koltun 2016 context module; ``(N, H, W, C) -> (N, H, W, C)``, receptive field 67.

  Parameters (basic): ``7 (9 C^2 + C) + C^2 + C`` (28,392 for C = 21).

  Attributes:
    variant: 'basic' (C channels throughout) or 'large' (2C ... 32C, Table 1).
    dilations: dilations of the seven 3x3 layers.
    identity_init: the paper's identity initialisation (else He-normal kernels).
    init_noise: relative std of the noise added to the identity init; ``None``: 0 for
      'basic', 1e-2 for 'large' (where it breaks the symmetry between copied channels).
    dtype: compute dtype (parameters float32, output in ``dtype``).
  """
  variant: str = "basic"
  dilations: Sequence[int] = CONTEXT_DILATIONS
  identity_init: bool = True
  init_noise: float | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no BatchNorm or dropout in the context module
    c = x.shape[-1]
    if self.variant == "basic":
      widths = [c] * len(self.dilations)
    elif self.variant == "large":
      if len(self.dilations) != len(CONTEXT_LARGE_WIDTHS):
        raise ValueError("ContextModule: the 'large' variant has exactly 7 dilated layers")
      widths = [m * c for m in CONTEXT_LARGE_WIDTHS]
    else:
      raise ValueError(f"ContextModule: variant must be 'basic' or 'large', got "
                       f"{self.variant!r}")
    noise = self.init_noise
    if noise is None:
      noise = 0.0 if self.variant == "basic" else 1e-2
    kinit = (identity_kernel_init(c, noise) if self.identity_init
             else nn.initializers.variance_scaling(2.0, "fan_in", "normal"))
    x = x.astype(self.dtype)
    for i, (w, d) in enumerate(zip(widths, self.dilations)):
      x = Conv(w, (3, 3), padding=((d, d), (d, d)), kernel_dilation=(d, d),
               kernel_init=kinit, dtype=self.dtype, name=f"conv{i + 1}")(x)
      x = nn.relu(x)
    return Conv(c, (1, 1), kernel_init=kinit, dtype=self.dtype,
                name=f"conv{len(widths) + 1}")(x)


class ASPP(nn.Module):
  """DeepLab v3 atrous spatial pyramid pooling; ``(N, H, W, Cin) -> (N, H, W, features)``.

  Parameters ``29 Cin F + 5 F^2 + 12 F`` with three rates (15,535,104 for Cin = 2048,
  F = 256).

  Attributes:
    features: filters of every branch and of the projection (256).
    rates: atrous rates of the 3x3 branches ((6, 12, 18) at output stride 16).
    dropout_rate: dropout after the projection (torchvision 0.5; the paper names none).
    dtype: compute dtype.
  """
  features: int = 256
  rates: Sequence[int] = (6, 12, 18)
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit = functools.partial(ConvBNAct, self.features, act=nn.relu, dtype=self.dtype)
    x = x.astype(self.dtype)
    n, h, w, _ = x.shape
    branches = [unit(1, name="branch_1x1")(x, train)]
    for r in self.rates:
      branches.append(unit(3, dilation=r, name=f"branch_rate{r}")(x, train))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = unit(1, name="image_pool")(pooled, train)
    branches.append(jnp.broadcast_to(pooled, (n, h, w, self.features)))
    y = jnp.concatenate(branches, axis=-1)
    y = unit(1, name="project")(y, train)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(y)
