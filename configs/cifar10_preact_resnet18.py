"""Pre-activation ResNet-18 (``preact_resnet18``, 11,171,146 parameters; kuangliu/
pytorch-cifar's PreActResNet18) on CIFAR-10: SGD + Nesterov, cosine, 60 epochs.

Run (offline, with the JPEG copy of CIFAR-10)::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \
    python -m cnn_jax.train --config configs/cifar10_preact_resnet18.py \
    --workdir runs/cifar10_preact_resnet18

Expected: about 94.5-95% test top-1 (kuangliu/pytorch-cifar reports 95.11% after 200
epochs; 60 cosine epochs typically reach ~94.5%). Not yet run in this repository: at 0.56
GMACs per image it needs an accelerator (hours per epoch on a 2-core CPU).
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "preact_resnet18"
  c.batch_size = 128
  c.num_epochs = 60
  c.optim.lr = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 1.0
  return c
