"""ResNet-18 (He et al. 2015, the ImageNet model: 7x7/2 stem and max-pool) on Tiny-ImageNet-10
(10 ImageNet classes, 500 training and 50 validation images each, 64x64) through the Grain
streaming loader with ImageNet augmentation, sized for a 2-core CPU.

Recipe: the ImageNet pipeline at 64 pixels: Inception random-resized crop to 64x64 and flip
on the host in one Grain worker process, evaluation on the center 64x64 of the image
resized to 73 (crop fraction 0.875, as 224 of 256). The minimum crop area is 25% instead of
Inception's 8% (a choice for 64-pixel images and a 10-epoch budget, not a published value).
SGD + Nesterov, lr 0.05 for batch 128 (Goyal et al. 2017 linear scaling of 0.1 per 256),
1 warm-up epoch then cosine, weight decay 5e-4, label smoothing 0.1, 10 epochs.

Run (offline)::

  CNN_JAX_TINY_IMAGENET10_DIR=../shared/data/tiny-imagenet-10 \\
    python -m cnn_jax.train --config configs/tiny_imagenet10_resnet18.py \\
    --workdir runs/tin10_resnet18

Expected: 79.40% top-1 on the 500 validation images (80.40% after epoch 9), 14.8 min on a
shared 2-core AMD EPYC (experiments/tiny_imagenet10_resnet18/, one seed).
"""

import os

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "resnet18"
  c.data.name = "tiny_imagenet_10"
  c.data.dir = os.environ.get("CNN_JAX_TINY_IMAGENET10_DIR", "")
  c.data.loader = "grain"
  c.data.augment = "inception"
  c.data.image_size = 64
  c.data.rrc_scale = (0.25, 1.0)
  c.data.rrc_ratio = (3 / 4, 4 / 3)
  c.data.eval_crop_fraction = 0.875
  c.data.num_workers = 1  # 2 cores: one decodes, the other trains
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = 10
  c.optim.name = "sgd"
  c.optim.lr = 0.05
  c.optim.nesterov = True
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "cosine"
  c.optim.warmup_epochs = 1.0
  c.label_smoothing = 0.1
  c.log_every_steps = 10
  return c
