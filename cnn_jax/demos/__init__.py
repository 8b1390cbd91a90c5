"""Small runnable demos.

``python -m cnn_jax.demos.kernels`` (classic kernels on an image) and
``python -m cnn_jax.demos.learn_filter`` (learn a 3x3 kernel by gradient descent).
"""
