"""Model zoo I: LeNet-5, small_cnn, AlexNet, VGG, GoogLeNet, DenseNet, ImageNet ResNets
(+ SE / CBAM), CIFAR ResNets (options A/B) and pre-activation ResNets.

Every expected parameter count is a published number (torchvision's model table, the
papers, kuangliu/pytorch-cifar), never one computed by the code under test. Big models are
only traced (``jax.eval_shape``); small ones run real forward passes on CPU.

Run: ``pytest tests/test_models_zoo1.py`` (``-m 'not slow'`` skips the heavier training).
"""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.models.alexnet import adaptive_avg_pool
from cnn_jax.models.attention_blocks import CBAM, SqueezeExcite
from cnn_jax.models.densenet import DenseNet
from cnn_jax.models.googlenet import GoogLeNet, max_pool_ceil
from cnn_jax.models.preact_resnet import PreActResNet
from cnn_jax.models.resnet import ResNet
from cnn_jax.train import train_and_evaluate

from tests.conftest import tiny_config

IMNET = (224, 224, 3)
CIFAR = (32, 32, 3)

# (name, create kwargs, input HWC, num_classes, published parameter count)
PUBLISHED_COUNTS = [
    ("lenet5", {}, (32, 32, 1), 10, 61_706),
    ("small_cnn", {}, CIFAR, 10, 545_098),
    ("alexnet", {}, IMNET, 1000, 61_100_840),
    ("vgg11", {}, IMNET, 1000, 132_863_336),
    ("vgg13", {}, IMNET, 1000, 133_047_848),
    ("vgg16", {}, IMNET, 1000, 138_357_544),
    ("vgg19", {}, IMNET, 1000, 143_667_240),
    ("vgg11_bn", {}, IMNET, 1000, 132_868_840),
    ("vgg13_bn", {}, IMNET, 1000, 133_053_736),
    ("vgg16_bn", {}, IMNET, 1000, 138_365_992),
    ("vgg19_bn", {}, IMNET, 1000, 143_678_248),
    # kuangliu/pytorch-cifar VGG (conv-BN-ReLU, 512 -> 10 linear).
    ("vgg11_cifar", {}, CIFAR, 10, 9_231_114),
    ("vgg13_cifar", {}, CIFAR, 10, 9_416_010),
    ("vgg16_cifar", {}, CIFAR, 10, 14_728_266),
    ("vgg19_cifar", {}, CIFAR, 10, 20_040_522),
    ("googlenet", {}, IMNET, 1000, 6_624_904),
    ("densenet121", {}, IMNET, 1000, 7_978_856),
    ("densenet169", {}, IMNET, 1000, 14_149_480),
    ("densenet201", {}, IMNET, 1000, 20_013_928),
    ("densenet161", {}, IMNET, 1000, 28_681_000),
    ("resnet18", {}, IMNET, 1000, 11_689_512),
    ("resnet34", {}, IMNET, 1000, 21_797_672),
    ("resnet50", {}, IMNET, 1000, 25_557_032),
    ("resnet101", {}, IMNET, 1000, 44_549_160),
    ("resnet152", {}, IMNET, 1000, 60_192_808),
    ("resnet18_cifar", {}, CIFAR, 10, 11_173_962),
    ("resnet34_cifar", {}, CIFAR, 10, 21_282_122),
    ("seresnet50", {}, IMNET, 1000, 28_088_024),
    ("cbam_resnet50", {}, IMNET, 1000, 28_089_624),
    # He et al. 2016 (Identity Mappings), CIFAR-10.
    # Depth 20: 270,256 conv + 650 fc + 1,376 BN (in-channel and out-channel BN per block,
    # final BN; no stem BN) = 272,282, counted by hand from the layer list.
    ("preact_resnet20", {}, CIFAR, 10, 272_282),
    ("preact_resnet110", {}, CIFAR, 10, 1_730_522),
    ("preact_resnet164", {}, CIFAR, 10, 1_703_258),
    ("preact_resnet1001", {}, CIFAR, 10, 10_327_706),
    ("preact_resnet18", {}, CIFAR, 10, 11_171_146),
]
# He et al. 2015 CIFAR ResNets, option A (parameter-free shortcuts).
CIFAR_RESNET_A = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962,
                  1202: 19_421_274}
# Option B adds two 1x1 projections + BN (16->32 and 32->64): 512 + 64 + 2048 + 128.
OPTION_B_EXTRA = 2_752
for _d, _n in CIFAR_RESNET_A.items():
  PUBLISHED_COUNTS.append((f"resnet{_d}", {"shortcut": "A"}, CIFAR, 10, _n))
  PUBLISHED_COUNTS.append((f"resnet{_d}", {"shortcut": "B"}, CIFAR, 10, _n + OPTION_B_EXTRA))

