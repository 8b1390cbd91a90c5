"""The kernels and learn_filter demos on real CIFAR-10 images."""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

from cnn_jax.demos import kernels as kdemo
from cnn_jax.demos import learn_filter
from cnn_jax.demos._images import load_gray, load_gray_folder
from cnn_jax.ops import kernels


def test_kernels_demo_writes_pngs(cifar10_dir, tmp_path, capsys):
  image = cifar10_dir / "test" / "cat" / "0000.jpg"
  assert kdemo.main(["--image", str(image), "--kernel", "sobel_x", "--out", str(tmp_path)]) == 0
  for name in ("input", "feature", "pooled", "panel"):
    with Image.open(tmp_path / f"{name}.png") as im:
      assert im.format == "PNG" and im.size[0] > 100
  # The plotted feature map is the zero-padded Sobel response (scipy with mode='constant').
  img = load_gray(image)
  feat, pooled = kdemo.feature_maps(img, kernels.sobel_x())
  np.testing.assert_allclose(feat, ndi.sobel(img, axis=1, mode="constant"), atol=1e-5)
  np.testing.assert_allclose(pooled, feat.reshape(16, 2, 16, 2).max(axis=(1, 3)))
  assert "panel:" in capsys.readouterr().out


def test_learn_filter_recovers_sobel_x(cifar10_dir, tmp_path, capsys):
  """The CLI end to end on 32 real images: the learned kernel is sobel_x to < 1e-3."""
  images = load_gray_folder(cifar10_dir / "train", 32)
  assert images.shape == (32, 32, 32) and 0.0 <= images.min() and images.max() <= 1.0
  assert learn_filter.main(["--target", "sobel_x", "--data", str(cifar10_dir / "train"),
                            "--num-images", "32", "--steps", "80", "--out", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  err = float(out.split("max abs error vs sobel_x:")[1].split()[0])
  assert err < 1e-3
  assert (tmp_path / "learn_filter.png").stat().st_size > 10_000
