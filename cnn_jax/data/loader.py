"""The trainer's one entry to the data: global batches for a step range, and test batches.

:func:`open_data` picks the loader of config key ``data.loader``:

- ``'memory'``: :class:`MemoryData`, the whole dataset decoded in host memory once
  (:func:`cnn_jax.data.load`), one index gather per step; with ``data.device_resident`` the
  training split lives on the accelerator and each batch is gathered there, so a step copies
  only its ``B`` indices to the device (issue #24, item 4).
- ``'grain'``: :class:`cnn_jax.data.grain_pipeline.GrainData`, streamed and decoded in
  worker processes, for datasets that do not fit in memory.
- ``'auto'``: ``'memory'`` when ``data.augment`` is ``'pad_crop'`` and the decoded train
  and test images (``N x H x W x C`` bytes, N counted from the folder's files or the
  registry's TFDS split sizes) fit in ``data.memory_limit_mb``; else ``'grain'``.

Both give the same batches for the same seed: epoch ``e`` is
:func:`epoch_permutation` ``(seed, e)``, batch ``k`` its positions ``[k B, (k + 1) B)``, each
process its own rows of it, alternating flip by example index and epoch. The train loop
only consumes :class:`TrainBatches` (``for step, images, labels in batches``) and
checkpoints :meth:`TrainBatches.state` beside the train state.
"""

from __future__ import annotations

import collections
import math
import os
import pathlib
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import parallel
from cnn_jax.data import augment
from cnn_jax.data.datasets import DATASETS, Dataset, load
from cnn_jax.data.image_folder import DataError


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """The training order of epoch ``epoch``: a fresh permutation of ``range(n)`` (int64
  ``(n,)``) per epoch, a pure function of ``(seed, epoch)`` so that a resumed run continues
  the same order."""
  return np.random.default_rng([seed, epoch]).permutation(n)


class TrainBatches:
  """Iterator of ``(step, images, labels)``: global ``jax.Array`` batches sharded on the
  batch axis (``images`` ``(B, H, W, C)`` uint8, ``labels`` ``(B,)`` int32), for consecutive
  steps, with the next ``prefetch`` batches already handed to the device (the host-to-device
  copy of batch ``s + 1`` overlaps step ``s``, as ``flax.jax_utils.prefetch_to_device``).

  :meth:`state` is what a checkpoint of the last step yielded stores to resume the data at
  the next one: the Grain iterator state (JSON-able dict), or ``None`` for the in-memory
  loader, whose position is the step itself.
  """

  def __init__(self, host: Iterator, sharding, prefetch: int = 2, on_close=None):
    """``host`` yields ``(step, images, labels, state_after)`` with this process's rows as
    NumPy arrays (stitched into global arrays here) or global ``jax.Array`` already."""
    self._host, self._sharding, self._prefetch = host, sharding, max(1, prefetch)
    self._queue = collections.deque()
    self._state = None
    self._on_close = on_close

  def _fill(self) -> None:
    while len(self._queue) < self._prefetch:
      try:
        step, images, labels, state = next(self._host)
      except StopIteration:
        return
      if not isinstance(images, jax.Array):
        images, labels = parallel.global_batch(self._sharding, np.asarray(images),
                                               np.asarray(labels))
      self._queue.append((step, images, labels, state))

  def __iter__(self):
    return self

  def __next__(self):
    self._fill()
    if not self._queue:
      self.close()
      raise StopIteration
    step, images, labels, self._state = self._queue.popleft()
    return step, images, labels

  def state(self) -> dict | None:
    """The data state after the last batch yielded (``None`` before the first, or for the
    in-memory loader)."""
    return self._state

  def close(self) -> None:
    """Stops the producer (Grain worker processes) and drops prefetched batches."""
    self._queue.clear()
    if self._on_close is not None:
      self._on_close()
      self._on_close = None


