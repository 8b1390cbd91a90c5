"""Registry, parameter counts and shapes of the foundation models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models


def _abstract_vars(model, shape=(1, 32, 32, 3)):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


@pytest.mark.parametrize("name,kwargs,expected", [
    ("cifar10_cnn", {}, 289_194),  # the seed code's count (its comment's 309,738 is wrong)
    ("resnet20", {}, 269_722),  # He et al. 2015, option A
    ("resnet20", {"shortcut": "A"}, 269_722),
    ("resnet20", {"shortcut": "B"}, 272_474),  # option B: 1x1 projections
])
def test_parameter_counts(name, kwargs, expected):
  assert models.count_params(_abstract_vars(models.create(name, **kwargs))) == expected


def test_count_params_ignores_batch_stats_and_counts_bare_trees():
  v = _abstract_vars(models.create("resnet20"))
  assert "batch_stats" in v
  assert models.count_params(v["params"]) == models.count_params(v)
  # Every leaf: params plus BN running mean and var (2 per BN channel).
  n_bn_channels = sum(x.shape[0] for x in jax.tree.leaves(v["batch_stats"])) // 2
  assert models.count_params(v, None) == 269_722 + 2 * n_bn_channels


@pytest.mark.parametrize("name", ["cifar10_cnn", "resnet20"])
def test_forward_shapes_and_modes(name):
  model = models.create(name, num_classes=7)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  assert logits.shape == (4, 7) and logits.dtype == jnp.float32
  logits_t, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits_t.shape == (4, 7)
  # Training mode updates the running statistics; evaluation mode is deterministic (the same
  # program twice: bit-equal) and does not depend on jit (op by op: equal to float32 rounding,
  # as XLA's CPU convolutions may pick other kernels for a fused program).
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"],
                         variables["batch_stats"])
  assert any(jax.tree.leaves(changed))
  np.testing.assert_array_equal(logits, jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, x))
  np.testing.assert_allclose(logits, model.apply(variables, x, train=False), rtol=1e-5,
                             atol=1e-5)


def test_list_and_unknown_name():
  names = models.list_models()
  assert {"cifar10_cnn", "resnet20", "resnet56", "resnet110"} <= set(names)
  assert names == sorted(names)
  with pytest.raises(KeyError, match=r"unknown model 'resnet21'.*resnet20"):
    models.create("resnet21")
  with pytest.raises(TypeError, match="resnet20"):
    models.create("resnet20", no_such_option=1)


def test_resnet_rejects_bad_depth_and_shortcut():
  with pytest.raises(ValueError, match="6n\\+2"):
    _abstract_vars(models.create("resnet20", depth=21))
  with pytest.raises(ValueError, match="shortcut"):
    _abstract_vars(models.create("resnet20", shortcut="C"))
