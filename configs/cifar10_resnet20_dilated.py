"""Dilated ResNet-20 (``resnet20_dilated``, 269,722 parameters, 79.5 M MACs) on CIFAR-10:
the recipe of ``configs/cifar10_resnet20.py`` (SGD + Nesterov, lr 0.1, cosine, weight
decay 5e-4, 20 epochs) so the two rows of a comparison table differ only in the model.

The third stage keeps stride 1 and uses dilation 2 (Yu et al. 2017's DRN recipe on the
CIFAR ResNet), so the classifier pools a 16x16 instead of an 8x8 map: same parameters,
about twice the MACs of ResNet-20 (40.55 M).

Run (offline, with the JPEG copy of CIFAR-10)::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \
    python -m cnn_jax.train --config configs/cifar10_resnet20_dilated.py \
    --workdir runs/resnet20_dilated

Expected: about ResNet-20's >= 88% after 20 epochs, within roughly +-0.5 point (DRN-A-18
gains about 2 points top-1 over ResNet-18 on ImageNet, Yu et al. Table 1; on 32x32 images
the extra resolution matters less). Not yet run in this repository; at 2x the MACs it
takes about twice ResNet-20's wall time on the 2-core CPU.
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "resnet20_dilated"
  c.batch_size = 128
  c.num_epochs = 20
  c.optim.lr = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 1.0
  return c
