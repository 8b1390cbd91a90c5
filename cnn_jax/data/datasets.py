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
  """Static facts of a dataset. ``tfds_name`` is ``None`` for folder-only datasets."""
  num_classes: int
  image_shape: tuple[int, int, int]
  train_split: str = "train"
  test_split: str = "test"
  tfds_name: str | None = None


# Grep here for every dataset name the configs may use (config key data.name).
DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(10, (32, 32, 3), "train", "test", tfds_name="cifar10"),
    "cifar100": DatasetInfo(100, (32, 32, 3), "train", "test", tfds_name="cifar100"),
    "tiny_imagenet_10": DatasetInfo(10, (64, 64, 3), "train", "val"),
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

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


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
    te = tfds_source.load_split(info.tfds_name, info.test_split)
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
