"""Bad input (issue #22, section "Bad input"): each stops with an error naming the thing
(config key, layer, file) with what was expected and what was found, before any training;
or, where a config option asks for it, is repaired and counted in the run's start record.

Covered elsewhere: unknown model and dataset names and a batch size above the training
set (tests/test_train.py), a missing data folder, a folder without class folders or images,
an undecodable or odd-sized image (tests/test_data.py), a checkpoint of another
architecture (tests/test_reliability.py).
"""

import pathlib
import re
import shutil
import types

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from cnn_jax import checkpoint, data, models, parallel, train
from cnn_jax.config import base_config, validate
from cnn_jax.data import image_folder
from cnn_jax.metric_writer import read_jsonl
from cnn_jax.models import geometry
from tests.conftest import tiny_config

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def _folder(src: pathlib.Path, dst: pathlib.Path, n_train=4, n_test=2, classes=CLASSES):
  """A CIFAR-10-layout folder of real images, ``n_train`` / ``n_test`` per class."""
  for split, n in (("train", n_train), ("test", n_test)):
    for c in classes:
      (dst / split / c).mkdir(parents=True)
      for f in sorted((src / split / c).iterdir())[:n]:
        shutil.copy(f, dst / split / c / f.name)
  return dst


def _data_config(root, cache, **kw):
  return ml_collections.ConfigDict(dict(name="cifar10", dir=str(root), cache_dir=str(cache),
                                        **kw))


def _config(root, cache, **data_kw):
  """A tiny run (40 train / 20 test images, batch 20, 1 epoch) on the folder ``root``."""
  c = tiny_config("cifar10_cnn", root, cache, num_train=0, num_test=0, batch_size=20)
  c.eval_batch_size = 20
  c.model.kwargs.widths = (8, 8, 8)
  c.data.update(data_kw)
  return c


# --- Config --------------------------------------------------------------------------------


@pytest.mark.parametrize("key,value,match", [
    ("num_epochs", 0, "config key num_epochs = 0; expected > 0"),
    ("num_epochs", -3, "config key num_epochs = -3; expected > 0"),
    ("log_every_steps", 0, "config key log_every_steps = 0; expected > 0"),
    ("eval_every_epochs", 0, "config key eval_every_epochs = 0; expected > 0"),
    ("checkpoint_every_steps", -1, "config key checkpoint_every_steps = -1; expected >= 0"),
    ("optim.lr", 0.0, "config key optim.lr = 0.0; expected > 0"),
    ("optim.lr", -0.1, "config key optim.lr = -0.1; expected > 0"),
    ("optim.name", "rmsprop", r"config key optim.name = 'rmsprop'; expected one of "
                              r"\('sgd', 'adamw', 'airbench_sgd'\)"),
    ("optim.schedule", "linear", r"config key optim.schedule = 'linear'; expected one of "
                                 r"\('cosine', 'piecewise', 'constant', 'triangle'\)"),
    # The speedrun recipe's keys (configs/cifar10_speedrun.py).
    ("optim.triangle", (0.2, 1.0, 0.07), r"optim.triangle = \(0.2, 1.0, 0.07\); expected "
                                         r"\(start, peak_position, end\)"),
    ("optim.triangle", (0.2, 0.23), r"optim.triangle = \(0.2, 0.23\); expected"),
    ("optim.bias_scaler", 0.0, r"optim.bias_scaler = 0.0; expected > 0"),
    ("optim.whiten_bias_epochs", -1.0, r"optim.whiten_bias_epochs = -1.0; expected >= 0"),
    ("lookahead.every_n_steps", -5, r"lookahead.every_n_steps = -5; expected >= 0"),
    ("lookahead.decay_base", 1.5, r"lookahead.decay_base = 1.5; expected \(0, 1\]"),
    ("model.whitening_images", -1, r"model.whitening_images = -1; expected >= 0"),
    ("model.whitening_eps", 0.0, r"model.whitening_eps = 0.0; expected > 0"),
    ("eval_tta", "crops", r"eval_tta = 'crops'; expected one of \('none', 'flip', "
                          r"'flip_translate'\)"),
])
def test_out_of_range_or_unknown_values_name_the_key_and_what_is_expected(key, value, match):
  c = base_config()
  section, _, leaf = key.rpartition(".")
  (c[section] if section else c)[leaf] = value
  with pytest.raises(ValueError, match=match):
    validate(c)


