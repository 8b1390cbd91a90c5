"""Table 2, CIFAR-10 from scratch, one recipe, equal budget: the runs.

    python -m experiments.cifar10_families.run [--status] [--only NAME ...] [--dry-run]

A small member of every family in the model zoo, each trained with its family's config
file (SGD + Nesterov for the CNNs, AdamW for ConvNeXt V2, ViT, MLP-Mixer and the MLP)
and the overrides of ``experiments/budget.py`` (10 epochs, 1 warm-up epoch); batch 128,
random crop (4 pixels, reflect) + flip and the cosine schedule are the configs' own and
the same everywhere. ResNet-20 and ResNet-56 are the runs of ``experiments/resnet_depth``
(trained once, read by both tables). Listed cheapest first (measured train images/s on a
2-core AMD EPYC with AVX-512, 2026-12-03, batch 128: mlp 8,500; cifar10_cnn 350;
resnet20 330; resnet20_dilated 205; convnextv2_atto_cifar 160;
resnet56 113; mobilenet_v2_cifar 65; mixer_tiny 50; vit_tiny 48; vgg16_cifar 16).
"""

import pathlib
import sys

from cnn_jax import sweep
from experiments import budget
from experiments.resnet_depth import run as resnet_depth

_B = budget.OVERRIDES
_DEPTH = {r.name: r for r in resnet_depth.RUNS}
RUNS = [
    sweep.Run("mlp", "configs/cifar10_mlp.py", dict(_B)),
    sweep.Run("cifar10_cnn", "configs/cifar10_cnn.py", dict(_B)),
    sweep.Run("resnet20", _DEPTH["resnet20"].config, _DEPTH["resnet20"].overrides,
              home="experiments/resnet_depth"),
    sweep.Run("preact_resnet20", "configs/cifar10_preact_resnet18.py",
              {"model.name": "preact_resnet20", **_B}),
    sweep.Run("resnet20_dilated", "configs/cifar10_resnet20_dilated.py", dict(_B)),
    sweep.Run("convnextv2_atto_cifar", "configs/cifar10_convnextv2_atto.py", dict(_B)),
    sweep.Run("resnet56", _DEPTH["resnet56"].config, _DEPTH["resnet56"].overrides,
              home="experiments/resnet_depth"),
    sweep.Run("mobilenet_v2_cifar", "configs/cifar10_mobilenet_v2.py", dict(_B)),
    sweep.Run("mixer_tiny_patch4_cifar", "configs/cifar10_mixer.py", dict(_B)),
    sweep.Run("vit_tiny_patch4_cifar", "configs/cifar10_vit_tiny.py", dict(_B)),
    sweep.Run("vgg16_cifar", "configs/cifar10_vgg16.py", dict(_B)),
]
# The family each run stands for, in the table's first column.
FAMILY = {
    "mlp": "MLP (no convolution)", "cifar10_cnn": "plain CNN (the seed's CIFAR10Net)",
    "resnet20": "residual", "preact_resnet20": "pre-activation residual",
    "resnet20_dilated": "dilated residual", "convnextv2_atto_cifar": "ConvNeXt V2 (GRN)",
    "resnet56": "residual", "mobilenet_v2_cifar": "depthwise (inverted residual)",
    "mixer_tiny_patch4_cifar": "MLP-Mixer", "vit_tiny_patch4_cifar": "ViT",
    "vgg16_cifar": "plain deep CNN (VGG)",
}

if __name__ == "__main__":
  sys.exit(sweep.main(RUNS, pathlib.Path(__file__).parent))
