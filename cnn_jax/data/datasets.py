"""The dataset registry and the one loader the trainer calls.

A dataset is whole splits in host memory as uint8 NHWC images and int32 labels, plus the
per-channel mean/std of its training split. That fits every dataset this project trains
on (CIFAR-10: 150 MB; the ImageNet subsets at 64x64) and makes the input pipeline one
index gather per step.
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib

import numpy as np

from cnn_jax.data import image_folder, tfds_source
from cnn_jax.data.image_folder import DataError


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts of a dataset. ``tfds_name`` is ``None`` for folder-only datasets.

  Attributes:
    num_classes: class count.
    image_shape: ``(H, W, C)`` of the stored images (fixed-size datasets), or of the model
      input by default for datasets of any image size (``variable_size``).
    train_split, test_split: split folder names of the image folder (and TFDS split names
      unless ``tfds_test_split`` is set).
    tfds_name: TFDS name, ``None`` for folder-only datasets.
    tfds_test_split: TFDS name of the test split when it differs (``'validation'``).
    num_examples: ``(train, test)`` counts of the TFDS splits, for the loader choice
      (``data.loader = 'auto'``) before anything is read; ``None`` when unknown.
    mean, std: published per-channel statistics in 0-255 units, used instead of a pass over
      the training images (ImageNet's); ``None``: computed from the training images.
    variable_size: images come in any size (ImageNet): only ``data.augment = 'inception'``
      (which crops to ``image_shape``) can read them.
  """
  num_classes: int
  image_shape: tuple[int, int, int]
  train_split: str = "train"
  test_split: str = "test"
  tfds_name: str | None = None
  tfds_test_split: str | None = None
  num_examples: tuple[int, int] | None = None
  mean: tuple[float, float, float] | None = None
  std: tuple[float, float, float] | None = None
  variable_size: bool = False


