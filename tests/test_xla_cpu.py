"""cnn_jax/xla_cpu.py: the XLA CPU flag default of the command-line entry points, and the
materialized conv inputs of the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import xla_cpu

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


def test_find_tcmalloc_returns_the_first_library_found(tmp_path):
  empty, lib = tmp_path / "empty", tmp_path / "lib"
  empty.mkdir()
  lib.mkdir()
  assert xla_cpu.find_tcmalloc([str(empty)]) is None
  (lib / "libtcmalloc.so.4").write_bytes(b"")
  assert xla_cpu.find_tcmalloc([str(empty), str(lib)]) == str(lib / "libtcmalloc.so.4")
  (lib / "libtcmalloc_minimal.so.4").write_bytes(b"")  # the minimal build is preferred
  assert xla_cpu.find_tcmalloc([str(lib)]) == str(lib / "libtcmalloc_minimal.so.4")


def test_allocator_hint_only_on_linux_without_a_preloaded_allocator(tmp_path):
  none = xla_cpu.allocator_hint({}, "linux", [str(tmp_path)])
  assert "LD_PRELOAD=<libtcmalloc_minimal.so.4> (apt install libtcmalloc-minimal4)" in none
  lib = tmp_path / "libtcmalloc_minimal.so.4"
  lib.write_bytes(b"")
  hint = xla_cpu.allocator_hint({}, "linux", [str(tmp_path)])
  assert hint.endswith(f"start with LD_PRELOAD={lib}")
  other = {"LD_PRELOAD": "/opt/libunrelated.so"}
  assert xla_cpu.allocator_hint(other, "linux", [str(tmp_path)]) == hint
  for preload in (str(lib), "/usr/lib/libjemalloc.so.2", "libmimalloc.so"):
    assert xla_cpu.allocator_hint({"LD_PRELOAD": preload}, "linux", [str(tmp_path)]) is None
  assert xla_cpu.allocator_hint({}, "darwin", [str(tmp_path)]) is None


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



@pytest.mark.parametrize("setting,backend,platform,want", [
    ("auto", "xla", "cpu", True),        # XLA's CPU convs: the transposes the boundaries fix
    ("auto", "onednn", "cpu", False),    # oneDNN's convs have no transpose: boundaries only cost
    ("auto", "xla", "gpu", False),
    ("on", "onednn", "tpu", True),
    ("off", "xla", "cpu", False),
])
def test_resolve_materialize_follows_the_conv_backend(setting, backend, platform, want):
  assert xla_cpu.resolve_materialize(setting, backend, platform) is want
