"""Any family's CIFAR-10 recipe on Tiny-ImageNet-10 (10 ImageNet classes at 64x64).

``configs/tiny_imagenet10.py:<family>`` takes ``configs/cifar10_<family>.py`` (the family's
model and recipe) and switches the data to ``tiny_imagenet_10``: 5,000 training images
(500 per class) and 500 validation images used as the test split, 64x64 RGB, read offline
from the image folder in ``$CNN_JAX_TINY_IMAGENET10_DIR`` (or ``--config.data.dir``); the
random crop pads 8 pixels (the same eighth of the side as CIFAR's 4 of 32). The models are
the CIFAR members of each family, run at 64x64 (their global pooling, patch grids and
token counts follow the input size). Families: cnn, resnet20, preact_resnet18,
resnet20_dilated, convnextv2_atto, mobilenet_v2, mixer, vit_tiny, mlp, vgg16, small_cnn.

Run (offline)::

  CNN_JAX_TINY_IMAGENET10_DIR=../shared/data/tiny-imagenet-10 \\
    python -m cnn_jax.train --config configs/tiny_imagenet10.py:resnet20 \\
    --workdir runs/tin10_resnet20

Expected: no full-schedule run logged yet; the equal-budget runs (10 epochs) are
``experiments/tiny_imagenet10`` (table 5).
"""

import os
import pathlib

from cnn_jax.config import load_config_file


def get_config(family: str = "resnet20"):
  path = pathlib.Path(__file__).parent / f"cifar10_{family}.py"
  if not path.is_file():
    known = sorted(p.stem.removeprefix("cifar10_")
                   for p in pathlib.Path(__file__).parent.glob("cifar10_*.py"))
    raise ValueError(f"configs/tiny_imagenet10.py: no family {family!r} (no {path.name}); "
                     f"known: {known}")
  c = load_config_file(str(path))
  c.data.name = "tiny_imagenet_10"
  c.data.dir = os.environ.get("CNN_JAX_TINY_IMAGENET10_DIR", "")
  c.data.crop_pad = 8
  return c
