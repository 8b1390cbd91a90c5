"""The runs the analysis figures of issue #25 read (items 1-4).

    python -m experiments.visualize_resnet20.run [--status] [--only NAME ...] [--dry-run]

``resnet20`` is table 3's CIFAR-10 ResNet-20 (``experiments/resnet_depth/runs/resnet20``:
random crop with 4 pixels of padding + horizontal flip, 10 epochs), trained once and read
here. ``resnet20_nocrop`` is the same config, budget and seed with the random crop switched
off (``data.crop_pad=0``; the flip stays), so the shift test compares a network that saw
translated images in training with one that did not.
"""

import dataclasses
import pathlib
import sys

from cnn_jax import sweep
from experiments.resnet_depth import run as table3

CROP = dataclasses.replace(next(r for r in table3.RUNS if r.name == "resnet20"),
                           home="experiments/resnet_depth")
NOCROP = sweep.Run("resnet20_nocrop", CROP.config, {**CROP.overrides, "data.crop_pad": 0})
RUNS = [CROP, NOCROP]

if __name__ == "__main__":
  sys.exit(sweep.main(RUNS, pathlib.Path(__file__).parent))
