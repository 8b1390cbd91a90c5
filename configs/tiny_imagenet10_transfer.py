"""CIFAR-10 -> Tiny-ImageNet-10 transfer with ResNet-20 (issue #25 item 5).

``configs/tiny_imagenet10_transfer.py:<mode>`` is ``configs/tiny_imagenet10.py:resnet20``
(10 ImageNet classes at 64x64, the CIFAR-10 ResNet-20 recipe: SGD + Nesterov, peak lr 0.1,
1 warm-up epoch, cosine, weight decay 1e-3) at the equal budget of ``experiments/budget.py``
(10 epochs), started from the newest checkpoint of a CIFAR-10 ResNet-20 run
(``configs/cifar10_resnet20.py``: shortcut option A, the default; a source with another
architecture is refused naming the first parameter that differs). The source workdir is
``$CNN_JAX_TRANSFER_SOURCE`` or ``--config.init_from``. ``<mode>``:

* ``scratch``: no source, random initialisation: the baseline.
* ``linear_probe``: only a new ``Dense_0`` trains; the CIFAR-10 backbone is frozen and runs in
  inference mode (its BatchNorm normalises with CIFAR-10's running statistics, kept).
* ``finetune``: every parameter trains from the CIFAR-10 weights, with a new ``Dense_0``.
* ``progressive``: a new ``Dense_0`` first, then one more stage every half epoch, top down
  (``BasicBlock_8`` from epoch 0.5, ``BasicBlock_7`` from epoch 1, ... ``BasicBlock_0``
  from 4.5, ``BatchNorm_0`` from 5, the stem ``Conv_0`` from 5.5): everything trains for the
  last 4.5 epochs.

Both datasets have 10 classes, so the classifier has the same shapes in both and would be
restored; ``transfer.head = ('Dense_0',)`` re-initialises it by name, because the classes
differ. Every mode keeps the scratch recipe, so that only the initialisation and what trains
differ between the four runs; a lower fine-tuning rate is an override
(``--config.optim.lr=0.01``). See docs/training.md, "Transfer learning".

Run (offline; a source with a checkpoint, e.g. the 10-epoch ResNet-20 of
``experiments/resnet_depth/runs/resnet20`` on the machine that trained it)::

  CNN_JAX_TINY_IMAGENET10_DIR=../shared/data/tiny-imagenet-10 \\
  CNN_JAX_TRANSFER_SOURCE=experiments/resnet_depth/runs/resnet20 \\
    python -m cnn_jax.train --config configs/tiny_imagenet10_transfer.py:finetune \\
    --workdir runs/tin10_resnet20_finetune

Expected: no run logged yet.
"""

import os
import pathlib

from cnn_jax.config import load_config_file

MODES = ("scratch", "linear_probe", "finetune", "progressive")


def get_config(mode: str = "scratch"):
  if mode not in MODES:
    raise ValueError(f"configs/tiny_imagenet10_transfer.py: no mode {mode!r}; "
                     f"expected one of {MODES}")
  c = load_config_file(f"{pathlib.Path(__file__).parent / 'tiny_imagenet10.py'}:resnet20")
  c.num_epochs = 10  # experiments/budget.py: EPOCHS
  c.optim.warmup_epochs = 1.0
  if mode != "scratch":
    c.init_from = os.environ.get("CNN_JAX_TRANSFER_SOURCE", "")
    c.transfer.mode = mode
    c.transfer.head = ("Dense_0",)
    c.transfer.unfreeze_every_epochs = 0.5
  return c
