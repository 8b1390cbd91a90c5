"""Image-folder datasets (``<root>/<split>/<class>/<image>``), decoded once and cached.

This is the layout ``tfds.folder_dataset.ImageFolder``, Keras and torchvision read. The
first load decodes every image with Pillow (in a thread pool) into one uint8 NHWC array
and writes it to an ``.npz`` cache keyed by the file list (names, sizes, mtimes) and the
options below; later loads read the cache in about a second.

Nothing is skipped or changed silently. By default a file that does not decode (not an
image, a truncated or corrupt JPEG) or whose size differs from the dataset's stops the load
with its path (and both sizes); an empty class folder, or class folders that differ between
the splits, stop it too. ``skip_corrupt`` skips undecodable files instead and ``resize``
resizes odd-sized images (bilinear, Pillow); grayscale, palette, RGBA or CMYK images are
converted to RGB. What was skipped, resized or converted is counted in a report (the
``data_report`` of the run's ``start`` record) and printed when the folder is decoded.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import tempfile
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm")


class DataError(ValueError):
  """Bad dataset input: missing folder, no images, an unreadable or odd-sized image."""


# How many skipped files a report names (all are counted).
_NAMED_SKIPS = 10


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
    DataError: missing split folder, a class folder of the split not in ``classes`` or a
      class of ``classes`` without a folder in the split (the splits' class sets differ),
      no files at all, or a class folder without files.
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
  missing = [c for c in classes if c not in present]
  if missing and len(missing) < len(classes):  # none present at all: "no images" below
    raise DataError(f"{str(split_dir)!r} lacks class folders {missing[:10]} "
                    f"({len(missing)} of the {len(classes)} training classes): the splits' "
                    f"class sets differ; expected one folder per class in every split")
  files, labels, empty = [], [], []
  for label, name in enumerate(classes):
    cdir = split_dir / name
    if not cdir.is_dir():
      continue
    found = [f for f in sorted(cdir.iterdir()) if not f.name.startswith(".") and f.is_file()]
    if not found:
      empty.append(str(cdir))
    files += found
    labels += [label] * len(found)
  if not files:
    raise DataError(f"no images found under {str(split_dir)!r} "
                    f"(expected {split}/<class>/<image>{IMAGE_SUFFIXES})")
  if empty:
    raise DataError(f"class folder {empty[0]!r} has no images (expected at least 1 file"
                    f"{f'; {len(empty) - 1} more empty class folders' if len(empty) > 1 else ''})")
  return files, np.asarray(labels, np.int32)


class _Decoded(NamedTuple):
  """One file's decode: the image or the error, and what was changed to make it fit."""
  image: np.ndarray | None  # (H, W, 3) uint8, None when it did not decode
  error: str | None  # why it did not decode
  mode: str | None  # the Pillow mode converted from ('L', 'RGBA', 'P', ...), None for RGB
  resized_from: tuple[int, int] | None  # (H, W) before resizing, None when not resized


def _decode(path: pathlib.Path, size: tuple[int, int] | None, resize: bool) -> _Decoded:
  """Decodes ``path`` to RGB; with ``resize``, to ``size`` ``(H, W)`` as well."""
  try:
    with Image.open(path) as im:
      mode = im.mode
      rgb = im.convert("RGB")  # reads the pixels: a truncated file raises here
  except Exception as e:  # Pillow raises several types; all mean "not an image we can read".
    what = (f"not an image file (suffix {path.suffix!r}; expected one of {IMAGE_SUFFIXES})"
            if path.suffix.lower() not in IMAGE_SUFFIXES else "cannot decode image")
    return _Decoded(None, f"{what} {str(path)!r}: {type(e).__name__}: {e}", None, None)
  resized_from = None
  if resize and size is not None and (rgb.height, rgb.width) != tuple(size):
    resized_from = (rgb.height, rgb.width)
    rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
  return _Decoded(np.asarray(rgb, dtype=np.uint8), None, None if mode == "RGB" else mode,
                  resized_from)


class DecodedFolder(NamedTuple):
  """What :func:`decode_folder` returns.

  Attributes:
    images: ``(N, H, W, 3)`` uint8, the decoded files in order (skipped ones left out).
    kept: ``(len(files),)`` bool, which files are in ``images``.
    report: counts of what was done to make the folder loadable: ``converted`` (images of
      another Pillow mode made RGB), ``converted_modes`` (``{mode: count}``), ``resized``,
      ``skipped`` (files that did not decode) and ``skipped_files`` (the first 10, with why).
  """
  images: np.ndarray
  kept: np.ndarray
  report: dict


