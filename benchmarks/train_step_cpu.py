"""CPU train-step throughput under different ``XLA_FLAGS``, with or without materialized
conv inputs, and under different memory allocators, side by side, and where it goes.

    python benchmarks/train_step_cpu.py [--model resnet20] [--batch 128] [--steps 12]
        [--rounds 2] [--flags F ...] [--materialize off on] [--preload P ...] [--profile]

Each round runs the jitted, donated train step of ``cnn_jax.steps.make_train_step`` (the one
``cnn_jax.train`` uses: augmentation, forward, backward, SGD update) in one subprocess per
variant, a variant being an ``XLA_FLAGS`` value, a ``materialize_conv_inputs`` setting
(:func:`cnn_jax.xla_cpu.materialized_conv_inputs`) and an ``LD_PRELOAD`` value ('' = glibc
malloc; ``tcmalloc`` = :func:`cnn_jax.xla_cpu.find_tcmalloc`), alternating the variants
(A B A B ...) so that a load change on a shared machine hits all. Prints the median step
time (ms), train images/s and minor page faults per step (``getrusage``) of each subprocess
and, per variant, the median over rounds and its ratio to the first variant. ``--profile``
also traces the
steps of the first round with ``jax.profiler`` and prints the thread time (ms per step,
summed over XLA's worker threads) of the largest HLO fusion kinds, e.g. how much of a step
goes to ``transpose_copy_fusion`` (layout changes feeding the weight-gradient convolutions).

The CPU model and whether it has AVX-512 are printed because the flag's effect depends on
them (measured here: 1.15x on one 2-core EPYC VM, 2.5x on an AVX2-only one; see
docs/performance.md). Not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile

import numpy as np

from cnn_jax import xla_cpu

REPO = pathlib.Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
import jax, numpy as np
from cnn_jax import models, optim, steps
from cnn_jax.config import base_config
name, batch, n, trace_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
materialize = sys.argv[5] == "on"
model = models.create(name)
tx, _ = optim.create_optimizer(base_config().optim, 1000, 1)
state = steps.init_state(model, tx, jax.random.key(0), (32, 32, 3))
step = jax.jit(steps.make_train_step(model, tx, num_classes=10, mean=[128.] * 3,
                                     std=[64.] * 3, seed=0,
                                     materialize_conv_inputs=materialize), donate_argnums=0)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
y = rng.integers(0, 10, (batch,), dtype=np.int32)
for _ in range(2):
  state, m = step(state, x, y)
jax.block_until_ready(m)
if trace_dir:
  jax.profiler.start_trace(trace_dir)
times = []
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(n):
  t = time.perf_counter(); state, m = step(state, x, y); jax.block_until_ready(m)
  times.append(time.perf_counter() - t)
if trace_dir:
  jax.profiler.stop_trace()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"median_s": float(np.median(times)), "minflt_per_step": faults / n}))
"""


def cpu_description() -> str:
  """``'<model name>, N cores, AVX-512: yes/no'`` from ``/proc/cpuinfo`` (Linux), else
  ``platform.processor()``."""
  try:
    info = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return f"{platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"
  model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
  avx512 = "yes" if re.search(r"\bavx512f\b", info) else "no"
  return f"{model.group(1) if model else 'unknown CPU'}, {os.cpu_count()} cores, AVX-512: {avx512}"


def fusion_thread_ms(trace_dir: str, steps: int, top: int = 8) -> list[tuple[str, float]]:
  """Thread time per step (ms) of the ``top`` largest HLO op kinds in a ``jax.profiler``
  trace: complete events whose name has no ``$`` (Python frames) nor ``::`` (runtime
  bookkeeping), numbered suffixes (``fusion.30``) merged. Raises FileNotFoundError if the
  trace has no ``*.trace.json.gz``."""
  files = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))
  if not files:
    raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}/plugins/profile")
  events = json.load(gzip.open(files[0]))["traceEvents"]
  total = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") == "X" and "$" not in name and "::" not in name:
      total[re.sub(r"[._]\d+$", "", name)] += e["dur"]  # microseconds
  return [(k, v / 1e3 / steps) for k, v in total.most_common(top)]


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="resnet20")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--steps", type=int, default=12)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--flags", nargs="+", default=["", xla_cpu.YNN_CONV_OFF],
                  help="XLA_FLAGS values to compare ('' = none); the first is the reference")
  ap.add_argument("--materialize", nargs="+", choices=("off", "on"), default=["off", "on"],
                  help="materialize_conv_inputs settings to compare with each XLA_FLAGS value")
  ap.add_argument("--preload", nargs="+", default=[""],
                  help="LD_PRELOAD values to compare ('' = none, 'tcmalloc' = the installed "
                       "libtcmalloc found by cnn_jax.xla_cpu.find_tcmalloc)")
  ap.add_argument("--profile", action="store_true")
  args = ap.parse_args()
  print(f"{args.model}, batch {args.batch}, median of {args.steps} steps, {cpu_description()}")
  preloads = [xla_cpu.find_tcmalloc() if p == "tcmalloc" else p for p in args.preload]
  if None in preloads:
    raise SystemExit("--preload tcmalloc: no libtcmalloc found in "
                     f"{xla_cpu.LIBRARY_DIRS} (apt install libtcmalloc-minimal4)")
  variants = [(f, m, p) for f in args.flags for m in args.materialize for p in preloads]
  medians = collections.defaultdict(list)
  for r in range(args.rounds):
    for flags, mat, preload in variants:
      with tempfile.TemporaryDirectory() as tmp:
        trace = tmp if args.profile and r == 0 else ""
        env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=flags, LD_PRELOAD=preload)
        out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.batch),
                              str(args.steps), trace, mat], env=env, capture_output=True,
                             text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        s = res["median_s"]
        medians[flags, mat, preload].append(s)
        print(f"round {r}  XLA_FLAGS={flags!r:<62} materialize {mat:<3} "
              f"LD_PRELOAD={preload!r} {1e3 * s:8.1f} ms/step {args.batch / s:7.1f} images/s "
              f"{res['minflt_per_step']:9.0f} minor faults/step", flush=True)
        if trace:
          for kind, ms in fusion_thread_ms(trace, args.steps):
            print(f"    {ms:8.1f} ms/step thread time  {kind}")
  ref = float(np.median(medians[variants[0]]))
  for flags, mat, preload in variants:
    s = float(np.median(medians[flags, mat, preload]))
    print(f"XLA_FLAGS={flags!r:<62} materialize {mat:<3} LD_PRELOAD={preload!r} "
          f"{args.batch / s:7.1f} images/s  {ref / s:5.2f}x the first")

if __name__ == "__main__":
  main()
