"""cnn_jax.ops.onednn_conv: oneDNN's convolution equals XLA's in value and both gradients, is
taken only where cpu_conv's backend says so, and fails loudly where it cannot run."""

import contextlib
import functools
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_jax import models
from cnn_jax.ops import cpu_conv, depthwise, onednn_conv, onednn_library

REPO = pathlib.Path(__file__).resolve().parents[1]
NHWC = ("NHWC", "HWIO", "NHWC")
pytestmark = pytest.mark.skipif(not onednn_library.available(),
                                reason=f"oneDNN: {onednn_library.unavailable_reason()}")

# (x shape, w shape, strides, padding, rhs_dilation, feature_group_count)
CASES = [
    ((2, 9, 9, 5), (3, 3, 5, 7), (1, 1), "SAME", (1, 1), 1),
    ((2, 9, 10, 5), (3, 3, 5, 8), (2, 2), "SAME", (1, 1), 1),       # odd H, W at stride 2
    ((2, 8, 8, 4), (1, 1, 4, 6), (2, 2), "VALID", (1, 1), 1),        # ResNet option-B shortcut
    ((2, 15, 15, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3)), (1, 1), 1),  # ImageNet stem
    ((2, 12, 12, 4), (3, 3, 4, 4), (1, 1), "SAME", (2, 3), 1),       # dilated
    ((2, 10, 10, 6), (3, 3, 1, 6), (1, 1), "SAME", (1, 1), 6),       # depthwise
    ((2, 10, 10, 6), (3, 3, 1, 12), (2, 2), "SAME", (1, 1), 6),      # depthwise, multiplier 2
    ((2, 10, 10, 6), (3, 3, 2, 9), (1, 1), ((0, 2), (1, 0)), (1, 1), 3),  # grouped, asymmetric
    ((2, 2, 2, 8), (3, 3, 8, 8), (1, 1), "SAME", (1, 1), 1),         # output smaller than window
    ((2, 4, 4, 16), (4, 4, 16, 8), (4, 4), "VALID", (1, 1), 1),      # patchify (ViT / ConvNeXt stem)
]


def _xla(x, w, s, p, d, g):
  return lax.conv_general_dilated(x, w, s, p, rhs_dilation=d, dimension_numbers=NHWC,
                                  feature_group_count=g,
                                  preferred_element_type=jnp.float32).astype(x.dtype)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("xs,ws,s,p,d,g", CASES)
def test_conv_equals_xla_in_value_and_gradients(xs, ws, s, p, d, g, dtype, tol):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(xs), dtype)
  w = jnp.asarray(rng.standard_normal(ws), dtype)
  want, want_vjp = jax.vjp(lambda x, w: _xla(x, w, s, p, d, g), x, w)
  got, got_vjp = jax.jit(lambda x, w: jax.vjp(
      lambda x, w: onednn_conv.conv(x, w, s, p, d, g), x, w))(x, w)
  assert got.shape == want.shape and got.dtype == dtype
  ct = jnp.asarray(rng.standard_normal(want.shape), dtype)
  for name, a, b in zip(("y", "dx", "dw"), (got, *got_vjp(ct)), (want, *want_vjp(ct))):
    assert a.shape == b.shape and a.dtype == b.dtype, name
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * np.abs(b).max(), err_msg=name)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("xs,ws,s,p,d,g", [CASES[i] for i in (1, 4, 6, 7)])
def test_conv_with_bias_equals_xla_plus_bias_in_value_and_gradients(xs, ws, s, p, d, g, dtype,
                                                                     tol):
  # Strided, dilated, depthwise and grouped: the bias is oneDNN's in both directions.
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal(xs), dtype)
  w = jnp.asarray(rng.standard_normal(ws), dtype)
  b = jnp.asarray(rng.standard_normal(ws[3]), jnp.float32)

  def ref(x, w, b):  # in float32, rounded once, as oneDNN does
    y = lax.conv_general_dilated(x.astype(jnp.float32), w.astype(jnp.float32), s, p,
                                 rhs_dilation=d, dimension_numbers=NHWC,
                                 feature_group_count=g)
    return (y + b).astype(dtype)

  ct = jnp.asarray(rng.standard_normal(ref(x, w, b).shape), dtype)

  def value_and_vjp(f, x, w, b):
    y, vjp = jax.vjp(f, x, w, b)
    return (y, *vjp(ct))

  want = value_and_vjp(ref, x, w, b)
  mine = jax.jit(functools.partial(
      value_and_vjp, lambda x, w, b: onednn_conv.conv(x, w, s, p, d, g, bias=b)))
  text = mine.lower(x, w, b).as_text()
  assert "cnn_jax_onednn_conv_fwd_bias" in text and "conv_bwd_weights_bias" in text
  for name, a, c in zip(("y", "dx", "dw", "db"), mine(x, w, b), want):
    assert a.shape == c.shape and a.dtype == c.dtype, name
    a, c = np.asarray(a, np.float32), np.asarray(c, np.float32)
    np.testing.assert_allclose(a, c, rtol=0, atol=tol * np.abs(c).max(), err_msg=name)


