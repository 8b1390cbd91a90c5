"""ConvNeXt V2 (+ GRN, drop path) and the non-CNN baselines (ViT, MLP-Mixer, MLP).

Expected parameter counts are the published numbers (paper tables / the reference code:
facebookresearch/ConvNeXt-V2, timm) or hand formulas written out here, never values read
back from the code under test. Big models are counted with ``jax.eval_shape`` (no memory).
Run: ``pytest tests/test_models_convnext_vit.py`` (``-m 'not slow'`` skips the trainings).
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models, optim
from cnn_jax.train import train_and_evaluate
from cnn_jax.models.convnextv2 import ConvNeXtV2, ConvNeXtV2Block
from cnn_jax.models.layers import GRN, DropPath, drop_path_rates
from cnn_jax.models.mixer import MlpMixer
from cnn_jax.models.mlp import MLP
from cnn_jax.models.vit import TransformerMlp, VisionTransformer

from tests.conftest import tiny_config


def key(seed):
  """A PRNG key for model init / dropout in these tests. XLA:CPU compiles the default
  threefry generator ~5x slower than ``rbg`` (one threefry per parameter initialiser), and
  compilation dominates these tests on a busy 2-core machine."""
  return jax.random.key(seed, impl="rbg")


def jit_init(model, x):
  """``model.init`` compiled once (eager init dispatches every op: slow on a busy CPU)."""
  return jax.jit(lambda k: model.init(k, x))(key(0))


def abstract_count(name, num_classes, hw, **kw):
  model = models.create(name, num_classes=num_classes, **kw)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, hw, hw, 3))))
  return models.count_params(shapes)


# ---------------------------------------------------------------- parameter counts

# facebookresearch/ConvNeXt-V2 README / paper Table (1000 classes).
CONVNEXTV2_COUNTS = {
    "convnextv2_atto": 3_708_400,
    "convnextv2_femto": 5_233_240,
    "convnextv2_pico": 9_066_280,
    "convnextv2_nano": 15_623_800,
    "convnextv2_tiny": 28_635_496,
    "convnextv2_base": 88_717_800,
    "convnextv2_large": 197_956_840,
    "convnextv2_huge": 660_289_640,
}


@pytest.mark.parametrize("name,expected", sorted(CONVNEXTV2_COUNTS.items()))
def test_convnextv2_imagenet_counts(name, expected):
  assert abstract_count(name, 1000, 224) == expected


@pytest.mark.parametrize("name,imagenet_name,c0,c_last", [
    ("convnextv2_atto_cifar", "convnextv2_atto", 40, 320),
    ("convnextv2_femto_cifar", "convnextv2_femto", 48, 384),
])
def test_convnextv2_cifar_counts(name, imagenet_name, c0, c_last):
  # Published ImageNet count, with the 4x4x3xC0 stem conv replaced by 2x2x3xC0 (stem_patch=2)
  # and the 1000-way head (C_last*1000 + 1000) by a 10-way head (C_last*10 + 10).
  expected = (CONVNEXTV2_COUNTS[imagenet_name] - 4 * 4 * 3 * c0 + 2 * 2 * 3 * c0
              - (c_last * 1000 + 1000) + (c_last * 10 + 10))
  assert expected == {"convnextv2_atto_cifar": 3_389_170,
                      "convnextv2_femto_cifar": 4_850_362}[name]  # the docstring's numbers
  assert abstract_count(name, 10, 32) == expected


def test_convnextv2_block_count_formula():
  # dwconv 49C + C, LN 2C, pwconv1 4C^2 + 4C, GRN 2 * 4C, pwconv2 4C^2 + C = 8C^2 + 65C.
  c = 40
  block = ConvNeXtV2Block(c)
  shapes = jax.eval_shape(lambda: block.init(jax.random.key(0), jnp.zeros((1, 8, 8, c))))
  assert models.count_params(shapes) == 8 * c * c + 65 * c


def vit_count(d, depth, patch, tokens, k, cls=True):
  # Per block: LN 2D, qkv 3D^2 + 3D, proj D^2 + D, LN 2D, fc1 4D^2 + 4D, fc2 4D^2 + D.
  block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
  embed = patch * patch * 3 * d + d
  return embed + (d if cls else 0) + (tokens + (1 if cls else 0)) * d + depth * block \
      + 2 * d + d * k + k


def test_vit_imagenet_counts():
  assert vit_count(192, 12, 16, 196, 1000) == 5_717_416  # timm vit_tiny_patch16_224
  assert abstract_count("vit_tiny_patch16_224", 1000, 224) == 5_717_416
  assert abstract_count("vit_small_patch16_224", 1000, 224) == 22_050_664  # timm
  assert abstract_count("vit_base_patch16_224", 1000, 224) == 86_567_656  # timm / paper 86M


@pytest.mark.parametrize("name,d,documented", [
    ("vit_tiny_patch4_cifar", 192, 5_362_762),
    ("vit_small_patch4_cifar", 384, 21_342_346),
])
def test_vit_cifar_counts(name, d, documented):
  expected = vit_count(d, 12, 4, (32 // 4) ** 2, 10)
  assert expected == documented
  assert abstract_count(name, 10, 32) == expected


def test_vit_gap_pool_has_no_class_token():
  with_gap = abstract_count("vit_tiny_patch4_cifar", 10, 32, pool="gap")
  assert with_gap == vit_count(192, 12, 4, 64, 10, cls=False)


def mixer_count(patch, c, ds, dc, depth, tokens, k):
  # Stem 3p^2C + C; per block LN 2C, token MLP S*Ds + Ds + Ds*S + S, LN 2C,
  # channel MLP C*Dc + Dc + Dc*C + C; final LN 2C; head CK + K.
  block = 2 * c + (tokens * ds + ds + ds * tokens + tokens) + 2 * c + (c * dc + dc + dc * c + c)
  return patch * patch * 3 * c + c + depth * block + 2 * c + c * k + k


def test_mixer_imagenet_counts():
  assert mixer_count(16, 768, 384, 3072, 12, 196, 1000) == 59_880_472  # timm mixer_b16_224
  assert abstract_count("mixer_b16_224", 1000, 224) == 59_880_472
  assert abstract_count("mixer_s16_224", 1000, 224) == mixer_count(16, 512, 256, 2048, 8, 196,
                                                                   1000) == 18_528_264


@pytest.mark.parametrize("name,c,ds,dc,depth,documented", [
    ("mixer_tiny_patch4_cifar", 256, 128, 1024, 8, 4_360_970),
    ("mixer_s4_cifar", 512, 256, 2048, 8, 17_110_026),
])
def test_mixer_cifar_counts(name, c, ds, dc, depth, documented):
  expected = mixer_count(4, c, ds, dc, depth, 64, 10)
  assert expected == documented
  assert abstract_count(name, 10, 32) == expected


def test_mlp_count():
  expected = 3072 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
  assert expected == 1_841_162
  assert abstract_count("mlp", 10, 32) == expected


# ---------------------------------------------------------------- GRN


def grn_numpy(x, gamma, beta):
  """The reference formula (ConvNeXt-V2 models/utils.py, channels-last), in float64 NumPy."""
  x = np.asarray(x, np.float64)
  gx = np.sqrt(np.sum(x ** 2, axis=(1, 2), keepdims=True))
  nx = gx / (np.mean(gx, axis=-1, keepdims=True) + 1e-6)
  return gamma * (x * nx) + beta + x


def test_grn_identity_at_init_and_params():
  x = jax.random.normal(jax.random.key(1), (2, 5, 6, 8))
  variables = GRN().init(jax.random.key(0), x)
  p = variables["params"]
  assert p["gamma"].shape == (1, 1, 1, 8) and p["beta"].shape == (1, 1, 1, 8)
  assert not np.any(p["gamma"]) and not np.any(p["beta"])
  np.testing.assert_array_equal(GRN().apply(variables, x), x)


def test_grn_matches_numpy_reference():
  kx, kg, kb = jax.random.split(jax.random.key(2), 3)
  x = jax.random.normal(kx, (3, 7, 5, 16)) * 2.0
  gamma = jax.random.normal(kg, (1, 1, 1, 16))
  beta = jax.random.normal(kb, (1, 1, 1, 16))
  out = GRN().apply({"params": {"gamma": gamma, "beta": beta}}, x)
  ref = grn_numpy(x, np.asarray(gamma, np.float64), np.asarray(beta, np.float64))
  np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_grn_gradient_finite_at_zero_input():
  params = {"gamma": jnp.full((1, 1, 1, 4), 0.5), "beta": jnp.full((1, 1, 1, 4), 0.1)}
  x = jnp.zeros((2, 3, 3, 4))

  def loss(p, x):
    return jnp.sum(GRN().apply({"params": p}, x) ** 2)

  # The test can fail: the naive jnp.linalg.norm has a NaN gradient at an all-zero input.
  naive = jax.grad(lambda x: jnp.sum(jnp.linalg.norm(x, axis=(1, 2))))(x)
  assert np.any(np.isnan(naive))
  gp, gx = jax.grad(loss, argnums=(0, 1))(params, x)
  for leaf in jax.tree_util.tree_leaves((gp, gx)):
    assert np.all(np.isfinite(leaf))
  # One dead channel in an otherwise live input: still finite.
  x2 = jax.random.normal(jax.random.key(3), (2, 3, 3, 4)).at[..., 0].set(0.0)
  for leaf in jax.tree_util.tree_leaves(jax.grad(loss, argnums=(0, 1))(params, x2)):
    assert np.all(np.isfinite(leaf))


# ---------------------------------------------------------------- block = reference formula


def _layer_norm(x, scale, bias, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / jnp.sqrt(var + eps) * scale + bias


def convnextv2_block_reference(p, x, approximate_gelu):
  """ConvNeXt V2 Block.forward written out with lax/jnp from the parameters."""
  c = x.shape[-1]
  y = jax.lax.conv_general_dilated(
      x, p["dwconv"]["kernel"], (1, 1), ((3, 3), (3, 3)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
      precision=jax.lax.Precision.HIGHEST) + p["dwconv"]["bias"]
  y = _layer_norm(y, p["norm"]["scale"], p["norm"]["bias"])
  y = jnp.dot(y, p["pwconv1"]["kernel"], precision="highest") + p["pwconv1"]["bias"]
  y = jax.nn.gelu(y, approximate=approximate_gelu)
  y = jnp.asarray(grn_numpy(y, np.asarray(p["grn"]["gamma"]), np.asarray(p["grn"]["beta"])),
                  jnp.float32)
  y = jnp.dot(y, p["pwconv2"]["kernel"], precision="highest") + p["pwconv2"]["bias"]
  return x + y


def test_convnextv2_block_matches_reference_with_exact_gelu():
  c = 16
  x = jax.random.normal(jax.random.key(4), (2, 9, 9, c))
  block = ConvNeXtV2Block(c)
  params = block.init(jax.random.key(5), x)["params"]
  # Non-trivial GRN and larger pwconv1 weights so the GELU's argument is O(1).
  params = jax.tree_util.tree_map(lambda a: a, params)
  params["grn"]["gamma"] = jax.random.normal(jax.random.key(6), (1, 1, 1, 4 * c))
  params["grn"]["beta"] = jax.random.normal(jax.random.key(7), (1, 1, 1, 4 * c))
  params["pwconv1"]["kernel"] = params["pwconv1"]["kernel"] * 50.0
  params["pwconv2"]["kernel"] = params["pwconv2"]["kernel"] * 50.0
  with jax.default_matmul_precision("highest"):
    out = jax.jit(block.apply)({"params": params}, x)
  exact = convnextv2_block_reference(params, x, approximate_gelu=False)
  tanh = convnextv2_block_reference(params, x, approximate_gelu=True)
  np.testing.assert_allclose(out, exact, rtol=1e-4, atol=1e-4)
  assert float(jnp.max(jnp.abs(exact - tanh))) > 1e-3  # the test can tell the two apart
  assert float(jnp.max(jnp.abs(out - tanh))) > 1e-3


def test_vit_mlp_uses_exact_gelu():
  # Unit-scale GELU arguments: the two GELUs differ by up to ~5e-4 there.
  kx, k1, k2 = jax.random.split(jax.random.key(8), 3)
  x = jax.random.normal(kx, (2, 5, 8))
  mlp = TransformerMlp(32)
  p = mlp.init(jax.random.key(9), x)["params"]
  p["fc1"]["kernel"] = jax.random.normal(k1, (8, 32)) / np.sqrt(8)
  p["fc2"]["kernel"] = jax.random.normal(k2, (32, 8)) / np.sqrt(32)
  with jax.default_matmul_precision("highest"):
    out = mlp.apply({"params": p}, x)
    h = x @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    ref_exact = jax.nn.gelu(h, approximate=False) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    ref_tanh = jax.nn.gelu(h, approximate=True) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  np.testing.assert_allclose(out, ref_exact, rtol=1e-5, atol=2e-6)
  assert float(jnp.max(jnp.abs(out - ref_tanh))) > 1e-4


# ---------------------------------------------------------------- drop path


def test_drop_path_eval_is_identity():
  x = jax.random.normal(jax.random.key(10), (8, 4, 4, 3))
  np.testing.assert_array_equal(DropPath(0.5).apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(
      DropPath(0.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}), x)


def test_drop_path_train_drops_whole_examples_and_rescales():
  rate = 0.25
  x = jnp.ones((4000, 3, 3, 2))
  y = np.asarray(DropPath(rate).apply({}, x, deterministic=False,
                                      rngs={"dropout": jax.random.key(11)}))
  per_example = y.reshape(len(y), -1)
  kept = np.all(np.isclose(per_example, 1 / (1 - rate)), axis=1)
  dropped = np.all(per_example == 0.0, axis=1)
  assert np.all(kept | dropped)  # each example is all-kept or all-dropped
  assert abs(dropped.mean() - rate) < 0.03  # 4000 draws: std ~0.007
  assert abs(y.mean() - 1.0) < 0.05  # expectation preserved


def test_drop_path_rates_rise_linearly():
  rates = drop_path_rates(0.1, 11)
  np.testing.assert_allclose(rates, np.linspace(0.0, 0.1, 11))
  assert drop_path_rates(0.3, 1) == [0.0]


def test_convnextv2_drop_path_uses_dropout_rng():
  model = ConvNeXtV2(depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), num_classes=10, stem_patch=2,
                     drop_path_rate=0.5)
  x = jax.random.normal(jax.random.key(12), (8, 16, 16, 3))

  @jax.jit
  def run(x):
    v = model.init(key(0), x)
    return (model.apply(v, x), model.apply(v, x, train=False),
            model.apply(v, x, train=True, rngs={"dropout": key(1)}),
            model.apply(v, x, train=True, rngs={"dropout": key(2)}))

  e1, e2, t1, t2 = run(x)
  np.testing.assert_array_equal(e1, e2)
  assert not np.allclose(t1, t2)
  with pytest.raises(Exception):  # train mode without a 'dropout' rng is an error
    jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x, train=True))


# ---------------------------------------------------------------- init, shapes, dtypes


def test_convnextv2_init_normal_002_and_head_scale():
  block = ConvNeXtV2Block(160)
  p = jit_init(block, jnp.zeros((1, 4, 4, 160)))["params"]
  w = np.asarray(p["pwconv1"]["kernel"])  # 160 x 640 = 102,400 draws
  assert abs(w.std() - 0.02) < 0.0005  # plain normal(0.02), not truncated (std ~0.0176)
  assert np.abs(w).max() > 2 * 0.02  # a 2-sigma truncation would cap at 0.04
  assert not np.any(p["pwconv1"]["bias"]) and not np.any(p["dwconv"]["bias"])
  assert not np.any(p["grn"]["gamma"]) and not np.any(p["grn"]["beta"])  # GRN = identity
  model = ConvNeXtV2(depths=(1, 1, 1, 1), dims=(8, 8, 8, 400), num_classes=250, stem_patch=1,
                     head_init_scale=0.001)
  p = jit_init(model, jnp.zeros((1, 8, 8, 3)))["params"]
  head = np.asarray(p["head"]["kernel"])  # 400 x 250 = 100,000 draws
  assert abs(head.std() - 0.02 * 0.001) < 0.03 * 0.02 * 0.001
  assert not np.any(p["head"]["bias"])


def test_weight_decay_mask_excludes_grn_and_embeddings():
  model = models.create("vit_tiny_patch4_cifar", num_classes=10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  mask = optim.weight_decay_mask(shapes["params"])
  assert not mask["pos_embed"] and not mask["cls_token"]
  assert mask["block0"]["attn"]["qkv"]["kernel"] and not mask["block0"]["attn"]["qkv"]["bias"]
  model = models.create("convnextv2_atto_cifar", num_classes=10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  mask = optim.weight_decay_mask(shapes["params"])
  assert not mask["stage0_block0"]["grn"]["gamma"] and mask["stage0_block0"]["dwconv"]["kernel"]


@pytest.mark.parametrize("name", ["convnextv2_atto_cifar", "vit_tiny_patch4_cifar",
                                  "mixer_tiny_patch4_cifar", "mlp"])
def test_cifar_models_jit_forward(name):
  model = models.create(name, num_classes=10)
  x = jax.random.normal(jax.random.key(13), (2, 32, 32, 3))
  # One compilation: init and the eval-mode forward in one jitted function.
  logits = jax.jit(lambda k, x: model.apply(model.init(k, x), x, train=False))(key(0), x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


# Small members of each family (same code paths as the registered variants, fast to compile).
SMALL = {
    "convnextv2": dict(cls=ConvNeXtV2, depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), stem_patch=2,
                       drop_path_rate=0.2),
    "vit": dict(cls=VisionTransformer, patch_size=4, embed_dim=32, depth=2, num_heads=2,
                dropout=0.1, drop_path_rate=0.2),
    "mixer": dict(cls=MlpMixer, patch_size=4, hidden_dim=32, depth=2, tokens_mlp_dim=16,
                  channels_mlp_dim=64, dropout=0.1, drop_path_rate=0.2),
    "mlp": dict(cls=MLP, hidden_dims=(64,), dropout=0.1),
}


@pytest.mark.parametrize("family", sorted(SMALL))
def test_bfloat16_compute_float32_params_and_logits(family):
  kw = dict(SMALL[family])
  model = kw.pop("cls")(num_classes=10, dtype=jnp.bfloat16, **kw)
  x = jax.random.normal(jax.random.key(14), (2, 16, 16, 3))
  variables = jit_init(model, x)
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(variables))
  logits = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                            rngs={"dropout": key(1)}))(variables, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_imagenet_output_shapes_abstract():
  for name in ("convnextv2_atto", "vit_tiny_patch16_224", "mixer_s16_224"):
    model = models.create(name, num_classes=1000)
    x = jnp.zeros((2, 224, 224, 3))
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x))
    assert out.shape == (2, 1000) and out.dtype == jnp.float32


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="patch_size"):
    models.create("vit_tiny_patch4_cifar").init(jax.random.key(0), jnp.zeros((1, 30, 30, 3)))
  with pytest.raises(ValueError, match="pool"):
    models.create("vit_tiny_patch4_cifar", pool="max").init(jax.random.key(0),
                                                            jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("config_name,model_name", [
    ("cifar10_convnextv2_atto", "convnextv2_atto_cifar"),
    ("cifar10_vit_tiny", "vit_tiny_patch4_cifar"),
    ("cifar10_mixer", "mixer_tiny_patch4_cifar"),
    ("cifar10_mlp", "mlp")])
def test_configs_validate_and_build(config_name, model_name):
  import importlib
  from cnn_jax.config import validate
  config = validate(importlib.import_module(f"configs.{config_name}").get_config())
  assert config.model.name == model_name
  models.create(config.model.name, num_classes=10, **config.model.kwargs.to_dict())


# ---------------------------------------------------------------- MACs (cnn_jax.summary)

# Paper / reference README (224x224): atto 0.55G, tiny 4.47G, base 15.4G FLOPs (= MACs).
@pytest.mark.parametrize("name,gmacs", [("convnextv2_atto", 0.55), ("convnextv2_tiny", 4.47),
                                        ("convnextv2_base", 15.4)])
def test_convnextv2_macs(name, gmacs):
  summary = pytest.importorskip("cnn_jax.summary")
  if not hasattr(summary, "count_macs"):
    pytest.skip("cnn_jax.summary.count_macs not available")
  macs = summary.count_macs(models.create(name, num_classes=1000), (224, 224, 3))
  assert macs / 1e9 == pytest.approx(gmacs, rel=0.01)


# ---------------------------------------------------------------- short real trainings


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnextv2_atto_cifar", "vit_tiny_patch4_cifar"])
def test_train_few_steps(name, cifar10_dir, cache_dir, tmp_path):
  config = tiny_config(name, cifar10_dir, cache_dir, num_train=64, num_test=50, batch_size=32)
  config.optim.name = "adamw"
  config.optim.lr = 1e-3
  config.optim.weight_decay = 0.05
  config.model.kwargs.drop_path_rate = 0.1
  final = train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_recs = [r for r in records if "train_loss" in r]
  assert train_recs and all(math.isfinite(r["train_loss"]) for r in train_recs)
  assert any("test_accuracy" in r for r in records)
  assert math.isfinite(final["test_loss"]) and final["test_count"] == 50
