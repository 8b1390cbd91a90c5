"""The streaming input pipeline on Grain: image folders or TFDS, decoded in worker processes.

For datasets that do not fit host memory (ImageNet subsets at 224x224): nothing is decoded
ahead; each example is read, decoded and augmented when its batch is due, in Grain worker
processes (``grain.IterDataset.mp_prefetch``) or this process's read threads, with a buffer
of ``data.prefetch_batches`` batches per worker. Host memory thus stays flat as the dataset
grows (``benchmarks/data_memory.py``).

The order is the in-memory loader's (:mod:`cnn_jax.data.loader`): epoch ``e`` visits the
examples in ``numpy.random.default_rng([seed, e]).permutation(n)``, global batch ``k`` of
the epoch is positions ``[k B, (k + 1) B)`` of it, process ``p`` of ``P`` reads only rows
``[p B / P, (p + 1) B / P)`` of each batch, and alternating flip mirrors by example index
and epoch. Decoding uses the image folder's own decoder, so on CIFAR-10 both loaders give
byte-identical batches (tests/test_grain_pipeline.py).

The pipeline is a ``grain.MapDataset`` over the run's positions (random access: any step
can be the first), mapped to examples and batched, then an iterator whose state
(``get_state()``, Grain's checkpointable iterator state) is saved with each checkpoint
(:func:`cnn_jax.checkpoint.save`) and set again on resume. Every batch carries its step, so
a state that does not lead to the checkpoint's step is refused rather than trained on.

Sources: an image folder ``<dir>/<split>/<class>/<image>`` (any image size for
``data.augment = 'inception'``), or a TFDS dataset prepared in ArrayRecord format
(``tfds.data_source``, random access; TFDS >= 4.9). Reference: the Grain data-loader
tutorials (grain.readthedocs.io, "Dataset API"), the Flax ImageNet example's input pipeline.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import tempfile
from typing import Iterator

import numpy as np

from cnn_jax.data import augment, image_folder, imagenet_augment, loader
from cnn_jax.data.datasets import DATASETS, DatasetInfo
from cnn_jax.data.image_folder import DataError

# Stream keys of numpy.random.default_rng([seed, key, position]) for the inception crops,
# apart from the epoch permutations ([seed, epoch], epoch < 2**32) and alternating flip's
# first-epoch draw ([seed, 2**32]).
_CROP_STREAM = 1 << 33


def _grain():
  """Imports grain (a dependency; imported here so the in-memory path never pays for it)."""
  import grain  # pylint: disable=g-import-not-at-top
  return grain


def _absl_flags_ready() -> None:
  """Grain's worker processes read its absl flags; outside an absl app (pytest, notebooks)
  they are unparsed and Grain raises, so they are marked parsed with their defaults."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class FolderSource:
  """Random-access source over image files: ``source[i] -> (path str, label int)``.

  Paths are kept as one NumPy bytes array relative to the split folder (about 40 bytes an
  image), not as Python objects, so that the pickled copy each worker receives stays small.
  Implements Grain's ``RandomAccessDataSource`` protocol (``__len__``, ``__getitem__``).
  """

  def __init__(self, split_dir: pathlib.Path, files: list[pathlib.Path], labels: np.ndarray):
    self.split_dir = str(split_dir)
    self.names = np.array([str(f.relative_to(split_dir)).encode() for f in files])
    self.labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int):
    return os.path.join(self.split_dir, self.names[i].decode()), int(self.labels[i])

  def __repr__(self) -> str:
    return f"FolderSource({self.split_dir!r}, {len(self)} images)"