def test_wrong_types_name_the_key_the_type_and_the_expected_one():
  # ml_collections refuses another type on assignment, naming the field and both types ...
  c = base_config()
  with pytest.raises(TypeError, match=r"'batch_size'.*str.*int"):
    c.batch_size = "128"
  # ... but not None, nor anything in a config built from a plain dict: validate does.
  c.batch_size = None
  with pytest.raises(TypeError, match=r"config key batch_size = None \(NoneType\); "
                                      r"expected an int \(default 128\)"):
    validate(c)
  raw = base_config().to_dict()
  raw["optim"]["lr"] = "0.1"
  with pytest.raises(TypeError, match=r"config key optim.lr = '0.1' \(str\); expected a "
                                      r"float"):
    validate(ml_collections.ConfigDict(raw))
  raw = base_config().to_dict()
  raw["num_epochs"] = 2.5
  with pytest.raises(TypeError, match=r"config key num_epochs = 2.5 \(float\); expected "
                                      r"an int"):
    validate(ml_collections.ConfigDict(raw))
  raw["num_epochs"], raw["data"]["flip"] = 2, 1
  with pytest.raises(TypeError, match=r"config key data.flip = 1 \(int\); expected a bool"):
    validate(ml_collections.ConfigDict(raw))
  c = base_config()
  c.optim.lr = 1  # an int where a float is expected is a number all the same
  validate(c)


def test_batch_size_not_divisible_by_the_device_count_names_both():
  four = types.SimpleNamespace(devices=np.empty(4, object))  # what check_batch_size reads
  with pytest.raises(ValueError, match=r"config key batch_size = 30 must divide by the "
                                       r"number of devices \(4\); use e.g. 28"):
    parallel.check_batch_size(30, four)
  with pytest.raises(ValueError, match=r"config key eval_batch_size = 1001 must divide"):
    parallel.check_batch_size(1001, four, "eval_batch_size")
  assert parallel.check_batch_size(32, four) == 32 // jax.process_count()


def test_unknown_model_lists_the_registered_names():
  with pytest.raises(KeyError, match=r"unknown model 'resnet21' \(config key model.name\). "
                                     r"Did you mean: .*resnet20.*Registered \(\d+, "
                                     r"cnn_jax.models.list_models\(\)\): .*alexnet, .*resnet20, "
                                     r".*vit_tiny_patch4_cifar"):
    models.create("resnet21")


# --- Model geometry ------------------------------------------------------------------------


def test_a_kernel_larger_than_its_input_names_the_layer_and_the_formula_values():
  with pytest.raises(geometry.GeometryError, match=re.escape(
      "layer Conv_1 (Conv) with input shape (1, 2, 2, 6): kernel (5, 5), strides (1, 1), "
      "dilation (1, 1), padding 'VALID' on spatial axis 0 of size 2: empty output: padded "
      "input n + p_total = 2 + 0 = 2 is smaller than the dilated kernel d(k-1)+1 = "
      "1*(5-1)+1 = 5")):
    geometry.check(models.create("lenet5"), (8, 8, 1))  # 8 -conv5-> 4 -pool2-> 2 -conv5-> ?
  with pytest.raises(geometry.GeometryError, match=re.escape(
      "dilation (3, 3), padding 'VALID' on spatial axis 0 of size 6: empty output: padded "
      "input n + p_total = 6 + 0 = 6 is smaller than the dilated kernel d(k-1)+1 = "
      "3*(3-1)+1 = 7")):
    geometry.check(nn.Conv(4, (3, 3), kernel_dilation=3, padding="VALID"), (6, 6, 3))
  with pytest.raises(geometry.GeometryError, match=re.escape(
      "strides (4, 4), dilation (1, 1), padding ((0, 0), (0, 0)) on spatial axis 0 of size "
      "2")):
    geometry.check(nn.Conv(4, (3, 3), strides=4, padding=((0, 0), (0, 0))), (2, 2, 3))
  geometry.check(models.create("lenet5"), (32, 32, 1))  # its own input size is fine
  geometry.check(models.create("resnet20"), (32, 32, 3))


