"""Pooling against NumPy loop references (and PyTorch's published bin rule)."""

from __future__ import annotations

import numpy as np
import pytest

from cnn_jax.ops import pooling as P


def np_pool(x, k, s, pads, op, pad_value, count_include_pad=True):
  """Oracle: explicit loops over windows of the padded input (float64)."""
  x = np.asarray(x, np.float64)
  n, h, w, c = x.shape
  xp = np.full((n, h + sum(pads[0]), w + sum(pads[1]), c), pad_value)
  xp[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w] = x
  real = np.zeros(xp.shape[1:3])
  real[pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + w] = 1
  ho = (xp.shape[1] - k[0]) // s[0] + 1
  wo = (xp.shape[2] - k[1]) // s[1] + 1
  out = np.zeros((n, ho, wo, c))
  for i in range(ho):
    for j in range(wo):
      win = xp[:, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]]
      if op == "max":
        out[:, i, j] = win.max(axis=(1, 2))
      elif op == "avg":
        cnt = k[0] * k[1] if count_include_pad else real[i * s[0]:i * s[0] + k[0],
                                                         j * s[1]:j * s[1] + k[1]].sum()
        out[:, i, j] = win.sum(axis=(1, 2)) / cnt
      else:  # ("lp", p)
        out[:, i, j] = (win ** op[1]).sum(axis=(1, 2)) ** (1 / op[1])
  return out


CASES = [((2, 2), None, "VALID", ((0, 0), (0, 0))),
         ((3, 3), (2, 2), 1, ((1, 1), (1, 1))),
         ((3, 2), (1, 2), ((0, 2), (1, 0)), ((0, 2), (1, 0))),
         ((3, 3), (2, 2), "SAME", ((1, 1), (0, 1)))]  # SAME on 7x6: H total 2, W total 1


@pytest.mark.parametrize("k,s,padding,pads", CASES)
def test_max_avg_lp_against_numpy(k, s, padding, pads):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
  ss = k if s is None else s
  np.testing.assert_allclose(np.asarray(P.max_pool2d(x, k, s, padding)),
                             np_pool(x, k, ss, pads, "max", -np.inf), rtol=1e-6)
  for cip in (True, False):
    np.testing.assert_allclose(
        np.asarray(P.avg_pool2d(x, k, s, padding, count_include_pad=cip)),
        np_pool(x, k, ss, pads, "avg", 0.0, cip), rtol=1e-5, atol=1e-6)
  for p in (1, 2, 3.5):
    xa = np.abs(x) if p != 2 else x  # PyTorch's x^p has no abs: use x >= 0 for odd p
    np.testing.assert_allclose(np.asarray(P.lp_pool2d(xa, p, k, s, padding)),
                               np_pool(xa, k, ss, pads, ("lp", p), 0.0), rtol=1e-5, atol=1e-6)


def test_count_include_pad_differs_at_border():
  x = np.ones((1, 4, 4, 1), np.float32)
  inc = np.asarray(P.avg_pool2d(x, 3, 1, 1, count_include_pad=True))[0, :, :, 0]
  exc = np.asarray(P.avg_pool2d(x, 3, 1, 1, count_include_pad=False))[0, :, :, 0]
  assert inc[0, 0] == pytest.approx(4 / 9) and inc[1, 1] == 1.0
  np.testing.assert_allclose(exc, 1.0)


def test_lp_pool_limits():
  rng = np.random.default_rng(1)
  x = np.abs(rng.standard_normal((1, 6, 6, 2))).astype(np.float32) + 0.1
  l2 = np.asarray(P.lp_pool2d(x, 2, 2))
  want = np.sqrt((x.reshape(1, 3, 2, 3, 2, 2) ** 2).sum(axis=(2, 4)))
  np.testing.assert_allclose(l2, want, rtol=1e-5)
  big = np.asarray(P.lp_pool2d(x.astype(np.float64), 60, 2))  # p -> inf: the max
  np.testing.assert_allclose(big, x.reshape(1, 3, 2, 3, 2, 2).max(axis=(2, 4)), rtol=3e-2)


def test_global_pools():
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(P.global_avg_pool(x)),
                             x.astype(np.float64).sum(axis=(1, 2)) / 15, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(P.global_max_pool(x)),
                                np.max(np.max(x, axis=1), axis=1))


def test_adaptive_bins_pytorch_rule():
  # torch.nn.AdaptiveAvgPool1d(3) on length 10 uses bins [0,4), [3,7), [6,10) and on
  # length 5 -> 3: [0,2), [1,4), [3,5) (start=floor(i*n/o), end=ceil((i+1)*n/o)).
  assert P.adaptive_bins(10, 3) == [(0, 4), (3, 7), (6, 10)]
  assert P.adaptive_bins(5, 3) == [(0, 2), (1, 4), (3, 5)]
  assert P.adaptive_bins(4, 8)[:3] == [(0, 1), (0, 1), (1, 2)]  # upsampling repeats
  with pytest.raises(ValueError, match="out=0"):
    P.adaptive_bins(4, 0)


@pytest.mark.parametrize("h,w,out", [(7, 9, (3, 2)), (8, 8, 4), (5, 5, 1), (3, 4, (5, 6))])
def test_adaptive_pools_against_numpy(h, w, out):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
  oh, ow = (out, out) if isinstance(out, int) else out
  want_avg = np.zeros((2, oh, ow, 3))
  want_max = np.zeros((2, oh, ow, 3))
  for i in range(oh):
    r0, r1 = int(np.floor(i * h / oh)), int(np.ceil((i + 1) * h / oh))
    for j in range(ow):
      c0, c1 = int(np.floor(j * w / ow)), int(np.ceil((j + 1) * w / ow))
      win = x[:, r0:r1, c0:c1].astype(np.float64)
      want_avg[:, i, j] = win.mean(axis=(1, 2))
      want_max[:, i, j] = win.max(axis=(1, 2))
  np.testing.assert_allclose(np.asarray(P.adaptive_avg_pool2d(x, out)), want_avg, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(P.adaptive_max_pool2d(x, out)), want_max, rtol=1e-6)
  if h % oh == 0 and w % ow == 0:  # divisible: the same as a plain pool with k = s = n/o
    np.testing.assert_allclose(np.asarray(P.adaptive_avg_pool2d(x, out)),
                               np.asarray(P.avg_pool2d(x, (h // oh, w // ow))), rtol=1e-5)


def test_pool_errors():
  x = np.zeros((1, 4, 4, 1), np.float32)
  with pytest.raises(ValueError, match="NHWC"):
    P.max_pool2d(x[0], 2)
  with pytest.raises(ValueError, match="window .* larger than the padded input"):
    P.avg_pool2d(x, 5)
  with pytest.raises(ValueError, match="p must be > 0, got 0"):
    P.lp_pool2d(x, 0, 2)
