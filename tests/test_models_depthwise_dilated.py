"""Depthwise (MobileNet V1/V2, EfficientNet) and dilated (DRN, context module, ASPP,
resnet20_dilated) models.

Expected parameter counts and MACs are published numbers (papers, torchvision model
metadata, fyu/drn) or hand formulas written out here, never values read back from the code
under test. ImageNet-size models are counted with ``jax.eval_shape`` (no memory, no compute).
Run: ``pytest tests/test_models_depthwise_dilated.py`` (``-m 'not slow'`` skips the trainings).
"""

from __future__ import annotations

import importlib.util
import math
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.config import validate
from cnn_jax.models.blocks_depthwise import DepthwiseSeparableConv
from cnn_jax.models.dilated_blocks import ASPP, ContextModule
from cnn_jax.models.efficientnet import MBConv
from cnn_jax.train import train_and_evaluate

from tests.conftest import tiny_config


def abstract_variables(model, hw, channels=3):
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, hw, hw, channels)), train=False))


def abstract_count(name, num_classes=1000, hw=224):
  return models.count_params(abstract_variables(models.create(name, num_classes=num_classes), hw))


def numpy_variables(abstract):
  """Concrete variables for an abstract tree without running the (slow to compile on a
  busy CPU) initialisers: kernels N(0, 1/fan_in), BN scale and running variance 1, rest 0."""
  rng = np.random.default_rng(0)

  def make(path, leaf):
    key = getattr(path[-1], "key", None)
    if key == "kernel":
      fan_in = max(1, math.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.standard_normal(leaf.shape) / math.sqrt(fan_in), leaf.dtype)
    if key in ("scale", "var"):
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(make, abstract)


def abstract_output(model, shape):
  variables = abstract_variables(model, shape[1], shape[3])
  return jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), train=False), variables)


# ---------------------------------------------------------------- parameter counts

PUBLISHED_COUNTS = {
    # Howard et al. 2017 Table 1 / keras.applications.MobileNet (trainable parameters).
    ("mobilenet_v1", 1000): 4_231_976,
    # torchvision model metadata (num_params).
    ("mobilenet_v2", 1000): 3_504_872,
    ("efficientnet_b0", 1000): 5_288_548,
    ("efficientnet_b1", 1000): 7_794_184,
    ("efficientnet_b2", 1000): 9_109_994,
    ("efficientnet_b3", 1000): 12_233_232,
    ("efficientnet_b4", 1000): 19_341_616,
    ("efficientnet_b5", 1000): 30_389_784,
    ("efficientnet_b6", 1000): 43_040_704,
    ("efficientnet_b7", 1000): 66_347_960,
    # DRN-A = torchvision ResNet-18/34/50 counts.
    ("drn_a_18", 1000): 11_689_512,
    ("drn_a_34", 1000): 21_797_672,
    ("drn_a_50", 1000): 25_557_032,
    # fyu/drn.
    ("drn_c_26", 1000): 21_126_584,
    ("drn_c_42", 1000): 31_234_744,
    ("drn_d_22", 1000): 16_393_752,
    ("drn_d_38", 1000): 26_501_912,
    ("drn_d_54", 1000): 35_809_176,
    ("drn_d_105", 1000): 54_801_304,
    # CIFAR: ResNet-20 option A (He et al. 2015), dilation adds no parameter.
    ("resnet20_dilated", 10): 269_722,
    ("resnet20", 10): 269_722,
}


@pytest.mark.parametrize("name,num_classes,expected",
                         [(n, k, v) for (n, k), v in sorted(PUBLISHED_COUNTS.items())])
def test_published_parameter_counts(name, num_classes, expected):
  assert abstract_count(name, num_classes, 224 if num_classes == 1000 else 32) == expected


def test_mobilenet_v2_cifar_count_is_torchvision_with_ten_classes():
  # torchvision MobileNetV2 (3,504,872) minus its 1280x1000+1000 classifier plus 1280x10+10.
  expected = 3_504_872 - (1280 * 1000 + 1000) + (1280 * 10 + 10)
  assert expected == 2_236_682
  assert abstract_count("mobilenet_v2_cifar", 10, 32) == 2_236_682


# ---------------------------------------------------------------- MACs (cnn_jax.summary)

