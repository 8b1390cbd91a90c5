"""Image-folder datasets (``<root>/<split>/<class>/<image>``), decoded once and cached.

This is the layout ``tfds.folder_dataset.ImageFolder``, Keras and torchvision read. The
first load decodes every image with Pillow (in a thread pool) into one uint8 NHWC array
and writes it to an ``.npz`` cache keyed by the file list (names, sizes, mtimes); later
loads read the cache in about a second. Nothing is skipped silently: a file that does not
decode, or whose size differs from the others, stops the load with its path.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib
import tempfile
from typing import Sequence

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm")


class DataError(ValueError):
  """Bad dataset input: missing folder, no images, an unreadable or odd-sized image."""


def default_cache_dir() -> pathlib.Path:
  """``$CNN_JAX_CACHE`` if set, else ``~/.cache/cnn_jax``."""
  return pathlib.Path(os.environ.get("CNN_JAX_CACHE", "~/.cache/cnn_jax")).expanduser()


def class_names(root: str | os.PathLike, split: str = "train") -> list[str]:
  """Class folder names in label order.

  The order is ``<root>/classes.tsv`` (first column, one class a line) when that file
  exists, else the sorted sub-folder names of ``<root>/<split>``.

  Raises:
    DataError: ``root`` or ``root/split`` is missing or has no class folders.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"data dir {str(root)!r} (config key data.dir) does not exist "
                    f"or is not a directory")
  tsv = root / "classes.tsv"
  if tsv.is_file():
    names = [ln.split("\t")[0].strip() for ln in tsv.read_text().splitlines() if ln.strip()]
    if names:
      return names
  split_dir = root / split
  if not split_dir.is_dir():
    raise DataError(f"data dir {str(root)!r} has no {split!r} split folder "
                    f"(expected {str(split_dir)!r} with one sub-folder per class)")
  names = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not names:
    raise DataError(f"{str(split_dir)!r} has no class sub-folders")
  return names


def list_files(root: str | os.PathLike, split: str,
               classes: Sequence[str]) -> tuple[list[pathlib.Path], np.ndarray]:
  """Every image file of ``root/split``, sorted within each class, with its int label.

  Hidden files are ignored; any other file is listed (and must then decode), so that a
  stray file is an error rather than a silently skipped image.

  Raises:
    DataError: missing split folder, a class folder of the split not in ``classes``,
      or no files at all.
  """
  split_dir = pathlib.Path(root) / split
  if not split_dir.is_dir():
    raise DataError(f"data dir {str(root)!r} has no {split!r} split folder "
                    f"(expected {str(split_dir)!r})")
  present = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
  unknown = sorted(set(present) - set(classes))
  if unknown:
    raise DataError(f"{str(split_dir)!r} has class folders {unknown} that are not among the "
                    f"{len(classes)} training classes {list(classes)[:10]}...")
  files, labels = [], []
  for label, name in enumerate(classes):
    cdir = split_dir / name
    if not cdir.is_dir():
      continue
    for f in sorted(cdir.iterdir()):
      if f.name.startswith(".") or not f.is_file():
        continue
      files.append(f)
      labels.append(label)
  if not files:
    raise DataError(f"no images found under {str(split_dir)!r} "
                    f"(expected {split}/<class>/<image>{IMAGE_SUFFIXES})")
  return files, np.asarray(labels, np.int32)


def _decode(path: pathlib.Path) -> np.ndarray:
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"), dtype=np.uint8)
  except Exception as e:  # Pillow raises several types; all mean "not an image we can read".
    raise DataError(f"cannot decode image {str(path)!r}: {type(e).__name__}: {e}") from e


def decode_images(files: Sequence[pathlib.Path], num_threads: int | None = None) -> np.ndarray:
  """Decodes ``files`` to one ``(N, H, W, 3)`` uint8 array (RGB), in file order.

  Raises:
    DataError: a file that does not decode, or whose ``(H, W)`` differs from the first's.
  """
  num_threads = num_threads or min(8, (os.cpu_count() or 1) * 2)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    arrays = list(pool.map(_decode, files, chunksize=256))
  shape = arrays[0].shape
  for f, a in zip(files, arrays):
    if a.shape != shape:
      raise DataError(f"image {str(f)!r} has shape {a.shape}, expected {shape} like "
                      f"{str(files[0])!r}: resize the folder to one size first")
  return np.stack(arrays)


def _cache_key(files: Sequence[pathlib.Path], labels: np.ndarray) -> str:
  h = hashlib.sha1()
  for f, y in zip(files, labels):
    st = f.stat()
    h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{y}\n".encode())
  return h.hexdigest()[:16]


def load_split(root: str | os.PathLike, split: str, classes: Sequence[str],
               cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Loads ``root/split`` as ``(images uint8 (N, H, W, 3), labels int32 (N,))``.

  Decodes once and caches to ``cache_dir`` (default :func:`default_cache_dir`); the cache
  file is written to a temporary name and renamed, so an interrupted run never leaves a
  half-written cache. A changed file list (added, removed or touched files) misses the cache.

  Raises:
    DataError: see :func:`list_files` and :func:`decode_images`.
  """
  files, labels = list_files(root, split, classes)
  cache_dir = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  cache = cache_dir / f"{pathlib.Path(root).resolve().name}-{split}-{_cache_key(files, labels)}.npz"
  if cache.is_file():
    with np.load(cache) as z:
      return z["images"], z["labels"]
  images = decode_images(files)
  cache_dir.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as fh:
      np.savez(fh, images=images, labels=labels)
    os.replace(tmp, cache)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return images, labels