# The ImageNet statistics every reference pipeline uses (torchvision, timm, the Flax
# ImageNet example's MEAN_RGB / STDDEV_RGB), 0-255 units.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# Grep here for every dataset name the configs may use (config key data.name).
DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(10, (32, 32, 3), "train", "test", tfds_name="cifar10",
                           num_examples=(50_000, 10_000)),
    "cifar100": DatasetInfo(100, (32, 32, 3), "train", "test", tfds_name="cifar100",
                            num_examples=(50_000, 10_000)),
    "tiny_imagenet_10": DatasetInfo(10, (64, 64, 3), "train", "val"),
    # ILSVRC-2012 (Russakovsky et al. 2015): TFDS 'imagenet2012' (manual download) or a
    # folder <dir>/{train,val}/<wnid>/*.JPEG.
    "imagenet2012": DatasetInfo(1000, (224, 224, 3), "train", "val", tfds_name="imagenet2012",
                                tfds_test_split="validation",
                                num_examples=(1_281_167, 50_000), mean=IMAGENET_MEAN,
                                std=IMAGENET_STD, variable_size=True),
    # Imagenette (fast.ai): 10 easy ImageNet classes; TFDS 'imagenette' or a folder.
    "imagenette": DatasetInfo(10, (224, 224, 3), "train", "val", tfds_name="imagenette",
                              tfds_test_split="validation", num_examples=(9_469, 3_925),
                              mean=IMAGENET_MEAN, std=IMAGENET_STD, variable_size=True),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test splits in host memory.

  Attributes:
    train_images, test_images: ``(N, H, W, C)`` uint8.
    train_labels, test_labels: ``(N,)`` int32 in ``[0, num_classes)``.
    class_names: label order.
    mean, std: ``(C,)`` float32 per-channel statistics of the training images, 0-255 units.
    source: where the data came from (folder path or ``tfds:<name>``), for the logs.
    report: ``{'train': ..., 'test': ...}``, what an image folder's load skipped, resized
      or converted to RGB (:func:`cnn_jax.data.image_folder.load_split`); ``{}`` for TFDS.
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]
  mean: np.ndarray
  std: np.ndarray
  source: str
  report: dict = dataclasses.field(default_factory=dict)

  loader = "memory"

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_train(self) -> int:
    """Training examples."""
    return len(self.train_labels)

  @property
  def num_test(self) -> int:
    """Test examples."""
    return len(self.test_labels)

  @property
  def input_shape(self) -> tuple[int, int, int]:
    """``(H, W, C)`` of one model input."""
    return tuple(self.train_images.shape[1:])


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std (population) of uint8 ``(N, H, W, C)``, float64 accumulation."""
  c = images.shape[-1]
  s = np.zeros(c)
  s2 = np.zeros(c)
  for i in range(0, len(images), chunk):
    x = images[i:i + chunk].reshape(-1, c).astype(np.float64)
    s += x.sum(0)
    s2 += (x * x).sum(0)
  n = images.size // c
  mean = s / n
  return mean.astype(np.float32), np.sqrt(s2 / n - mean * mean).astype(np.float32)


def _take(images: np.ndarray, labels: np.ndarray, limit: int):
  """A class-balanced subset of ``limit`` examples (0 = all), for quick runs and tests.

  Examples are taken round-robin over classes (rank within class first, then label), so a
  small slice still has every class; the chosen examples keep their original order.
  """
  if not limit or limit >= len(labels):
    return images, labels
  rank_in_class = np.empty(len(labels), np.int64)
  for y in np.unique(labels):
    idx = np.flatnonzero(labels == y)
    rank_in_class[idx] = np.arange(len(idx))
  order = np.sort(np.lexsort((labels, rank_in_class))[:limit])
  return images[order], labels[order]


def load(data_config) -> Dataset:
  """Loads the dataset described by config section ``data``.

  Keys used: ``name`` (a key of :data:`DATASETS`), ``dir`` (local image folder; when set,
  TFDS and the network are never touched), ``cache_dir`` (decoded-image cache; '' for the
  default), ``num_train``/``num_test`` (0 = all; else a class-balanced prefix, for tests),
  ``skip_corrupt`` and ``resize`` (a folder's undecodable files skipped, images of another
  size than the dataset's resized, instead of refused; both default False).

  Raises:
    KeyError: unknown ``data.name`` (lists the known names).
    DataError: folder problems (see :mod:`cnn_jax.data.image_folder`), or a folder whose
      class count or image shape does not match the named dataset.
    RuntimeError: TFDS could not load the dataset (e.g. offline without ``data.dir``).
  """
  name = data_config.name
  if name not in DATASETS:
    close = difflib.get_close_matches(name, list(DATASETS), n=3, cutoff=0.4)
    hint = f" Did you mean {close}?" if close else ""
    raise KeyError(f"unknown dataset {name!r} (config key data.name); known: "
                   f"{sorted(DATASETS)}.{hint}")
  info = DATASETS[name]
  if info.variable_size:
    raise DataError(f"dataset {name!r} has images of many sizes, which the in-memory loader "
                    f"cannot hold: set config keys data.loader = 'grain' and data.augment = "
                    f"'inception'")
  if data_config.dir:
    root = pathlib.Path(data_config.dir).expanduser()
    classes = image_folder.class_names(root, info.train_split)
    if len(classes) != info.num_classes:
      raise DataError(f"data dir {str(root)!r} has {len(classes)} classes, dataset {name!r} "
                      f"has {info.num_classes}")
    cache = data_config.get("cache_dir") or None
    options = dict(image_size=info.image_shape[:2], resize=data_config.get("resize", False),
                   skip_corrupt=data_config.get("skip_corrupt", False))
    report = {"train": {}, "test": {}}
    tr = image_folder.load_split(root, info.train_split, classes, cache, **options,
                                 report=report["train"])
    te = image_folder.load_split(root, info.test_split, classes, cache, **options,
                                 report=report["test"])
    source = str(root.resolve())
  else:
    if info.tfds_name is None:
      raise DataError(f"dataset {name!r} has no TFDS source: set config key data.dir to its "
                      f"image folder")
    tr = tfds_source.load_split(info.tfds_name, info.train_split)
    te = tfds_source.load_split(info.tfds_name, info.tfds_test_split or info.test_split)
    classes = [str(i) for i in range(info.num_classes)]
    source, report = f"tfds:{info.tfds_name}", {}
  for split, (x, _) in (("train", tr), ("test", te)):
    if x.shape[1:] != info.image_shape:
      raise DataError(f"dataset {name!r} {split} images have shape {x.shape[1:]}, "
                      f"expected {info.image_shape}")
  mean, std = channel_stats(tr[0])
  train_images, train_labels = _take(*tr, data_config.get("num_train", 0))
  test_images, test_labels = _take(*te, data_config.get("num_test", 0))
  return Dataset(train_images, train_labels, test_images, test_labels, tuple(classes),
                 mean, std, source, report)
