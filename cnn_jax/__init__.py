"""cnn_jax: convolutional networks in JAX/Flax, from the raw convolution to ConvNeXt V2."""

__version__ = "0.1.0"
