"""Hand-designed kernels through conv2d vs scipy.ndimage filters and analytic answers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from cnn_jax.ops import conv2d, kernels


def apply(img, k):
  return np.asarray(conv2d(img[None, :, :, None].astype(np.float32),
                           kernels.as_hwio(k)))[0, :, :, 0]


@pytest.fixture(scope="module")
def img():
  return np.random.default_rng(0).random((20, 24))


def interior(a, r):
  return a[r:-r, r:-r]


def test_sobel_prewitt_match_scipy(img):
  np.testing.assert_allclose(apply(img, kernels.sobel_x()), interior(ndi.sobel(img, axis=1), 1),
                             atol=1e-5)
  np.testing.assert_allclose(apply(img, kernels.sobel_y()), interior(ndi.sobel(img, axis=0), 1),
                             atol=1e-5)
  np.testing.assert_allclose(apply(img, kernels.prewitt_x()),
                             interior(ndi.prewitt(img, axis=1), 1), atol=1e-5)
  np.testing.assert_allclose(apply(img, kernels.prewitt_y()),
                             interior(ndi.prewitt(img, axis=0), 1), atol=1e-5)


def test_sobel_sign_on_a_ramp():
  ramp = np.tile(np.arange(10.0), (8, 1))  # brighter to the right
  np.testing.assert_allclose(apply(ramp, kernels.sobel_x()), 8.0)  # (1+2+1) * 2 pixels
  np.testing.assert_allclose(apply(ramp, kernels.sobel_y()), 0.0)


def test_blur_gaussian_laplacian_sharpen(img):
  np.testing.assert_allclose(apply(img, kernels.box_blur(3)),
                             interior(ndi.uniform_filter(img, 3), 1), atol=1e-5)
  g = kernels.gaussian(1.5)
  assert g.shape == (11, 11) and g.sum() == pytest.approx(1.0, abs=1e-6)
  np.testing.assert_allclose(apply(img, g),
                             interior(ndi.gaussian_filter(img, 1.5, truncate=10 / 3), 5),
                             atol=1e-5)
  np.testing.assert_allclose(apply(img, kernels.laplacian()), interior(ndi.laplace(img), 1),
                             atol=1e-5)
  np.testing.assert_allclose(apply(img, kernels.sharpen()),
                             interior(img - ndi.laplace(img), 1), atol=1e-5)
  quad = np.add.outer(np.arange(9.0) ** 2, np.zeros(9))  # f = y^2: Laplacian 2
  np.testing.assert_allclose(apply(quad, kernels.laplacian()), 2.0)


def test_kernel_errors():
  with pytest.raises(KeyError, match="known: box_blur"):
    kernels.get("sobel")
  with pytest.raises(ValueError, match="sigma must be > 0 pixels, got 0"):
    kernels.gaussian(0)
  with pytest.raises(ValueError, match="odd"):
    kernels.gaussian(1.0, size=4)
