"""Micro-benchmark: conv2d 'direct' vs 'im2col' vs 'xla' vs 'onednn' (and PyTorch if
installed), with the forward pass, the input gradient and the weight gradient timed separately.

    python benchmarks/conv_bench.py [--batch 128] [--repeats 3] [--quick]
        [--impls xla,onednn] [--dtype float32|bfloat16]

3x3 stride-1 'SAME' convs of ResNet-20's three stage shapes (32x32x16, 16x16x32, 8x8x64 at
batch 128) and a 3x3 64->64 conv on 56x56 (ResNet-18/50 stage 1; batch 8 to keep the run
short). For each shape and implementation three jitted functions are timed: the forward conv
(``fwd``), the gradient w.r.t. the input alone (``dx``: what a backward pass computes for
dL/dx, a transposed conv) and w.r.t. the kernel alone (``dw``), each ``jax.grad`` of
``vdot(g, conv(x, w))`` with ``g`` an argument, so XLA drops the unused forward and the other
gradient. GFLOP/s counts FLOPs = 2 * MACs, MACs = K_h*K_w*C_in*C_out*H_out*W_out*N, for each
of the three (each is one conv's worth of multiply-adds). ``im2col``'s ``dw`` is the kernel
gradient as one matrix product ``patches^T @ g`` (the "weight gradient as a matmul" lever of
issue #24). ``onednn`` is :func:`cnn_jax.ops.onednn_conv.conv` (oneDNN's primitives as XLA
custom calls; its kernel gradient accumulates in float32). ``--dtype bfloat16`` runs every
implementation on bf16 operands (PyTorch's too). Times are the minimum of ``--repeats`` runs
after a warm-up (compile excluded). The process runs with the trainer's ``XLA_FLAGS`` (set
here, before JAX starts; :func:`cnn_jax.xla_cpu.apply_cpu_defaults`); run it with tcmalloc in
``LD_PRELOAD`` on a quiet machine. Not a test: numbers depend on the machine and its load.

PyTorch (optional): ``torch.ops.aten.convolution_backward`` with one output mask per
gradient (channels_last, ``torch.set_num_threads(--threads)``), i.e. the kernels oneDNN runs
for each of the three in an eager backward pass.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from cnn_jax import xla_cpu

xla_cpu.apply_cpu_defaults()  # the trainer's XLA_FLAGS, before JAX starts

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from cnn_jax.ops import IMPLS, conv2d, conv_macs  # pylint: disable=wrong-import-position
from cnn_jax.ops import onednn_conv  # pylint: disable=wrong-import-position

# (label, N, H, W, C_in, C_out, k)
SHAPES = [("resnet20 s1 32x32x16", 128, 32, 32, 16, 16, 3),
          ("resnet20 s2 16x16x32", 128, 16, 16, 32, 32, 3),
          ("resnet20 s3 8x8x64", 128, 8, 8, 64, 64, 3),
          ("3x3 64->64 56x56", 8, 56, 56, 64, 64, 3)]
PARTS = ("fwd", "dx", "dw")


def _time(fn, repeats: int) -> float:
  fn()  # warm-up (and compile)
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return min(ts)  # the least-disturbed run (timeit's advice; the machine may be shared)


def _conv(impl):
  if impl == "onednn":
    return lambda x, wt: onednn_conv.conv(x, wt, padding="SAME")
  return lambda x, wt: conv2d(x, wt, padding="SAME", impl=impl)


def bench_jax(impl, n, h, w, cin, cout, k, repeats, dtype="float32") -> dict[str, float]:
  """``{'fwd', 'dx', 'dw'}`` -> seconds for one JAX implementation."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, w, cin)), dtype)
  wt = jnp.asarray(rng.standard_normal((k, k, cin, cout)) * 0.1, dtype)
  g = jnp.asarray(rng.standard_normal((n, h, w, cout)), dtype)
  conv = _conv(impl)
  fwd = jax.jit(conv)
  # g is an argument, not a closed-over constant (XLA would try to constant-fold it).
  loss = lambda x, wt, g: jnp.vdot(g, conv(x, wt)).astype(jnp.float32)
  dx, dw = jax.jit(jax.grad(loss, argnums=0)), jax.jit(jax.grad(loss, argnums=1))
  return {"fwd": _time(lambda: fwd(x, wt).block_until_ready(), repeats),
          "dx": _time(lambda: dx(x, wt, g).block_until_ready(), repeats),
          "dw": _time(lambda: dw(x, wt, g).block_until_ready(), repeats)}


def bench_torch(torch, n, h, w, cin, cout, k, repeats, dtype="float32") -> dict[str, float]:
  """``{'fwd', 'dx', 'dw'}`` -> seconds of PyTorch's conv kernels, channels_last."""
  cl, dt = torch.channels_last, getattr(torch, dtype)
  x = torch.randn(n, cin, h, w).to(dtype=dt, memory_format=cl)
  wt = (torch.randn(cout, cin, k, k) * 0.1).to(dtype=dt, memory_format=cl)
  g = torch.randn(n, cout, h, w).to(dtype=dt, memory_format=cl)
  pad = [k // 2, k // 2]

  def backward(mask):
    with torch.no_grad():
      torch.ops.aten.convolution_backward(g, x, wt, None, [1, 1], pad, [1, 1], False, [0, 0],
                                          1, mask)

  def fwd():
    with torch.no_grad():
      torch.nn.functional.conv2d(x, wt, padding=k // 2)

  return {"fwd": _time(fwd, repeats), "dx": _time(lambda: backward([True, False, False]),
                                                  repeats),
          "dw": _time(lambda: backward([False, True, False]), repeats)}


def main(argv=None) -> int:
  """Runs the benchmark and prints one table."""
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--batch", type=int, default=None, help="override every shape's batch")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--quick", action="store_true", help="batch 16 (8 for 56x56), 2 repeats")
  p.add_argument("--impls", default=",".join(IMPLS),
                 help=f"comma-separated, of {', '.join(IMPLS)}, onednn")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--threads", type=int, default=2, help="PyTorch threads")
  a = p.parse_args(argv)
  try:
    import torch
    torch.set_num_threads(a.threads)
  except ImportError:
    torch = None
  impls = a.impls.split(",")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}; {a.dtype}; "
        f"torch {torch.__version__ if torch else 'not installed'}", flush=True)
  head = (f"{'shape (N,H,W,Cin->Cout, 3x3 SAME)':<34}{'impl':<8}{'GMAC':>7}"
          + "".join(f"{p + ' ms':>10}{p + ' GFLOP/s':>13}" for p in PARTS))
  print(head)
  print("-" * len(head))
  for label, n, h, w, cin, cout, k in SHAPES:
    if a.batch:
      n = a.batch
    elif a.quick:
      n = min(n, 16)
    macs = conv_macs(k, k, cin, cout, h, w) * n
    rows = [(impl, bench_jax(impl, n, h, w, cin, cout, k, a.repeats, a.dtype))
            for impl in impls]
    if torch is not None:
      rows.append(("torch", bench_torch(torch, n, h, w, cin, cout, k, a.repeats, a.dtype)))
    for impl, t in rows:
      print(f"{label + f' N={n}':<34}{impl:<8}{macs / 1e9:>7.3f}"
            + "".join(f"{t[p] * 1e3:>10.2f}{2 * macs / t[p] / 1e9:>13.1f}" for p in PARTS),
            flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
