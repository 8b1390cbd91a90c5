"""Table 5, the same families on an ImageNet subset (Tiny-ImageNet-10, 64x64): the runs.

    python -m experiments.tiny_imagenet10.run [--status] [--only NAME ...] [--dry-run]

Each run of ``experiments/cifar10_families`` again, on Tiny-ImageNet-10
(``configs/tiny_imagenet10.py:<family>``: the family's CIFAR-10 recipe with the data
switched; 5,000 training and 500 validation images, read from
``../shared/data/tiny-imagenet-10``), at the same equal budget of
``experiments/budget.py`` (10 epochs: 390 steps at batch 128). Per image, 64x64 costs
about 4x the MACs of 32x32; ViT and MLP-Mixer see 256 patch tokens instead of 64.
"""

import pathlib
import sys

from cnn_jax import sweep
from experiments.cifar10_families import run as families

# Family config of each table-2 run: configs/cifar10_<family>.py.
_FAMILY_CONFIG = {"mlp": "mlp", "cifar10_cnn": "cnn", "resnet20": "resnet20",
                  "preact_resnet20": "preact_resnet18", "resnet20_dilated": "resnet20_dilated",
                  "convnextv2_atto_cifar": "convnextv2_atto", "resnet56": "resnet20",
                  "mobilenet_v2_cifar": "mobilenet_v2", "mixer_tiny_patch4_cifar": "mixer",
                  "vit_tiny_patch4_cifar": "vit_tiny", "vgg16_cifar": "vgg16"}
RUNS = [sweep.Run(r.name, f"configs/tiny_imagenet10.py:{_FAMILY_CONFIG[r.name]}",
                  r.overrides, data="tiny-imagenet-10") for r in families.RUNS]
FAMILY = families.FAMILY

if __name__ == "__main__":
  sys.exit(sweep.main(RUNS, pathlib.Path(__file__).parent))
