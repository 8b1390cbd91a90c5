"""airbench94 (Jordan 2024, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU",
arXiv:2404.00498, Sec. 3) in Flax Linen, NHWC.

Reference implementation: github.com/KellerJordan/cifar10-airbench ``airbench94.py``
(``make_net``, ``ConvGroup``, ``BatchNorm``, ``Conv``, ``init_whitening_conv``). The network
on a ``(N, 32, 32, 3)`` input:

* ``whiten``: 2x2 conv, 'VALID' padding (32 -> 31), 24 output channels with a bias. Its kernel
  is computed from training images by :func:`whitening_kernel` (12 eigenvectors of the 2x2
  patch second-moment matrix, scaled by ``1/sqrt(eigenvalue + eps)``, and their negatives)
  and never trained: the module applies ``stop_gradient`` to it (``freeze_whitening``, through
  ``nn.map_variables`` around the project's :data:`~cnn_jax.models.layers.Conv`), and
  :func:`cnn_jax.speedrun.airbench_optimizer` also zeroes its update, so weight decay does not
  shrink it either. The reference sets ``requires_grad = False`` on that weight; its bias
  trains for the first 3 epochs (handled by the optimizer, not here).
* GELU (exact, erf), then three ``ConvGroup`` blocks of widths 64 / 256 / 256:
  conv 3x3 'same' (no bias) -> max pool 2 (floor: 31 -> 15 -> 7 -> 3) -> BN -> GELU ->
  conv 3x3 'same' -> BN -> GELU.
* Global max pool (the reference's ``MaxPool2d(3)`` on the 3x3 map), a bias-free linear
  head 256 -> 10, and the logits multiplied by 1/9 (``scaling_factor``).

BatchNorm as the reference's ``BatchNorm``: scale fixed at 1 (``use_scale=False``; PyTorch
keeps a weight of ones with ``requires_grad=False``), bias learned, ``eps`` 1e-12, PyTorch
momentum 0.4 (``1 - batchnorm_momentum`` with 0.6), i.e. flax ``momentum=0.6``: running
stats ``0.6 * old + 0.4 * batch``.

Initialisation as the reference: convs are PyTorch's default ``kaiming_uniform_(a=sqrt(5))``,
i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), then ``dirac_`` on the first ``C_in`` output
channels (an identity map through the conv: an implicit residual); the head is PyTorch's
``nn.Linear`` default U(-1/sqrt(256), 1/sqrt(256)); biases start at 0.

Parameters (10 classes): 1,971,640 here, the frozen whitening kernel (288) included and no BN
scales; the PyTorch reference's ``model.parameters()`` also lists its 1,152 fixed BN weights
(1,972,792).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.models.layers import BatchNorm, Conv, gelu_exact, max_pool
from cnn_jax.models.registry import register

WIDTHS = (64, 256, 256)
WHITEN_WIDTH = 24  # 2 * (3 channels * 2 * 2 patch) = 12 eigenvectors and their negatives
BN_MOMENTUM = 0.6  # flax convention (weight of the old running value); PyTorch momentum 0.4
BN_EPS = 1e-12
LOGIT_SCALE = 1.0 / 9.0


def _stop_kernel_gradient(variables):
  """``stop_gradient`` on every leaf named ``kernel`` (trans_in_fn of ``nn.map_variables``,
  which passes ``{'params': {'kernel': ..., 'bias': ...}}``); other leaves pass through."""
  return jax.tree_util.tree_map_with_path(
      lambda path, v: jax.lax.stop_gradient(v) if getattr(path[-1], "key", None) == "kernel"
      else v, variables)


# The project's Conv with its kernel's gradient stopped and its bias trainable: parameter names
# and shapes are Conv's ('kernel', 'bias'), so checkpoints and init_whitening see a plain conv.
# mutable=True, not init=True: with init=True flax 0.12 fails in apply(..., mutable=
# ['batch_stats']) (ScopeCollectionNotFound for 'params'); the params are never mutated.
FrozenKernelConv = nn.map_variables(Conv, "params", trans_in_fn=_stop_kernel_gradient,
                                    mutable=True)

# PyTorch's default conv / linear init: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dirac_partial_init(base=torch_default_init):
  """An HWIO kernel initializer: ``base``, then ``torch.nn.init.dirac_`` on the first
  ``min(C_in, C_out)`` output channels (kernel ``(kh, kw, C_in, C_out)``: output channel
  ``o < C_in`` becomes zero except a 1 at the centre tap of input channel ``o``).

  As ``Conv.reset_parameters`` of the reference (``torch.nn.init.dirac_(w[:w.size(1)])``),
  which makes each conv start as a partial identity. Odd kernel sizes only (centre tap).
  """
  def init(key, shape, dtype=jnp.float32):
    kh, kw, cin, cout = shape
    w = base(key, shape, dtype)
    n = min(cin, cout)
    eye = jnp.zeros((kh, kw, cin, n), dtype).at[kh // 2, kw // 2].set(jnp.eye(cin, n, dtype=dtype))
    return w.at[..., :n].set(eye)
  return init


class ConvGroup(nn.Module):
  """One airbench block, ``(N, H, W, C) -> (N, floor(H/2), floor(W/2), features)``:
  conv 3x3 -> max pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU
  (reference ``airbench94.py::ConvGroup``)."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(Conv, self.features, (3, 3), padding=((1, 1), (1, 1)),
                             use_bias=False, dtype=self.dtype, kernel_init=dirac_partial_init())
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=BN_MOMENTUM,
                             epsilon=BN_EPS, use_scale=False, dtype=self.dtype)
    x = conv(name="conv1")(x)
    x = max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    x = gelu_exact(norm(name="norm1")(x))
    x = conv(name="conv2")(x)
    x = gelu_exact(norm(name="norm2")(x))
    return x