class MemoryData:
  """The in-memory loader over a :class:`cnn_jax.data.Dataset` (its attributes are
  forwarded: ``class_names``, ``num_classes``, ``num_train``, ``num_test``, ``input_shape``,
  ``mean``, ``std``, ``source``, ``report``, and the arrays).

  Args:
    ds: the decoded dataset.
    data_config: config section ``data`` (``flip``, ``flip_mode``, ``device_resident``).
    seed: the run's seed (epoch order, alternating flip).
  """

  loader = "memory"

  def __init__(self, ds: Dataset, data_config, seed: int):
    self.dataset, self.config, self.seed = ds, data_config, seed

  def __getattr__(self, name):
    return getattr(self.dataset, name)

  def device_resident(self) -> bool:
    """Whether the training split is kept on the device (config key
    ``data.device_resident``; 'auto': a single-process GPU/TPU run whose training images
    take at most a quarter of the first device's memory)."""
    mode = self.config.get("device_resident", "off")
    if mode != "auto":
      return mode == "on"
    if jax.default_backend() == "cpu" or jax.process_count() > 1:
      return False  # on CPU the "device" is host memory: nothing to save
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit", 0)
    return 0 < self.dataset.train_images.nbytes <= limit // 4

  def train_batches(self, *, batch_size: int, steps_per_epoch: int, num_epochs: int,
                    start_step: int, sharding, saved: dict | None = None) -> TrainBatches:
    """Global batches of steps ``start_step ... steps_per_epoch * num_epochs - 1``
    (``saved`` is ignored: the position is the step)."""
    del saved
    ds, c = self.dataset, self.config
    n = len(ds.train_labels)
    alternating = c.flip and c.flip_mode == "alternating"
    flips0 = augment.first_epoch_flips(self.seed, n) if alternating else None
    if self.device_resident():
      host = self._device_gather(batch_size, steps_per_epoch, num_epochs, start_step,
                                 sharding, flips0)
    else:
      host = self._host_gather(batch_size, steps_per_epoch, num_epochs, start_step, flips0)
    return TrainBatches(host, sharding)

  def _indices(self, batch_size, steps_per_epoch, num_epochs, start_step):
    """``(step, epoch, global batch indices (B,))`` from ``start_step`` to the end."""
    n = len(self.dataset.train_labels)
    perm_epoch, perm = -1, None
    for step in range(start_step, steps_per_epoch * num_epochs):
      epoch, k = divmod(step, steps_per_epoch)
      if epoch != perm_epoch:
        perm_epoch, perm = epoch, epoch_permutation(self.seed, epoch, n)
      yield step, epoch, perm[k * batch_size:(k + 1) * batch_size]

  def _host_gather(self, batch_size, steps_per_epoch, num_epochs, start_step, flips0):
    ds = self.dataset
    rows = parallel.process_rows(batch_size)
    for step, epoch, idx in self._indices(batch_size, steps_per_epoch, num_epochs,
                                          start_step):
      idx = idx[rows]
      images = ds.train_images[idx]
      if flips0 is not None:  # per example index: on the host (augment's docstring)
        images = augment.alternating_flip(images, flips0[idx], epoch)
      yield step, images, ds.train_labels[idx], None

  def _device_gather(self, batch_size, steps_per_epoch, num_epochs, start_step, sharding,
                     flips0):
    """As :meth:`_host_gather`, the arrays on the device (one copy, replicated over the
    mesh) and each batch gathered there: only the ``(B,)`` indices cross per step."""
    ds = self.dataset
    repl = parallel.replicated(sharding.mesh)
    images = jax.device_put(ds.train_images, repl)
    labels = jax.device_put(ds.train_labels, repl)
    flips = jax.device_put(np.zeros(len(labels), bool) if flips0 is None else flips0, repl)
    use_flip = flips0 is not None

    # The arrays are arguments, not closed-over constants: XLA would embed them in the
    # program otherwise.
    @jax.jit
    def gather(images, labels, flips, idx, epoch):
      x, y = images[idx], labels[idx]
      if use_flip:
        f = jnp.logical_xor(flips[idx], epoch % 2 == 1)
        x = jnp.where(f[:, None, None, None], x[:, :, ::-1], x)
      return (jax.lax.with_sharding_constraint(x, sharding),
              jax.lax.with_sharding_constraint(y, sharding))

    for step, epoch, idx in self._indices(batch_size, steps_per_epoch, num_epochs,
                                          start_step):
      x, y = gather(images, labels, flips, jnp.asarray(idx, jnp.int32), jnp.int32(epoch))
      yield step, x, y, None

  def eval_batches(self, batch_size: int, sharding):
    """The test set in global batches: see :func:`array_eval_batches`."""
    return array_eval_batches(self.dataset.test_images, self.dataset.test_labels, batch_size,
                              sharding)


