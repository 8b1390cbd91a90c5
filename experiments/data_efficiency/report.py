"""Table 4, data efficiency: test top-1 at 10% and 100% of the CIFAR-10 training set, from
the runs.

    python -m experiments.data_efficiency.report [--check]

Reads only the run folders (:func:`cnn_jax.report.comparison_row`) and writes
``table.md``, ``table.csv``, ``top1_vs_data.png`` and ``curves.png`` beside this file.
Runs not finished yet are shown as "not run". ``--check`` exits 1 if the committed table
differs from a rebuild.
"""

from __future__ import annotations

import pathlib
import sys

from cnn_jax import report, sweep
from experiments.cifar10_families.run import FAMILY
from experiments.data_efficiency.run import FRACTION, MODELS, RUNS

HERE = pathlib.Path(__file__).parent
HEADER = ["family", "model", "params", "training images", "steps", "test top-1, 10% (%)",
          "test top-1, 100% (%)", "lost at 10% (points)", "hardware", "commits"]


def _done(name: str):
  r = next(r for r in RUNS if r.name == name)
  workdir = r.workdir(HERE)
  return (workdir, report.comparison_row(workdir)) if sweep.run_state(workdir) == "done" \
      else (workdir, None)


def rows():
  """Table rows (one per model) and ``{model: {fraction: (workdir, comparison row)}}``."""
  out, done = [], {}
  for m in MODELS:
    (w_small, small), (w_full, full) = _done(f"{m}_10pct"), _done(m)
    done[m] = {f: (w, r) for f, (w, r) in ((FRACTION, (w_small, small)),
                                           (1.0, (w_full, full))) if r}
    acc = [f"{100 * r['final_test_accuracy']:.2f}" if r else "not run"
           for r in (small, full)]
    lost = (f"{100 * (full['final_test_accuracy'] - small['final_test_accuracy']):.2f}"
            if small and full else "-")
    any_row = small or full
    out.append([FAMILY[m], f"`{m}`", f"{any_row['num_params']:,}" if any_row else "-",
                f"{round(50_000 * FRACTION):,} / 50,000",
                f"{any_row['steps']:,}" if any_row else "-", *acc, lost,
                report.hardware_label(any_row) if any_row else "-",
                " / ".join(report.commit_label(r) for r in (small, full) if r) or "-"])
  return out, done


def plot(done, out: pathlib.Path) -> None:
  """Test top-1 (%) against the fraction of the training set, one line per model."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for m, by_frac in done.items():
    fr = sorted(by_frac)
    if fr:
      ax.plot([100 * f for f in fr], [100 * by_frac[f][1]["final_test_accuracy"] for f in fr],
              marker="o", label=m)
  ax.set(xscale="log", xlabel="training images used (% of 50,000)", ylabel="test top-1 (%)",
         title="CIFAR-10 (JPEG copy), same number of steps")
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def plots(done) -> None:
  """``top1_vs_data.png`` and the training curves of every finished run."""
  if any(done.values()):
    plot(done, HERE / "top1_vs_data.png")
    runs = [(f"{m} ({100 * f:g}%)", w) for m, d in done.items() for f, (w, _) in d.items()]
    report.plot_runs([w for _, w in runs], [n for n, _ in runs], HERE / "curves.png",
                     "CIFAR-10 (JPEG copy): 10% vs 100% of the training set, same steps")


def main(argv=None) -> int:
  """``[--check]``: writes (or checks) the table; writes the plots."""
  return report.table_main(__doc__, argv, HERE / "table", HEADER, rows, plots)

if __name__ == "__main__":
  sys.exit(main())
