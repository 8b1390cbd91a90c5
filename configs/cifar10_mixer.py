"""MLP-Mixer with 4x4 patches (Tolstikhin et al. 2021) on CIFAR-10:
``mixer_tiny_patch4_cifar`` (C 256, D_S 128, D_C 1024, 8 blocks; 4,360,970 params),
AdamW + cosine, 200 epochs.

Run (offline, with the JPEG copy of CIFAR-10)::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \
    python -m cnn_jax.train --config configs/cifar10_mixer.py --workdir runs/mixer_tiny

``--config.model.name=mixer_s4_cifar`` trains the Mixer-S width (17,110,026 params) instead.
Recipe as configs/cifar10_vit_tiny.py (AdamW lr 1e-3 for batch 128, weight decay 0.05,
5 warm-up epochs, cosine, label smoothing 0.1, stochastic depth 0.1, clipping at norm 1).

Expected (estimate, not yet a logged run): about 75-82% test top-1 after 200 epochs with
crop + flip only: below the ViT and well below the CNNs on CIFAR-10 from scratch.
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "mixer_tiny_patch4_cifar"
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
