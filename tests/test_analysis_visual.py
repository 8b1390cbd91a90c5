"""Visual analyses (cnn_jax.analysis.{filters,feature_maps,erf,shift_test,gradcam}): mechanics
checked on hand-built models with known answers, and the commands on a tiny real run."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import evaluate as cnn_evaluate
from cnn_jax import models, train
from cnn_jax.analysis import erf, feature_maps, filters, gradcam, shift_test, visual
from cnn_jax.analysis.receptive_field import receptive_field
from tests.conftest import tiny_config

# ----------------------------------------------------------------------------------------
# Grad-CAM on a model whose class logits read known regions of the feature map.

R0 = (slice(1, 3), slice(5, 7))  # rows 1-2, cols 5-6 of the 8x8 map: class 0 reads these
R1 = (slice(5, 8), slice(0, 2))  # rows 5-7, cols 0-1: class 1 reads these


class _Masked(nn.Module):
  """(N, 32, 32, 3) -> (N, 8, 8, 3) feature map: a positive 4x4-pooled image response,
  channel 0 kept only in region R0, channel 1 only in R1, channel 2 everywhere and large."""

  @nn.compact
  def __call__(self, x):
    a = nn.avg_pool(jnp.abs(x).sum(-1, keepdims=True) + 1.0, (4, 4), (4, 4))  # (N, 8, 8, 1)
    m = np.zeros((8, 8, 3), np.float32)
    m[R0 + (0,)] = 1.0
    m[R1 + (1,)] = 1.0
    m[..., 2] = 10.0  # a strong channel no class uses: plain CAM of activations would fail
    return a * m


class _TwoRegionNet(nn.Module):
  """Logit c = mean over the map of channel c (+ 0 x channel 2): depends on region R_c only."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    a = _Masked(name="features")(x)
    return nn.Dense(2, use_bias=False, name="head")(a.mean(axis=(1, 2)))


def _two_region_variables():
  return {"params": {"head": {"kernel": jnp.asarray([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])}}}


def _region_mask(region, scale=4):
  m = np.zeros((32, 32), bool)
  m[region[0].start * scale:region[0].stop * scale,
    region[1].start * scale:region[1].stop * scale] = True
  return m


def test_gradcam_peaks_where_the_class_logit_reads():
  model, v = _TwoRegionNet(), _two_region_variables()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 32, 32, 3)), jnp.float32)
  for cls, region, other in ((0, R0, R1), (1, R1, R0)):
    cam, small, logits, tgt = gradcam.gradcam(model, v, x, "features", [cls] * 3)
    assert cam.shape == (3, 32, 32) and small.shape == (3, 8, 8) and logits.shape == (3, 2)
    assert (tgt == cls).all() and (cam >= 0).all()
    inside = np.zeros((8, 8), bool)
    inside[region] = True
    # Eq. 2 at the layer's resolution: positive exactly on the region the logit reads.
    assert (small[:, inside] > 0).all() and (small[:, ~inside] == 0).all()
    for n in range(3):  # upsampled: the peak lies in the region (rows vs cols not swapped)
      i, j = np.unravel_index(np.argmax(cam[n]), cam[n].shape)
      assert _region_mask(region)[i, j], (cls, n, i, j)
      assert cam[n][_region_mask(other)].max() == 0.0
  # target=None explains the argmax class.
  _, _, logits, tgt = gradcam.gradcam(model, v, x, "features")
  np.testing.assert_array_equal(tgt, np.argmax(logits, -1))
  with pytest.raises(ValueError, match=r"target classes must be in \[0, 2\)"):
    gradcam.gradcam(model, v, x, "features", [2, 0, 0])
  with pytest.raises(ValueError, match=r"\['nope'\] were not called"):
    gradcam.gradcam(model, v, x, "nope")


def test_gradcam_default_layer_is_the_last_feature_map():
  assert gradcam.last_feature_map(models.create("resnet20"), (32, 32, 3)) == "BasicBlock_8"
  assert gradcam.last_feature_map(_TwoRegionNet(), (32, 32, 3)) == "features"


# ----------------------------------------------------------------------------------------
# Effective receptive field: nonzero exactly inside the theoretical field.

class _Stack(nn.Module):
  """3x3 conv ('SAME'), optionally then ReLU and a 3x3 stride-2 conv."""
  two: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3), padding="SAME", name="conv1")(x)
    if self.two:
      x = nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME", name="conv2")(nn.relu(x))
    return x.mean(axis=(1, 2))


@pytest.mark.parametrize("two,layer,size", [(False, "conv1", 3), (True, "conv1", 3),
                                            (True, "conv2", 5)])
