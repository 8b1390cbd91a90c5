"""The CIFAR-10 speedrun table (issue #24, item 3), rebuilt from the run folders.

    python -m experiments.cifar10_speedrun.report [--check]

Reads only ``runs/<name>/config.json`` and ``metrics.jsonl``
(:func:`cnn_jax.report.comparison_row`) and writes ``table.md``, ``table.csv`` and
``curves.png`` beside this file: one row per run, the mean of each group's finished seeds
(``seed<S>``: XLA's convolutions; ``onednn_seed<S>``: oneDNN's convolutions and BatchNorm;
``onednn_bf16_e25_seed<S>``: the same in bfloat16 compute for 25 epochs),
the same recipe in PyTorch on the same images where it ran
(``airbench94_torch/seed<S>/``, written by ``benchmarks/airbench94_torch.py``: its TTA
level 2 accuracy and ``wall_s``, which counts from the whitening init, data loading
excluded), and the published reference. ``wall (min)`` is the trainer's ``wall_s`` of the last record:
from the call of :func:`cnn_jax.train.train_and_evaluate` (before the data are read, so
decoding, or reading the decoded-image cache, and compilation count) to the end of the final
evaluation; the interpreter's start and imports are not in it. ``--check`` exits 1 if the
committed table differs from a rebuild (the plot is not compared).

Reference: K. Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", arXiv:2404.00498
(2024); the repository's README (github.com/KellerJordan/cifar10-airbench) lists
``airbench94.py`` at 94.01% mean test top-1 in 3.83 s on one NVIDIA A100, 0.36 PFLOPs.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys

from cnn_jax import report, sweep
from experiments.cifar10_speedrun.run import RUNS

HERE = pathlib.Path(__file__).parent
TARGET_ACCURACY, TARGET_MINUTES = 94.0, 30.0  # issue #24, item 3
REFERENCE = ("airbench94.py (Jordan 2024, repository README)", "94.01", "0.06 (3.83 s)",
             "1 x NVIDIA A100")
HEADER = ["run", "seed", "test top-1, flip + translate TTA (%)", "steps", "epochs",
          "wall (min)", "median train images/s", "hardware", "commit"]


GROUPS = (("XLA convs", "seed"), ("oneDNN", "onednn_seed"),
          ("oneDNN, bfloat16, 25 epochs", "onednn_bf16_e25_seed"))


def _mean_row(label: str, done: list[dict]) -> list[str]:
  acc = statistics.mean(100 * r["final_test_accuracy"] for r in done)
  wall = statistics.mean(r["wall_s"] / 60 for r in done)
  met = acc >= TARGET_ACCURACY and all(r["wall_s"] / 60 <= TARGET_MINUTES for r in done)
  return [f"mean of {len(done)}, {label} (target: >= {TARGET_ACCURACY:g}% in <= "
          f"{TARGET_MINUTES:g} min: {'met' if met else 'not met'})", "-", f"{acc:.2f}", "-",
          "-", f"{wall:.1f}", "-", "-", "-"]


def torch_rows() -> list[list[str]]:
  """Rows of the finished PyTorch runs of the recipe (``airbench94_torch/seed<S>/``)."""
  out = []
  for workdir in sorted((HERE / "airbench94_torch").glob("seed*")):
    try:
      records = [json.loads(line) for line in
                 (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
      config = json.loads((workdir / "config.json").read_text())
    except FileNotFoundError:
      continue
    final = [r for r in records if r.get("final")]
    if not final:
      continue
    epochs = [r for r in records if "images_per_s" in r]
    cores = config.get("cpu_count")
    commit = (config.get("git") or {}).get("commit") or "?"
    dirty = "+dirty" if (config.get("git") or {}).get("dirty_files") else ""
    out.append([f"PyTorch, benchmarks/airbench94_torch.py ({workdir.name})",
                str(config["args"]["seed"]), f"{100 * final[-1]['test_acc_tta2']:.2f}",
                f"{final[-1]['step']:,}", f"{config['args']['epochs']:g}",
                f"{final[-1]['wall_s'] / 60:.1f}",
                f"{statistics.median(r['images_per_s'] for r in epochs):.1f}",
                (f"{cores}-core " if cores else "") + config["cpu"]
                + f", torch {config['torch']}", commit[:7] + dirty])
  return out


def rows() -> tuple[list[list[str]], list[dict]]:
  """The table's rows (strings: one per run, each group's mean of its finished runs, the
  PyTorch runs, the reference) and the finished runs' :func:`cnn_jax.report.comparison_row`
  dicts (each with its run ``name``)."""
  out, done = [], []
  for label, prefix in GROUPS:
    group = []
    for r in RUNS:
      if not r.name.startswith(prefix) or not r.name[len(prefix):].isdigit():
        continue
      workdir = r.workdir(HERE)
      if sweep.run_state(workdir) != "done":
        out.append([r.name, str(r.overrides["seed"]), "not run"] + ["-"] * 6)
        continue
      row = {**report.comparison_row(workdir), "name": r.name}
      group.append(row)
      out.append([r.name, str(row["seed"]), f"{100 * row['final_test_accuracy']:.2f}",
                  f"{row['steps']:,}", f"{row['epochs']:g}", f"{row['wall_s'] / 60:.1f}",
                  f"{row['median_images_per_s']:.1f}", report.hardware_label(row),
                  report.commit_label(row)])
    if group:
      out.append(_mean_row(label, group))
    done += group
  out += torch_rows()
  name, acc, minutes, hw = REFERENCE
  out.append([name, "-", acc, "-", "9.9", minutes, "-", hw, "-"])
  return out, done


def plots(done: list[dict]) -> None:
  """Training curves of the finished runs (``curves.png``)."""
  if done:
    report.plot_runs([HERE / "runs" / r["name"] for r in done],
                     [r["name"] for r in done], HERE / "curves.png",
                     "airbench94 recipe, CIFAR-10 (JPEG copy), batch 1024")


def main(argv=None) -> int:
  """``[--check]``: writes (or checks) the table; writes the curves of the finished runs."""
  return report.table_main(__doc__, argv, HERE / "table", HEADER, rows, plots)

if __name__ == "__main__":
  sys.exit(main())
