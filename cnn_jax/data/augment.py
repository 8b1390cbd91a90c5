"""Training augmentation and normalisation as pure JAX functions (run inside the jitted step).

Random crop with padding and horizontal flip are the standard CIFAR recipe of He et al.
2015 (Sec. 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled
from the padded image or its horizontal flip"). Doing them on device inside ``jax.jit``
keeps the host loop to one gather of uint8 rows per step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
