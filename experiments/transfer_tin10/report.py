"""Transfer learning CIFAR-10 -> Tiny-ImageNet-10: the table and curves, from the run folders.

    python -m experiments.transfer_tin10.report [--check]

Reads only ``runs/<mode>/config.json`` and ``metrics.jsonl`` (and the scratch run of table
5) and writes ``table.md``, ``table.csv`` and ``curves.png`` beside this file; runs that
have not finished are listed as "not run". ``--check`` rebuilds the table in memory and
exits 1 if the committed ``table.md``/``table.csv`` differ (the plot is not compared).
Top-1 is on the 500 validation images (50 per class).
"""

from __future__ import annotations

import pathlib
import sys

from cnn_jax import report, sweep
from experiments import budget
from experiments.transfer_tin10.run import RUNS, SOURCE

HERE = pathlib.Path(__file__).parent
# What each run starts from and trains (configs/tiny_imagenet10_transfer.py, docs/training.md).
WHAT = {"resnet20": ("random (from scratch)", "everything"),
        "linear_probe": ("CIFAR-10 ResNet-20", "the new classifier only; backbone frozen, "
                         "BatchNorm in inference mode"),
        "finetune": ("CIFAR-10 ResNet-20", "everything (new classifier)"),
        "progressive": ("CIFAR-10 ResNet-20", "new classifier, then one more stage every "
                        "0.5 epochs, top down")}
HEADER = ["run", "initialisation", "what trains", "epochs", "val top-1 final (%)",
          "val top-1 best (%)", "train images/s", "wall (min)", "hardware", "commit", "seed"]


def rows() -> tuple[list[list[str]], list[pathlib.Path]]:
  """The table's rows (strings, one per run of ``RUNS``) and the finished runs' folders."""
  out, done = [], []
  for r in RUNS:
    name = "scratch" if r.name == "resnet20" else r.name
    init, trains = WHAT[r.name]
    workdir = r.workdir(HERE)
    if sweep.run_state(workdir) != "done":
      out.append([name, init, trains, "-", "not run", "-", "-", "-", "-", "-", "-"])
      continue
    row = report.comparison_row(workdir)
    done.append(workdir)
    out.append([name, init, trains, str(budget.EPOCHS),
                f"{100 * row['final_test_accuracy']:.2f}",
                f"{100 * row['best_test_accuracy']:.2f}", f"{row['median_images_per_s']:.0f}",
                f"{row['wall_s'] / 60:.1f}", report.hardware_label(row),
                report.commit_label(row), str(row["seed"])])
  return out, done


def plots(done) -> None:
  """Training curves of the finished runs (``curves.png``)."""
  if done:
    report.plot_runs(done, ["scratch" if d.name == "resnet20" else d.name for d in done],
                     HERE / "curves.png",
                     f"ResNet-20 on Tiny-ImageNet-10, {budget.EPOCHS} epochs, from {SOURCE}")


def main(argv=None) -> int:
  """``[--check]``: writes (or checks) the table; writes the curves of the finished runs."""
  return report.table_main(__doc__, argv, HERE / "table", HEADER, rows, plots)

if __name__ == "__main__":
  sys.exit(main())