def test_conv_rejects_a_bias_of_the_wrong_shape():
  x, w = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 5))
  with pytest.raises(ValueError, match=r"bias must have shape \(C_out,\) = \(5,\), got \(4,\)"):
    onednn_conv.conv(x, w, padding="SAME", bias=jnp.zeros((4,)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layers_conv_puts_its_bias_into_onednn_with_nn_conv_variables(dtype):
  from cnn_jax.models import layers
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 6)), jnp.float32)
  kw = dict(features=9, kernel_size=(3, 3), strides=2, padding="SAME", feature_group_count=3,
            dtype=dtype)
  mine, ref = layers.Conv(**kw), nn.Conv(**kw)
  variables = mine.init(jax.random.key(0), x)
  assert (jax.tree_util.tree_map(jnp.shape, variables)
          == jax.tree_util.tree_map(jnp.shape, ref.init(jax.random.key(0), x)))
  variables = jax.tree_util.tree_map(  # a non-zero bias, so that adding it is checked
      lambda v: jnp.asarray(rng.standard_normal(v.shape), v.dtype), variables)

  def loss(module, backend, v):
    with cpu_conv.conv_backend(backend):
      y = module.apply(v, x)
    return jnp.sum(jnp.sin(y.astype(jnp.float32))), y

  texts = {}
  for backend in ("xla", "onednn"):
    texts[backend] = jax.jit(jax.grad(lambda v: loss(mine, backend, v)[0])).lower(
        variables).as_text()
  assert "conv_fwd_bias" in texts["onednn"] and "conv_bwd_weights_bias" in texts["onednn"]
  assert "cnn_jax_onednn" not in texts["xla"]
  (l0, y0), g0 = jax.value_and_grad(lambda v: loss(ref, "xla", v), has_aux=True)(variables)
  (l1, y1), g1 = jax.jit(jax.value_and_grad(lambda v: loss(mine, "onednn", v),
                                            has_aux=True))(variables)
  assert y1.dtype == y0.dtype == dtype
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree_util.tree_leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * float(np.abs(b).max()),
                               err_msg=jax.tree_util.keystr(path))
  np.testing.assert_allclose(np.asarray(y1, np.float32), np.asarray(y0, np.float32), rtol=0,
                             atol=tol * float(np.abs(np.asarray(y0, np.float32)).max()))


def test_layers_conv_without_bias_or_at_init_takes_the_nn_conv_path():
  from cnn_jax.models import layers
  x = jnp.ones((1, 6, 6, 4))
  for module in (layers.Conv(4, (3, 3), use_bias=False), layers.Conv(4, (3, 3))):
    with cpu_conv.conv_backend("onednn"):
      v = module.init(jax.random.key(0), x)
      init_text = jax.jit(lambda: module.init(jax.random.key(0), x)).lower().as_text()
      text = jax.jit(lambda v: module.apply(v, x)).lower(v).as_text()
    assert "conv_fwd_bias" not in init_text
    assert ("conv_fwd_bias" in text) == module.use_bias
    assert "cnn_jax_onednn_conv_fwd" in text


@pytest.mark.parametrize("kwargs", [
    dict(lhs_dilation=(2, 2)),                                          # transposed conv
    dict(dimension_numbers=None),                                       # lax's NCHW default
    dict(dtype=jnp.float16),
    dict(rhs_dtype=jnp.bfloat16),                                       # mixed dtypes
    dict(padding=((-1, 0), (0, 0))),
    dict(batch_group_count=2),
    dict(preferred_element_type=jnp.float32, dtype=jnp.bfloat16, rhs_dtype=jnp.bfloat16),
    dict(feature_group_count=3),                                        # 8 channels, 3 groups
])
def test_supports_rejects_what_it_cannot_compute(kwargs):
  args = dict(lhs_shape=(2, 8, 8, 8), rhs_shape=(3, 3, 8, 8), dtype=jnp.float32,
              rhs_dtype=jnp.float32, padding="SAME", dimension_numbers=NHWC)
  assert onednn_conv.supports(**args)
  args.update(kwargs)
  if "dtype" in kwargs and "rhs_dtype" not in kwargs:
    args["rhs_dtype"] = kwargs["dtype"]
  assert not onednn_conv.supports(**args)
  with pytest.raises(ValueError, match="unsupported convolution"):
    onednn_conv.conv(jnp.ones((2, 8, 8, 8), jnp.float16), jnp.ones((3, 3, 8, 8), jnp.float16))


