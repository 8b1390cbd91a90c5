"""Small runnable demos: ``python -m cnn_jax.demos.kernels``, ``python -m cnn_jax.demos.learn_filter``."""
