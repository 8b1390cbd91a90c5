"""cnn_jax.ops.conv2d/conv1d: three implementations vs NumPy loops and scipy.signal."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.signal
from hypothesis import given, settings, strategies as st

from cnn_jax.ops import IMPLS, conv1d, conv2d


def np_pad(padding, x_hw, k_hw, s, d):
  """Padding by hand (no cnn_jax code): 'VALID', 'SAME' (TF rule), int, or pairs."""
  if padding == "VALID":
    return ((0, 0), (0, 0))
  if padding == "SAME":
    out = []
    for n, k, ss, dd in zip(x_hw, k_hw, s, d):
      total = max((-(-n // ss) - 1) * ss + dd * (k - 1) + 1 - n, 0)
      out.append((total // 2, total - total // 2))
    return tuple(out)
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  return padding


def np_conv2d(x, w, b, s, pads, d, groups):
  """Oracle: the defining sum, looped in float64 NumPy (returns output and padded x)."""
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64)
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  n, hp, wp, c = xp.shape
  kh, kw, cg, o_ch = w.shape
  og = o_ch // groups
  ho = (hp - d[0] * (kh - 1) - 1) // s[0] + 1
  wo = (wp - d[1] * (kw - 1) - 1) // s[1] + 1
  out = np.zeros((n, ho, wo, o_ch))
  for i in range(ho):
    for j in range(wo):
      for o in range(o_ch):
        g = o // og
        patch = xp[:, i * s[0]:i * s[0] + d[0] * (kh - 1) + 1:d[0],
                   j * s[1]:j * s[1] + d[1] * (kw - 1) + 1:d[1], g * cg:(g + 1) * cg]
        out[:, i, j, o] = (patch * w[..., o]).sum(axis=(1, 2, 3))
  if b is not None:
    out += np.asarray(b, np.float64)
  return out


def np_conv2d_grads(x, w, gout, s, pads, d, groups):
  """Oracle gradients of sum(gout * conv(x, w)) w.r.t. x and w, by the chain rule in loops."""
  x = np.asarray(x, np.float64)
  w = np.asarray(w, np.float64)
  xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  gxp = np.zeros_like(xp)
  gw = np.zeros_like(w)
  kh, kw, cg, o_ch = w.shape
  og = o_ch // groups
  _, ho, wo, _ = gout.shape
  for i in range(ho):
    for j in range(wo):
      for o in range(o_ch):
        g = o // og
        sl = (slice(None), slice(i * s[0], i * s[0] + d[0] * (kh - 1) + 1, d[0]),
              slice(j * s[1], j * s[1] + d[1] * (kw - 1) + 1, d[1]),
              slice(g * cg, (g + 1) * cg))
        go = gout[:, i, j, o].astype(np.float64)
        gw[..., o] += np.einsum("nhwc,n->hwc", xp[sl], go)
        gxp[sl] += w[..., o][None] * go[:, None, None, None]
  h, wd = x.shape[1:3]
  return gxp[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + wd], gw


@st.composite
def conv_cases(draw):
  groups = draw(st.sampled_from([1, 1, 2, 3]))
  c_in = groups * draw(st.integers(1, 2))
  c_out = groups * draw(st.integers(1, 2))
  kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
  s = (draw(st.integers(1, 3)), draw(st.integers(1, 2)))
  d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
  h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
  padding = draw(st.sampled_from(["VALID", "SAME", 0, 1, 2, ((0, 2), (1, 0))]))
  pads = np_pad(padding, (h, w), (kh, kw), s, d)
  # Keep only cases with a non-empty output (empty ones are tested for their error).
  if h + sum(pads[0]) < d[0] * (kh - 1) + 1 or w + sum(pads[1]) < d[1] * (kw - 1) + 1:
    h, w = h + 2 * d[0] * kh, w + 2 * d[1] * kw
    pads = np_pad(padding, (h, w), (kh, kw), s, d)
  n = draw(st.integers(1, 2))
  seed = draw(st.integers(0, 2**16))
  return dict(shape_x=(n, h, w, c_in), shape_w=(kh, kw, c_in // groups, c_out), s=s, d=d,
              padding=padding, pads=pads, groups=groups, seed=seed)


@settings(max_examples=12, deadline=None)
@given(conv_cases())
def test_impls_match_numpy_oracle_values_and_grads(case):
  rng = np.random.default_rng(case["seed"])
  x = rng.standard_normal(case["shape_x"]).astype(np.float32)
  w = rng.standard_normal(case["shape_w"]).astype(np.float32)
  b = rng.standard_normal(case["shape_w"][-1]).astype(np.float32)
  kw_ = dict(stride=case["s"], padding=case["padding"], dilation=case["d"],
             groups=case["groups"])
  want = np_conv2d(x, w, b, case["s"], case["pads"], case["d"], case["groups"])
  gout = rng.standard_normal(want.shape).astype(np.float32)
  gx_want, gw_want = np_conv2d_grads(x, w, gout, case["s"], case["pads"], case["d"],
                                     case["groups"])
  for impl in IMPLS:
    # One jit per case (value and both grads) compiles once instead of op by op.
    @jax.jit
    def value_and_grads(x, w):
      y, vjp = jax.vjp(lambda x, w: conv2d(x, w, b, impl=impl, **kw_), x, w)  # noqa: B023
      return (y, *vjp(jnp.asarray(gout)))
    y, gx, gw = value_and_grads(x, w)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5, err_msg=impl)
    np.testing.assert_allclose(np.asarray(gx), gx_want, rtol=1e-5, atol=1e-4, err_msg=impl)
    np.testing.assert_allclose(np.asarray(gw), gw_want, rtol=1e-5, atol=1e-4, err_msg=impl)


def test_seeded_sweep_impls_agree_on_layer_like_shapes():
  """Realistic small layers (batch 2): the three implementations agree with each other."""
  rng = np.random.default_rng(0)
  for (h, c_in, c_out, k, s, pad, d, g) in [(12, 8, 16, 3, 1, "SAME", 1, 1),
                                            (12, 8, 8, 3, 2, 1, 1, 8),
                                            (9, 6, 4, 3, 1, 2, 2, 2),
                                            (10, 4, 4, 1, 2, "VALID", 1, 1)]:
    x = rng.standard_normal((2, h, h, c_in)).astype(np.float32)
    w = rng.standard_normal((k, k, c_in // g, c_out)).astype(np.float32)
    ys = [jax.jit(lambda x, w, i=i: conv2d(x, w, stride=s, padding=pad, dilation=d,  # noqa
                                          groups=g, impl=i))(x, w) for i in IMPLS]
    for y in ys[1:]:
      np.testing.assert_allclose(np.asarray(y), np.asarray(ys[0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_single_channel_is_scipy_correlate2d(impl):
  rng = np.random.default_rng(1)
  img = rng.standard_normal((9, 11))
  ker = rng.standard_normal((3, 4))
  x = img[None, :, :, None].astype(np.float32)
  w = ker[:, :, None, None].astype(np.float32)
  for mode, padding in (("valid", "VALID"), ("full", ((2, 2), (3, 3)))):
    want = scipy.signal.correlate2d(img, ker, mode=mode)
    got = np.asarray(conv2d(x, w, padding=padding, impl=impl))[0, :, :, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_dl_convolution_is_cross_correlation():
  """Flipping the kernel in both axes turns conv2d into true convolution (convolve2d);
  the unflipped kernel does not (for a non-symmetric kernel)."""
  rng = np.random.default_rng(2)
  img = rng.standard_normal((10, 10))
  ker = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [0.5, 0.0, -2.0]])
  x = img[None, :, :, None].astype(np.float32)
  true_conv = scipy.signal.convolve2d(img, ker, mode="valid")
  flipped = np.asarray(conv2d(x, ker[::-1, ::-1, None, None].astype(np.float32)))[0, :, :, 0]
  np.testing.assert_allclose(flipped, true_conv, rtol=1e-5, atol=1e-5)
  plain = np.asarray(conv2d(x, ker[:, :, None, None].astype(np.float32)))[0, :, :, 0]
  assert np.abs(plain - true_conv).max() > 1.0


@pytest.mark.parametrize("impl", IMPLS)
def test_conv1d_is_numpy_correlate_and_fir(impl):
  rng = np.random.default_rng(3)
  sig = rng.standard_normal(50)
  taps = np.array([0.5, -1.0, 0.25, 2.0])
  y = np.asarray(conv1d(sig[None, :, None].astype(np.float32),
                        taps[:, None, None].astype(np.float32), impl=impl))[0, :, 0]
  np.testing.assert_allclose(y, np.correlate(sig, taps, mode="valid"), rtol=1e-5, atol=1e-5)
  # An FIR filter y[t] = sum_m h[m] x[t-m] is the correlation with the reversed taps.
  fir = scipy.signal.lfilter(taps, [1.0], sig)[len(taps) - 1:]
  y2 = np.asarray(conv1d(sig[None, :, None].astype(np.float32),
                         taps[::-1, None, None].astype(np.float32), impl=impl))[0, :, 0]
  np.testing.assert_allclose(y2, fir, rtol=1e-5, atol=1e-5)


def test_conv1d_strided_dilated_same():
  rng = np.random.default_rng(4)
  sig = rng.standard_normal(23)
  taps = rng.standard_normal(3)
  # 'SAME', stride 2, dilation 2 on 23 samples: total pad = (12-1)*2 + 5 - 23 = 4 -> (2, 2).
  padded = np.pad(sig, (2, 2))
  want = np.array([sum(padded[t * 2 + m * 2] * taps[m] for m in range(3)) for t in range(12)])
  got = np.asarray(conv1d(sig[None, :, None].astype(np.float32),
                          taps[:, None, None].astype(np.float32), stride=2, dilation=2,
                          padding="SAME"))[0, :, 0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv1d_learns_an_fir_filter():
  """A learned FIR filter: fit 5 taps to a smoothing filter's output by gradient descent."""
  rng = np.random.default_rng(5)
  sig = rng.standard_normal((8, 128, 1)).astype(np.float32)
  target_taps = np.array([0.1, 0.2, 0.4, 0.2, 0.1], np.float32)
  target = np.stack([np.correlate(s[:, 0], target_taps, "valid") for s in sig])[..., None]
  w = jnp.zeros((5, 1, 1))
  opt = optax.adam(0.05)
  state = opt.init(w)

  @jax.jit
  def step(w, state):
    loss, g = jax.value_and_grad(lambda w: jnp.mean((conv1d(sig, w) - target) ** 2))(w)
    upd, state = opt.update(g, state)
    return optax.apply_updates(w, upd), state, loss

  for _ in range(400):
    w, state, loss = step(w, state)
  np.testing.assert_allclose(np.asarray(w)[:, 0, 0], target_taps, atol=1e-3)