def _hlo(f, *args):
  # A new function object per call: jax caches traces by function, not by conv context.
  return jax.jit(lambda *a: f(*a)).lower(*args).as_text()


def test_cpu_conv_takes_onednn_only_under_its_backend():
  conv = lambda x, w: cpu_conv.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC)
  args = (jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8)))
  target = "cnn_jax_onednn_conv_fwd"
  assert cpu_conv.current_backend() == "xla"
  assert target not in _hlo(conv, *args)
  with cpu_conv.conv_backend("onednn") as name:
    assert name == "onednn" == cpu_conv.current_backend()
    assert target in _hlo(conv, *args)
    with depthwise.xla_convs():  # analysis: the mathematical conv op, never a custom call
      assert target not in _hlo(conv, *args)
    # What oneDNN does not take falls back to XLA inside the backend too.
    f16 = (jnp.ones((2, 8, 8, 4), jnp.float16), jnp.ones((3, 3, 4, 8), jnp.float16))
    assert target not in _hlo(conv, *f16)
  with cpu_conv.conv_backend("xla"):
    assert target not in _hlo(conv, *args)
  assert cpu_conv.current_backend() == "xla"


def test_conv_backend_refuses_unknown_names_and_several_devices(monkeypatch):
  with pytest.raises(ValueError, match="conv_backend must be one of"):
    with cpu_conv.conv_backend("mkldnn"):
      pass
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  assert cpu_conv.resolve_backend("auto") == "xla"
  with pytest.raises(ValueError, match="one device.*8 devices"):
    with cpu_conv.conv_backend("onednn"):
      pass


def test_missing_onednn_falls_back_under_auto_and_fails_loudly_when_asked_for(tmp_path):
  code = ("from cnn_jax.ops import cpu_conv, onednn_library as o\n"
          "print('REASON', o.unavailable_reason())\n"
          "print('AUTO', cpu_conv.resolve_backend('auto'))\n"
          "try:\n"
          "  with cpu_conv.conv_backend('onednn'): pass\n"
          "except RuntimeError as e: print('ERROR', e)\n")
  env = {**os.environ, "CNN_JAX_ONEDNN_ROOT": str(tmp_path), "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=REPO, check=True).stdout
  assert "REASON oneDNN not found" in out
  assert "AUTO xla" in out
  assert "ERROR cnn_jax oneDNN kernels unavailable: oneDNN not found" in out


def test_failed_build_names_the_compiler_and_leaves_no_library(tmp_path, monkeypatch):
  monkeypatch.setenv("CNN_JAX_CACHE_DIR", str(tmp_path))
  monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
  with pytest.raises(RuntimeError, match=r"compiling .*onednn_conv.cc, .*onednn_batch_norm.cc "
                                          r"failed \(exit 1\)"):
    onednn_library.build()
  assert not list(tmp_path.rglob("*.so"))


@pytest.mark.parametrize("name,kwargs", [
    ("resnet20", {}),
    # One block per stage, narrow: the 7x7 depthwise convs, 2x2 patchify stem and GRN of
    # ConvNeXt V2 at a fraction of atto's compile time.
    ("convnextv2_atto_cifar", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))),
])
def test_model_loss_and_gradients_equal_under_both_backends(name, kwargs):
  # A dense residual net with BatchNorm in training mode, and a depthwise one.
  model = models.create(name, num_classes=10, **kwargs)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, 4))
  variables = model.init(jax.random.key(0), x, train=False)

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True,
                            mutable=["batch_stats"])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y])

  results = {}
  # Reference: every conv XLA's own op (xla_convs; compiles faster than the CPU reroutes).
  for backend, force_xla in (("xla", True), ("onednn", False)):
    with (cpu_conv.conv_backend(backend),
          depthwise.xla_convs() if force_xla else contextlib.nullcontext()):
      lowered = jax.jit(jax.value_and_grad(lambda p: loss(p))).lower(variables["params"])
      assert ("cnn_jax_onednn_conv_bwd_weights" in lowered.as_text()) == (backend == "onednn")
      results[backend] = lowered.compile()(variables["params"])
  (l0, g0), (l1, g1) = results["xla"], results["onednn"]
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree_util.tree_leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * float(np.abs(b).max()) + 1e-7,
                               err_msg=jax.tree_util.keystr(path))