def test_a_pooling_window_larger_than_its_input_names_the_enclosing_layer():
  # cifar10_cnn pools 2x2 after each of its 3 blocks: 2 -> 1 -> nothing.
  with pytest.raises(geometry.GeometryError, match=re.escape(
      "pooling in layer <model> (StackedCNN) on input shape (1, 1, 1, 64): pooling window "
      "(2, 2), strides (2, 2), dilation (1, 1), padding 'VALID' on spatial axis 0 of size 1: "
      "empty output")):
    geometry.check(models.create("cifar10_cnn"), (2, 2, 3))


class _Residual(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x, train=False):
    return x + nn.Conv(self.features, (3, 3))(x)


class _TwoBlocks(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    x = _Residual(16)(nn.Conv(16, (3, 3))(x))
    return _Residual(32)(x)  # 16 channels in, 32 added


def test_a_channel_mismatch_names_the_layer():
  with pytest.raises(geometry.GeometryError, match=re.escape(
      "layer _Residual_1 (_Residual) with input shape (1, 8, 8, 16): TypeError: add got "
      "incompatible shapes for broadcasting: (1, 8, 8, 16), (1, 8, 8, 32)")):
    geometry.check(_TwoBlocks(), (8, 8, 3))
  with pytest.raises(geometry.GeometryError, match=re.escape(
      "layer <model> (Conv) with input shape (1, 8, 8, 4): the input's 4 channels do not "
      "divide by feature_group_count = 3")):
    geometry.check(nn.Conv(6, (3, 3), feature_group_count=3), (8, 8, 4))


def test_training_a_model_too_deep_for_the_images_stops_naming_the_layer(
    cifar10_dir, tmp_path):
  """lenet5 with 13x13 kernels on 32x32 images: 20 -> pool -> 10, smaller than the second
  conv's kernel; refused when the model is first traced, before any training or save."""
  root = _folder(cifar10_dir, tmp_path / "d")
  cfg = _config(root, tmp_path / "cache")
  cfg.model.name, cfg.model.kwargs = "lenet5", ml_collections.ConfigDict({"kernel_size": 13})
  with pytest.raises(geometry.GeometryError, match=re.escape(
      "layer Conv_1 (Conv) with input shape (1, 10, 10, 6): kernel (13, 13)")):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert checkpoint.saved_steps(tmp_path / "run") == []


# --- Data ----------------------------------------------------------------------------------


def test_an_empty_class_folder_is_named(cifar10_dir, tmp_path):
  root = _folder(cifar10_dir, tmp_path / "d")
  for f in (root / "train" / "cat").iterdir():
    f.unlink()
  with pytest.raises(data.DataError, match=re.escape(
      f"class folder {str(root / 'train' / 'cat')!r} has no images (expected at least 1 "
      f"file)")):
    data.load(_data_config(root, tmp_path / "c"))


def test_train_and_test_class_sets_that_differ_are_named(cifar10_dir, tmp_path):
  root = _folder(cifar10_dir, tmp_path / "d")
  shutil.rmtree(root / "test" / "truck")
  with pytest.raises(data.DataError, match=re.escape(
      f"{str(root / 'test')!r} lacks class folders ['truck'] (1 of the 10 training classes): "
      f"the splits' class sets differ")):
    data.load(_data_config(root, tmp_path / "c"))
  (root / "test" / "truck").mkdir()
  shutil.copy(next((root / "test" / "cat").iterdir()), root / "test" / "truck" / "x.jpg")
  (root / "test" / "zebra").mkdir()
  with pytest.raises(data.DataError, match=re.escape(
      f"{str(root / 'test')!r} has class folders ['zebra'] that are not among the 10 "
      f"training classes")):
    data.load(_data_config(root, tmp_path / "c"))


def _truncated_jpeg(root) -> pathlib.Path:
  good = sorted((root / "train" / "cat").iterdir())[0]
  bad = root / "train" / "cat" / "truncated.jpg"
  bad.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
  return bad


@pytest.mark.parametrize("kind", ["truncated", "garbage", "non_image"])
def test_undecodable_files_stop_the_load_naming_the_file(cifar10_dir, tmp_path, kind):
  root = _folder(cifar10_dir, tmp_path / "d")
  if kind == "truncated":
    bad, why = _truncated_jpeg(root), "cannot decode image"
  elif kind == "garbage":
    bad, why = root / "train" / "dog" / "garbage.jpg", "cannot decode image"
    bad.write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
  else:
    bad = root / "train" / "dog" / "notes.txt"
    bad.write_text("labels were checked by hand\n")
    why = "not an image file (suffix '.txt'; expected one of ('.jpg'"
  with pytest.raises(data.DataError, match=re.escape(f"{why}") + ".*" + re.escape(
      f"{str(bad)!r}") + r".*set config key data.skip_corrupt = True to skip such files"):
    data.load(_data_config(root, tmp_path / "c"))
  assert not list((tmp_path / "c").glob("*.npz"))  # nothing cached


def test_skip_corrupt_skips_counts_and_reports_them_in_the_start_record(cifar10_dir,
                                                                       tmp_path):
  root = _folder(cifar10_dir, tmp_path / "d")
  bad = _truncated_jpeg(root)
  (root / "train" / "dog" / "notes.txt").write_text("not an image\n")
  cache = tmp_path / "cache"
  ds = data.load(_data_config(root, cache, skip_corrupt=True))
  assert len(ds.train_labels) == 40 and ds.report["train"]["skipped"] == 2
  assert any(str(bad) in s for s in ds.report["train"]["skipped_files"])
  assert ds.report["test"]["skipped"] == 0
  # The cache of a skipping load is not the cache of a strict one: that still refuses.
  with pytest.raises(data.DataError, match="truncated.jpg"):
    data.load(_data_config(root, cache))
  # The report comes back from the cache, and into the run's start record.
  run = tmp_path / "run"
  train.train_and_evaluate(_config(root, cache, skip_corrupt=True), str(run))
  start = read_jsonl(run / "metrics.jsonl")[0]
  assert start["data_report"]["train"]["skipped"] == 2
  assert start["data_report"]["train"]["skipped_files"] == ds.report["train"]["skipped_files"]


def test_grayscale_rgba_and_palette_images_are_converted_and_counted(cifar10_dir, tmp_path):
  root = _folder(cifar10_dir, tmp_path / "d")
  rgb = np.asarray(Image.open(sorted((root / "train" / "cat").iterdir())[0]).convert("RGB"))
  gray = rgb[..., 0]
  Image.fromarray(gray, "L").save(root / "train" / "cat" / "zz_gray.png")
  Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "RGBA").save(
      root / "train" / "cat" / "zz_rgba.png")
  Image.fromarray(rgb).convert("P").save(root / "train" / "cat" / "zz_palette.png")
  ds = data.load(_data_config(root, tmp_path / "c"))
  report = ds.report["train"]
  assert report["converted"] == 3
  assert report["converted_modes"] == {"L": 1, "RGBA": 1, "P": 1}
  assert ds.train_images.shape == (43, 32, 32, 3)
  cat = ds.train_images[ds.train_labels == CLASSES.index("cat")]
  np.testing.assert_array_equal(cat[4], np.dstack([gray] * 3))  # zz_gray, after 4 JPEGs
  np.testing.assert_array_equal(cat[6], rgb)  # zz_rgba: alpha dropped
  assert ds.report["test"]["converted"] == 0


