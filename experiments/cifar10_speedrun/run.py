"""The CIFAR-10 speedrun (issue #24, item 3): airbench94's recipe, two seeds.

    python -m experiments.cifar10_speedrun.run [--status] [--only seed0 ...] [--dry-run]

Each run is ``configs/cifar10_speedrun.py`` with only ``seed`` changed, trained by
``python -m cnn_jax.train`` in ``runs/<name>/`` (:mod:`cnn_jax.sweep`: one at a time,
resumable): ``seed<S>`` with XLA's convolutions (2026-12-03, before oneDNN), and
``onednn_seed<S>`` with ``conv_backend = 'onednn'`` (oneDNN's convolutions and BatchNorm,
2026-12-07; needs the ``onednn`` extra), and ``onednn_bf16_e25_seed<S>``: the same in
bfloat16 compute (``dtype``; float32 parameters, optimizer state and loss) for 25 epochs
instead of 10 (2026-12-08: does 2.5x airbench94's training reach 94% on the JPEG copy inside
the 30 minutes that bf16's speed leaves?). Target: >= 94.0% mean test top-1 (flip + translate TTA) over the two seeds in
<= 30 minutes wall clock on the 2-core CPU.
"""

import pathlib
import sys

from cnn_jax import sweep

CONFIG = "configs/cifar10_speedrun.py"
SEEDS = (0, 1)
RUNS = ([sweep.Run(f"seed{s}", CONFIG, {"seed": s}) for s in SEEDS]
        + [sweep.Run(f"onednn_seed{s}", CONFIG, {"seed": s, "conv_backend": "onednn"})
           for s in SEEDS]
        + [sweep.Run(f"onednn_bf16_e25_seed{s}", CONFIG,
                     {"seed": s, "conv_backend": "onednn", "dtype": "bfloat16",
                      "num_epochs": 25}) for s in SEEDS])

if __name__ == "__main__":
  sys.exit(sweep.main(RUNS, pathlib.Path(__file__).parent))
