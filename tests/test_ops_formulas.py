"""Convolution arithmetic: seed tables, XLA's own shapes and paddings, parameter counts."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_jax.ops import (conv_macs, conv_output_size, conv_params,
                         depthwise_separable_params, same_padding)


@pytest.mark.parametrize("stride,padding,dilation,want", [
    (1, 0, 1, 30), (1, 1, 1, 32), (2, 1, 1, 16), (1, 2, 2, 32)])
def test_seed_table_3x3_on_32(stride, padding, dilation, want):
  assert conv_output_size(32, 3, stride, padding, dilation) == want


def test_output_size_and_same_padding_match_lax():
  """Against the shapes lax.conv_general_dilated really produces, and lax's own
  'SAME' padding rule (jax.lax.padtype_to_pads)."""
  for n, k, s, d in itertools.product([1, 5, 8, 11], [1, 2, 3, 5], [1, 2, 3], [1, 2]):
    pads = lax.padtype_to_pads((n,), ((k - 1) * d + 1,), (s,), "SAME")[0]
    assert same_padding(n, k, s, d) == tuple(pads), (n, k, s, d)
    assert conv_output_size(n, k, s, "SAME", d) == -(-n // s)
    for p in (0, 1, (2, 0)):
      lo, hi = (p, p) if isinstance(p, int) else p
      if n + lo + hi < (k - 1) * d + 1:
        with pytest.raises(ValueError, match="empty output"):
          conv_output_size(n, k, s, p, d)
        continue
      # eval_shape runs lax's own shape rule without computing anything.
      y = jax.eval_shape(lambda x, w: lax.conv_general_dilated(  # noqa: B023
          x, w, (s,), [(lo, hi)], rhs_dilation=(d,),
          dimension_numbers=("NWC", "WIO", "NWC")),
          jax.ShapeDtypeStruct((1, n, 1), jnp.float32),
          jax.ShapeDtypeStruct((k, 1, 1), jnp.float32))
      assert conv_output_size(n, k, s, p, d) == y.shape[1], (n, k, s, p, d)


def test_empty_output_error_names_values_and_formula():
  expected = r"n \+ p_total = 4 \+ 0 = 4 .* d\(k-1\)\+1 = 2\*\(3-1\)\+1 = 5"
  with pytest.raises(ValueError, match=expected):
    conv_output_size(4, 3, 1, 0, 2)
  with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
    conv_output_size(8, 3, 0)


def test_param_seed_numbers():
  assert conv_params(3, 3, 3, 64) == 1_792
  assert conv_params(3, 3, 64, 128) == 73_856
  standard = conv_params(3, 3, 64, 128, bias=False)
  separable = depthwise_separable_params(3, 64, 128, bias=False)
  assert (standard, separable) == (73_728, 8_768)
  assert round(standard / separable, 1) == 8.4
  for c in (16, 64, 256):  # two stacked 3x3 vs one 5x5 (same 5x5 receptive field)
    assert 2 * conv_params(3, 3, c, c, bias=False) == 18 * c * c
    assert conv_params(5, 5, c, c, bias=False) == 25 * c * c


def test_conv_macs_and_groups_errors():
  assert conv_macs(3, 3, 16, 16, 32, 32) == 2_359_296          # a ResNet-20 stage-1 conv
  assert conv_macs(3, 3, 32, 32, 8, 8, groups=32) == 3 * 3 * 32 * 64
  with pytest.raises(ValueError, match="groups=3 must divide C_in=64 and C_out=128"):
    conv_params(3, 3, 64, 128, groups=3)


def test_params_match_an_actual_flax_conv():
  import flax.linen as nn
  for (k, cin, cout, g, bias) in [(3, 3, 64, 1, True), (3, 64, 64, 64, False), (1, 8, 4, 2, True)]:
    v = nn.Conv(cout, (k, k), feature_group_count=g, use_bias=bias).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, cin)))
    n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v))
    assert conv_params(k, k, cin, cout, g, bias) == n