def test_errors_name_the_bad_values():
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match=r"w.shape\[2\] == C_in/groups == 3"):
    conv2d(x, jnp.zeros((3, 3, 4, 8)))
  with pytest.raises(ValueError, match=r"groups=2 must divide C_in=3"):
    conv2d(x, jnp.zeros((3, 3, 1, 8)), groups=2)
  with pytest.raises(ValueError, match=r"groups=3 must divide C_out=4"):
    conv2d(x, jnp.zeros((3, 3, 1, 4)), groups=3)
  with pytest.raises(ValueError, match=r"bias must have shape \(C_out,\) = \(8,\)"):
    conv2d(x, jnp.zeros((3, 3, 3, 8)), jnp.zeros(3))
  with pytest.raises(ValueError, match="impl must be one of"):
    conv2d(x, jnp.zeros((3, 3, 3, 8)), impl="fft")
  with pytest.raises(ValueError, match="NHWC"):
    conv2d(jnp.zeros((8, 8, 3)), jnp.zeros((3, 3, 3, 8)))
  with pytest.raises(ValueError, match="empty output"):
    conv2d(x, jnp.zeros((9, 9, 3, 8)))
  with pytest.raises(ValueError, match="padding must be"):
    conv2d(x, jnp.zeros((3, 3, 3, 8)), padding="FULL")
