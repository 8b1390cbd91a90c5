"""ResNet-20 (He et al. 2015, option A) on CIFAR-10: SGD + Nesterov, cosine, 20 epochs.

Run (offline, with the JPEG copy of CIFAR-10)::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \
    python -m cnn_jax.train --config configs/cifar10_resnet20.py --workdir runs/resnet20

Expected: >= 88% test top-1 after 20 epochs; see experiments/cifar10_resnet20/ for the
logged run (accuracy, wall time, images/s on a 2-core CPU).
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "resnet20"
  c.batch_size = 128
  c.num_epochs = 20
  c.optim.lr = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 1.0
  return c
