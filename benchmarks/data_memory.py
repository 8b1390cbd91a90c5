"""Peak host memory of a few train steps as the image folder grows 10x: Grain vs in-memory.

Builds two image folders in a temporary directory from the real Tiny-ImageNet-10 images
(``../shared/data/tiny-imagenet-10``, 5,000 train + 500 val, 64x64 JPEG): ``1x`` (links to
every file) and ``10x`` (each file linked 10 times under new names), then for each loader
and size runs, in a fresh process, what the trainer runs: open the data
(:func:`cnn_jax.data.loader.open_data`), build the model (``cifar10_cnn`` at 64x64, small so
that the data dominates), compile the train step and train ``--steps`` steps of batch
``--batch``. It prints the peak resident set size (``ru_maxrss``) of the training process
and of its largest child (a Grain worker), in MiB.

Expected: the Grain loader's peak stays flat from 1x to 10x (only the file list grows, ~40
bytes an image); the in-memory loader's grows by the decoded images (12 KiB each: ~60 MiB
for 1x, ~650 MiB more for 10x).

Run::

  python benchmarks/data_memory.py [--loaders grain,memory] [--steps 20] [--batch 64]

Measurements, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCE = pathlib.Path(os.environ.get("CNN_JAX_TINY_IMAGENET10_DIR",
                                     REPO.parent / "shared" / "data" / "tiny-imagenet-10"))


def make_folder(src: pathlib.Path, dst: pathlib.Path, repeat: int) -> int:
  """``dst/<split>/<class>/<k>_<name>`` links to every image of ``src``, ``repeat`` times
  each; copies ``classes.tsv``. Returns the number of training images."""
  n = 0
  for split in ("train", "val"):
    for cdir in sorted(p for p in (src / split).iterdir() if p.is_dir()):
      out = dst / split / cdir.name
      out.mkdir(parents=True)
      for f in sorted(cdir.iterdir()):
        for k in range(repeat):
          (out / f"{k}_{f.name}").symlink_to(f.resolve())
          n += split == "train"
  if (src / "classes.tsv").is_file():
    (dst / "classes.tsv").write_text((src / "classes.tsv").read_text())
  return n


def child(folder: str, loader_name: str, steps: int, batch: int, cache: str) -> dict:
  """Runs in the measured process: ``steps`` train steps; returns the figures."""
  import resource  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  from cnn_jax import parallel, steps as steps_lib, train  # pylint: disable=g-import-not-at-top
  from cnn_jax.config import base_config  # pylint: disable=g-import-not-at-top
  from cnn_jax.data import loader  # pylint: disable=g-import-not-at-top

  t0 = time.time()
  c = base_config()
  c.model.name = "cifar10_cnn"
  c.data.name, c.data.dir, c.data.cache_dir = "tiny_imagenet_10", folder, cache
  c.data.loader, c.data.num_workers = loader_name, 1
  c.batch_size, c.num_epochs = batch, 1
  mesh = parallel.data_mesh()
  ds = loader.open_data(c.data, c.seed)
  run = train.build_run(c, ds, parallel.replicated(mesh))
  state = jax.jit(run.init)(jax.random.key(0))
  step = jax.jit(steps_lib.make_train_step(run.model, run.tx, seed=0, **run.step_kwargs),
                 donate_argnums=0)
  batches = ds.train_batches(batch_size=batch, steps_per_epoch=run.steps_per_epoch,
                             num_epochs=1, start_step=0,
                             sharding=parallel.batch_sharded(mesh))
  done = 0
  for _, images, labels in batches:
    state, metrics = step(state, images, labels)
    done += 1
    if done == steps:
      break
  loss = float(metrics["loss"])
  batches.close()
  self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  return {"loader": ds.loader, "train_images": ds.num_train, "steps": done, "loss": loss,
          "peak_rss_mib": self_kb / 1024, "peak_worker_rss_mib": child_kb / 1024,
          "wall_s": time.time() - t0}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--loaders", default="grain,memory")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._child:  # pylint: disable=protected-access
    spec = json.loads(args._child)  # pylint: disable=protected-access
    print("RESULT " + json.dumps(child(**spec)), flush=True)
    return
  if not SOURCE.is_dir():
    raise SystemExit(f"real Tiny-ImageNet-10 images expected at {SOURCE} "
                     f"(or set CNN_JAX_TINY_IMAGENET10_DIR)")
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    folders = {}
    for repeat in (1, 10):
      folders[repeat] = tmp / f"tin10_x{repeat}"
      make_folder(SOURCE, folders[repeat], repeat)
    for loader_name in args.loaders.split(","):
      for repeat, folder in folders.items():
        spec = dict(folder=str(folder), loader_name=loader_name, steps=args.steps,
                    batch=args.batch, cache=str(tmp / "cache"))
        r = subprocess.run([sys.executable, __file__, "--_child", json.dumps(spec)],
                           capture_output=True, text=True, check=False, cwd=REPO)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        if r.returncode or not line:
          raise SystemExit(f"{loader_name} x{repeat} failed:\n{r.stderr[-3000:]}")
        rows.append({"size": f"{repeat}x", **json.loads(line[0][7:])})
        print(json.dumps(rows[-1]), flush=True)
  print("\n| loader | folder | train images | steps | peak RSS, trainer (MiB) | "
        "peak RSS, largest worker (MiB) | wall (s) |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['loader']} | {r['size']} | {r['train_images']:,} | {r['steps']} | "
          f"{r['peak_rss_mib']:.0f} | {r['peak_worker_rss_mib']:.0f} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  from cnn_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  xla_cpu.apply_cpu_defaults()
  main()