class TfdsSource:
  """Random-access TFDS split (``tfds.data_source``, ArrayRecord files prepared beforehand):
  ``source[i] -> (image uint8 (H, W, 3), label int)``.

  Raises:
    RuntimeError: TFDS cannot open the split as a data source (not prepared, or prepared
      as TFRecord only); names the dataset and what to do.
  """

  def __init__(self, name: str, split: str, data_dir: str | None = None):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      self._src = tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as e:  # TFDS raises many types for "not prepared / wrong format"
      raise RuntimeError(
          f"TFDS could not open {name!r} split {split!r} as a random-access data source "
          f"({type(e).__name__}: {e}). Prepare it in ArrayRecord format (tfds build {name} "
          f"--file_format=array_record), or point config key data.dir at an image folder "
          f"<dir>/{{train,val}}/<class>/*") from e
    self.name, self.split = name, split

  def __len__(self) -> int:
    return len(self._src)

  def __getitem__(self, i: int):
    record = self._src[i]
    return np.asarray(record["image"], np.uint8), int(record["label"])

  def __getstate__(self):  # reopened in each worker: the source holds file handles
    return {"name": self.name, "split": self.split, "data_dir": None}

  def __setstate__(self, state):
    self.__init__(state["name"], state["split"], state["data_dir"])


@dataclasses.dataclass(frozen=True)
class _View:
  """How one example becomes a model input (static, pickled to the workers)."""
  augment: str  # 'pad_crop' | 'inception'
  size: tuple[int, int]  # (H, W) of the output
  resize: bool  # pad_crop: resize other sizes (data.resize) instead of refusing
  scale: tuple[float, float]
  ratio: tuple[float, float]
  crop_fraction: float
  flip: bool  # inception: host flip


def _image(item, view: _View) -> np.ndarray:
  """The uint8 ``(H, W, 3)`` image of a source item (a path is decoded with the image
  folder's decoder). For ``pad_crop`` it must already have the dataset's size (or is
  resized with ``data.resize``).

  Raises:
    DataError: an undecodable file, or (pad_crop) one of another size; names it.
  """
  if not isinstance(item, str):
    return item
  fixed = view.augment == "pad_crop"
  d = image_folder._decode(pathlib.Path(item), view.size if fixed else None,  # pylint: disable=protected-access
                           view.resize and fixed)
  if d.error is not None:
    raise DataError(f"{d.error} (the grain loader cannot skip files: remove it, or use "
                    f"data.loader = 'memory' with data.skip_corrupt = True)")
  if fixed and d.image.shape[:2] != tuple(view.size):
    raise DataError(f"image {item!r} is {d.image.shape[0]}x{d.image.shape[1]} pixels (HxW), "
                    f"expected {view.size[0]}x{view.size[1]}: set config key data.resize = "
                    f"True, or data.augment = 'inception' to crop images of any size")
  return d.image


