"""EfficientNet B0-B7 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", arXiv:1905.11946, Table 1), torchvision layout.

Stem 3x3/2 conv to 32 + BN + SiLU; seven stages of MBConv blocks (Sandler et al. 2018
inverted residual with a squeeze-and-excitation module, Hu et al. 2018); 1x1 conv to 1280
(``4 x`` the last stage width) + BN + SiLU; global average pool, dropout, linear.

MBConv (expansion e, kernel k, stride s): 1x1 expansion to ``e * Cin`` + BN + SiLU (omitted
for e = 1), ``k x k`` depthwise + BN + SiLU, SE (global pool, 1x1 conv with bias to
``max(1, Cin // 4)`` -- a quarter of the *block input* channels --, SiLU, 1x1 conv with bias
back, sigmoid gate), 1x1 linear projection + BN; identity shortcut with stochastic depth
(Huang et al. 2016, per example) when ``s == 1 and Cin == Cout``. The drop probability
grows linearly with the block index: ``0.2 * i / num_blocks`` for block ``i = 0, 1, ...``.

Reference implementation: torchvision ``efficientnet.py`` (width/depth scaling, channel
rounding to multiples of 8, SE squeeze, stochastic depth schedule, classifier init).
BatchNorm: epsilon 1e-3 and momentum 0.99 of the original TF implementation (torchvision
uses these for B5-B7 and PyTorch defaults for B0-B4; parameter counts do not depend on it).

Parameter counts (1000 classes, torchvision): B0 5,288,548; B1 7,794,184; B2 9,109,994;
B3 12,233,232; B4 19,341,616; B5 30,389,784; B6 43,040,704; B7 66,347,960.
B0 at 224x224: 0.386 G MACs.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.blocks_depthwise import ConvBNAct, conv_init
from cnn_jax.models.layers import Conv
from cnn_jax.models.mobilenet import make_divisible
from cnn_jax.models.registry import register


class SqueezeExcitation(nn.Module):
  """SE gate (Hu et al. 2018): ``x * sigmoid(W2 silu(W1 mean_hw(x) + b1) + b2)``.

  ``(N, H, W, C) -> (N, H, W, C)``; parameters ``2 C S + S + C`` for squeeze width S.
  """
  squeeze_channels: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = Conv(self.squeeze_channels, (1, 1), dtype=self.dtype, kernel_init=conv_init,
             name="fc1")(s)
    s = nn.silu(s)
    s = Conv(c, (1, 1), dtype=self.dtype, kernel_init=conv_init, name="fc2")(s)
    return x * nn.sigmoid(s)


class MBConv(nn.Module):
  """Mobile inverted bottleneck with SE; ``(N, H, W, Cin) -> (N, H/s, W/s, features)``.

  torchvision ``MBConv``. Parameters, with hidden width ``h`` and squeeze ``q = Cin // 4``:
  ``Cin h + 2 h`` (expansion, when ``h != Cin``) ``+ k^2 h + 2 h`` (depthwise)
  ``+ 2 h q + q + h`` (SE) ``+ h F + 2 F`` (projection).

  Attributes:
    features: output channels.
    expand_ratio: expansion e of the hidden width ``make_divisible(Cin * e)``.
    kernel_size: depthwise kernel (3 or 5).
    stride: depthwise stride.
    stochastic_depth: probability of dropping the residual branch (per example, training
      only; uses the 'dropout' rng).
    bn_momentum / bn_epsilon: BatchNorm settings.
    dtype: compute dtype.
  """
  features: int
  expand_ratio: float = 6
  kernel_size: int = 3
  stride: int = 1
  stochastic_depth: float = 0.0
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    cin = x.shape[-1]
    hidden = make_divisible(cin * self.expand_ratio)
    unit = functools.partial(ConvBNAct, act=nn.silu, bn_momentum=self.bn_momentum,
                             bn_epsilon=self.bn_epsilon, dtype=self.dtype)
    y = x
    if hidden != cin:
      y = unit(hidden, 1, name="expand")(y, train)
    y = unit(hidden, self.kernel_size, self.stride, groups=hidden, name="depthwise")(y, train)
    y = SqueezeExcitation(max(1, cin // 4), dtype=self.dtype, name="se")(y)
    y = unit(self.features, 1, act=None, name="project")(y, train)
    if self.stride == 1 and cin == self.features:
      # Stochastic depth, torchvision mode "row": drop the branch for whole examples and
      # scale survivors by 1 / (1 - p); Dropout broadcast over H, W, C does exactly that.
      y = nn.Dropout(self.stochastic_depth, broadcast_dims=(1, 2, 3),
                     deterministic=not train, name="stochastic_depth")(y)
      y = x + y
    return y


# (expansion, kernel, stride, channels, layers) of Tan & Le, Table 1 (stages 2-8).
EFFICIENTNET_B0_SETTING = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2),
                           (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
                           (6, 3, 1, 320, 1))


class EfficientNet(nn.Module):
  """EfficientNet with compound scaling. ``(N, H, W, 3) -> (N, num_classes)`` float32 logits.

  Parameter counts: see the module docstring (B0: 5,288,548). Default input resolution per
  variant (not enforced): B0 224, B1 240, B2 260 (torchvision 288), B3 300, B4 380, B5 456,
  B6 528, B7 600.

  Attributes:
    num_classes: output logits.
    width_mult / depth_mult: compound scaling (channels ``make_divisible(c * w)``, layers
      ``ceil(n * d)``).
    dropout_rate: classifier dropout (0.2 for B0).
    stochastic_depth: final-block drop probability scale (0.2), linear in the block index.
    setting: B0 stage table ``(e, k, s, c, n)``.
    stem_stride: stride of the stem conv.
    bn_momentum / bn_epsilon: BatchNorm settings (flax momentum).
    dtype: compute dtype; parameters are float32, logits float32.
  """
  num_classes: int = 1000
  width_mult: float = 1.0
  depth_mult: float = 1.0
  dropout_rate: float = 0.2
  stochastic_depth: float = 0.2
  setting: Sequence[tuple[int, int, int, int, int]] = EFFICIENTNET_B0_SETTING
  stem_stride: int = 2
  bn_momentum: float = 0.99
  bn_epsilon: float = 1e-3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    width = lambda c: make_divisible(c * self.width_mult)
    depths = [int(math.ceil(n * self.depth_mult)) for *_, n in self.setting]
    total = sum(depths)
    unit = functools.partial(ConvBNAct, act=nn.silu, bn_momentum=self.bn_momentum,
                             bn_epsilon=self.bn_epsilon, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = unit(width(32), 3, self.stem_stride, name="stem")(x, train)
    block_id = 0
    for i, ((e, k, s, c, _), n) in enumerate(zip(self.setting, depths)):
      for j in range(n):
        x = MBConv(width(c), e, k, s if j == 0 else 1,
                   stochastic_depth=self.stochastic_depth * block_id / total,
                   bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                   dtype=self.dtype, name=f"stage{i + 1}_block{j + 1}")(x, train)
        block_id += 1
    x = unit(4 * width(self.setting[-1][3]), 1, name="head")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    bound = 1.0 / math.sqrt(self.num_classes)  # torchvision: uniform(-1/sqrt(K), 1/sqrt(K))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier",
                 kernel_init=lambda key, shape, dt=jnp.float32: nn.initializers.uniform(
                     2 * bound)(key, shape, dt) - bound)(x)
    return x.astype(jnp.float32)


# (width, depth, dropout) of torchvision efficientnet_b0 ... b7.
_SCALING = {"b0": (1.0, 1.0, 0.2), "b1": (1.0, 1.1, 0.2), "b2": (1.1, 1.2, 0.3),
            "b3": (1.2, 1.4, 0.3), "b4": (1.4, 1.8, 0.4), "b5": (1.6, 2.2, 0.4),
            "b6": (1.8, 2.6, 0.5), "b7": (2.0, 3.1, 0.5)}
for _name, (_w, _d, _p) in _SCALING.items():
  register(f"efficientnet_{_name}", functools.partial(EfficientNet, width_mult=_w,
                                                      depth_mult=_d, dropout_rate=_p))
