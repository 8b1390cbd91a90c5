"""Model zoo: ``create(name, num_classes=..., **kw)``, ``list_models()``, ``count_params``.

Importing this package imports every architecture module below so that each registers
its names; add a new family by adding its module to this list.
"""

from cnn_jax.models.registry import count_params, create, list_models, register

# Architecture modules (each registers its variants on import).
from cnn_jax.models import cifar_cnn  # noqa: F401
from cnn_jax.models import resnet_cifar  # noqa: F401
from cnn_jax.models import lenet  # noqa: F401
from cnn_jax.models import alexnet  # noqa: F401
from cnn_jax.models import vgg  # noqa: F401
from cnn_jax.models import googlenet  # noqa: F401
from cnn_jax.models import densenet  # noqa: F401
from cnn_jax.models import resnet  # noqa: F401
from cnn_jax.models import preact_resnet  # noqa: F401
from cnn_jax.models import mobilenet  # noqa: F401
from cnn_jax.models import efficientnet  # noqa: F401
from cnn_jax.models import drn  # noqa: F401
from cnn_jax.models import convnextv2  # noqa: F401
from cnn_jax.models import mixer  # noqa: F401
from cnn_jax.models import mlp  # noqa: F401
from cnn_jax.models import vit  # noqa: F401
from cnn_jax.models import airbench  # noqa: F401

__all__ = ["create", "list_models", "count_params", "register"]