class Airbench94(nn.Module):
  """airbench94, ``(N, 32, 32, 3)`` float (normalised) -> ``(N, num_classes)`` float32 logits.

  Attributes:
    num_classes: logits (10 for CIFAR-10).
    widths: the three blocks' channels (64, 256, 256 as the reference).
    freeze_whitening: ``stop_gradient`` on the whitening kernel (the reference never trains
      it); its gradient is then exactly zero and XLA drops its weight-gradient conv. An
      optimizer must still leave it out of weight decay
      (:func:`cnn_jax.speedrun.airbench_optimizer` does).
    dtype: compute dtype; parameters float32, logits float32.

  Parameter names: ``whiten/{kernel,bias}``, ``block{1,2,3}/conv{1,2}/kernel``,
  ``block{1,2,3}/norm{1,2}/bias``, ``head/kernel``. Other input sizes run (global max pool),
  but only 32x32 is the reference network. The whitening kernel is random until
  :func:`init_whitening` replaces it.
  """
  num_classes: int = 10
  widths: tuple[int, int, int] = WIDTHS
  freeze_whitening: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    conv = FrozenKernelConv if self.freeze_whitening else Conv
    x = conv(WHITEN_WIDTH, (2, 2), padding="VALID", use_bias=True, dtype=self.dtype,
             kernel_init=torch_default_init, name="whiten")(x)
    x = gelu_exact(x)
    for i, width in enumerate(self.widths):
      x = ConvGroup(width, self.dtype, name=f"block{i + 1}")(x, train)
    x = jnp.max(x, axis=(1, 2))  # the reference's MaxPool2d(3) over the final 3x3 map
    x = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype,
                 kernel_init=torch_default_init, name="head")(x)
    return (x * LOGIT_SCALE).astype(jnp.float32)


