"""Runs k train steps of a registry model on a fixed global batch over every device of every
process, and writes the losses and final parameters to an .npz (process 0).

Used by tests/test_parallel.py in subprocesses, because the device count
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``) and ``jax.distributed`` must be
set before JAX starts. Usage::

  python tests/parallel_worker.py MODEL OUT.npz [--steps K] [--bn-groups G]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cnn_jax import models, optim, parallel, steps  # noqa: E402
from cnn_jax.config import base_config  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("model")
  ap.add_argument("out")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--lr", type=float, default=0.05)
  ap.add_argument("--bn-groups", type=int, default=1,
                  help="ghost BatchNorm groups (the trainer uses one per device)")
  args = ap.parse_args()
  parallel.maybe_initialize_distributed()

  mesh = parallel.data_mesh()
  repl, batch_sh = parallel.replicated(mesh), parallel.batch_sharded(mesh)
  c = base_config().optim
  c.warmup_epochs, c.schedule, c.lr = 0.0, "constant", args.lr
  model = models.create(args.model, num_classes=10)
  tx, _ = optim.create_optimizer(c, 10, 1)
  state = jax.jit(lambda k: steps.init_state(model, tx, k, (32, 32, 3)),
                  out_shardings=repl)(jax.random.key(0))
  step = jax.jit(steps.make_train_step(model, tx, num_classes=10, mean=[128.0] * 3,
                                       std=[64.0] * 3, seed=0,
                                       bn_groups=args.bn_groups,
                                       group_sharding=batch_sh if args.bn_groups > 1 else None),
                 donate_argnums=0, out_shardings=(repl, repl))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (args.batch, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, (args.batch,), dtype=np.int32)
  rows = parallel.process_rows(args.batch)
  x, y = parallel.global_batch(batch_sh, images[rows], labels[rows])
  losses = []
  for _ in range(args.steps):
    state, m = step(state, x, y)
    losses.append(float(parallel.to_host(m["loss"])))
  flat = jax.tree_util.tree_flatten_with_path(parallel.to_host(state.params))[0]
  if jax.process_index() == 0:
    np.savez(args.out, losses=np.array(losses), devices=mesh.devices.size,
             processes=jax.process_count(),
             **{jax.tree_util.keystr(p): v for p, v in flat})
  print(f"process {jax.process_index()}/{jax.process_count()} devices {mesh.devices.size}: "
        f"losses {losses}", flush=True)


if __name__ == "__main__":
  main()