def test_erf_is_nonzero_exactly_within_the_theoretical_field(two, layer, size):
  model = _Stack(two)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 13, 13, 3)), jnp.float32)
  v = model.init(jax.random.key(0), x[:1])
  m = erf.erf_maps(model, v, x, [layer], batch_size=3)[layer]  # 3 batches: 3 + 3 + 2
  h = {"conv1": 13, "conv2": 7}[layer]
  rf = receptive_field(model, (13, 13, 3))
  assert rf.modules[layer].size == (size, size)
  region = rf.modules[layer].region((h // 2, h // 2), (13, 13))
  inside = np.zeros((13, 13), bool)
  inside[region[0].start:region[0].stop, region[1].start:region[1].stop] = True
  assert inside.sum() == size * size  # the central unit's field is inside the image
  np.testing.assert_array_equal(m > 0, inside)
  # The mean over images equals the per-image maps averaged.
  one = [erf.erf_maps(model, v, x[i:i + 1], [layer])[layer] for i in range(8)]
  np.testing.assert_allclose(m, np.mean(one, axis=0), rtol=1e-5)
  rows, _, mu = erf.analyse(model, v, model.init(jax.random.key(5), x[:1]), x, [layer],
                            (13, 13, 3), batch_size=8)
  assert rows[0].mass_outside_theoretical == 0.0 and rows[0].theoretical_size == (size, size)
  assert rows[0].r95_chebyshev <= (size - 1) / 2 and (mu[layer] > 0).sum() == size * size


def test_erf_radius():
  d = np.zeros((9, 9))
  d[4, 4] = 1.0
  assert erf.radius(d, (4, 4)) == 0.0
  u = np.zeros((9, 9))
  u[2:7, 2:7] = 1.0  # uniform 5x5 square: 95% needs the whole square
  assert erf.radius(u, (4, 4)) == 2.0
  assert erf.radius(u, (4, 4), frac=9 / 25) == 1.0
  assert erf.radius(u, (4, 4), metric="euclidean") == pytest.approx(np.sqrt(8))
  with pytest.raises(ValueError, match="metric must be"):
    erf.radius(u, (4, 4), metric="l1")
  with pytest.raises(ValueError, match="nonnegative"):
    erf.radius(-u, (4, 4))


def test_default_layers_of_resnet20():
  model = models.create("resnet20")
  assert erf.default_layers(model, (32, 32, 3)) == ["Conv_0"] + [f"BasicBlock_{i}"
                                                                for i in range(9)]
  stages = visual.stage_outputs(visual.spatial_layers(model, (32, 32, 3)))
  assert [l.path for l in stages] == ["Conv_0", "BasicBlock_2", "BasicBlock_5", "BasicBlock_8"]
  assert [l.shape for l in stages] == [(32, 32, 16), (32, 32, 16), (16, 16, 32), (8, 8, 64)]


# ----------------------------------------------------------------------------------------
# Feature maps and layer names.

def test_forward_capture_records_and_perturbs():
  model = _Stack(True)
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 13, 13, 3)), jnp.float32)
  v = model.init(jax.random.key(0), x[:1])
  out, caps = visual.forward_capture(model, v, x, ["conv1", "conv2"])
  np.testing.assert_allclose(out, model.apply(v, x), rtol=1e-6)
  conv1 = nn.Conv(4, (3, 3), padding="SAME").apply({"params": v["params"]["conv1"]}, x)
  np.testing.assert_allclose(caps["conv1"], conv1, rtol=1e-5, atol=1e-6)
  assert caps["conv2"].shape == (2, 7, 7, 4)
  # An added array reaches the output: conv2 + 1 everywhere -> mean output + 1.
  out2, _ = visual.forward_capture(model, v, x, [], add={"conv2": jnp.ones((2, 7, 7, 4))})
  np.testing.assert_allclose(out2, out + 1.0, rtol=1e-5)
  got = feature_maps.feature_maps(model, v, x, ["conv2", "conv1"])
  assert list(got) == ["conv2", "conv1"]  # the requested order, not jit's sorted keys
  np.testing.assert_allclose(got["conv1"], conv1, rtol=1e-5, atol=1e-6)


def test_layer_names_are_validated():
  layers = visual.spatial_layers(models.create("resnet20"), (32, 32, 3))
  assert [l.path for l in visual.check_layers(["BasicBlock_3/Conv_1", "Conv_0"], layers)] == [
      "BasicBlock_3/Conv_1", "Conv_0"]
  with pytest.raises(ValueError, match=r"unknown layer\(s\) \['BasicBlock_9', 'Dense_0'\]: "
                                       r"valid layers .* are Conv_0, BatchNorm_0, BasicBlock_0,"):
    visual.check_layers(["BasicBlock_9", "Conv_0", "Dense_0"], layers)  # Dense_0: not a map


def test_filter_grid_has_one_normalised_tile_per_kernel():
  k = np.random.default_rng(3).standard_normal((5, 5, 3, 10)).astype(np.float32)
  k[..., 4] = 2.0  # a constant kernel
  tiles = filters.kernel_tiles(k)
  assert tiles.shape == (10, 5, 5, 3)
  for i, t in enumerate(tiles):
    if i == 4:
      assert (t == 0.5).all()
    else:
      assert t.min() == 0.0 and t.max() == 1.0
  np.testing.assert_allclose(tiles[0], (k[..., 0] - k[..., 0].min()) / np.ptp(k[..., 0]),
                             rtol=1e-6)
  fig = filters.plot_filters(k, "t")
  assert len([ax for ax in fig.axes if ax.images]) == 10 and len(fig.axes) == 12  # 3 rows of 4
  with pytest.raises(ValueError, match="C_in = 4"):
    filters.kernel_tiles(np.zeros((3, 3, 4, 2)))


