"""Per-step wall time of the data-parallel train step on 1 vs N (fake) devices.

Runs tests/parallel_worker.py-style steps in subprocesses, one per device count, with the
same global batch, and prints the median step time of each and their ratio. On a 2-core
CPU, fake devices share the same cores, so no speed-up is expected: the point of
multi-device CPU runs is correctness. Usage::

  python benchmarks/parallel_step_time.py [--model resnet20] [--batch 128] [--devices 1 8]
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

from cnn_jax import xla_cpu

REPO = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import jax, numpy as np
from cnn_jax import models, optim, parallel, steps
from cnn_jax.config import base_config
name, batch, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mesh = parallel.data_mesh(); repl, bsh = parallel.replicated(mesh), parallel.batch_sharded(mesh)
model = models.create(name)
tx, _ = optim.create_optimizer(base_config().optim, 100, 1)
init = lambda k: steps.init_state(model, tx, k, (32, 32, 3))
state = jax.jit(init, out_shardings=repl)(jax.random.key(0))
train_step = steps.make_train_step(model, tx, num_classes=10, mean=[128.] * 3, std=[64.] * 3,
                                   seed=0)
step = jax.jit(train_step, donate_argnums=0, out_shardings=(repl, repl))
rng = np.random.default_rng(0)
x, y = parallel.global_batch(bsh, rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
                             rng.integers(0, 10, (batch,), dtype=np.int32))
state, m = step(state, x, y); jax.block_until_ready(m)
times = []
for _ in range(n):
  t = time.perf_counter(); state, m = step(state, x, y); jax.block_until_ready(m)
  times.append(time.perf_counter() - t)
print(json.dumps({"devices": mesh.devices.size, "median_s": float(np.median(times)),
                  "min_s": float(np.min(times))}))
"""


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="resnet20")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--devices", type=int, nargs="+", default=[1, 8])
  args = ap.parse_args()
  rows = []
  for d in args.devices:
    env = dict(os.environ, PYTHONPATH=str(REPO),
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                         f"--xla_force_host_platform_device_count={d}".strip())
    xla_cpu.apply_cpu_defaults(env)  # the flags cnn_jax.train would run with
    out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.batch),
                          str(args.steps)], env=env, capture_output=True, text=True, check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  base = rows[0]["median_s"]
  print(f"{args.model}, global batch {args.batch}, {os.cpu_count()} CPU cores, median of "
        f"{args.steps} steps")
  print(f"{'devices':>8} {'step (ms)':>10} {'images/s':>9} {'vs first':>9}")
  for r in rows:
    print(f"{r['devices']:>8} {1e3 * r['median_s']:>10.1f} {args.batch / r['median_s']:>9.0f} "
          f"{base / r['median_s']:>8.2f}x")


if __name__ == "__main__":
  main()
