"""Micro-benchmark: conv2d 'direct' vs 'im2col' vs 'xla' (and PyTorch if installed).

    python benchmarks/conv_bench.py [--batch 128] [--repeats 3] [--quick]

Forward and backward (gradients w.r.t. input and kernel) of 3x3 stride-1 'SAME' convs of
ResNet-20's three stage shapes (32x32x16, 16x16x32, 8x8x64 at batch 128) and a 3x3 64->64
conv on 56x56 (ResNet-18/50 stage 1; batch 8 to keep the run short). GFLOP/s counts
FLOPs = 2 * MACs, MACs = K_h*K_w*C_in*C_out*H_out*W_out*N; the backward pass counts 2x the
forward FLOPs (one conv for dL/dx, one for dL/dw). Times are the minimum of ``--repeats``
runs after a warm-up (compile excluded). Not a test: numbers depend on the machine and
its load. PyTorch (``torch.nn.functional.conv2d``, channels_last, ``torch.set_num_threads``)
runs the same shapes side by side when importable; it is optional.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.ops import IMPLS, conv2d, conv_macs

# (label, N, H, W, C_in, C_out, k)
SHAPES = [("resnet20 s1 32x32x16", 128, 32, 32, 16, 16, 3),
          ("resnet20 s2 16x16x32", 128, 16, 16, 32, 32, 3),
          ("resnet20 s3 8x8x64", 128, 8, 8, 64, 64, 3),
          ("3x3 64->64 56x56", 8, 56, 56, 64, 64, 3)]


def _time(fn, repeats: int) -> float:
  fn()  # warm-up (and compile)
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return min(ts)  # the least-disturbed run (timeit's advice; the machine may be shared)


def bench_jax(impl, n, h, w, cin, cout, k, repeats):
  """(forward seconds, backward seconds) of one JAX implementation."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, w, cin)), jnp.float32)
  wt = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.1, jnp.float32)
  g = jnp.asarray(rng.standard_normal((n, h, w, cout)), jnp.float32)
  fwd = jax.jit(lambda x, wt: conv2d(x, wt, padding="SAME", impl=impl))
  # g is an argument, not a closed-over constant (XLA would try to constant-fold it).
  bwd = jax.jit(jax.grad(
      lambda x, wt, g: jnp.vdot(g, conv2d(x, wt, padding="SAME", impl=impl)), argnums=(0, 1)))
  tf = _time(lambda: fwd(x, wt).block_until_ready(), repeats)
  tb = _time(lambda: jax.block_until_ready(bwd(x, wt, g)), repeats)
  return tf, tb


def bench_torch(torch, n, h, w, cin, cout, k, repeats):
  """(forward seconds, backward seconds) of ``torch.nn.functional.conv2d``, channels_last."""
  f = torch.nn.functional
  x = torch.randn(n, cin, h, w).to(memory_format=torch.channels_last).requires_grad_()
  wt = (torch.randn(cout, cin, k, k) * 0.1).to(memory_format=torch.channels_last)
  wt.requires_grad_()
  g = torch.randn(n, cout, h, w).to(memory_format=torch.channels_last)

  def fwd():
    with torch.no_grad():
      f.conv2d(x, wt, padding=k // 2)

  def bwd():
    y = f.conv2d(x, wt, padding=k // 2)
    torch.autograd.grad(y, (x, wt), g)

  return _time(fwd, repeats), _time(bwd, repeats)


def main(argv=None) -> int:
  """Runs the benchmark and prints one table."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=None, help="override every shape's batch")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--quick", action="store_true", help="batch 16 (8 for 56x56), 2 repeats")
  p.add_argument("--impls", default=",".join(IMPLS))
  p.add_argument("--threads", type=int, default=2, help="PyTorch threads")
  a = p.parse_args(argv)
  try:
    import torch
    torch.set_num_threads(a.threads)
  except ImportError:
    torch = None
  impls = a.impls.split(",")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"torch {torch.__version__ if torch else 'not installed'}")
  head = (f"{'shape (N,H,W,Cin->Cout, 3x3 SAME)':<34}{'impl':<8}{'GMAC':>7}"
          f"{'fwd ms':>10}{'fwd GFLOP/s':>13}{'bwd ms':>10}{'bwd GFLOP/s':>13}")
  print(head)
  print("-" * len(head))
  for label, n, h, w, cin, cout, k in SHAPES:
    if a.batch:
      n = a.batch
    elif a.quick:
      n = min(n, 16)
    macs = conv_macs(k, k, cin, cout, h, w) * n
    rows = [(impl, *bench_jax(impl, n, h, w, cin, cout, k, a.repeats)) for impl in impls]
    if torch is not None:
      rows.append(("torch", *bench_torch(torch, n, h, w, cin, cout, k, a.repeats)))
    for impl, tf, tb in rows:
      print(f"{label + f' N={n}':<34}{impl:<8}{macs / 1e9:>7.3f}{tf * 1e3:>10.2f}"
            f"{2 * macs / tf / 1e9:>13.1f}{tb * 1e3:>10.2f}{4 * macs / tb / 1e9:>13.1f}",
            flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
