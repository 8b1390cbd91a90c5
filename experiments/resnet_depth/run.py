"""Table 3, ResNet depth on CIFAR-10 (He et al. 2015, Table 6): the runs.

    python -m experiments.resnet_depth.run [--status] [--only resnet32] [--dry-run]

CIFAR ResNets of depth 6n + 2 (option A shortcuts), each trained with
``configs/cifar10_resnet20.py`` and only ``model.name`` changed, for the equal budget of
``experiments/budget.py``. Runs missing ones in order; finished ones are skipped, killed
ones resumed (``cnn_jax.sweep``).
"""

import pathlib
import sys

from cnn_jax import sweep
from experiments import budget

DEPTHS = (20, 32, 44, 56, 110)
RUNS = [sweep.Run(f"resnet{d}", "configs/cifar10_resnet20.py",
                  {"model.name": f"resnet{d}", **budget.OVERRIDES})
        for d in DEPTHS]

if __name__ == "__main__":
  sys.exit(sweep.main(RUNS, pathlib.Path(__file__).parent))
