"""Table 4, CNN vs MLP vs ViT vs MLP-Mixer at 10% and 100% of the CIFAR-10 training set.

    python -m experiments.data_efficiency.run [--status] [--only NAME ...] [--dry-run]

The seed material says CNNs need less data than ViTs because of their inductive bias
(locality, weight sharing, translation equivariance). Each model trains on 100% (the runs
of ``experiments/cifar10_families``, 10 epochs = 3,900 steps at batch 128) and on a
class-balanced 10% (``data.num_train=5000``: 500 images per class) for the same number of
steps: 100 epochs of 39 steps, with the warm-up scaled to the same 390 steps. The 10% runs
evaluate every 10 epochs (evaluation does not change training). Same test set (10,000).
"""

import pathlib
import sys

from cnn_jax import sweep
from experiments import budget
from experiments.cifar10_families import run as families

MODELS = ("resnet20", "mlp", "vit_tiny_patch4_cifar", "mixer_tiny_patch4_cifar")
FRACTION = 0.1
_FULL = {r.name: r for r in families.RUNS}
_STEPS_SCALE = round(1 / FRACTION)  # epochs (and warm-up epochs) for the same steps


def _subset(r: sweep.Run) -> sweep.Run:
  over = {**r.overrides, "data.num_train": round(50_000 * FRACTION),
          "num_epochs": budget.EPOCHS * _STEPS_SCALE,
          "optim.warmup_epochs": budget.OVERRIDES["optim.warmup_epochs"] * _STEPS_SCALE,
          "eval_every_epochs": _STEPS_SCALE}
  return sweep.Run(f"{r.name}_10pct", r.config, over)


def _full(r: sweep.Run) -> sweep.Run:
  home = r.home or "experiments/cifar10_families"
  return sweep.Run(r.name, r.config, r.overrides, home=home)


RUNS = [_full(_FULL[m]) for m in MODELS] + [_subset(_FULL[m]) for m in MODELS]

if __name__ == "__main__":
  sys.exit(sweep.main(RUNS, pathlib.Path(__file__).parent))
