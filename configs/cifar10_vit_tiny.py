"""ViT-Tiny with 4x4 patches (Dosovitskiy et al. 2021) on CIFAR-10: ``vit_tiny_patch4_cifar``
(5,362,762 params; 64 patch tokens + class token), AdamW + cosine, 200 epochs.

Run (offline, with the JPEG copy of CIFAR-10)::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \
    python -m cnn_jax.train --config configs/cifar10_vit_tiny.py --workdir runs/vit_tiny

Recipe: the DeiT recipe without its strong augmentation (AdamW, lr 1e-3 for batch 128,
weight decay 0.05, 5 warm-up epochs then cosine, label smoothing 0.1, stochastic depth 0.1,
gradient clipping at norm 1, random crop + flip). ViTs lack the convolutional inductive
bias and need long schedules on small data: this is the "ViT" point of the
CNN / MLP / ViT / MLP-Mixer comparison.

Expected (estimate, not yet a logged run): about 80-85% test top-1 after 200 epochs with
crop + flip only (RandAugment/Mixup, not implemented here, add several points).
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "vit_tiny_patch4_cifar"
  c.model.kwargs.drop_path_rate = 0.1
  c.batch_size = 128
  c.num_epochs = 200
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.05
  c.optim.warmup_epochs = 5.0
  c.optim.schedule = "cosine"
  c.optim.min_lr = 1e-6
  c.optim.grad_clip_norm = 1.0
  c.label_smoothing = 0.1
  return c
