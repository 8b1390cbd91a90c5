"""Receptive fields from the jaxpr vs. which input pixels the gradient actually reaches."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.analysis.receptive_field import receptive_field, receptive_field_of_fn
from cnn_jax.ops import conv2d


def grad_supports(fn, x, indices):
  """For each (i, j): input pixels (H, W) with a nonzero gradient of sum_c fn(x)[0, i, j, c].

  One jitted, vmapped VJP for all units (compiled once rather than op by op)."""
  @jax.jit
  def grads(x):
    y, vjp = jax.vjp(fn, x)
    cot = jnp.stack([jnp.zeros_like(y).at[0, i, j, :].set(1.0) for i, j in indices])
    return jax.vmap(lambda c: vjp(c)[0])(cot)
  g = np.asarray(grads(x))
  return [np.abs(gi).sum(axis=(0, 3)) > 0 for gi in g]


def box(region, hw):
  m = np.zeros(hw, bool)
  m[region[0].start:region[0].stop, region[1].start:region[1].stop] = True
  return m


def test_dilated_stack_matches_yu_koltun_and_gradient():
  """Yu & Koltun 2016 (arXiv:1511.07122), Sec. 2: 3x3 convs with dilation 1, 2, 4 have
  receptive fields 3, 7, 15."""
  rng = np.random.default_rng(0)
  ws = [jnp.asarray(rng.standard_normal((3, 3, 2, 2)), jnp.float32) for _ in range(3)]

  def fn(x, upto=3):
    for w, d in list(zip(ws, (1, 2, 4)))[:upto]:
      x = conv2d(x, w, padding="SAME", dilation=d)
    return x

  for upto, size in ((1, 3), (2, 7), (3, 15)):
    rf = receptive_field_of_fn(lambda x: fn(x, upto), (1, 40, 40, 2))  # noqa: B023
    assert rf.final.size == (size, size) and rf.final.jump == (1, 1)
  x = jnp.asarray(rng.standard_normal((1, 40, 40, 2)), jnp.float32)
  idxs = ((0, 0), (20, 17), (39, 5))
  for idx, got in zip(idxs, grad_supports(fn, x, idxs)):
    np.testing.assert_array_equal(got, box(rf.final.region(idx, (40, 40)), (40, 40)))


def test_strided_valid_stack_and_pooling_by_gradient():
  """conv 5x5 s2 p1 -> avg-pool 3x3 s2 'VALID' -> conv 3x3 d2 s1: against the gradient."""
  rng = np.random.default_rng(1)
  w1 = jnp.asarray(rng.standard_normal((5, 5, 1, 2)), jnp.float32)
  w2 = jnp.asarray(rng.standard_normal((3, 3, 2, 1)), jnp.float32)

  def fn(x):
    x = conv2d(x, w1, stride=2, padding=1)
    x = nn.avg_pool(x, (3, 3), strides=(2, 2))
    return conv2d(x, w2, dilation=2, padding=((0, 1), (2, 0)))

  rf = receptive_field_of_fn(fn, (1, 45, 45, 1))
  # Hand: 5 -> 5 + 2*2 = 9 -> 9 + 2*2*4 = 25; jumps 2, 4, 4.
  assert rf.final.size == (25, 25) and rf.final.jump == (4, 4)
  x = jnp.asarray(rng.standard_normal((1, 45, 45, 1)), jnp.float32)
  out_hw = jax.eval_shape(fn, x).shape[1:3]
  # Not the last row/column: the VALID pooling drops conv row 21, so the bottom unit's
  # true support is smaller than its field clipped to the image (a boundary effect).
  idxs = ((0, 0), (3, 5), (out_hw[0] - 2, out_hw[1] - 2))
  for idx, got in zip(idxs, grad_supports(fn, x, idxs)):
    np.testing.assert_array_equal(got, box(rf.final.region(idx, (45, 45)), (45, 45)))


@pytest.mark.parametrize("name,size,targets", [
    ("cifar10_cnn", 48, {"ConvBNReLU_1": 5, "ConvBNReLU_3": 14, "ConvBNReLU_5": 32}),
    ("resnet20", 96, {"BasicBlock_1": 11, "BasicBlock_3": 21, "BasicBlock_8": 81}),
])
def test_model_fields_match_gradient_support(name, size, targets, monkeypatch):
  """Fields of registered models, computed from the unmodified model, against the
  gradient of one feature-map unit (before global pooling) w.r.t. the input.

  For the gradient the network is linearised -- ReLU -> identity, max-pool -> avg-pool
  with the same window -- because a ReLU that is off or a max that is elsewhere would
  hide pixels that are inside the field; the window geometry (the field) is unchanged.
  """
  model = models.create(name)
  rf = receptive_field(model, (size, size, 3))
  # Random variables straight from the shapes (no compiled init); variances positive.
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                          jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map_with_path(
      lambda p, s: (np.ones if "var" in jax.tree_util.keystr(p) else rng.standard_normal)(
          s.shape).astype(np.float32), shapes)
  monkeypatch.setattr(nn, "relu", lambda x: x)
  monkeypatch.setattr(nn, "max_pool", nn.avg_pool)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, size, size, 3))
  paths = list(targets)
  for path, want_size in targets.items():
    assert rf.modules[path].size == (want_size, want_size), (path, rf.modules[path])

  def features(x):
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"],
                           capture_intermediates=lambda m, _: "/".join(m.path) in paths)
    inter = state["intermediates"]
    return [inter[p]["__call__"][0] for p in paths]

  fshapes = [f.shape for f in jax.eval_shape(features, x)]
  units = [(k, (0, 0)) for k in range(len(paths))]
  units += [(k, (s[1] // 2, s[1] // 2 - 1)) for k, s in enumerate(fshapes)]
  units += [(k, (s[1] - 1, 1)) for k, s in enumerate(fshapes)]

  @jax.jit
  def grads(x):  # one compiled VJP for every (feature map, unit) pair
    ys, vjp = jax.vjp(features, x)
    def one_hot(k, i, j):
      return [jnp.zeros_like(y).at[0, i, j, :].set(1.0 if n == k else 0.0)
              for n, y in enumerate(ys)]
    cots = [one_hot(k, i, j) for k, (i, j) in units]
    cots = jax.tree_util.tree_map(lambda *c: jnp.stack(c), *cots)
    return jax.vmap(lambda c: vjp(c)[0])(cots)

  g = np.abs(np.asarray(grads(x))).sum(axis=(1, 4)) > 0
  for (k, idx), got in zip(units, g):
    want = box(rf.modules[paths[k]].region(idx, (size, size)), (size, size))
    np.testing.assert_array_equal(got, want, err_msg=f"{name} {paths[k]} {idx}")


def test_output_of_gap_models_is_global():
  rf = receptive_field(models.create("resnet20"), (32, 32, 3))
  assert rf.output.is_global and rf.final.size == (81, 81) and rf.final.jump == (4, 4)
  # Distill recurrence by hand on the conv rows: RF_l = RF_{l-1} + (k-1) * d * jump_{l-1}.
  conv_rows = [r for r in rf.rows if r.op == "conv_general_dilated"]
  assert len(conv_rows) == 19
  rf_size, jump = 1, 1
  for r in conv_rows:
    rf_size = rf_size + (r.kernel[0] - 1) * r.dilation[0] * jump
    jump *= r.stride[0]
  assert (rf_size, jump) == (81, 4)


@pytest.mark.parametrize("name,size,jump", [("alexnet", 195, 32), ("vgg16", 212, 32)])
def test_published_imagenet_fields(name, size, jump):
  """Araujo et al., Distill 2019, Table 1: AlexNet 195, VGG-16 212 pixels (effective
  stride 32) for the last feature map before the classifier."""
  if name not in models.list_models():
    pytest.skip(f"{name} not registered")
  rf = receptive_field(models.create(name, num_classes=1000), (224, 224, 3))
  assert rf.final.size == (size, size) and rf.final.jump == (jump, jump)
  assert rf.output.is_global
