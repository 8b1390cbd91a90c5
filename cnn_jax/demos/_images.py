"""Image loading shared by the demos: default data folder and grayscale conversion."""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[2]
# Same convention as tests/conftest.py: $CNN_JAX_SHARED_DATA or ../shared/data.
SHARED_DATA = pathlib.Path(os.environ.get("CNN_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR10_DIR = SHARED_DATA / "cifar10-jpeg"


def load_gray(path) -> np.ndarray:
  """One image as float32 grayscale ``(H, W)`` in [0, 1] (ITU-R 601 luma, PIL mode 'L').

  Raises:
    FileNotFoundError: ``path`` does not exist (message names it).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"image not found: {path}")
  with Image.open(path) as im:
    return np.asarray(im.convert("L"), np.float32) / 255.0


def load_gray_folder(folder, limit: int) -> np.ndarray:
  """Up to ``limit`` JPEGs from ``folder/<class>/*.jpg`` (round-robin over classes, sorted),
  as float32 grayscale ``(N, H, W)`` in [0, 1].

  Raises:
    FileNotFoundError: no such folder or no JPEGs in it.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"image folder not found: {folder} (expected <class>/*.jpg)")
  per_class = [sorted(d.glob("*.jpg")) for d in sorted(folder.iterdir()) if d.is_dir()]
  paths = []
  for i in range(max((len(p) for p in per_class), default=0)):
    paths += [p[i] for p in per_class if i < len(p)]
    if len(paths) >= limit:
      break
  if not paths:
    raise FileNotFoundError(f"no <class>/*.jpg images under {folder}")
  return np.stack([load_gray(p) for p in paths[:limit]])
