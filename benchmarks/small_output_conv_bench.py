"""Micro-benchmark: convs whose output is smaller than the window, XLA's vs cnn_jax.ops.cpu_conv.

    python benchmarks/small_output_conv_bench.py [--batch 128] [--repeats 3]

For each shape, the forward pass and the forward + both gradients (``jax.value_and_grad``
of a sum of squares), timed with ``lax.conv_general_dilated`` (XLA's conv) and with
``cnn_jax.ops.cpu_conv.conv_general_dilated`` (the models' conv: im2col x kernel for these
shapes on CPU), side by side in one process; plus two control shapes whose output is not
smaller than the window, where both paths are XLA's conv. GFLOP/s count
FLOPs = 2 x MACs = 2 x K_h K_w C_in C_out H_out W_out N (x3 for forward + both gradients).
Times are the minimum of ``--repeats`` runs after a warm-up; run it with tcmalloc and the
trainer's ``XLA_FLAGS`` (set here) on a quiet machine. Not a test: nothing is asserted.
Findings: experiments/performance_log.md, entry 6.
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
from jax import lax  # pylint: disable=g-import-not-at-top,wrong-import-position

from cnn_jax.ops import cpu_conv  # pylint: disable=g-import-not-at-top,wrong-import-position

NHWC = ("NHWC", "HWIO", "NHWC")
# (label, H = W, kernel, C_in, C_out)
SHAPES = [("VGG-16-CIFAR stage 5: 3x3 on 2x2", 2, 3, 512, 512),
          ("3x3 on 1x1", 1, 3, 512, 512),
          ("5x5 on 4x4", 4, 5, 256, 256),
          ("control: 3x3 on 4x4 (VGG stage 4)", 4, 3, 512, 512),
          ("control: 3x3 on 3x3", 3, 3, 512, 512)]


def _time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def main(argv=None) -> int:
  """Prints one line per shape and path. Returns 0."""
  ap = argparse.ArgumentParser(prog="python benchmarks/small_output_conv_bench.py")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=3)
  a = ap.parse_args(argv)
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, "
        f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}", flush=True)
  rng = np.random.default_rng(0)
  paths = {"xla": lax.conv_general_dilated, "cpu_conv": cpu_conv.conv_general_dilated}
  for label, h, k, c_in, c_out in SHAPES:
    x = jnp.asarray(rng.standard_normal((a.batch, h, h, c_in)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, c_in, c_out)) * 0.05, jnp.float32)
    gflop = 2 * k * k * c_in * c_out * h * h * a.batch / 1e9
    small = cpu_conv.is_small_output(x.shape, w.shape, (1, 1), "SAME")
    line = []
    for name, conv in paths.items():
      fwd = jax.jit(lambda x, w, conv=conv: conv(x, w, (1, 1), "SAME", dimension_numbers=NHWC))
      both = jax.jit(jax.value_and_grad(
          lambda x, w, conv=conv: jnp.sum(conv(x, w, (1, 1), "SAME",
                                               dimension_numbers=NHWC) ** 2), argnums=(0, 1)))
      tf = _time(fwd, x, w, repeats=a.repeats)
      tb = _time(both, x, w, repeats=a.repeats)
      line.append(f"{name} fwd {tf * 1e3:8.1f} ms ({gflop / tf:6.1f} GFLOP/s), fwd+grads "
                  f"{tb * 1e3:8.1f} ms ({3 * gflop / tb:6.1f} GFLOP/s)")
    print(f"{label} [{a.batch}x{h}x{h}x{c_in} -> {c_out}, small output: {small}]\n  "
          + "\n  ".join(line), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