@pytest.mark.parametrize("name,published", [
    ("mobilenet_v1", 569e6),     # Howard et al. 2017, Table 1: 569 M mult-adds
    ("mobilenet_v2", 301e6),     # torchvision: 0.301 GFLOPS (multiply-adds); paper 300 M
    ("efficientnet_b0", 386e6),  # torchvision: 0.386; paper 0.39 B FLOPS (mult-adds)
])
def test_imagenet_macs_within_one_percent(name, published):
  summary = pytest.importorskip("cnn_jax.summary")
  macs = summary.count_macs(models.create(name, num_classes=1000), (224, 224, 3))
  assert abs(macs - published) / published < 0.01, macs


def test_resnet20_dilated_macs():
  summary = pytest.importorskip("cnn_jax.summary")
  # Hand count: stem 32*32*27*16; stage 1: 6 convs 32*32*9*16*16; stage 2 at 16x16: one
  # 16->32 and five 32->32 convs; stage 3 *also at 16x16* (dilated): one 32->64 and five
  # 64->64 convs; classifier 64*10.
  expected = (32 * 32 * 27 * 16 + 6 * 32 * 32 * 9 * 16 * 16
              + 16 * 16 * 9 * (16 * 32 + 5 * 32 * 32)
              + 16 * 16 * 9 * (32 * 64 + 5 * 64 * 64) + 64 * 10)
  assert summary.count_macs(models.create("resnet20_dilated"), (32, 32, 3)) == expected


# ---------------------------------------------------------------- depthwise-separable block

def _conv_macs(variables, out_hw):
  """MACs from the kernels: every kernel tap of every output position, H' W' prod(shape)
  (a depthwise flax kernel is (K, K, 1, C), a standard one (K, K, M, N))."""
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"]):
    if getattr(path[-1], "key", None) == "kernel":
      total += out_hw[0] * out_hw[1] * math.prod(leaf.shape)
  return total


class _StandardConvBN(nn.Module):
  features: int
  kernel: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.features, (self.kernel, self.kernel), padding="SAME", use_bias=False)(x)
    return nn.relu(nn.BatchNorm(use_running_average=not train)(x))


