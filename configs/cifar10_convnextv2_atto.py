"""ConvNeXt V2-Atto (Woo et al. 2023) on CIFAR-10: ``convnextv2_atto_cifar`` (3,389,170 params;
2x2 stem patch so stage 1 runs at 16x16), AdamW + cosine, 100 epochs.

Run (offline, with the JPEG copy of CIFAR-10)::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \
    python -m cnn_jax.train --config configs/cifar10_convnextv2_atto.py \
    --workdir runs/convnextv2_atto

Recipe: the ConvNeXt training recipe scaled to CIFAR-10 and batch 128 (AdamW, lr 2e-3,
weight decay 0.05 on conv/linear kernels only, 2 warm-up epochs then cosine, label
smoothing 0.1, stochastic depth 0.1, random crop + flip; no Mixup/CutMix/RandAugment, which
this trainer does not implement). ``--config.model.kwargs.stem_patch=1`` keeps 32x32 in
stage 1: 4x the compute, usually somewhat more accurate.

Expected (estimate, the full schedule is not yet a logged run): about 88-91% test top-1
after 100 epochs; without strong augmentation ConvNeXt-style nets on CIFAR-10 stay below a
ResNet-18 (~95%). Logged: a 3-epoch schedule (``--config.num_epochs=3
--config.optim.warmup_epochs=0.5 --config.model.kwargs.drop_path_rate=0.0``) reached 58.67%
at 161 train images/s on a 2-core CPU, ~5.3 min per epoch
(experiments/cifar10_convnextv2_atto_3ep/).
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "convnextv2_atto_cifar"
  c.model.kwargs.drop_path_rate = 0.1
  c.batch_size = 128
  c.num_epochs = 100
  c.optim.name = "adamw"
  c.optim.lr = 2e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.05
  c.optim.warmup_epochs = 2.0
  c.optim.schedule = "cosine"
  c.optim.min_lr = 1e-6
  c.label_smoothing = 0.1
  return c
