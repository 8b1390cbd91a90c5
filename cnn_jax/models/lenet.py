"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998, "Gradient-Based Learning Applied to
Document Recognition"), in the modern dense form used by most re-implementations (e.g.
the PyTorch tutorial "Neural Networks" LeNet and d2l.ai's LeNet): ReLU instead of scaled
tanh, max-pool instead of trainable sub-sampling, full C3 connectivity, a linear output
instead of the RBF layer.

Layout on ``(N, 32, 32, 1)``: conv 6@5x5 'VALID' -> 28x28x6 -> 2x2 max-pool -> 14x14x6
-> conv 16@5x5 -> 10x10x16 -> pool -> 5x5x16 = 400 -> dense 120 -> dense 84 -> dense
``num_classes``. 61,706 parameters with 10 classes on 1-channel input (62,006 on 3-channel
CIFAR images: the first conv sees 3 input channels).

The family module is :class:`cnn_jax.models.cifar_cnn.ConvPoolMLP` (conv-pool stages, then
an MLP), shared with ``small_cnn``; ``lenet5`` is a partial of it.
"""

from __future__ import annotations

import functools

from cnn_jax.models.cifar_cnn import ConvPoolMLP
from cnn_jax.models.registry import register

LeNet5 = functools.partial(ConvPoolMLP, features=(6, 16), kernel_size=5, padding="VALID",
                           hidden=(120, 84))

register("lenet5", LeNet5)
