"""Depthwise convolution on CPU: XLA's grouped conv vs the tap path of cnn_jax.ops.depthwise.

Measures, side by side in one process (the machine is shared and noisy: read the ratios),
(1) single depthwise layers at the shapes of mobilenet_v2_cifar and convnextv2_atto_cifar,
forward and forward+backward (plus, for reference, the tap path's forward with the backward
pass autodiff derives from it instead of its custom VJP), and (2) whole jitted train steps of
those models at batch 128.
The XLA path is forced with ``cnn_jax.ops.depthwise.xla_convs()``.
Usage::

  python benchmarks/depthwise_bench.py [--steps 3] [--batch 128]
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax import models, optim, steps
from cnn_jax.config import base_config
from cnn_jax.ops import depthwise
from cnn_jax.ops.conv import resolve_padding

DN = ("NHWC", "HWIO", "NHWC")


def _time(fn, *args, n):
  jax.block_until_ready(fn(*args))
  t = time.perf_counter()
  for _ in range(n):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t) / n


def _autodiff(x, w, s):
  """The tap sum with the backward pass jax derives from it (no custom VJP), for reference."""
  pads = resolve_padding("SAME", x.shape[1:3], w.shape[:2], (s, s), (1, 1))
  fwd = depthwise._taps_conv_fwd  # pylint: disable=protected-access
  out, _ = fwd(x, w, (s, s), pads, (1, 1), x.dtype)
  return out


def layer_rows(batch, n):
  # (label, H, C, K, stride): shapes taken from the two CIFAR models.
  cases = [("mobilenet_v2_cifar 32x32x96 3x3 s1", 32, 96, 3, 1),
           ("mobilenet_v2_cifar 16x16x144 3x3 s2", 16, 144, 3, 2),
           ("mobilenet_v2_cifar 8x8x384 3x3 s1", 8, 384, 3, 1),
           ("convnextv2_atto_cifar 16x16x40 7x7", 16, 40, 7, 1),
           ("convnextv2_atto_cifar 2x2x320 7x7", 2, 320, 7, 1)]
  rng = np.random.default_rng(0)
  for label, h, c, k, s in cases:
    x = jnp.asarray(rng.normal(size=(batch, h, h, c)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 1, c)), jnp.float32)
    xla = lambda x, w, s=s: lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=DN,
                                                      feature_group_count=x.shape[-1])
    taps = lambda x, w, s=s: depthwise.depthwise_conv_taps(x, w, (s, s), "SAME")
    out = {}
    for name, f in [("xla", xla), ("taps", taps), ("autodiff", functools.partial(_autodiff, s=s))]:
      fwd = jax.jit(f)
      both = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
      out[name] = (_time(fwd, x, w, n=n), _time(both, x, w, n=n))
    print(f"{label:40s} fwd {1e3 * out['xla'][0]:7.1f} vs {1e3 * out['taps'][0]:6.1f} ms "
          f"({out['xla'][0] / out['taps'][0]:4.1f}x)   fwd+bwd {1e3 * out['xla'][1]:7.1f} vs "
          f"{1e3 * out['taps'][1]:6.1f} ms ({out['xla'][1] / out['taps'][1]:4.1f}x)   "
          f"[taps fwd+bwd with autodiff's backward instead of the custom VJP: "
          f"{1e3 * out['autodiff'][1]:6.1f} ms]")


def step_time(name, batch, n):
  model = models.create(name, num_classes=10)
  tx, _ = optim.create_optimizer(base_config().optim, 100, 1)
  state = steps.init_state(model, tx, jax.random.key(0), (32, 32, 3))
  step = jax.jit(steps.make_train_step(model, tx, num_classes=10, mean=[128.] * 3,
                                       std=[64.] * 3, seed=0))
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
  y = rng.integers(0, 10, (batch,), dtype=np.int32)
  return _time(lambda: step(state, x, y)[1], n=n)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--batch", type=int, default=128)
  args = ap.parse_args()
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, batch {args.batch}; "
        f"times are XLA grouped conv vs taps (ratio = speed-up of taps)")
  layer_rows(args.batch, args.steps)
  for name in ["mobilenet_v2_cifar", "convnextv2_atto_cifar"]:
    fast = step_time(name, args.batch, args.steps)
    with depthwise.xla_convs():
      slow = step_time(name, args.batch, args.steps)
    print(f"train step {name:28s} {slow:6.2f} s vs {fast:6.2f} s ({slow / fast:4.1f}x); "
          f"{args.batch / slow:5.0f} vs {args.batch / fast:5.0f} images/s")


if __name__ == "__main__":
  main()
