"""Data: image folders and TFDS as uint8 NHWC arrays, batching, on-device augmentation."""

from cnn_jax.data.datasets import DATASETS, Dataset, DatasetInfo, load
from cnn_jax.data.image_folder import DataError

__all__ = ["DATASETS", "Dataset", "DatasetInfo", "DataError", "load"]
