"""cnn_jax/xla_cpu.py: the XLA CPU flag default of the command-line entry points, and the
materialized conv inputs of the train step."""

import flax
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import models, optim, steps, xla_cpu
from cnn_jax.config import base_config

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def test_default_adds_the_flag_for_jaxlib_0_10_only():
  assert xla_cpu.default_xla_flags("", "0.10.2") == FLAG
  assert xla_cpu.default_xla_flags("--xla_force_host_platform_device_count=8", "0.10.0") == (
      "--xla_force_host_platform_device_count=8 " + FLAG)
  for version in ("0.9.1", "0.11.0", "0.1.0", "1.10.0"):
    assert xla_cpu.default_xla_flags("", version) == ""


def test_default_keeps_a_users_own_ynn_setting():
  mine = "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
  assert xla_cpu.default_xla_flags(mine, "0.10.2") == mine


def test_apply_edits_the_given_environment_and_honours_the_opt_out():
  env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
  assert xla_cpu.apply_cpu_defaults(env, "0.10.2") is True
  assert env["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false " + FLAG
  assert xla_cpu.apply_cpu_defaults(env, "0.10.2") is False  # already there: idempotent
  kept = {"CNN_JAX_KEEP_XLA_FLAGS": "1"}
  assert xla_cpu.apply_cpu_defaults(kept, "0.10.2") is False and "XLA_FLAGS" not in kept
  other = {}
  assert xla_cpu.apply_cpu_defaults(other, "0.12.0") is False and other == {}


def test_materialize_is_the_identity_and_so_is_its_gradient():
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
  w = jax.random.normal(jax.random.key(1), x.shape)

  @jax.jit
  def f(x, flag):
    return jnp.sum(xla_cpu.materialize(x, flag) * w)

  np.testing.assert_array_equal(jax.jit(xla_cpu.materialize)(x, jnp.array(True)), x)
  np.testing.assert_array_equal(jax.grad(f)(x, jnp.array(True)), w)
  # The predicate is real: False takes the other branch (so XLA cannot fold the cond away).
  assert float(jnp.abs(jax.jit(xla_cpu.materialize)(x, jnp.array(False))).max()) == 0.0


def _one_step(model, materialize):
  tx, _ = optim.create_optimizer(base_config().optim, 100, 1)
  state = steps.init_state(model, tx, jax.random.key(0), (32, 32, 3))
  step = jax.jit(steps.make_train_step(model, tx, num_classes=10, mean=[128.0] * 3,
                                       std=[64.0] * 3, seed=0,
                                       materialize_conv_inputs=materialize))
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, 10, (8,), dtype=np.int32)
  compiled = step.lower(state, x, y).compile()
  new, metrics = compiled(state, x, y)
  return new, metrics, compiled.as_text()


def test_materialized_conv_inputs_change_the_program_not_the_step():
  model = models.create("cifar10_cnn")
  plain, m_plain, hlo_plain = _one_step(model, False)
  kept, m_kept, hlo_kept = _one_step(model, True)
  n_convs = sum(path[-1] == "kernel" and v.ndim == 4
                for path, v in flax.traverse_util.flatten_dict(plain.params).items())
  # One conditional per conv call made it through XLA's optimizations (forward and backward).
  assert hlo_plain.count(" conditional(") == 0
  assert hlo_kept.count(" conditional(") >= n_convs > 0
  np.testing.assert_allclose(float(m_kept["loss"]), float(m_plain["loss"]), rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               kept.params, plain.params)
