"""MobileNetV2 for CIFAR-10 (``mobilenet_v2_cifar``, 2,236,682 parameters, 88.0 M MACs per
32x32 image): SGD + Nesterov, lr 0.1, cosine, weight decay 5e-4, 60 epochs.

Run (offline, with the JPEG copy of CIFAR-10)::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \
    python -m cnn_jax.train --config configs/cifar10_mobilenet_v2.py \
    --workdir runs/cifar10_mobilenet_v2

Expected: about 93-94% test top-1 (kuangliu/pytorch-cifar reports 94.43% for its
MobileNetV2 after 200 cosine epochs with this optimizer; 60 epochs typically land ~1 point
lower). Not yet run to the end in this repository: on a 2-core CPU it trains at 60 images/s
with the tap path for depthwise convs (~14 min per epoch, ~14 h for 60 epochs), so it wants
an accelerator. Logged: a 1-epoch schedule (``--config.num_epochs=1
--config.optim.warmup_epochs=0.1``) reached 56.95% (experiments/cifar10_mobilenet_v2_1ep/).

Why these settings: weight decay 5e-4 rather than the paper's ImageNet 4e-5 (RMSProp)
because CIFAR-10 has 50k images for a 2.2M-parameter network, the overfitting regime where
the CIFAR recipes (kuangliu, He et al.'s 1e-4..5e-4) use strong L2; it also decays the
(few) depthwise kernels, which Howard et al. advise against on ImageNet but which the 94%
CIFAR recipe does too. lr 0.1 at batch 128 with one warm-up epoch is the standard SGD
CIFAR schedule (the BN after every conv keeps it stable); the torchvision head dropout
(0.2) stays on.
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "mobilenet_v2_cifar"
  c.batch_size = 128
  c.num_epochs = 60
  c.optim.lr = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 1.0
  return c
