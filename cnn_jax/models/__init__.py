"""Model zoo: ``create(name, num_classes=..., **kw)``, ``list_models()``, ``count_params``.

Importing this package imports every architecture module below so that each registers
its names; add a new family by adding its module to this list.
"""

from cnn_jax.models.registry import count_params, create, list_models, register

# Architecture modules (each registers its variants on import).
from cnn_jax.models import cifar_cnn  # noqa: F401
from cnn_jax.models import resnet_cifar  # noqa: F401

__all__ = ["create", "list_models", "count_params", "register"]