def test_images_of_another_size_are_refused_naming_both_sizes_or_resized(cifar10_dir,
                                                                         tmp_path):
  root = _folder(cifar10_dir, tmp_path / "d")
  big = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
  Image.fromarray(big).save(root / "train" / "cat" / "zz_big.png")
  with pytest.raises(data.DataError, match=re.escape(
      f"image {str(root / 'train' / 'cat' / 'zz_big.png')!r} is 30x40 pixels (HxW), "
      f"expected 32x32: set config key data.resize = True")):
    data.load(_data_config(root, tmp_path / "c"))
  ds = data.load(_data_config(root, tmp_path / "c", resize=True))
  assert ds.report["train"]["resized"] == 1 and ds.report["test"]["resized"] == 0
  cat = ds.train_images[ds.train_labels == CLASSES.index("cat")]
  want = np.asarray(Image.fromarray(big).resize((32, 32), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(cat[-1], want)


def test_skipping_that_empties_a_class_is_refused(cifar10_dir, tmp_path):
  root = _folder(cifar10_dir, tmp_path / "d", classes=CLASSES)
  for f in (root / "test" / "frog").iterdir():
    f.write_bytes(b"broken")
  with pytest.raises(data.DataError, match=re.escape(
      f"class folder {str(root / 'test' / 'frog')!r} has no readable image once "
      f"undecodable files are skipped")):
    image_folder.load_split(root, "test", list(CLASSES), tmp_path / "c", skip_corrupt=True)
