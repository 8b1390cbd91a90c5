"""A 3072-512-512-10 ReLU MLP on raw pixels (``mlp``, 1,841,162 params) on CIFAR-10:
the no-inductive-bias point of the CNN / MLP / ViT / MLP-Mixer comparison. AdamW + cosine,
50 epochs, dropout 0.2.

Run (offline, with the JPEG copy of CIFAR-10)::

  CNN_JAX_CIFAR10_DIR=../shared/data/cifar10-jpeg \
    python -m cnn_jax.train --config configs/cifar10_mlp.py --workdir runs/mlp

Expected (estimate, not yet a logged run): about 55-62% test top-1 (fully connected nets
without convolutions plateau around there on CIFAR-10); it trains in minutes on a CPU.
"""

from cnn_jax.config import base_config


def get_config():
  c = base_config()
  c.model.name = "mlp"
  c.model.kwargs.dropout = 0.2
  c.batch_size = 128
  c.num_epochs = 50
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_epochs = 1.0
  c.optim.schedule = "cosine"
  c.label_smoothing = 0.0
  return c
