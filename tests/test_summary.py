"""cnn_jax.summary: per-layer params/MACs against published numbers and hand formulas."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from cnn_jax import models, summary
from cnn_jax.analysis.counting import jaxpr_macs


@pytest.fixture(scope="module")
def resnet20_rows():
  return summary.layer_table(models.create("resnet20", num_classes=10), (32, 32, 3))


def test_resnet20_published_params_and_macs(resnet20_rows):
  # He et al. 2015 / akamaster: ResNet-20 has 0.27M params (269,722) and ~41M FLOPs,
  # i.e. 40.6M multiply-adds (e.g. Table 6 of arXiv:1512.03385; 40.55M in
  # akamaster/pytorch_resnet_cifar10 and ptflops).
  params = sum(r.params for r in resnet20_rows)
  macs = sum(r.macs for r in resnet20_rows)
  assert params == 269_722
  assert abs(macs - 40.6e6) / 40.6e6 < 0.01, macs


def test_cifar10_cnn_params():
  model = models.create("cifar10_cnn", num_classes=10)
  rows = summary.layer_table(model, (32, 32, 3))
  assert sum(r.params for r in rows) == 289_194
  assert summary.count_params_of(model) == 289_194


def test_params_column_matches_count_params(resnet20_rows):
  model = models.create("resnet20", shortcut="B")
  rows = summary.layer_table(model, (32, 32, 3))
  # Option B adds two 1x1 projections + BN: 272,474 (akamaster's README count).
  assert sum(r.params for r in rows) == 272_474
  assert rows[0].params_total == 272_474


def test_conv_rows_follow_the_formula(resnet20_rows):
  convs = [r for r in resnet20_rows if r.type == "Conv"]
  assert len(convs) == 19  # stem + 9 blocks x 2 (option A shortcuts have no conv)
  # One row per layer: the oneDNN-routing subclasses (layers.Conv, layers.BatchNorm) must not
  # show their fallback to nn.Conv / nn.BatchNorm as a second call.
  assert sum(r.type == "BatchNorm" for r in resnet20_rows) == 19
  # Hand table of ResNet-20: (k, c_in, c_out, h_out) for each conv in order.
  spec = [(3, 3, 16, 32)] + [(3, 16, 16, 32)] * 6 + [(3, 16, 32, 16)] + \
      [(3, 32, 32, 16)] * 5 + [(3, 32, 64, 8)] + [(3, 64, 64, 8)] * 5
  for r, (k, cin, cout, h) in zip(convs, spec):
    assert r.output_shape == (1, h, h, cout), r
    assert r.params == k * k * cin * cout
    assert r.macs == k * k * cin * cout * h * h
  dense = [r for r in resnet20_rows if r.type == "Dense"]
  assert [(d.params, d.macs) for d in dense] == [(64 * 10 + 10, 64 * 10)]


def test_batch_does_not_change_per_image_macs():
  model = models.create("cifar10_cnn")
  assert summary.count_macs(model, (32, 32, 3), batch=3) == summary.count_macs(model)


class _Zoo(nn.Module):
  """Depthwise conv, transposed conv, DenseGeneral and a raw attention einsum."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), padding="SAME", feature_group_count=8, use_bias=False)(x)
    x = nn.ConvTranspose(4, (2, 2), strides=(2, 2))(x)       # (N, 16, 16, 4)
    t = x.reshape(x.shape[0], -1, 4)                          # 256 tokens of width 4
    q = nn.DenseGeneral((2, 3))(t)                            # 2 heads of size 3
    k = nn.DenseGeneral((2, 3))(t)
    a = jnp.einsum("nqhd,nkhd->nhqk", q, k)
    return a.mean()


def test_depthwise_transposed_densegeneral_einsum():
  model = _Zoo()
  rows = summary.layer_table(model, (8, 8, 8))
  by_type = {}
  for r in rows:
    by_type.setdefault(r.type, []).append(r)
  dw = by_type["Conv"][0]
  assert dw.params == 3 * 3 * 1 * 8 and dw.macs == 3 * 3 * 1 * 8 * 8 * 8
  ct = by_type["ConvTranspose"][0]
  assert ct.output_shape == (1, 16, 16, 4)
  assert ct.params == 2 * 2 * 8 * 4 + 4
  # Transposed conv: each input pixel scatters the whole kernel (fvcore's count),
  # H_in*W_in*K_h*K_w*C_in*C_out; the holes of the dilated input are not counted.
  assert ct.macs == 8 * 8 * 2 * 2 * 8 * 4
  for dg in by_type["DenseGeneral"]:
    assert dg.params == 4 * 6 + 6 and dg.macs == 256 * 4 * 6
  root = rows[0]
  assert root.macs == 2 * 256 * 256 * 3  # QK^T: heads * q * k * head_dim


def test_macs_match_xla_cost_analysis():
  """XLA's HloCostAnalysis counts 2 FLOPs per conv tap that lands on real input (not
  on zero padding), plus elementwise ops (BatchNorm ~4-5 FLOPs/element, ReLU, adds).
  So compare it with 2 x the padding-free MAC count: XLA must be at least that and at
  most 4% above (the elementwise share of ResNet-20 and the cifar10 CNN is 1-3%); and
  with the published (padding-included) count it agrees within 10% (8x8 maps lose
  1 - (22/24)^2 = 16% of their taps to padding)."""
  for name in ("resnet20", "cifar10_cnn"):
    model = models.create(name)
    v, x = summary._placeholders(model, (32, 32, 3), 1, jnp.float32)
    fwd = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
    no_pad = jaxpr_macs(fwd, v, x, count_padding=False)
    xla = summary.xla_flops(model, (32, 32, 3))
    assert 1.0 <= xla / (2 * no_pad) <= 1.04, (name, xla, no_pad)
    assert abs(xla / (2 * summary.count_macs(model)) - 1) < 0.10


def test_cli_prints_table_and_totals(capsys):
  assert summary.main(["resnet20", "--input", "32x32x3", "--num-classes", "10"]) == 0
  out = capsys.readouterr().out
  assert "Total params: 269,722" in out
  assert "40.55 MMACs" in out and "81.10 MFLOPs" in out
  assert "(1,8,8,64)" in out


def test_cli_rejects_bad_input():
  with pytest.raises(SystemExit):
    summary.main(["resnet20", "--input", "32x32"])
  with pytest.raises(ValueError, match=r"input_shape must be \(H, W, C\)"):
    summary.layer_table(models.create("resnet20"), (32, 32))


@pytest.mark.parametrize("name,params,gmacs", [
    # torchvision ResNet-50: 25,557,032 params, 4.09 GMACs ("GFLOPS" in its docs).
    ("resnet50", 25_557_032, 4.09),
    # timm/fvcore ViT-B/16: 86.57M params, 17.56 GMACs incl. the attention matmuls
    # (QK^T and AV are 0.72 GMACs of it, so this checks the einsum counting too).
    ("vit_base_patch16_224", 86_567_656, 17.56)])
def test_imagenet_models_published_numbers(name, params, gmacs):
  if name not in models.list_models():
    pytest.skip(f"{name} not registered")
  rows = summary.layer_table(models.create(name, num_classes=1000), (224, 224, 3))
  assert sum(r.params for r in rows) == params
  assert abs(sum(r.macs for r in rows) / 1e9 - gmacs) / gmacs < 0.01