def whitening_kernel(images, patch_size: int = 2, eps: float = 5e-4,
                     chunk: int = 500) -> np.ndarray:
  """The patch-whitening conv kernel computed from training images.

  With ``P`` the ``(M, D)`` matrix of all ``patch_size x patch_size`` patches (stride 1,
  'VALID'; ``D = patch_size**2 * C`` flattened in HWC order) of ``images``, the (uncentred)
  second-moment matrix ``S = P^T P / M`` has eigenpairs ``(lambda_i, v_i)``; the kernel's
  output channel ``i < D`` is ``v_i / sqrt(lambda_i + eps)`` (eigenvalues in decreasing
  order) and channel ``D + i`` its negative. The first D outputs of the conv on a patch are
  then the patch's whitened coordinates (covariance ~ identity).

  Source: the reference implementation ``airbench94.py::get_patches``,
  ``get_whitening_parameters``, ``init_whitening_conv`` (called on the first 5000
  normalised training images, ``eps=5e-4``); Jordan 2024, arXiv:2404.00498, Sec. 3
  (patch-whitening initialisation).
  Eigenvectors are defined up to sign; with both signs present the output differs from the
  reference's at most by a permutation of channels.

  Args:
    images: ``(N, H, W, C)`` float (normalised images, as the network sees them), numpy or
      jax.
    patch_size: the conv's kernel size (2).
    eps: added to each eigenvalue before the inverse square root (5e-4; in the units of
      the normalised pixels squared).
    chunk: images per accumulation block (bounds the host memory of the patch matrix).

  Returns:
    ``(patch_size, patch_size, C, 2 * patch_size**2 * C)`` float32 HWIO kernel
    (``(2, 2, 3, 24)`` for RGB).

  Raises:
    ValueError: ``images`` not 4-D, smaller than the patch, or not finite.
  """
  x = np.asarray(images, np.float64)
  if x.ndim != 4 or x.shape[1] < patch_size or x.shape[2] < patch_size or x.shape[0] == 0:
    raise ValueError(f"whitening_kernel: images must be (N, H, W, C) with H, W >= "
                     f"patch_size={patch_size} and N >= 1, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError("whitening_kernel: images contain NaN or inf")
  n, h, w, c = x.shape
  k = patch_size
  d = k * k * c
  second_moment = np.zeros((d, d))
  count = 0
  for s in range(0, n, chunk):
    xb = x[s:s + chunk]
    # (B, H-k+1, W-k+1, k, k, C): every stride-1 window, flattened in HWC order.
    windows = np.lib.stride_tricks.sliding_window_view(xb, (k, k), axis=(1, 2))
    patches = np.moveaxis(windows, 3, -1).reshape(-1, d)  # (..., C, kh, kw) -> (..., kh, kw, C)
    second_moment += patches.T @ patches
    count += patches.shape[0]
  second_moment /= count
  eigenvalues, eigenvectors = np.linalg.eigh(second_moment)  # ascending
  order = np.argsort(eigenvalues)[::-1]
  scaled = eigenvectors[:, order] / np.sqrt(eigenvalues[order] + eps)  # (D, D): column i = v_i
  kernel = np.concatenate([scaled, -scaled], axis=1).reshape(k, k, c, 2 * d)
  return kernel.astype(np.float32)


def init_whitening(params, images, eps: float = 5e-4):
  """``params`` of :class:`Airbench94` with ``whiten/kernel`` replaced by
  :func:`whitening_kernel` of ``images`` (a new tree; the input is not modified).

  As the reference's ``init_whitening_conv(model[0], train_images[:5000])`` after
  ``make_net()``: call it once after ``model.init``, on the first 5000 normalised training
  images ``(5000, 32, 32, 3)`` float32, before the optimizer state is built.

  Raises:
    KeyError: ``params`` has no ``whiten/kernel`` (not an airbench94 params tree).
    ValueError: the computed kernel's shape differs from ``whiten/kernel``'s (e.g. images
      with another channel count), or :func:`whitening_kernel`'s errors.
  """
  if "whiten" not in params or "kernel" not in params["whiten"]:
    raise KeyError(f"init_whitening: params has no 'whiten/kernel' (top-level keys "
                   f"{sorted(params)}); expected an airbench94 params tree")
  old = params["whiten"]["kernel"]
  kernel = whitening_kernel(images, patch_size=old.shape[0], eps=eps)
  if kernel.shape != tuple(old.shape):
    raise ValueError(f"init_whitening: whitening kernel of shape {kernel.shape} from images of "
                     f"shape {np.shape(images)} does not fit whiten/kernel {tuple(old.shape)}")
  return {**params, "whiten": {**params["whiten"], "kernel": jnp.asarray(kernel, old.dtype)}}


register("airbench94", Airbench94)