MY_NAMES = sorted({name for name, *_ in PUBLISHED_COUNTS})


def _abstract(model, hwc, batch=1):
  """(logits ShapeDtypeStruct, variables tree of ShapeDtypeStructs), no real compute."""
  x = jnp.zeros((batch, *hwc))
  return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))


@pytest.mark.parametrize(
    "name,kwargs,hwc,num_classes,expected", PUBLISHED_COUNTS,
    ids=[f"{n}{'-' + k['shortcut'] if k else ''}" for n, k, *_ in PUBLISHED_COUNTS])
def test_published_parameter_count_and_output_shape(name, kwargs, hwc, num_classes, expected):
  model = models.create(name, num_classes=num_classes, **kwargs)
  logits, variables = _abstract(model, hwc, batch=2)
  assert models.count_params(variables) == expected
  assert logits.shape == (2, num_classes)
  assert logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def test_every_name_is_registered():
  names = set(models.list_models())
  missing = [n for n in MY_NAMES if n not in names]
  assert not missing, f"not registered: {missing}"


def test_lenet5_on_cifar_sees_three_input_channels():
  # The first conv gains 2 * 25 * 6 weights on RGB input: 61,706 + 300.
  _, v = _abstract(models.create("lenet5", num_classes=10), CIFAR)
  assert models.count_params(v) == 61_706 + 300


# ---------------------------------------------------------------- real forward passes

def _init(model, x):
  """Real variables, initialised under jit (one compile instead of one per eager op)."""
  return jax.jit(lambda k, x: model.init(k, x, train=False))(jax.random.key(0), x)