@pytest.mark.parametrize("m,n", [(32, 64), (64, 128), (512, 512)])
def test_depthwise_separable_cost_ratio(m, n):
  h = w = 14
  k = 3
  sep = abstract_variables(DepthwiseSeparableConv(n), h, m)
  std = abstract_variables(_StandardConvBN(n), h, m)
  # Paper Eq. 4 and 5: standard H W K^2 M N, separable H W (K^2 M + M N).
  assert _conv_macs(sep, (h, w)) == h * w * (k * k * m + m * n)
  assert _conv_macs(std, (h, w)) == h * w * k * k * m * n
  ratio = _conv_macs(sep, (h, w)) / _conv_macs(std, (h, w))
  assert ratio == pytest.approx(1 / n + 1 / k**2, rel=1e-12)
  # Parameters: 9M (depthwise) + 2M (BN) + MN (pointwise) + 2N (BN).
  assert models.count_params(sep) == 9 * m + 2 * m + m * n + 2 * n
  # The depthwise kernel really is grouped: one 3x3 filter per channel.
  assert sep["params"]["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, m)


def test_depthwise_separable_cost_ratio_count_macs():
  summary = pytest.importorskip("cnn_jax.summary")
  h, m, n = 16, 32, 64
  sep = summary.count_macs(DepthwiseSeparableConv(n), (h, h, m))
  std = summary.count_macs(_StandardConvBN(n), (h, h, m))
  assert sep == h * h * (9 * m + m * n)
  assert sep / std == pytest.approx(1 / n + 1 / 9, rel=1e-12)


def test_depthwise_separable_stride_and_shape():
  x = jnp.ones((2, 16, 16, 8))
  block = DepthwiseSeparableConv(24, stride=2)
  v = block.init(jax.random.key(0), x)
  assert block.apply(v, x).shape == (2, 8, 8, 24)


# ---------------------------------------------------------------- output shapes

@pytest.mark.parametrize("name,num_classes,hw", [
    ("mobilenet_v1", 1000, 224), ("mobilenet_v2", 1000, 224), ("efficientnet_b0", 1000, 224),
    ("drn_a_18", 1000, 224), ("drn_a_50", 1000, 224), ("drn_c_26", 1000, 224),
    ("drn_d_22", 1000, 224), ("drn_d_54", 1000, 224),
    ("mobilenet_v2_cifar", 10, 32), ("resnet20_dilated", 10, 32),
])
def test_output_shapes(name, num_classes, hw):
  out = abstract_output(models.create(name, num_classes=num_classes), (2, hw, hw, 3))
  assert out.shape == (2, num_classes)
  assert out.dtype == jnp.float32


def test_all_names_registered():
  names = set(models.list_models())
  for n in ("mobilenet_v1", "mobilenet_v2", "mobilenet_v2_cifar", "efficientnet_b0",
            "drn_a_18", "drn_a_34", "drn_a_50", "drn_c_26", "drn_c_42", "drn_d_22",
            "drn_d_38", "drn_d_54", "drn_d_105", "resnet20_dilated"):
    assert n in names


def _intermediate_shapes(model, hw, names):
  """Output shapes of the named top-level submodules (``capture_intermediates``)."""
  variables = abstract_variables(model, hw)

  def fwd(v):
    return model.apply(v, jnp.zeros((1, hw, hw, 3)), train=False,
                       capture_intermediates=True, mutable=["intermediates"])[1]

  inter = jax.eval_shape(fwd, variables)["intermediates"]
  return {n: inter[n]["__call__"][0].shape for n in names}


def test_drn_output_stride_8():
  # DRN-C/D: per-pixel logits at stride 8 (224 -> 28), via fyu's 1x1-conv classifier.
  for name in ("drn_c_26", "drn_d_22"):
    model = models.create(name, num_classes=19, out_map=True)
    assert abstract_output(model, (1, 224, 224, 3)).shape == (1, 28, 28, 19)
  # DRN-A: the last stage of ResNet-50 is at 28x28 instead of 7x7.
  shapes = _intermediate_shapes(models.create("drn_a_50", num_classes=1000), 224,
                                ["layer2_3", "layer3_5", "layer4_2"])
  assert shapes == {"layer2_3": (1, 28, 28, 512), "layer3_5": (1, 28, 28, 1024),
                    "layer4_2": (1, 28, 28, 2048)}


def _conv_dilations(model, hw):
  """Histogram {rhs_dilation: number of convs} of the traced forward pass."""
  variables = abstract_variables(model, hw)
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, jnp.zeros((1, hw, hw, 3)), train=False))(
      variables)
  hist = {}

  def walk(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        d = tuple(eqn.params["rhs_dilation"])
        hist[d] = hist.get(d, 0) + 1
      for v in eqn.params.values():
        for sub in (v if isinstance(v, (list, tuple)) else [v]):
          if hasattr(sub, "jaxpr"):
            walk(sub.jaxpr if hasattr(sub.jaxpr, "eqns") else sub.jaxpr.jaxpr)
          elif hasattr(sub, "eqns"):
            walk(sub)

  walk(jaxpr.jaxpr)
  return hist


@pytest.mark.parametrize("name,expected", [
    # fyu/drn: level 5 at dilation 2, level 6 at 4, level 7 at 2 (C: a non-residual basic
    # block = 2 convs; D: one conv layer), everything else (incl. 1x1 convs, fc) at 1.
    ("drn_c_26", {(2, 2): 2 * 2 + 2, (4, 4): 2 * 2}),
    ("drn_d_22", {(2, 2): 2 * 2 + 1, (4, 4): 2 * 2}),
    ("drn_d_54", {(2, 2): 6 + 1, (4, 4): 3}),  # bottleneck: one 3x3 per block
    # DRN-A-18 (paper Sec. 2): G4_1 keeps dilation 1 in its first conv, G5_1 uses 2.
    ("drn_a_18", {(2, 2): 3 + 1, (4, 4): 3}),
    ("resnet20_dilated", {(2, 2): 5}),
])
def test_dilation_placement(name, expected):
  hist = _conv_dilations(models.create(name), 224 if name.startswith("drn") else 32)
  assert {d: n for d, n in hist.items() if d != (1, 1)} == expected


def test_resnet20_dilated_keeps_16x16_and_resnet20_unchanged():
  dil = _intermediate_shapes(models.create("resnet20_dilated"), 32, ["BasicBlock_8"])
  plain = _intermediate_shapes(models.create("resnet20"), 32, ["BasicBlock_8"])
  assert dil["BasicBlock_8"] == (1, 16, 16, 64)
  assert plain["BasicBlock_8"] == (1, 8, 8, 64)
  v = abstract_variables(models.create("resnet20_dilated"), 32)
  # The dilated stage's convs keep 3x3 kernels (dilation adds taps' spacing, no weights).
  assert v["params"]["BasicBlock_8"]["Conv_1"]["kernel"].shape == (3, 3, 64, 64)


# ---------------------------------------------------------------- real forward passes (small)

@pytest.mark.parametrize("name", ["mobilenet_v2_cifar", "resnet20_dilated"])
def test_cifar_models_jit_forward_and_eval_determinism(name):
  # (Train mode, batch statistics and the 'dropout' rng are exercised by the slow
  # trainer test below.)
  model = models.create(name, num_classes=10)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = numpy_variables(abstract_variables(model, 32))
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  a, b = fwd(variables, x), fwd(variables, x)
  assert a.shape == (2, 10) and a.dtype == jnp.float32
  assert np.all(np.isfinite(a))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["mobilenet_v2_cifar", "resnet20_dilated"])
