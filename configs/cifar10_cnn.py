"""The seed material's small CIFAR-10 CNN (``cifar10_cnn``, 289,194 parameters).

Run::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \
    python -m cnn_jax.train --config configs/cifar10_cnn.py --workdir runs/cifar10_cnn
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "cifar10_cnn"
  c.num_epochs = 20
  c.optim.lr = 0.05
  return c
