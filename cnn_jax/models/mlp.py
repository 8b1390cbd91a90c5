"""A multilayer perceptron on flattened pixels: the no-inductive-bias baseline of the
"CNN vs MLP vs ViT vs MLP-Mixer" comparison.

``(N, H, W, C) -> flatten (N, H*W*C) -> [Linear -> activation -> dropout] x len(hidden_dims)
-> Linear -> (N, num_classes)`` float32 logits. Init: He (fan-in) normal weights for ReLU,
lecun-normal for GELU (both the usual variance-preserving choice), zero biases.

``mlp`` (CIFAR-10, 32x32x3 = 3072 inputs, hidden 512, 512, 10 classes):
``3072*512 + 512 + 512*512 + 512 + 512*10 + 10`` = 1,841,162 parameters (1.84 M MACs).
With no notion of locality it is expected far below the CNNs on CIFAR-10 (roughly 55-60%
test top-1 with crop and flip augmentation is typical for such MLPs; see
configs/cifar10_mlp.py).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.models.layers import gelu_exact
from cnn_jax.models.registry import register

_ACTIVATIONS = {"relu": nn.relu, "gelu": gelu_exact}


class MLP(nn.Module):
  """Pixels -> logits through fully connected layers (see module docstring).

  Attributes:
    hidden_dims: widths of the hidden layers.
    num_classes: classifier outputs.
    activation: 'relu' or 'gelu' (exact).
    dropout: dropout after each hidden activation (train only, 'dropout' rng).
    dtype: compute dtype; parameters float32, logits float32.
  """
  hidden_dims: Sequence[int] = (512, 512)
  num_classes: int = 10
  activation: str = "relu"
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.activation not in _ACTIVATIONS:
      raise ValueError(f"MLP: activation must be one of {sorted(_ACTIVATIONS)}, "
                       f"got {self.activation!r}")
    act = _ACTIVATIONS[self.activation]
    init = (nn.initializers.he_normal() if self.activation == "relu"
            else nn.initializers.lecun_normal())
    x = x.astype(self.dtype).reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden_dims):
      x = nn.Dense(width, dtype=self.dtype, kernel_init=init, name=f"fc{i}")(x)
      x = nn.Dropout(self.dropout)(act(x), deterministic=not train)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


register("mlp", functools.partial(MLP, hidden_dims=(512, 512)))
