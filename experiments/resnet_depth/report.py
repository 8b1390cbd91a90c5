"""Table 3, ResNet depth on CIFAR-10: the table and plots, rebuilt from the run folders.

    python -m experiments.resnet_depth.report [--check]

Reads only ``runs/<name>/config.json`` and ``metrics.jsonl`` (via
:func:`cnn_jax.report.comparison_row`) and writes ``table.md``, ``table.csv``,
``error_vs_depth.png`` and ``curves.png`` beside this file. Runs that have not finished
are listed as "not run". ``--check`` rebuilds the table in memory and exits 1 if the
committed ``table.md``/``table.csv`` differ (the plots are not compared).

Published column: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016 (arXiv:1512.03385), Table 6: test error on CIFAR-10 (original images, 45k/5k
train/val split, 64k iterations at batch 128, i.e. about 182 epochs, lr 0.1 divided by 10
at 32k and 48k iterations, flip + 4-pixel-pad crop); 110 layers: best of 5 runs (mean 6.61
+- 0.16).
"""

from __future__ import annotations

import pathlib
import sys

from cnn_jax import report, sweep
from experiments import budget
from experiments.resnet_depth.run import RUNS

HERE = pathlib.Path(__file__).parent
# depth -> (parameters in millions, test error %), He et al. 2016, Table 6.
PAPER = {20: (0.27, 8.75), 32: (0.46, 7.51), 44: (0.66, 7.17), 56: (0.85, 6.97),
         110: (1.7, 6.43)}
HEADER = ["depth", "model", "params", "params, paper", "MMACs/image",
          f"test error (%), {budget.EPOCHS} epochs", "best test error (%)",
          "test error (%), paper (~182 epochs)", "train images/s", "wall (min)", "hardware",
          "commit", "seed"]


def rows() -> tuple[list[list[str]], list[dict]]:
  """The table's rows (strings, one per depth of ``RUNS``) and the comparison rows of the
  finished runs (:func:`cnn_jax.report.comparison_row` dicts, with ``depth`` added)."""
  out, done = [], []
  for r in RUNS:
    depth = int(r.overrides["model.name"].removeprefix("resnet"))
    p_params, p_err = PAPER[depth]
    workdir = r.workdir(HERE)
    if sweep.run_state(workdir) != "done":
      out.append([str(depth), f"`{r.overrides['model.name']}`", "-", f"{p_params}M", "-",
                  "not run", "-", f"{p_err:.2f}", "-", "-", "-", "-", "-"])
      continue
    row = report.comparison_row(workdir)
    row["depth"] = depth
    done.append(row)
    out.append([str(depth), f"`{row['model']}`", f"{row['num_params']:,}", f"{p_params}M",
                f"{row['macs'] / 1e6:.2f}", f"{100 * (1 - row['final_test_accuracy']):.2f}",
                f"{100 * (1 - row['best_test_accuracy']):.2f}", f"{p_err:.2f}",
                f"{row['median_images_per_s']:.0f}", f"{row['wall_s'] / 60:.1f}",
                report.hardware_label(row), report.commit_label(row), str(row["seed"])])
  return out, done


def plot_error_vs_depth(done: list[dict], out: pathlib.Path) -> None:
  """Test error (%) against depth: the finished runs and He et al.'s Table 6."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  depths = sorted(PAPER)
  ax.plot(depths, [PAPER[d][1] for d in depths], marker="s",
          label="He et al. 2016, Table 6 (~182 epochs)")
  if done:
    ax.plot([r["depth"] for r in done], [100 * (1 - r["final_test_accuracy"]) for r in done],
            marker="o", label=f"cnn_jax, {budget.EPOCHS} epochs (CIFAR-10 JPEG copy)")
  ax.set(xscale="log", xlabel="depth (weight layers, 6n + 2)", ylabel="test error (%)",
         title="CIFAR ResNet: test error vs depth")
  ax.set_xticks(depths, [str(d) for d in depths])
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def plots(done: list[dict]) -> None:
  """``error_vs_depth.png`` and the training curves of the finished runs."""
  plot_error_vs_depth(done, HERE / "error_vs_depth.png")
  if done:
    report.plot_runs([HERE / "runs" / f"resnet{r['depth']}" for r in done],
                     [f"ResNet-{r['depth']}" for r in done], HERE / "curves.png",
                     f"CIFAR ResNets, {budget.EPOCHS} epochs, CIFAR-10 (JPEG copy)")


def main(argv=None) -> int:
  """``[--check]``: writes (or checks) the table; writes the plots."""
  return report.table_main(__doc__, argv, HERE / "table", HEADER, rows, plots)

if __name__ == "__main__":
  sys.exit(main())