def array_eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, sharding):
  """Yields ``(images (B, H, W, C) uint8, labels (B,) int32, mask (B,) float32)`` global
  batches covering every example of ``images`` once; the last batch is padded with the
  last example, masked 0. Each process gathers only its own rows."""
  n = len(labels)
  rows = parallel.process_rows(batch_size)
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    mask = (idx < n).astype(np.float32)
    idx = np.minimum(idx, n - 1)[rows]
    yield parallel.global_batch(sharding, images[idx], labels[idx], mask[rows])


def _grain_host(gd, batch_size, steps_per_epoch, num_epochs, start_step, saved, closer):
  """This process's Grain batches with the iterator state after each; checks every batch
  is the step it must be."""
  it, start_batch, workers = gd.train_iterator(
      batch_size=batch_size, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs,
      start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count(), saved=saved)
  closer.append(it)
  b = batch_size // jax.process_count()
  expected = start_step
  for batch in it:
    steps = np.asarray(batch["step"])
    if not np.all(steps == expected):
      raise RuntimeError(
          f"the data iterator restored from the checkpoint is at step {int(steps[0])}, the "
          f"train state at step {expected}: the checkpoint's data_iter state does not "
          f"belong to it (set config key data.num_workers to another value to position "
          f"the data by the step instead)")
    state = {"loader": "grain", "start_batch": start_batch, "num_workers": workers,
             "local_batch": b, "grain": it.get_state()}
    # Copies: Grain may hand out shared-memory buffers it reuses.
    yield expected, np.array(batch["image"]), np.array(batch["label"]), state
    expected += 1