@dataclasses.dataclass
class _TrainExample:
  """Grain map: local position ``m`` of this process's stream -> one training example
  ``{'image': (H, W, 3) uint8, 'label': int32, 'step': int64}``.

  Position ``m`` is row ``m % b`` of the process's ``b = B / P`` rows of global batch
  ``m // b``; that global position ``g`` is ``(m // b) B + p b + m % b``, in epoch
  ``g // (S B)`` (``S`` steps an epoch) at place ``g mod S B`` of the epoch's permutation.
  """
  source: object
  view: _View
  seed: int
  batch_size: int
  local_batch: int
  process_index: int
  steps_per_epoch: int
  alternating: bool

  def __post_init__(self):
    self._perm = (-1, None)  # the current epoch's permutation, cached per worker
    self._flips0 = None

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ("_perm", "_flips0")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self.__post_init__()

  def _order(self, epoch: int) -> np.ndarray:
    cached_epoch, perm = self._perm
    if cached_epoch != epoch:
      perm = loader.epoch_permutation(self.seed, epoch, len(self.source))  # memory's order
      self._perm = (epoch, perm)
    return perm

  def __call__(self, m: int) -> dict:
    b = self.local_batch
    g = (m // b) * self.batch_size + self.process_index * b + m % b
    step = g // self.batch_size
    epoch, place = divmod(g, self.steps_per_epoch * self.batch_size)
    idx = int(self._order(epoch)[place])
    item, label = self.source[idx]
    image = _image(item, self.view)
    if self.view.augment == "inception":
      rng = np.random.default_rng([self.seed, _CROP_STREAM, g])
      image = imagenet_augment.train_view(image, rng, self.view.size[0], self.view.scale,
                                          self.view.ratio, self.view.flip)
    elif self.alternating:
      if self._flips0 is None:
        self._flips0 = augment.first_epoch_flips(self.seed, len(self.source))
      image = augment.alternating_flip(image[None], self._flips0[idx:idx + 1], epoch)[0]
    return {"image": image, "label": np.int32(label), "step": np.int64(step)}


@dataclasses.dataclass
class _EvalExample:
  """Grain map: local position -> ``{'image', 'label', 'mask'}`` of the test set padded to
  whole global batches of ``batch_size`` (the padding repeats the last example, mask 0)."""
  source: object
  view: _View
  batch_size: int
  local_batch: int
  process_index: int

  def __call__(self, m: int) -> dict:
    b, n = self.local_batch, len(self.source)
    g = (m // b) * self.batch_size + self.process_index * b + m % b
    item, label = self.source[min(g, n - 1)]
    image = _image(item, self.view)
    if self.view.augment == "inception":
      image = imagenet_augment.center_crop(image, self.view.size[0], self.view.crop_fraction)
    return {"image": image, "label": np.int32(label), "mask": np.float32(g < n)}


def _stats_of_files(source: FolderSource, view: _View, cache: pathlib.Path,
                    threads: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std (0-255, float32) of every training image, streamed (bounded
  memory) with exact integer sums, so that they equal
  :func:`cnn_jax.data.datasets.channel_stats` of the decoded array; cached as JSON."""
  if cache.is_file():
    got = json.loads(cache.read_text())
    return np.asarray(got["mean"], np.float32), np.asarray(got["std"], np.float32)
  s, s2, count = np.zeros(3, np.int64), np.zeros(3, np.int64), 0

  def sums(i):
    x = _image(source[i][0], view).reshape(-1, 3).astype(np.int64)
    return x.sum(0), (x * x).sum(0), len(x)

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    # In blocks: Executor.map submits every task at once, holding a future per image.
    for lo in range(0, len(source), 1024):
      for a, a2, k in pool.map(sums, range(lo, min(lo + 1024, len(source)))):
        s, s2, count = s + a, s2 + a2, count + k
  mean = s.astype(np.float64) / count
  std = np.sqrt(s2.astype(np.float64) / count - mean * mean)
  cache.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".json.tmp")
  with os.fdopen(fd, "w") as fh:
    json.dump({"mean": mean.tolist(), "std": std.tolist(), "count": count}, fh)
  os.replace(tmp, cache)
  return mean.astype(np.float32), std.astype(np.float32)


class GrainData:
  """A dataset streamed by Grain; the trainer's view of it (see :mod:`cnn_jax.data.loader`
  for the shared interface with the in-memory loader).

  Attributes:
    class_names, num_classes, num_train, num_test: as :class:`cnn_jax.data.Dataset`.
    input_shape: ``(H, W, C)`` of one model input (``data.image_size`` for inception).
    mean, std: ``(C,)`` float32, 0-255 units: the registry's published values (ImageNet), else
      computed once from the training images and cached beside the decode cache.
    source, report: where the data comes from; ``{}`` (nothing is skipped or resized ahead).
    loader: ``'grain'``.
  """

  loader = "grain"

  def __init__(self, data_config, seed: int):
    self.config, self.seed = data_config, seed
    name = data_config.name
    info: DatasetInfo = DATASETS[name]
    self.info = info
    size = data_config.image_size or info.image_shape[0]
    if data_config.augment == "inception":
      hw = (size, size)
    else:
      if data_config.image_size and data_config.image_size != info.image_shape[0]:
        raise ValueError(f"config key data.image_size = {data_config.image_size} needs "
                         f"data.augment = 'inception'; 'pad_crop' trains at the dataset's "
                         f"{info.image_shape[0]}x{info.image_shape[1]}")
      if info.variable_size:
        raise DataError(f"dataset {name!r} has images of many sizes: set config key "
                        f"data.augment = 'inception'")
      hw = tuple(info.image_shape[:2])
    self.view = _View(data_config.augment, hw, bool(data_config.resize),
                      tuple(data_config.rrc_scale), tuple(data_config.rrc_ratio),
                      float(data_config.eval_crop_fraction),
                      bool(data_config.flip) and data_config.augment == "inception")
    self.input_shape = (*hw, info.image_shape[2])
    self.report = {}
    if data_config.dir:
      root = pathlib.Path(data_config.dir).expanduser()
      classes = image_folder.class_names(root, info.train_split)
      if len(classes) != info.num_classes:
        raise DataError(f"data dir {str(root)!r} has {len(classes)} classes, dataset "
                        f"{name!r} has {info.num_classes}")
      sources = []
      for split in (info.train_split, info.test_split):
        files, labels = image_folder.list_files(root, split, classes)
        sources.append(FolderSource(root / split, files, labels))
      self.train_source, self.test_source = sources
      self.source = str(root.resolve())
      self.class_names = tuple(classes)
    else:
      if info.tfds_name is None:
        raise DataError(f"dataset {name!r} has no TFDS source: set config key data.dir to its "
                        f"image folder")
      self.train_source = TfdsSource(info.tfds_name, info.train_split)
      self.test_source = TfdsSource(info.tfds_name, info.tfds_test_split or info.test_split)
      self.source = f"tfds:{info.tfds_name}"
      self.class_names = tuple(str(i) for i in range(info.num_classes))
    self.train_source = _subset(self.train_source, data_config.get("num_train", 0))
    self.test_source = _subset(self.test_source, data_config.get("num_test", 0))
    self._mean_std = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_train(self) -> int:
    return len(self.train_source)

  @property
  def num_test(self) -> int:
    return len(self.test_source)

  def _stats(self):
    if self._mean_std is None:
      if self.info.mean is not None:
        self._mean_std = (np.asarray(self.info.mean, np.float32),
                          np.asarray(self.info.std, np.float32))
      elif not self.config.dir:
        raise DataError(f"dataset {self.config.name!r} from TFDS has no published mean/std "
                        f"in cnn_jax.data.datasets.DATASETS; stream it from an image folder")
      else:
        # Over all training files (not the num_train subset), as the in-memory loader.
        full = self.train_source.full if isinstance(self.train_source, _Subset) else \
            self.train_source
        cache_dir = (pathlib.Path(self.config.cache_dir) if self.config.get("cache_dir")
                     else image_folder.default_cache_dir())
        files = [pathlib.Path(full.split_dir) / n.decode() for n in full.names]
        key = image_folder._cache_key(files, full.labels)  # pylint: disable=protected-access
        opts = f"-resize{self.view.size[0]}" if self.view.resize else ""
        cache = cache_dir / (f"{pathlib.Path(self.source).name}-{self.info.train_split}-"
                             f"{key}{opts}-stats.json")
        self._mean_std = _stats_of_files(full, self.view, cache,
                                         max(1, self.config.read_threads))
    return self._mean_std

  @property
  def mean(self) -> np.ndarray:
    return self._stats()[0]

  @property
  def std(self) -> np.ndarray:
    return self._stats()[1]

  def workers(self) -> int:
    """Worker processes to decode in: ``data.num_workers``, or for -1 (auto) the CPUs
    less one for the training process, at most 16."""
    w = self.config.num_workers
    return min(16, max(1, (os.cpu_count() or 2) - 1)) if w < 0 else w

  def _iter(self, dataset, workers: int):
    """An iterator over ``dataset`` (a MapDataset of whole batches): ``data.read_threads``
    threads each reading whole batches, with a buffer of ``max(read_threads,
    prefetch_batches)`` batches, in ``workers`` processes when > 0 (each with its own read
    threads, and ``prefetch_batches`` finished batches queued)."""
    grain = _grain()
    threads = self.config.read_threads
    # Grain's read buffer counts elements (here: batches of the batched dataset).
    read = grain.ReadOptions(num_threads=threads,
                             prefetch_buffer_size=threads and max(threads,
                                                                  self.config.prefetch_batches))
    it_ds = dataset.to_iter_dataset(read)
    if workers > 0:
      _absl_flags_ready()
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=workers, per_worker_buffer_size=self.config.prefetch_batches))
    return iter(it_ds)

  def train_iterator(self, *, batch_size: int, steps_per_epoch: int, num_epochs: int,
                     start_step: int, process_index: int, process_count: int,
                     saved: dict | None = None):
    """Grain iterator of this process's rows of global batches ``start_step ...`` to the
    end of training, and the state to checkpoint beside it.

    Args:
      batch_size: global batch ``B`` (divisible by ``process_count``).
      steps_per_epoch, num_epochs: the run's length.
      start_step: the first step to yield.
      process_index, process_count: this process and how many read shards.
      saved: the ``data_state`` of the checkpoint being resumed (:meth:`state`'s dict), or
        ``None``. Used when it was written by this pipeline with as many workers; else the
        pipeline starts at ``start_step`` directly (random access).

    Returns:
      ``(iterator, start_batch, workers)``: the iterator yields ``{'image': (b, H, W, 3)
      uint8, 'label': (b,) int32, 'step': (b,) int64}`` with ``b = B / P``.
    """
    grain = _grain()
    workers = self.workers()
    start_batch = start_step
    use_saved = (saved is not None and saved.get("loader") == "grain"
                 and saved.get("num_workers") == workers
                 and saved.get("local_batch") == batch_size // process_count)
    if use_saved:
      start_batch = int(saved["start_batch"])
    b = batch_size // process_count
    fn = _TrainExample(self.train_source, self.view, self.seed, batch_size, b, process_index,
                       steps_per_epoch,
                       bool(self.config.flip) and self.config.flip_mode == "alternating"
                       and self.view.augment == "pad_crop")
    ds = (grain.MapDataset.range(start_batch * b, steps_per_epoch * num_epochs * b)
          .map(fn).batch(b, drop_remainder=True))
    it = self._iter(ds, workers)
    if use_saved:
      it.set_state(saved["grain"])
    return it, start_batch, workers

  def eval_iterator(self, batch_size: int, process_index: int,
                    process_count: int) -> Iterator[dict]:
    """This process's rows of the test set in global batches of ``batch_size``, padded:
    yields ``{'image': (b, H, W, 3) uint8, 'label': (b,) int32, 'mask': (b,) float32}``.
    Read threads only (no worker processes: an evaluation is one short pass)."""
    grain = _grain()
    b = batch_size // process_count
    n_batches = -(-self.num_test // batch_size)
    fn = _EvalExample(self.test_source, self.view, batch_size, b, process_index)
    ds = grain.MapDataset.range(n_batches * b).map(fn).batch(b, drop_remainder=True)
    return self._iter(ds, 0)


class _Subset:
  """The first ``limit`` examples of a source in the class-balanced order of
  :func:`cnn_jax.data.datasets._take` (the in-memory loader's ``num_train``/``num_test``)."""

  def __init__(self, full, order: np.ndarray):
    self.full, self.order = full, order

  def __len__(self) -> int:
    return len(self.order)

  def __getitem__(self, i: int):
    return self.full[int(self.order[i])]


def _subset(source, limit: int):
  """``source`` limited to ``limit`` examples as the in-memory loader's ``_take`` picks them
  (0 = all)."""
  if not limit or limit >= len(source):
    return source
  from cnn_jax.data.datasets import _take  # pylint: disable=g-import-not-at-top
  labels = (source.labels if isinstance(source, FolderSource)
            else np.array([source[i][1] for i in range(len(source))]))
  order, _ = _take(np.arange(len(labels)), labels, limit)
  return _Subset(source, order)
