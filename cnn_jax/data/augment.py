"""Training augmentation and normalisation as pure JAX functions (run inside the jitted step).

Random crop with padding and horizontal flip are the standard CIFAR recipe of He et al.
2015 (Sec. 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled
from the padded image or its horizontal flip"). Doing them on device inside ``jax.jit``
keeps the host loop to one gather of uint8 rows per step.

Alternating flip (Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU",
arXiv:2404.00498, Sec. 3.6) replaces the coin toss per image and epoch: a random half of
the images is mirrored in the first epoch, and each later epoch mirrors exactly the images
the previous epoch did not, so every two consecutive epochs show each image both ways. It
is decided per example index, so it runs on the host (:func:`alternating_flip`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_crop(key: jax.Array, images: jax.Array, pad: int = 4,
                mode: str = "reflect") -> jax.Array:
  """Pads by ``pad`` pixels on each side and crops back to ``(H, W)`` at a random offset.

  Args:
    key: PRNG key; each image gets its own offset.
    images: ``(N, H, W, C)`` any dtype.
    pad: padding in pixels on each side (0 returns ``images``).
    mode: ``'reflect'`` or ``'constant'`` (zero padding), as ``jnp.pad``.

  Returns:
    ``(N, H, W, C)``, same dtype.
  """
  if pad == 0:
    return images
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
  offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
  """Flips each ``(H, W, C)`` image left-right with probability 1/2. ``(N, H, W, C)``."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1, :], images)


def normalize(images: jax.Array, mean, std, dtype=jnp.float32) -> jax.Array:
  """``(x - mean) / std`` per channel. ``images`` ``(N, H, W, C)`` uint8 in [0, 255];
  ``mean`` and ``std`` ``(C,)`` in the same 0-255 units. Returns ``dtype``."""
  x = images.astype(jnp.float32)
  x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
  return x.astype(dtype)


def train_augment(key: jax.Array, images: jax.Array, *, crop_pad: int = 4,
                  pad_mode: str = "reflect", flip: bool = True) -> jax.Array:
  """Random crop (``crop_pad``, ``pad_mode``) then random horizontal flip, on uint8 NHWC."""
  k_crop, k_flip = jax.random.split(key)
  images = random_crop(k_crop, images, crop_pad, pad_mode)
  if flip:
    images = random_flip(k_flip, images)
  return images


def first_epoch_flips(seed: int, n: int) -> np.ndarray:
  """Which of ``n`` training examples alternating flip mirrors in epoch 0: ``(n,)`` bool,
  a random half-on-average, a pure function of ``seed`` (a stream apart from the epoch
  permutations of :func:`cnn_jax.data.loader.epoch_permutation`, whose keys are below 2**32)."""
  return np.random.default_rng([seed, 1 << 32]).random(n) < 0.5


def alternating_flip(images: np.ndarray, flipped_in_epoch0: np.ndarray,
                     epoch: int) -> np.ndarray:
  """Mirrors left-right the rows of ``images`` that alternating flip picks in ``epoch``.

  Args:
    images: host batch ``(N, H, W, C)``, any dtype (uint8 in training).
    flipped_in_epoch0: ``(N,)`` bool, :func:`first_epoch_flips` of these rows' indices.
    epoch: 0-based; even epochs mirror the rows marked True, odd epochs the others.

  Returns:
    ``(N, H, W, C)``, a new array of the same dtype.

  Raises:
    ValueError: ``flipped_in_epoch0`` is not ``(N,)``.
  """
  flip = np.asarray(flipped_in_epoch0, bool)
  if flip.shape != images.shape[:1]:
    raise ValueError(f"alternating_flip: flipped_in_epoch0 has shape {flip.shape}, expected "
                     f"({images.shape[0]},) for images of shape {images.shape}")
  flip = flip ^ bool(epoch % 2)
  return np.where(flip[:, None, None, None], images[:, :, ::-1], images)
