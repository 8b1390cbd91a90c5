"""Transfer learning, CIFAR-10 -> Tiny-ImageNet-10 with ResNet-20 (issue #25 item 5): the runs.

    python -m experiments.transfer_tin10.run [--status] [--only NAME ...] [--dry-run]

Four ways to train ResNet-20 on Tiny-ImageNet-10 (64x64, 10 ImageNet classes, 5,000 train /
500 val images) at the equal budget of ``experiments/budget.py`` (10 epochs, batch 128, the
CIFAR-10 ResNet-20 recipe): from scratch (the ResNet-20 run of table 5,
``experiments/tiny_imagenet10``, trained once), and from the CIFAR-10 ResNet-20 of table 3
(``experiments/resnet_depth/runs/resnet20``: 10 epochs, 83.96% CIFAR-10 test top-1) as a
linear probe, fine-tuned, and with progressive unfreezing
(``configs/tiny_imagenet10_transfer.py:<mode>``; the classifier ``Dense_0`` is
re-initialised in all three).

The source's checkpoint is not committed (checkpoints never are): on a fresh clone, train it
first with ``python -m experiments.resnet_depth.run --only resnet20``.
"""

import pathlib
import sys

import dataclasses

from cnn_jax import sweep
from experiments import budget
from experiments.tiny_imagenet10 import run as table5

SOURCE = "experiments/resnet_depth/runs/resnet20"  # relative to the repository root
MODES = ("linear_probe", "finetune", "progressive")
SCRATCH = dataclasses.replace(next(r for r in table5.RUNS if r.name == "resnet20"),
                              home="experiments/tiny_imagenet10")
RUNS = [SCRATCH] + [sweep.Run(m, f"configs/tiny_imagenet10_transfer.py:{m}",
                              {**budget.OVERRIDES, "init_from": SOURCE}, data="tiny-imagenet-10")
                    for m in MODES]

if __name__ == "__main__":
  sys.exit(sweep.main(RUNS, pathlib.Path(__file__).parent))
