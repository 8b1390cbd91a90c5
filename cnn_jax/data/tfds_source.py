"""TensorFlow Datasets source: the whole split as NumPy arrays (for CIFAR-size data).

TFDS downloads and prepares the dataset on first use (needs internet) into
``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``. TensorFlow is imported lazily and kept
off any GPU/TPU, so it never competes with JAX for accelerator memory.
"""

from __future__ import annotations

import numpy as np


def load_split(tfds_name: str, split: str,
               data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Returns ``(images uint8 (N, H, W, C), labels int32 (N,))`` for a TFDS split.

  Raises:
    RuntimeError: the dataset cannot be downloaded or prepared (e.g. no network); the
      message says how to point ``data.dir`` at a local image folder instead.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")
  try:
    ds = tfds.load(tfds_name, split=split, batch_size=-1, as_supervised=True,
                   data_dir=data_dir)
  except Exception as e:  # TFDS raises many types for "could not download/prepare".
    raise RuntimeError(
        f"TFDS could not load {tfds_name!r} split {split!r} ({type(e).__name__}: {e}). "
        f"Offline? Point config key data.dir (or $CNN_JAX_CIFAR10_DIR for CIFAR-10) at a "
        f"local image folder <dir>/{{train,test}}/<class>/*.") from e
  images, labels = tfds.as_numpy(ds)
  return np.asarray(images, np.uint8), np.asarray(labels, np.int32)
