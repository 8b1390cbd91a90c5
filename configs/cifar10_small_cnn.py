"""The seed material's first Keras CNN (``small_cnn``, 545,098 parameters) on CIFAR-10.

Two 3x3 conv + 2x2 max-pool stages (32, 64 channels), flatten 8x8x64 = 4096 -> 128 -> 10;
6.13 M MACs per 32x32 image. SGD + Nesterov, lr 0.05, cosine, weight decay 5e-4, 15 epochs.

Run (offline, with the JPEG copy of CIFAR-10)::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \
    python -m cnn_jax.train --config configs/cifar10_small_cnn.py --workdir runs/small_cnn

Expected: 79.04% test top-1 (experiments/cifar10_small_cnn_15ep/, logged run of this config;
about 1,100 train images/s on a 2-core CPU). With crop + flip the model under-fits at 15
epochs (train accuracy on augmented images 80.3%).
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "small_cnn"
  c.batch_size = 128
  c.num_epochs = 15
  c.optim.lr = 0.05
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 1.0
  return c
