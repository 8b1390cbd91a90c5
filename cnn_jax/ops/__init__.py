"""Convolution and pooling from first principles (``cnn_jax.ops``).

``conv2d``/``conv1d`` with three implementations ('direct', 'im2col', 'xla'), the
closed-form arithmetic in :mod:`cnn_jax.ops.formulas`, pooling in
:mod:`cnn_jax.ops.pooling`, hand-designed kernels in :mod:`cnn_jax.ops.kernels`, and the
convolution the models call, :mod:`cnn_jax.ops.cpu_conv` (XLA's, with depthwise convs
(:mod:`cnn_jax.ops.depthwise`) and small outputs rerouted on CPU).
"""

from cnn_jax.ops.conv import IMPLS, conv1d, conv2d, im2col, resolve_padding
from cnn_jax.ops.pooling import (adaptive_avg_pool2d, adaptive_bins, adaptive_max_pool2d,
                                 avg_pool2d, global_avg_pool, global_max_pool, lp_pool2d,
                                 max_pool2d)
from cnn_jax.ops.formulas import (conv_macs, conv_output_size, conv_params,
                                  depthwise_separable_params, fan_in, padding_pair,
                                  same_padding)

__all__ = ["conv2d", "conv1d", "im2col", "resolve_padding", "IMPLS", "conv_output_size",
           "same_padding", "padding_pair", "conv_params", "conv_macs",
           "depthwise_separable_params", "fan_in", "max_pool2d", "avg_pool2d", "lp_pool2d",
           "global_avg_pool", "global_max_pool", "adaptive_bins", "adaptive_avg_pool2d",
           "adaptive_max_pool2d"]
