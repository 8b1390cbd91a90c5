"""Inception random-resized crop, flip and the resize/center-crop view, on real Tiny-ImageNet-10
images, and the Grain pipeline that applies them."""

import math

import numpy as np
import pytest
from PIL import Image

from cnn_jax import parallel
from cnn_jax.config import base_config
from cnn_jax.data import imagenet_augment as ia
from cnn_jax.data import loader
from tests.conftest import TINY_IMAGENET_DIR


@pytest.fixture(scope="module")
def images():
  """Eight real 64x64 Tiny-ImageNet-10 training images (RGB uint8), two classes."""
  assert TINY_IMAGENET_DIR.is_dir(), f"real Tiny-ImageNet-10 expected at {TINY_IMAGENET_DIR}"
  classes = sorted(p for p in (TINY_IMAGENET_DIR / "train").iterdir() if p.is_dir())[:2]
  files = [f for c in classes for f in sorted(c.iterdir())[:4]]
  return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def test_crop_boxes_follow_the_scale_and_ratio_ranges():
  rng = np.random.default_rng(0)
  h, w = 64, 96
  fractions, ratios = [], []
  for _ in range(500):
    top, left, ch, cw = ia.sample_crop_box(rng, h, w)
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
    fractions.append(ch * cw / (h * w))
    ratios.append(cw / ch)
  # Rounding to whole pixels moves the area and ratio a little outside the ranges.
  assert min(fractions) > 0.06 and max(fractions) <= 1.0
  assert 0.75 * 0.85 < min(ratios) and max(ratios) < 4 / 3 * 1.15
  assert np.std(fractions) > 0.1  # spread over the range, not one box
  # No box of area 100% with aspect 2 fits a square: the fallback is the whole width cut to
  # the nearest allowed ratio, centred (torchvision's rule, worked out by hand).
  assert ia.sample_crop_box(rng, 64, 64, scale=(1.0, 1.0), ratio=(2.0, 2.0)) == (16, 0, 32, 64)
  with pytest.raises(ValueError, match="data.rrc_scale"):
    ia.sample_crop_box(rng, 64, 64, scale=(0.5, 0.2))


def test_random_resized_crop_is_a_resized_window(images):
  img = images[0]
  # Whole-image crop to the same size: bilinear resampling of an identical grid is the image.
  same = ia.random_resized_crop(img, np.random.default_rng(1), 64, scale=(1, 1), ratio=(1, 1))
  np.testing.assert_array_equal(same, img)
  half = ia.random_resized_crop(img, np.random.default_rng(1), 32, scale=(1, 1), ratio=(1, 1))
  ref = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(half, ref)
  # A quarter-area square crop at its own size is a 32x32 window of the image.
  offsets = set()
  for seed in range(6):
    out = ia.random_resized_crop(img, np.random.default_rng(seed), 32, scale=(0.25, 0.25),
                                 ratio=(1, 1))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    hits = [(t, l) for t in range(33) for l in range(33)
            if np.array_equal(img[t:t + 32, l:l + 32], out)]
    assert hits, "the crop is not a window of the image"
    offsets.add(hits[0])
  assert len(offsets) > 1


def test_train_view_flips_about_half(images):
  rng = np.random.default_rng(0)
  mirrored = 0
  for i in range(60):
    img = images[i % len(images)]
    out = ia.train_view(img, rng, 64, scale=(1, 1), ratio=(1, 1))
    is_same, is_mirror = np.array_equal(out, img), np.array_equal(out, img[:, ::-1])
    assert is_same or is_mirror
    mirrored += is_mirror and not is_same
  assert 15 <= mirrored <= 45


def test_center_crop_resizes_the_shorter_side_then_cuts_the_middle(images):
  img = images[1]
  # 56 / 0.875 = 64: no resize, the middle 56x56.
  np.testing.assert_array_equal(ia.center_crop(img, 56, 0.875), img[4:60, 4:60])
  # A 64x48 (HxW) image, 32 / 0.5 = 64 on the shorter side: 85x64, then the middle 32x32.
  tall = np.ascontiguousarray(img[:, 8:56])
  ref = np.asarray(Image.fromarray(tall).resize((64, int(64 * 64 / 48)),
                                                Image.Resampling.BILINEAR))
  top = (ref.shape[0] - 32) // 2
  np.testing.assert_array_equal(ia.center_crop(tall, 32, 0.5), ref[top:top + 32, 16:48])
  assert math.floor(224 / 0.875) == 256  # the ImageNet default: resize 256, crop 224
  with pytest.raises(ValueError, match="data.eval_crop_fraction"):
    ia.center_crop(img, 32, 1.5)


def test_grain_inception_pipeline_on_tiny_imagenet10(tmp_path):
  """Streamed train batches are 48x48 inception crops of the right class's images; test
  batches are the center crops of the decoded files, in file order."""
  c = base_config()
  c.data.name, c.data.dir, c.data.cache_dir = "tiny_imagenet_10", str(TINY_IMAGENET_DIR), str(
      tmp_path)
  c.data.loader, c.data.augment, c.data.image_size = "grain", "inception", 48
  c.data.num_train, c.data.num_test, c.data.num_workers = 40, 20, 0
  ds = loader.open_data(c.data, seed=0)
  assert ds.input_shape == (48, 48, 3) and ds.num_classes == 10
  sharding = parallel.batch_sharded(parallel.data_mesh())
  batches = list(ds.train_batches(batch_size=8, steps_per_epoch=5, num_epochs=1, start_step=0,
                                  sharding=sharding))
  x = np.concatenate([np.asarray(b[1]) for b in batches])
  y = np.concatenate([np.asarray(b[2]) for b in batches])
  assert x.shape == (40, 48, 48, 3) and x.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(y), [4] * 10)  # an epoch of the balanced subset
  # Same seed, same crops: the stream is a function of the seed and the position.
  again = next(iter(ds.train_batches(batch_size=8, steps_per_epoch=5, num_epochs=1,
                                     start_step=0, sharding=sharding)))
  np.testing.assert_array_equal(np.asarray(again[1]), x[:8])
  evals = list(ds.eval_batches(8, sharding))
  assert [int(np.asarray(m).sum()) for _, _, m in evals] == [8, 8, 4]
  src = ds.gd.test_source
  first_path, first_label = src[0]
  ref = ia.center_crop(np.asarray(Image.open(first_path).convert("RGB")), 48, 0.875)
  np.testing.assert_array_equal(np.asarray(evals[0][0])[0], ref)
  assert int(np.asarray(evals[0][1])[0]) == first_label
  # The folder's mean/std were computed from its training images (no published values).
  assert ds.mean.shape == (3,) and 50 < ds.mean[0] < 200
