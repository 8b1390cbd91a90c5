"""VGG-16 with BatchNorm, CIFAR head (``vgg16_cifar``, 14,728,266 parameters; the
kuangliu/pytorch-cifar VGG('VGG16')) on CIFAR-10: SGD + Nesterov, cosine, 60 epochs.

Run (offline, with the JPEG copy of CIFAR-10)::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \
    python -m cnn_jax.train --config configs/cifar10_vgg16.py --workdir runs/cifar10_vgg16

Expected: about 93% test top-1 (kuangliu/pytorch-cifar reports 92.64% for VGG16 after 200
epochs; 60 cosine epochs with random crop + flip typically land at 92-93.5%). Not yet run in
this repository: 0.31 GMACs per image makes an epoch take roughly 20-30 minutes on a 2-core
CPU, so use an accelerator.
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "vgg16_cifar"
  c.batch_size = 128
  c.num_epochs = 60
  c.optim.lr = 0.05
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 1.0
  return c
