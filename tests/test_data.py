"""Image-folder loading, caching, errors, and the on-device augmentation."""

import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from cnn_jax import data
from cnn_jax.data import augment, image_folder
from cnn_jax.data.datasets import _take, channel_stats


def _small_folder(src: pathlib.Path, dst: pathlib.Path, classes=("airplane", "cat", "truck"),
                  per_class=4):
  for split in ("train", "test"):
    for c in classes:
      (dst / split / c).mkdir(parents=True)
      for f in sorted((src / split / c).iterdir())[:per_class]:
        shutil.copy(f, dst / split / c / f.name)
  return dst


def test_folder_matches_pillow_and_caches(cifar10_dir, tmp_path):
  root = _small_folder(cifar10_dir, tmp_path / "d")
  classes = image_folder.class_names(root)
  assert classes == ["airplane", "cat", "truck"]
  cache = tmp_path / "cache"
  x, y = image_folder.load_split(root, "train", classes, cache)
  assert x.shape == (12, 32, 32, 3) and x.dtype == np.uint8
  np.testing.assert_array_equal(y, np.repeat([0, 1, 2], 4))
  # Independent decode of one file.
  first = sorted((root / "train" / "cat").iterdir())[0]
  np.testing.assert_array_equal(x[4], np.asarray(Image.open(first).convert("RGB")))
  cached = list(cache.glob("*.npz"))
  assert len(cached) == 1
  # Second load reads the cache (poison the decoder to prove it is not called).
  orig = image_folder.decode_folder
  image_folder.decode_folder = None
  try:
    x2, y2 = image_folder.load_split(root, "train", classes, cache)
  finally:
    image_folder.decode_folder = orig
  np.testing.assert_array_equal(x, x2)
  # A changed folder misses the cache instead of returning stale data.
  (root / "train" / "cat" / sorted((root / "train" / "cat").iterdir())[0].name).unlink()
  x3, _ = image_folder.load_split(root, "train", classes, cache)
  assert len(x3) == 11


def test_full_cifar10_counts(cifar10_dir, cache_dir):
  ds = data.load(ml_collections.ConfigDict(dict(name="cifar10", dir=str(cifar10_dir),
                                                cache_dir=str(cache_dir))))
  assert ds.train_images.shape == (50_000, 32, 32, 3)
  assert ds.test_images.shape == (10_000, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(ds.train_labels), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
  assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"
  # Published CIFAR-10 channel means (0-255): 125.3, 123.0, 113.9; JPEG shifts them little.
  np.testing.assert_allclose(ds.mean, [125.3, 123.0, 113.9], atol=1.0)


def test_channel_stats_against_numpy():
  x = np.random.default_rng(0).integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
  mean, std = channel_stats(x, chunk=7)
  np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, x.reshape(-1, 3).std(0), rtol=1e-5)


def test_take_is_class_balanced():
  labels = np.repeat(np.arange(10), 100)
  images = np.arange(1000)
  x, y = _take(images, labels, 50)
  np.testing.assert_array_equal(np.bincount(y), [5] * 10)
  assert np.all(np.diff(x) > 0)  # original order kept


def test_errors_name_the_problem(tmp_path, cifar10_dir):
  cfg = lambda **kw: ml_collections.ConfigDict(dict(name="cifar10", cache_dir=str(tmp_path),
                                                    **kw))
  with pytest.raises(data.DataError, match="does not exist"):
    data.load(cfg(dir=str(tmp_path / "nope")))
  empty = tmp_path / "empty"
  (empty / "train").mkdir(parents=True)
  with pytest.raises(data.DataError, match="no class sub-folders"):
    data.load(cfg(dir=str(empty)))
  with pytest.raises(KeyError, match="unknown dataset 'cifar11'.*cifar10"):
    data.load(ml_collections.ConfigDict(dict(name="cifar11", dir="")))
  # Class folders without images.
  noimg = tmp_path / "noimg"
  for c in range(10):
    (noimg / "train" / f"c{c}").mkdir(parents=True)
  with pytest.raises(data.DataError, match="no images found"):
    data.load(cfg(dir=str(noimg)))