def test_bfloat16_compute_keeps_float32_params_and_logits(name):
  model = models.create(name, num_classes=10, dtype=jnp.bfloat16)
  variables = abstract_variables(model, 32)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(variables))
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3)), train=False),
                       variables)
  assert out.dtype == jnp.float32 and out.shape == (2, 10)


def test_mbconv_stochastic_depth_drops_whole_examples():
  # Training: each example keeps x + y / (1 - p) or is exactly x (branch dropped).
  p = 0.5
  block = MBConv(16, expand_ratio=2, kernel_size=3, stride=1, stochastic_depth=p)
  x = jax.random.normal(jax.random.key(1), (16, 6, 6, 16))
  variables = numpy_variables(abstract_variables(block, 6, 16))

  @jax.jit
  def run(key):
    return block.apply(variables, x, train=True, mutable=["batch_stats"],
                       rngs={"dropout": key})[0]

  out = np.asarray(run(jax.random.key(3)))
  dropped = np.all(out == np.asarray(x), axis=(1, 2, 3))
  assert 0 < dropped.sum() < 16
  np.testing.assert_array_equal(out, np.asarray(run(jax.random.key(3))))
  ev = jax.jit(lambda: block.apply(variables, x, train=False))
  np.testing.assert_array_equal(np.asarray(ev()), np.asarray(ev()))


def test_efficientnet_b0_structure():
  model = models.create("efficientnet_b0", num_classes=1000)
  rates = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, MBConv) and context.method_name == "__call__":
      rates.append(context.module.stochastic_depth)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    variables = abstract_variables(model, 224)
  # torchvision: 16 blocks, drop probability 0.2 * block_index / 16.
  assert rates == pytest.approx([0.2 * i / 16 for i in range(16)])
  # torchvision squeeze width: a quarter of the block *input* channels (stage 2: 16 -> 4
  # after a 16 -> 96 expansion; stage 1 block: 32 -> 8 without expansion).
  p = variables["params"]
  assert p["stage2_block1"]["se"]["fc1"]["kernel"].shape == (1, 1, 96, 4)
  assert p["stage2_block1"]["se"]["fc1"]["bias"].shape == (4,)
  assert p["stage1_block1"]["se"]["fc1"]["kernel"].shape == (1, 1, 32, 8)
  assert "expand" not in p["stage1_block1"]


# ---------------------------------------------------------------- context module and ASPP

def _receptive_fields(kernels_and_dilations):
  """RF_l = RF_{l-1} + (k_l - 1) d_l, RF_0 = 1 (stride 1 throughout)."""
  rf, out = 1, []
  for k, d in kernels_and_dilations:
    rf += (k - 1) * d
    out.append(rf)
  return out


