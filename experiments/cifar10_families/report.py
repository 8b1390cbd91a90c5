"""Table 2, CIFAR-10 from scratch at an equal budget: the table and plots, from the runs.

    python -m experiments.cifar10_families.report [--check]

Reads only the run folders' ``config.json`` and ``metrics.jsonl`` (via
:func:`cnn_jax.report.comparison_row`; MACs are counted on the model the config names)
and writes ``table.md``, ``table.csv``, ``top1_vs_params.png``, ``top1_vs_mmacs.png`` and
``curves.png`` beside this file. Runs not finished yet are listed as "not run".
``--check`` rebuilds the table in memory and exits 1 if the committed files differ.
"""

from __future__ import annotations

import pathlib
import sys

from cnn_jax import report, sweep
from experiments import budget
from experiments.cifar10_families.run import FAMILY, RUNS

HERE = pathlib.Path(__file__).parent
HEADER = ["family", "model", "params", "MMACs/image", "optimizer", "epochs",
          "test top-1 final (%)", "test top-1 best (%)", "train images/s", "wall (min)",
          "hardware", "commit", "seed"]


def build_rows(runs, family: dict, table_dir: pathlib.Path):
  """Table rows (strings, one per run in ``runs`` order; unfinished runs say "not run")
  and ``(run, comparison row)`` pairs of the finished ones."""
  out, done = [], []
  for r in runs:
    workdir = r.workdir(table_dir)
    if sweep.run_state(workdir) != "done":
      out.append([family[r.name], f"`{r.name}`"] + ["-"] * 4 + ["not run"] + ["-"] * 6)
      continue
    row = report.comparison_row(workdir)
    opt = report.run_config(workdir)["optim"]["name"]
    done.append((r, row))
    out.append([family[r.name], f"`{row['model']}`", f"{row['num_params']:,}",
                f"{row['macs'] / 1e6:.2f}", opt, f"{row['epochs']:g}",
                f"{100 * row['final_test_accuracy']:.2f}",
                f"{100 * row['best_test_accuracy']:.2f}",
                f"{row['median_images_per_s']:.0f}", f"{row['wall_s'] / 60:.1f}",
                report.hardware_label(row), report.commit_label(row), str(row["seed"])])
  return out, done


def write_plots(done, table_dir: pathlib.Path, what: str) -> None:
  """Accuracy vs parameters and vs MMACs (log x) and the training curves of ``done``."""
  if not done:
    return
  for key, scale, xlabel, name in (("num_params", 1, "parameters", "top1_vs_params.png"),
                                   ("macs", 1e6, "MMACs per image (1 MAC = 2 FLOPs)",
                                    "top1_vs_mmacs.png")):
    report.plot_tradeoff([(r.name, row[key] / scale, 100 * row["final_test_accuracy"])
                          for r, row in done], table_dir / name, xlabel=xlabel,
                         ylabel="test top-1 (%)", title=what,
                         series=f"{budget.EPOCHS} epochs, one run each (seed 0)")
  report.plot_runs([r.workdir(table_dir) for r, _ in done], [r.name for r, _ in done],
                   table_dir / "curves.png", what)


def main(argv=None, runs=RUNS, family=FAMILY, table_dir=HERE,
         what=f"CIFAR-10 (JPEG copy), {budget.EPOCHS} epochs each") -> int:
  """The report's command line (``--check``); other tables over the same families pass
  their own ``runs``, ``table_dir`` and title."""
  return report.table_main(__doc__, argv, table_dir / "table", HEADER,
                           lambda: build_rows(runs, family, table_dir),
                           lambda done: write_plots(done, table_dir, what))

if __name__ == "__main__":
  sys.exit(main())