class _GrainTrain:
  """:meth:`train_batches` / :meth:`eval_batches` of a :class:`GrainData` (its other
  attributes are forwarded), and the test set as arrays for the analyses of a trained run
  (:attr:`test_images`, :attr:`test_labels`)."""

  def __init__(self, gd):
    self.gd = gd
    self._test = None  # (images, labels) once test_images / test_labels was read

  def __getattr__(self, name):
    if name == "gd":  # not set yet (e.g. during unpickling): no recursion
      raise AttributeError(name)
    return getattr(self.gd, name)

  loader = "grain"

  def _test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """Every test example once, in order, as :meth:`eval_batches` gives them (padding
    dropped); decoded on the first call and kept."""
    if self._test is None:
      n = self.gd.num_test
      it = self.gd.eval_iterator(max(1, min(n, 256)), 0, 1)  # all rows, this process
      images, labels = [], []
      try:
        for batch in it:
          keep = np.asarray(batch["mask"]) > 0
          images.append(np.array(batch["image"])[keep])
          labels.append(np.array(batch["label"])[keep])
      finally:
        if hasattr(it, "close"):
          it.close()
      self._test = (np.concatenate(images), np.concatenate(labels))
    return self._test

  @property
  def test_images(self) -> np.ndarray:
    """The test set as the model sees it in evaluation, uint8 ``(N, H, W, C)`` in host
    memory (``data.augment = 'inception'``: each image resized and center-cropped to
    ``data.image_size``): what the analyses of :mod:`cnn_jax.analysis` read. Streamed and
    kept on first use, ``N H W C`` bytes (7.5 GB for ImageNet's 50,000 images at 224);
    evaluation itself streams (:meth:`eval_batches`).

    Raises:
      cnn_jax.data.DataError: a test file does not decode (names it).
    """
    return self._test_arrays()[0]

  @property
  def test_labels(self) -> np.ndarray:
    """int32 ``(N,)`` class indices of :attr:`test_images`, in the same order."""
    return self._test_arrays()[1]

  def train_batches(self, *, batch_size: int, steps_per_epoch: int, num_epochs: int,
                    start_step: int, sharding, saved: dict | None = None) -> TrainBatches:
    """Global batches of steps ``start_step ...`` streamed by Grain; ``saved`` is the
    checkpoint's data state (:meth:`TrainBatches.state`)."""
    closer = []

    def close():
      for it in closer:
        if hasattr(it, "close"):
          it.close()

    host = _grain_host(self.gd, batch_size, steps_per_epoch, num_epochs, start_step, saved,
                       closer)
    return TrainBatches(host, sharding, on_close=close)

  def eval_batches(self, batch_size: int, sharding):
    """The test set in global padded batches ``(images, labels, mask)``, as
    :func:`array_eval_batches`."""
    it = self.gd.eval_iterator(batch_size, jax.process_index(), jax.process_count())
    try:
      for batch in it:
        yield parallel.global_batch(sharding, np.array(batch["image"]),
                                    np.array(batch["label"]), np.array(batch["mask"]))
    finally:
      if hasattr(it, "close"):
        it.close()


def _folder_count(root: pathlib.Path, split: str) -> int:
  """Files under ``root/split/<class>/`` (a listing; nothing is opened)."""
  split_dir = root / split
  if not split_dir.is_dir():
    return 0
  return sum(1 for c in os.scandir(split_dir) if c.is_dir()
             for f in os.scandir(c.path) if f.is_file() and not f.name.startswith("."))


def choose_loader(data_config) -> str:
  """``'memory'`` or ``'grain'`` for config section ``data`` (see the module docstring).

  Raises:
    KeyError: unknown ``data.name``.
  """
  mode = data_config.get("loader", "memory")
  if mode != "auto":
    return mode
  info = DATASETS.get(data_config.name)
  if info is None:
    load(data_config)  # raises the KeyError naming close names
  if data_config.get("augment", "pad_crop") == "inception" or info.variable_size:
    return "grain"
  if data_config.dir:
    root = pathlib.Path(data_config.dir).expanduser()
    count = _folder_count(root, info.train_split) + _folder_count(root, info.test_split)
  else:
    count = sum(info.num_examples or (0, 0))
  needed_mb = count * math.prod(info.image_shape) / 2**20
  return "memory" if needed_mb <= data_config.get("memory_limit_mb", 4096) else "grain"


def open_data(data_config, seed: int):
  """The run's data through the loader :func:`choose_loader` picks: a :class:`MemoryData`
  or a Grain-backed object with the same interface (``train_batches``, ``eval_batches``,
  ``num_train``, ``num_test``, ``num_classes``, ``input_shape``, ``mean``, ``std``,
  ``source``, ``report``, ``loader``).

  Raises:
    KeyError: unknown ``data.name``. DataError: folder problems
      (:mod:`cnn_jax.data.image_folder`). RuntimeError: TFDS cannot provide the data.
  """
  if choose_loader(data_config) == "memory":
    return MemoryData(load(data_config), data_config, seed)
  from cnn_jax.data import grain_pipeline  # pylint: disable=g-import-not-at-top
  return _GrainTrain(grain_pipeline.GrainData(data_config, seed))


__all__ = ["DataError", "MemoryData", "TrainBatches", "array_eval_batches", "choose_loader",
           "epoch_permutation", "open_data"]
