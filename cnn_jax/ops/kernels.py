"""Hand-designed 2-D kernels, as used with :func:`cnn_jax.ops.conv2d` (cross-correlation).

Every function returns a float32 NumPy array ``(K_h, K_w)``; :func:`as_hwio` turns one into
a conv kernel. Orientation is for cross-correlation: ``sobel_x`` is positive where
intensity increases to the right (+x = increasing column index), ``sobel_y`` where it
increases downwards (+y = increasing row index), as ``scipy.ndimage.sobel(axis=1/0)`` and
OpenCV's ``cv2.Sobel`` (which correlates). Sources: Sobel & Feldman 1968; Prewitt 1970;
Gonzalez & Woods, "Digital Image Processing", 4th ed., Sec. 3.5-3.6 (Laplacian, sharpening).
"""

from __future__ import annotations

import math

import numpy as np


def sobel_x() -> np.ndarray:
  """Horizontal derivative (vertical edges): smoothing ``[1,2,1]^T`` x difference ``[-1,0,1]``."""
  return np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)


def sobel_y() -> np.ndarray:
  """Vertical derivative (horizontal edges): the transpose of :func:`sobel_x`."""
  return sobel_x().T.copy()


def prewitt_x() -> np.ndarray:
  """Prewitt horizontal derivative: box smoothing ``[1,1,1]^T`` x ``[-1,0,1]``."""
  return np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], np.float32)


def prewitt_y() -> np.ndarray:
  """Prewitt vertical derivative: the transpose of :func:`prewitt_x`."""
  return prewitt_x().T.copy()


def box_blur(size: int = 3) -> np.ndarray:
  """Mean filter ``ones((size, size)) / size**2`` (sums to 1).

  Raises:
    ValueError: ``size < 1``.
  """
  if size < 1:
    raise ValueError(f"box_blur: size must be >= 1, got {size}")
  return np.full((size, size), 1.0 / size ** 2, np.float32)


def gaussian(sigma: float, size: int | None = None) -> np.ndarray:
  """Sampled, normalised Gaussian ``exp(-(i^2 + j^2) / (2 sigma^2))`` (sums to 1).

  Args:
    sigma: standard deviation in pixels (> 0).
    size: odd side length; default ``2*ceil(3 sigma) + 1`` (covers +-3 sigma, like
      ``scipy.ndimage.gaussian_filter(truncate=3)``).

  Raises:
    ValueError: ``sigma <= 0`` or an even/non-positive ``size``.
  """
  if not sigma > 0:
    raise ValueError(f"gaussian: sigma must be > 0 pixels, got {sigma}")
  if size is None:
    size = 2 * math.ceil(3 * sigma) + 1
  if size < 1 or size % 2 == 0:
    raise ValueError(f"gaussian: size must be a positive odd number, got {size}")
  r = np.arange(size) - size // 2
  g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * sigma ** 2))
  return (g / g.sum()).astype(np.float32)


def laplacian() -> np.ndarray:
  """4-neighbour Laplacian ``d2/dx2 + d2/dy2`` (sums to 0)."""
  return np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)


def sharpen() -> np.ndarray:
  """Identity minus the Laplacian: ``[[0,-1,0],[-1,5,-1],[0,-1,0]]`` (sums to 1)."""
  ident = np.zeros((3, 3), np.float32)
  ident[1, 1] = 1.0
  return ident - laplacian()


KERNELS = {"sobel_x": sobel_x, "sobel_y": sobel_y, "prewitt_x": prewitt_x,
           "prewitt_y": prewitt_y, "box_blur": box_blur, "gaussian": lambda: gaussian(1.0),
           "sharpen": sharpen, "laplacian": laplacian}


def get(name: str) -> np.ndarray:
  """The kernel called ``name`` (``'gaussian'`` = sigma 1 pixel, 7x7).

  Raises:
    KeyError: unknown name; the message lists the known ones.
  """
  if name not in KERNELS:
    raise KeyError(f"unknown kernel {name!r}; known: {', '.join(sorted(KERNELS))}")
  return KERNELS[name]()


def as_hwio(kernel: np.ndarray, channels: int = 1) -> np.ndarray:
  """``(K_h, K_w)`` -> depthwise-ready HWIO ``(K_h, K_w, 1, channels)`` float32 (the same
  filter per channel when used with ``groups=channels``)."""
  k = np.asarray(kernel, np.float32)
  if k.ndim != 2:
    raise ValueError(f"as_hwio: kernel must be 2-D (K_h, K_w), got shape {k.shape}")
  return np.repeat(k[:, :, None, None], channels, axis=3)