def decode_folder(files: Sequence[pathlib.Path], *, size: tuple[int, int] | None = None,
                  resize: bool = False, skip_corrupt: bool = False,
                  num_threads: int | None = None) -> DecodedFolder:
  """Decodes ``files`` to RGB uint8, in file order, as one array.

  Args:
    files: image files.
    size: the expected ``(H, W)``; ``None``: the first decoded image's.
    resize: resize other sizes to ``size`` (bilinear) instead of refusing them.
    skip_corrupt: leave out files that do not decode instead of refusing them.
    num_threads: decoding threads (default ``min(8, 2 * cpus)``).

  Returns:
    A :class:`DecodedFolder`.

  Raises:
    DataError: a file that does not decode (unless ``skip_corrupt``; names it and the
      decoder's error), an image whose ``(H, W)`` differs from ``size`` (unless ``resize``;
      names it and both sizes), or no file decoded at all.
  """
  num_threads = num_threads or min(8, (os.cpu_count() or 1) * 2)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    decoded = list(pool.map(lambda f: _decode(f, size, resize), files, chunksize=256))
  report = {"converted": 0, "converted_modes": {}, "resized": 0, "skipped": 0,
            "skipped_files": []}
  want = tuple(size) if size is not None else None
  for f, d in zip(files, decoded):
    if d.error is not None:
      if not skip_corrupt:
        raise DataError(f"{d.error} (set config key data.skip_corrupt = True to skip such "
                        f"files, counted in the run's start record)")
      report["skipped"] += 1
      if len(report["skipped_files"]) < _NAMED_SKIPS:
        report["skipped_files"].append(d.error)
      continue
    if d.mode is not None:
      report["converted"] += 1
      report["converted_modes"][d.mode] = report["converted_modes"].get(d.mode, 0) + 1
    report["resized"] += d.resized_from is not None
    if want is None:
      want = d.image.shape[:2]
    if d.image.shape[:2] != want:
      raise DataError(f"image {str(f)!r} is {d.image.shape[0]}x{d.image.shape[1]} pixels "
                      f"(HxW), expected {want[0]}x{want[1]}: set config key data.resize = "
                      f"True to resize such images, or resize the folder first")
  kept = np.array([d.image is not None for d in decoded], bool)
  if not kept.any():
    raise DataError(f"none of the {len(files)} files decoded (first: {report['skipped_files'][0]})")
  images = np.stack([d.image for d in decoded if d.image is not None])
  return DecodedFolder(images, kept, report)


def decode_images(files: Sequence[pathlib.Path], num_threads: int | None = None) -> np.ndarray:
  """Decodes ``files`` to one ``(N, H, W, 3)`` uint8 array (RGB), in file order.

  Raises:
    DataError: a file that does not decode, or whose ``(H, W)`` differs from the first's.
  """
  return decode_folder(files, num_threads=num_threads).images


def _cache_key(files: Sequence[pathlib.Path], labels: np.ndarray, options: str = "") -> str:
  h = hashlib.sha1()
  for f, y in zip(files, labels):
    st = f.stat()
    h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{y}\n".encode())
  if options:  # only non-default options: caches of default loads keep their names
    h.update(options.encode())
  return h.hexdigest()[:16]


def load_split(root: str | os.PathLike, split: str, classes: Sequence[str],
               cache_dir: str | os.PathLike | None = None, *,
               image_size: tuple[int, int] | None = None, resize: bool = False,
               skip_corrupt: bool = False, report: dict | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """Loads ``root/split`` as ``(images uint8 (N, H, W, 3), labels int32 (N,))``.

  Decodes once and caches to ``cache_dir`` (default :func:`default_cache_dir`); the cache
  file is written to a temporary name and renamed, so an interrupted run never leaves a
  half-written cache. A changed file list (added, removed or touched files) or other
  options miss the cache.

  Args:
    root, split, classes: the folder ``root/split/<class>/<image>`` and the label order.
    cache_dir: where decoded splits are cached.
    image_size: the dataset's ``(H, W)``; ``None``: the first image's.
    resize: resize images of another size to ``image_size`` instead of refusing them.
    skip_corrupt: skip files that do not decode instead of refusing them.
    report: if given, a dict updated with :class:`DecodedFolder`'s report of the split (from
      the cache too; a cache written before reports were kept gives ``converted: None``,
      unknown).

  Raises:
    DataError: see :func:`list_files` and :func:`decode_folder`; a class left without
      images once undecodable files are skipped.
  """
  files, labels = list_files(root, split, classes)
  options = "".join([f"|resize={tuple(image_size)}" if resize and image_size else "",
                     "|skip_corrupt" if skip_corrupt else ""])
  cache_dir = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  key = _cache_key(files, labels, options)
  cache = cache_dir / f"{pathlib.Path(root).resolve().name}-{split}-{key}.npz"
  if cache.is_file():
    with np.load(cache) as z:  # allow_pickle is False: arrays and one JSON string only
      found = (json.loads(str(z["report"])) if "report" in z.files else
               {"converted": None, "converted_modes": None, "resized": 0, "skipped": 0,
                "skipped_files": []})
      if report is not None:
        report.update(found)
      return z["images"], z["labels"]
  out = decode_folder(files, size=image_size, resize=resize, skip_corrupt=skip_corrupt)
  images, labels = out.images, labels[out.kept]
  if out.report["skipped"]:
    left = np.bincount(labels, minlength=len(classes))
    if not left.all():
      name = classes[int(np.argmin(left))]
      raise DataError(f"class folder {str(pathlib.Path(root) / split / name)!r} has no "
                      f"readable image once undecodable files are skipped")
    print(f"cnn_jax.data: skipped {out.report['skipped']} of {len(files)} files under "
          f"{str(pathlib.Path(root) / split)!r} that do not decode (data.skip_corrupt), e.g. "
          f"{out.report['skipped_files'][0]}", flush=True)
  if out.report["converted"] or out.report["resized"]:
    print(f"cnn_jax.data: {str(pathlib.Path(root) / split)!r}: converted "
          f"{out.report['converted']} images to RGB (from {out.report['converted_modes']}), "
          f"resized {out.report['resized']}", flush=True)
  if report is not None:
    report.update(out.report)
  cache_dir.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
  try:
    with os.fdopen(fd, "wb") as fh:
      np.savez(fh, images=images, labels=labels, report=np.array(json.dumps(out.report)))
    os.replace(tmp, cache)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return images, labels
