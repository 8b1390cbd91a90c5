"""ImageNet-style preprocessing on the host: Inception random-resized crop, flip, center crop.

Training (Szegedy et al. 2015, "Going Deeper with Convolutions", Sec. 6: "sampling of
various sized patches of the image whose size is distributed evenly between 8% and 100%
of the image area with aspect ratio constrained to the interval [3/4, 4/3]"), as
torchvision's ``RandomResizedCrop.get_params`` and the Flax ImageNet example
(``examples/imagenet/input_pipeline.py``, ``distorted_bounding_box_crop``) implement it:
up to 10 draws of an area fraction uniform in ``scale`` and a log-uniform aspect ratio in
``ratio``; the first box that fits is cut out and resized (bilinear) to ``size x size``;
when none fits, a center crop of the whole image clamped to ``ratio`` is used instead.
Then a horizontal flip with probability 1/2.

Evaluation: resize the shorter side to ``floor(size / crop_fraction)`` and cut the central
``size x size`` square: 256 then 224 for ``crop_fraction = 0.875`` (timm's ``crop_pct``;
the Flax example's ``CROP_PADDING = 32``).

These run per example in the Grain workers (:mod:`cnn_jax.data.grain_pipeline`) on uint8
``(H, W, 3)`` images of any size; the randomness comes from a ``numpy.random.Generator``
the caller derives from the seed and the example's position in the run, so a resumed run
draws the same crops.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def sample_crop_box(rng: np.random.Generator, height: int, width: int,
                    scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3),
                    attempts: int = 10) -> tuple[int, int, int, int]:
  """An Inception crop box ``(top, left, crop_h, crop_w)`` in pixels of an ``height x width``
  image (torchvision ``RandomResizedCrop.get_params``).

  Args:
    rng: the random stream.
    height, width: image size in pixels (>= 1).
    scale: range of the crop's area as a fraction of the image's, ``0 < lo <= hi <= 1``.
    ratio: range of the crop's width / height, ``0 < lo <= hi``; drawn log-uniformly.
    attempts: draws before falling back to the clamped center crop.

  Returns:
    ``(top, left, crop_h, crop_w)``, ints with ``1 <= crop_h <= height``,
    ``1 <= crop_w <= width``, the box inside the image.

  Raises:
    ValueError: a ``scale`` or ``ratio`` range that is empty or out of bounds.
  """
  if not (0 < scale[0] <= scale[1] <= 1):
    raise ValueError(f"random-resized crop scale {tuple(scale)}: expected 0 < lo <= hi <= 1 "
                     f"(config key data.rrc_scale)")
  if not (0 < ratio[0] <= ratio[1]):
    raise ValueError(f"random-resized crop ratio {tuple(ratio)}: expected 0 < lo <= hi "
                     f"(config key data.rrc_ratio)")
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(attempts):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  # Fallback (torchvision): the whole image, cut to the nearest allowed aspect ratio.
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  h, w = max(1, min(h, height)), max(1, min(w, width))
  return (height - h) // 2, (width - w) // 2, h, w


def _resize_box(image: np.ndarray, box: tuple[int, int, int, int],
                out_hw: tuple[int, int]) -> np.ndarray:
  """Bilinear resize (Pillow) of ``image[top:top+h, left:left+w]`` to ``out_hw`` ``(H, W)``."""
  top, left, h, w = box
  pil = Image.fromarray(image)
  out = pil.resize((out_hw[1], out_hw[0]), Image.Resampling.BILINEAR,
                   box=(left, top, left + w, top + h))
  return np.asarray(out, np.uint8)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
  """Inception crop (:func:`sample_crop_box`) of ``image`` resized to ``(size, size)``.

  Args:
    image: ``(H, W, 3)`` uint8, any ``H, W >= 1``.
    rng, scale, ratio: see :func:`sample_crop_box`.
    size: output side in pixels.

  Returns:
    ``(size, size, 3)`` uint8.
  """
  box = sample_crop_box(rng, image.shape[0], image.shape[1], scale, ratio)
  return _resize_box(image, box, (size, size))


def center_crop(image: np.ndarray, size: int, crop_fraction: float = 0.875) -> np.ndarray:
  """Evaluation view: shorter side resized to ``floor(size / crop_fraction)`` (bilinear), then
  the central ``size x size`` square (timm ``transforms_factory``: ``Resize(scale_size)``,
  ``CenterCrop(size)``; the Flax ImageNet example's ``_decode_and_center_crop``).

  Args:
    image: ``(H, W, 3)`` uint8, any size.
    size: output side in pixels.
    crop_fraction: ``size`` over the resized shorter side, in ``(0, 1]`` (0.875: 224 of 256).

  Returns:
    ``(size, size, 3)`` uint8.

  Raises:
    ValueError: ``crop_fraction`` outside ``(0, 1]``.
  """
  if not 0 < crop_fraction <= 1:
    raise ValueError(f"center crop fraction {crop_fraction}: expected (0, 1] "
                     f"(config key data.eval_crop_fraction)")
  h, w = image.shape[:2]
  short = int(math.floor(size / crop_fraction))
  # The resized image's size, computed as torchvision's Resize(int) does.
  if h <= w:
    new_h, new_w = short, int(short * w / h)
  else:
    new_h, new_w = int(short * h / w), short
  resized = _resize_box(image, (0, 0, h, w), (new_h, new_w))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return np.ascontiguousarray(resized[top:top + size, left:left + size])


def train_view(image: np.ndarray, rng: np.random.Generator, size: int,
               scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> np.ndarray:
  """Random-resized crop to ``(size, size)``, then a left-right flip with probability 1/2
  when ``flip``. ``image`` ``(H, W, 3)`` uint8 -> ``(size, size, 3)`` uint8."""
  out = random_resized_crop(image, rng, size, scale, ratio)
  if flip and rng.random() < 0.5:
    out = np.ascontiguousarray(out[:, ::-1])
  return out