def test_context_module_receptive_field_is_67():
  layers = [(3, d) for d in (1, 1, 2, 4, 8, 16, 1)] + [(1, 1)]
  # Yu & Koltun 2016, Table 1.
  assert _receptive_fields(layers) == [3, 5, 9, 17, 33, 65, 67, 67]
  # Empirically on the module: the centre output depends on exactly a 67x67 input window.
  c, size = 4, 101
  module = ContextModule(identity_init=False)
  x = jax.random.uniform(jax.random.key(1), (1, size, size, c), minval=0.5, maxval=1.5)
  variables = module.init(jax.random.key(0), x)
  grad = jax.grad(lambda x: module.apply(variables, x)[0, size // 2, size // 2].sum())(x)
  rows, cols = np.nonzero(np.abs(np.asarray(grad[0])).sum(-1))
  assert rows.max() - rows.min() + 1 == 67
  assert cols.max() - cols.min() + 1 == 67


def test_context_module_receptive_field_with_analysis_tool():
  rf_tool = pytest.importorskip("cnn_jax.analysis.receptive_field")
  result = rf_tool.receptive_field(ContextModule(), (101, 101, 4))
  # Yu & Koltun 2016, Table 1: 3, 5, 9, 17, 33, 65, 67 after the 3x3 layers, 67 after the 1x1.
  sizes = [result.modules[f"conv{i}"].size for i in range(1, 9)]
  assert sizes == [(r, r) for r in (3, 5, 9, 17, 33, 65, 67, 67)]
  assert result.output.size == (67, 67)


def test_context_module_identity_init_is_identity():
  c = 21  # VOC classes, as in the paper
  x = jax.nn.relu(jax.random.normal(jax.random.key(1), (2, 48, 48, c)))
  module = ContextModule()
  variables = module.init(jax.random.key(0), x)
  np.testing.assert_allclose(np.asarray(module.apply(variables, x)), np.asarray(x),
                             atol=1e-6)
  # Signed input: layers 1-7 are followed by ReLU, so the initial map is max(x, 0).
  z = jax.random.normal(jax.random.key(2), (1, 24, 24, c))
  np.testing.assert_allclose(np.asarray(module.apply(variables, z)),
                             np.maximum(np.asarray(z), 0), atol=1e-6)
  # Parameters (basic): 7 (9 C^2 + C) + C^2 + C.
  assert models.count_params(variables) == 7 * (9 * c * c + c) + c * c + c == 28_392


def test_context_module_large_identity_init_without_noise():
  c = 3
  x = jax.nn.relu(jax.random.normal(jax.random.key(1), (1, 20, 20, c)))
  module = ContextModule(variant="large", init_noise=0.0)
  variables = module.init(jax.random.key(0), x)
  np.testing.assert_allclose(np.asarray(module.apply(variables, x)), np.asarray(x),
                             atol=1e-5)
  widths = [2, 2, 4, 8, 16, 32, 32]
  assert variables["params"]["conv7"]["kernel"].shape == (3, 3, 32 * c, 32 * c)
  assert variables["params"]["conv8"]["kernel"].shape == (1, 1, 32 * c, c)
  expected = sum(9 * a * c * b * c + b * c for a, b in zip([1] + widths[:-1], widths))
  assert models.count_params(variables) == expected + 32 * c * c + c


def test_aspp_shapes_and_count():
  # DeepLab v3 on a ResNet-50 at output stride 16: 513x513 -> 33x33x2048.
  module = ASPP()
  out = jax.eval_shape(lambda: module.init_with_output(
      jax.random.key(0), jnp.zeros((2, 33, 33, 2048)), train=False))
  (y, variables) = out
  assert y.shape == (2, 33, 33, 256)
  cin, f = 2048, 256
  # 1x1 + three 3x3 + pooling 1x1 branches, 1x1 projection of 5F channels, BN 2F each.
  expected = (cin * f + 3 * 9 * cin * f + cin * f + 5 * f * f) + 6 * 2 * f
  assert models.count_params(variables) == expected == 15_535_104
  for r in (6, 12, 18):
    assert variables["params"][f"branch_rate{r}"]["conv"]["kernel"].shape == (3, 3, cin, f)


def test_aspp_small_real_forward():
  module = ASPP(features=16, rates=(2, 4, 6))
  x = jax.random.normal(jax.random.key(1), (2, 17, 17, 8))
  variables = numpy_variables(abstract_variables(module, 17, 8))
  y = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x)
  assert y.shape == (2, 17, 17, 16) and np.all(np.isfinite(y))
  y2, _ = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": jax.random.key(3)}))(variables, x)
  assert y2.shape == (2, 17, 17, 16)


# ---------------------------------------------------------------- configs

@pytest.mark.parametrize("path,name", [
    ("configs/cifar10_mobilenet_v2.py", "mobilenet_v2_cifar"),
    ("configs/cifar10_resnet20_dilated.py", "resnet20_dilated"),
])
def test_configs_validate(path, name):
  spec = importlib.util.spec_from_file_location(
      "cfg", pathlib.Path(__file__).resolve().parents[1] / path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = validate(mod.get_config())
  assert config.model.name == name and name in models.list_models()


# ---------------------------------------------------------------- training through the trainer

@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2_cifar", "resnet20_dilated"])
def test_trains_a_few_steps(name, cifar10_dir, cache_dir, tmp_path):
  config = tiny_config(name, cifar10_dir, cache_dir, num_train=64, num_test=50, batch_size=32)
  final = train_and_evaluate(config, tmp_path)
  assert final["step"] == 2
  assert final["test_count"] == 50
  assert math.isfinite(final["train_loss"]) and math.isfinite(final["test_loss"])
  assert 0.0 <= final["test_accuracy"] <= 1.0