def test_unreadable_image_is_named(cifar10_dir, tmp_path):
  root = _small_folder(cifar10_dir, tmp_path / "d")
  bad = root / "train" / "cat" / "broken.jpg"
  bad.write_bytes(b"not a jpeg")
  with pytest.raises(data.DataError, match="broken.jpg"):
    image_folder.load_split(root, "train", image_folder.class_names(root), tmp_path / "c")
  assert not list((tmp_path / "c").glob("*.npz"))  # nothing half-written


def test_odd_sized_image_is_named(cifar10_dir, tmp_path):
  root = _small_folder(cifar10_dir, tmp_path / "d")
  Image.new("RGB", (40, 30)).save(root / "train" / "cat" / "big.png")
  with pytest.raises(data.DataError, match="big.png.*expected"):
    image_folder.load_split(root, "train", image_folder.class_names(root), tmp_path / "c")


def test_random_crop_is_a_window_of_the_padded_image():
  x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  for mode, np_mode in (("reflect", "reflect"), ("constant", "constant")):
    out = np.asarray(augment.random_crop(jax.random.key(0), jnp.asarray(x), 2, mode))
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode=np_mode)
    offsets = set()
    for i in range(16):
      hits = [(a, b) for a in range(5) for b in range(5)
              if np.array_equal(padded[i, a:a + 8, b:b + 8], out[i])]
      assert hits, f"crop {i} is not a window of the padded image"
      offsets.add(hits[0])
    assert len(offsets) > 1  # offsets vary per image
  np.testing.assert_array_equal(augment.random_crop(jax.random.key(0), x, 0), x)


def test_alternating_flip_mirrors_each_image_every_other_epoch():
  n = 400
  x = np.random.default_rng(0).integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)
  first = augment.first_epoch_flips(seed=7, n=n)
  assert 150 < first.sum() < 250
  np.testing.assert_array_equal(first, augment.first_epoch_flips(seed=7, n=n))
  assert not np.array_equal(first, augment.first_epoch_flips(seed=8, n=n))
  idx = np.random.default_rng(1).permutation(n)[:128]  # a batch in shuffled order
  mirrored = []
  for epoch in range(4):
    out = augment.alternating_flip(x[idx], first[idx], epoch)
    assert out.dtype == np.uint8
    m = np.array([np.array_equal(o, a[:, ::-1]) for o, a in zip(out, x[idx])])
    same = np.array([np.array_equal(o, a) for o, a in zip(out, x[idx])])
    assert np.all(m ^ same)  # these random images are not mirror-symmetric
    mirrored.append(m)
  np.testing.assert_array_equal(mirrored[0], first[idx])
  np.testing.assert_array_equal(mirrored[1], ~first[idx])
  np.testing.assert_array_equal(mirrored[2], mirrored[0])
  np.testing.assert_array_equal(mirrored[3], mirrored[1])
  with pytest.raises(ValueError, match=r"flipped_in_epoch0 has shape \(3,\), expected \(128,\)"):
    augment.alternating_flip(x[idx], first[:3], 0)


def test_random_flip_flips_about_half():
  x = np.random.default_rng(0).integers(0, 256, (400, 4, 4, 1), dtype=np.uint8)
  out = np.asarray(augment.random_flip(jax.random.key(3), jnp.asarray(x)))
  same = np.array([np.array_equal(o, a) for o, a in zip(out, x)])
  mirrored = np.array([np.array_equal(o, a[:, ::-1]) for o, a in zip(out, x)])
  assert np.all(same | mirrored)
  assert 150 < mirrored.sum() < 250


def test_normalize():
  x = np.full((1, 2, 2, 3), 100, np.uint8)
  out = augment.normalize(jnp.asarray(x), [100, 50, 0], [1, 2, 4])
  np.testing.assert_allclose(np.asarray(out)[0, 0, 0], [0, 25, 25])