def test_shift_images():
  img = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
  r = shift_test.shift_images(img, 2, "right", fill=np.array([7, 8, 9], np.uint8))
  np.testing.assert_array_equal(r[:, :, 2:], img[:, :, :3])
  assert (r[:, :, :2] == np.array([7, 8, 9])).all()
  u = shift_test.shift_images(img, 1, "up")
  np.testing.assert_array_equal(u[:, :3], img[:, 1:])
  assert (u[:, 3] == 0).all()
  assert shift_test.shift_images(img, 0) is img
  with pytest.raises(ValueError, match=r"shift must be in \[0, 5\)"):
    shift_test.shift_images(img, 5)


# ----------------------------------------------------------------------------------------
# The commands on a tiny real run (cifar10_cnn, 2 steps on 64 real CIFAR-10 images).

@pytest.fixture(scope="module")
def tiny_run(cifar10_dir, cache_dir, tmp_path_factory):
  """(workdir, final metrics, visual.load_run of it): restored once here."""
  wd = tmp_path_factory.mktemp("visual_run")
  cfg = tiny_config("cifar10_cnn", cifar10_dir, cache_dir, num_train=64, num_test=60,
                    batch_size=32, num_epochs=1)
  cfg.eval_batch_size = 25  # the last eval batch is padded: the shift test must match
  final = train.train_and_evaluate(cfg, str(wd))
  return wd, final, visual.load_run(wd)


@pytest.fixture
def restored_once(tiny_run, monkeypatch):
  """The commands' ``visual.load_run`` answers with the fixture's restored run (each real
  restore reloads the data, seconds each), after checking it is asked for that workdir."""
  wd, _, loaded = tiny_run

  def load_run(workdir, data_dir=None):
    assert str(workdir) == str(wd) and data_dir is None
    return loaded
  monkeypatch.setattr(visual, "load_run", load_run)
  return tiny_run


def test_shift_test_at_zero_equals_the_unshifted_accuracy(restored_once, tmp_path):
  wd, final, _ = restored_once
  out = tmp_path / "shift.png"
  assert shift_test.main(["--workdir", str(wd), str(wd), "--labels", "a", "b",
                          "--max-shift", "2", "--out", str(out)]) == 0
  rec = json.loads(out.with_suffix(".json").read_text())
  scored = cnn_evaluate.evaluate_checkpoint(wd)
  assert [r["label"] for r in rec["runs"]] == ["a", "b"]
  for r in rec["runs"]:
    assert r["shifts"] == [0, 1, 2] and r["n"] == 60 == scored["test_count"]
    assert r["accuracy"][0] == scored["test_accuracy"] == final["test_accuracy"]
    assert r["flip_fraction"][0] == 0.0 and r["correct"][0] == round(60 * r["accuracy"][0])
  assert out.stat().st_size > 0


def test_commands_on_a_real_run(restored_once, tmp_path, cifar10_dir):
  wd, _, run = restored_once
  assert run.step == 2 and run.input_shape == (32, 32, 3)
  path, kernel = filters.first_conv(run.model, run.variables, run.input_shape)
  assert path == "ConvBNReLU_0/Conv_0" and kernel.shape == (3, 3, 3, 32)
  np.testing.assert_array_equal(kernel, run.variables["params"]["ConvBNReLU_0"]["Conv_0"]
                                ["kernel"])
  assert filters.main(["--workdir", str(wd), "--out", str(tmp_path / "f.png")]) == 0
  image = next((cifar10_dir / "test" / "cat").iterdir())
  assert feature_maps.main(["--workdir", str(wd), "--image", str(image), "--layers",
                            "ConvBNReLU_5", "ConvBNReLU_0/Conv_0", "--out",
                            str(tmp_path / "m.png")]) == 0
  with pytest.raises(SystemExit):  # argparse error naming the valid layers
    feature_maps.main(["--workdir", str(wd), "--image", str(image), "--layers", "Conv_0",
                       "--out", str(tmp_path / "bad.png")])
  assert not (tmp_path / "bad.png").exists()
  with pytest.raises(ValueError, match="is 32x32 pixels, the model takes 64x64"):
    visual.load_image(image, (64, 64, 3))
  assert gradcam.main(["--workdir", str(wd), "--n", "3", "--out", str(tmp_path / "g.png")]) == 0
  assert erf.main(["--workdir", str(wd), "--images", "4", "--layers", "ConvBNReLU_0",
                   "ConvBNReLU_3", "--out", str(tmp_path / "e.png")]) == 0
  rows = json.loads((tmp_path / "e.json").read_text())["layers"]
  assert [r["theoretical_size"] for r in rows] == [[3, 3], [14, 14]]
  assert all(r["mass_outside_theoretical"] == 0.0 for r in rows)
  for name in ("f", "m", "g", "e"):
    assert (tmp_path / f"{name}.png").stat().st_size > 1000