def _random_variables(model, x, seed=0):
  """Variables of the right shapes filled by numpy (no XLA compile of ``init``): params
  N(0, 1/fan_in), BatchNorm running mean 0 and variance 1."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    last = str(path[-1])
    if "var" in last:
      return jnp.ones(s.shape, s.dtype)
    if "mean" in last:
      return jnp.zeros(s.shape, s.dtype)
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
    scale = 1.0 if "scale" in last else 1.0 / math.sqrt(fan_in)
    base = 1.0 if "scale" in last else 0.0
    return jnp.asarray(base + scale * rng.standard_normal(s.shape) * (0.1 if len(s.shape) == 1
                                                                      else 1.0), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def _small_densenet(num_classes=10, **kw):
  return DenseNet(num_classes=num_classes, growth_rate=8, block_config=(2, 2),
                  num_init_features=16, **kw)


def _small_cbam_resnet(num_classes=10, **kw):
  return ResNet(num_classes=num_classes, block="bottleneck", stage_sizes=(1, 1),
                widths=(8, 16), strides=(1, 2), dilations=(1, 1), stem="cifar",
                stem_width=16, attention=functools.partial(CBAM, reduction=4), **kw)


def _small_se_resnet(num_classes=10, **kw):
  return ResNet(num_classes=num_classes, block="basic", stage_sizes=(1, 1), widths=(16, 32),
                strides=(1, 2), dilations=(1, 1), stem="cifar", stem_width=16,
                attention=functools.partial(SqueezeExcite, reduction=4), **kw)


SMALL_MODELS = {
    "lenet5": lambda **kw: models.create("lenet5", **kw),
    "small_cnn": lambda **kw: models.create("small_cnn", **kw),
    "vgg11_cifar": lambda **kw: models.create("vgg11_cifar", **kw),
    "resnet20_B": lambda **kw: models.create("resnet20", shortcut="B", **kw),
    "preact_resnet20_basic": lambda **kw: PreActResNet(block="basic", stage_sizes=(3, 3, 3),
                                                       **kw),
    "preact_resnet11_bottleneck": lambda **kw: PreActResNet(block="bottleneck",
                                                            stage_sizes=(1, 1, 1), **kw),
    "densenet_small": _small_densenet,
    "cbam_resnet_small": _small_cbam_resnet,
    "se_resnet_small": _small_se_resnet,
}


@pytest.mark.parametrize("key", sorted(SMALL_MODELS))
def test_small_models_jit_forward_deterministic_in_eval(key):
  model = SMALL_MODELS[key](num_classes=7)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = _random_variables(model, x)
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  y1 = fwd(variables, x)
  assert y1.shape == (2, 7) and y1.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(y1)))
  # Eval mode is deterministic (no 'dropout' rng is passed, none is needed).
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(fwd(variables, x)))


@pytest.mark.parametrize("key", ["cbam_resnet_small", "densenet_small"])
def test_train_mode_updates_batch_stats(key):
  model = SMALL_MODELS[key](num_classes=5)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = _init(model, x)
  y, upd = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                           rngs={"dropout": jax.random.key(2)}))(variables, x)
  assert y.shape == (4, 5)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), upd["batch_stats"],
                         variables["batch_stats"])
  assert all(jax.tree.leaves(changed))


def test_dropout_uses_dropout_rng_only_in_train_mode():
  model = models.create("small_cnn", num_classes=10, dropout_rate=0.5)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  v = _init(model, x)
  train_fwd = jax.jit(lambda v, x, k: model.apply(v, x, train=True, rngs={"dropout": k}))
  a = train_fwd(v, x, jax.random.key(1))
  b = train_fwd(v, x, jax.random.key(2))
  assert not np.allclose(a, b)
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda: model.apply(v, x, train=True))
  eval_fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  np.testing.assert_array_equal(eval_fwd(v, x), eval_fwd(v, x))


@pytest.mark.parametrize("key", ["se_resnet_small"])
def test_bfloat16_compute_keeps_float32_params_and_logits(key):
  model = SMALL_MODELS[key](num_classes=10, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  v = _init(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
  y = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
  assert y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))
  model32 = SMALL_MODELS[key](num_classes=10)
  y32 = jax.jit(lambda v, x: model32.apply(v, x, train=False))(v, x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y32), rtol=0.1, atol=0.1)


def test_dtype_argument_reaches_every_registered_zoo1_model():
  for name in MY_NAMES:
    assert models.create(name, num_classes=3, dtype=jnp.bfloat16).dtype == jnp.bfloat16


# ---------------------------------------------------------------- building blocks

def test_squeeze_excite_params_and_gate_range():
  se = SqueezeExcite(reduction=16)
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 256))
  v = jax.jit(se.init)(jax.random.key(1), x)
  # 2 C^2 / r + C / r + C for C = 256, r = 16 (Hu et al.: FC layers with bias).
  assert models.count_params(v) == 2 * 256 * 16 + 16 + 256
  y = jax.jit(se.apply)(v, x)
  ratio = np.asarray(y / x)
  assert ratio.min() > 0 and ratio.max() < 1  # a sigmoid gate per (example, channel)
  np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1, :1, :], ratio.shape),
                             rtol=1e-4)


def test_cbam_params_and_spatial_gate_inputs():
  cbam = CBAM(reduction=16, kernel_size=7)
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 64))
  v = jax.jit(functools.partial(cbam.init, train=False))(jax.random.key(1), x)
  # Channel MLP as SE (bias) + 7x7x2->1 conv without bias + BN scale/offset.
  assert models.count_params(v) == (2 * 64 * 4 + 4 + 64) + 7 * 7 * 2 + 2
  conv_kernel = v["params"]["SpatialGate_0"]["Conv_0"]["kernel"]
  assert conv_kernel.shape == (7, 7, 2, 1)
  assert cbam.apply(v, x, train=False).shape == x.shape


def test_max_pool_ceil_matches_pytorch_ceil_mode():
  # PyTorch MaxPool2d(3, 2, ceil_mode=True): 112 -> 56, 56 -> 28, 28 -> 14, 7 -> 3;
  # MaxPool2d(2, 2, ceil_mode=True): 14 -> 7, 7 -> 4.
  for size, window, out in [(112, 3, 56), (56, 3, 28), (28, 3, 14), (7, 3, 3), (14, 2, 7),
                            (7, 2, 4)]:
    assert max_pool_ceil(jnp.zeros((1, size, size, 1)), window, 2).shape[1] == out
  # The partial last window is a max over the real entries only (-inf padding).
  x = -jnp.arange(1.0, 8.0).reshape(1, 7, 1, 1) * jnp.ones((1, 1, 7, 1))
  y = max_pool_ceil(x, 2, 2)[0, :, 0, 0]
  np.testing.assert_array_equal(np.asarray(y), [-1.0, -3.0, -5.0, -7.0])


def test_adaptive_avg_pool_matches_pytorch_windows():
  # AdaptiveAvgPool 5 -> 3 uses overlapping windows [0,2), [1,4), [3,5).
  x = jnp.arange(5.0).reshape(1, 5, 1, 1) * jnp.ones((1, 1, 5, 1))
  y = adaptive_avg_pool(x, (3, 3))[0, :, 0, 0]
  np.testing.assert_allclose(np.asarray(y), [0.5, 2.0, 3.5])
  x = jax.random.normal(jax.random.key(0), (2, 14, 14, 3))
  np.testing.assert_allclose(np.asarray(adaptive_avg_pool(x, (7, 7))),
                             np.asarray(x).reshape(2, 7, 2, 7, 2, 3).mean((2, 4)), rtol=1e-6,
                             atol=1e-6)  # float32 sums differ in order by CPU (AVX2 vs AVX-512)
  np.testing.assert_array_equal(np.asarray(adaptive_avg_pool(x, (14, 14))), np.asarray(x))


def test_googlenet_branch3_kernel_option():
  # The paper's 5x5 third branch: each Inception module gains (25 - 9) * c5red * c5 weights.
  _, v3 = _abstract(GoogLeNet(num_classes=1000), IMNET)
  _, v5 = _abstract(GoogLeNet(num_classes=1000, branch3_kernel=5), IMNET)
  extra = sum(16 * r * c for r, c in [(16, 32), (32, 96), (16, 48), (24, 64), (24, 64),
                                      (32, 64), (32, 128), (32, 128), (48, 128)])
  assert models.count_params(v5) - models.count_params(v3) == extra


def test_resnet_replace_stride_with_dilation_keeps_params_and_resolution():
  model = models.create("resnet50", num_classes=1000,
                        replace_stride_with_dilation=(False, True, True))
  assert model.stage_strides_dilations() == ([1, 2, 1, 1], [1, 1, 2, 4])
  _, v = _abstract(model, IMNET)
  assert models.count_params(v) == 25_557_032
  # Output stride 8 instead of 32: capture the last stage's feature map.
  small = dict(block="basic", stage_sizes=(1, 1, 1, 1), widths=(4, 8, 8, 8), num_classes=3)
  for rep, hw in [(None, 2), ((False, True, True), 8)]:
    m = ResNet(replace_stride_with_dilation=rep, **small)
    (_, state) = jax.eval_shape(lambda m=m: m.init_with_output(
        jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False,
        capture_intermediates=True))
    assert state["intermediates"]["layer4_0"]["__call__"][0].shape == (1, hw, hw, 8)


def test_resnet_zero_init_last_bn():
  model = ResNet(num_classes=10, block="basic", stage_sizes=(1,), widths=(8,), strides=(1,),
                 dilations=(1,), stem="cifar", stem_width=8, zero_init_last_bn=True)
  v = _init(model, jnp.zeros((1, 8, 8, 3)))
  block = v["params"]["layer1_0"]
  assert float(jnp.abs(block["BatchNorm_1"]["scale"]).max()) == 0.0
  assert float(jnp.abs(block["BatchNorm_0"]["scale"]).min()) == 1.0


# ---------------------------------------------------------------- MACs (cnn_jax.summary)

MAC_REFERENCES = [  # (name, input HWC, num_classes, published MACs)
    ("resnet18", IMNET, 1000, 1.814e9),
    ("resnet34", IMNET, 1000, 3.664e9),
    ("resnet50", IMNET, 1000, 4.089e9),
    ("resnet101", IMNET, 1000, 7.801e9),
    ("resnet152", IMNET, 1000, 11.514e9),
    ("vgg16", IMNET, 1000, 15.47e9),
    ("alexnet", IMNET, 1000, 0.714e9),
    ("resnet20", CIFAR, 10, 40.6e6),
    ("resnet56", CIFAR, 10, 125.5e6),
    ("resnet110", CIFAR, 10, 252.9e6),
]


@pytest.mark.parametrize("name,hwc,num_classes,expected", MAC_REFERENCES,
                         ids=[r[0] for r in MAC_REFERENCES])
def test_macs_match_published_within_one_percent(name, hwc, num_classes, expected):
  summary = pytest.importorskip("cnn_jax.summary")
  if not hasattr(summary, "count_macs"):
    pytest.skip("cnn_jax.summary.count_macs not available")
  macs = summary.count_macs(models.create(name, num_classes=num_classes), hwc)
  assert math.isclose(macs, expected, rel_tol=0.01), (name, macs, expected)


# ---------------------------------------------------------------- training on real CIFAR-10

def _train_tiny(name, cifar10_dir, cache_dir, tmp_path):
  cfg = tiny_config(name, cifar10_dir, cache_dir, num_train=64, num_test=50, batch_size=32)
  final = train_and_evaluate(cfg, tmp_path)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train_loss"] for r in records if "train_loss" in r]
  assert losses and all(math.isfinite(l) for l in losses)
  assert any("test_accuracy" in r for r in records)
  assert math.isfinite(final["test_loss"]) and 0.0 <= final["test_accuracy"] <= 1.0
  start = [r for r in records if r.get("event") == "start"]
  return start[0]["num_params"] if start else None


def test_tiny_training_run_small_cnn(cifar10_dir, cache_dir, tmp_path):
  assert _train_tiny("small_cnn", cifar10_dir, cache_dir, tmp_path) in (None, 545_098)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet5", "vgg11_cifar", "preact_resnet18"])
def test_tiny_training_run_heavier(name, cifar10_dir, cache_dir, tmp_path):
  _train_tiny(name, cifar10_dir, cache_dir, tmp_path)
