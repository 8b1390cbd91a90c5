"""Summarise runs from their logs: final and best top-1, wall time, throughput, curves, and
the architecture comparison table (parameters, MACs, throughput, accuracy).

``python -m cnn_jax.report <workdir> [--plot curves.png]`` prints one run's summary as JSON;
``python -m cnn_jax.report <workdir> [<workdir> ...] --table`` prints a Markdown table with a
row per run. Everything is computed from the logged records (``metrics.jsonl``,
``config.json``) and the model definitions, so README and experiment notes quote numbers a
script made.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

from cnn_jax import provenance
from cnn_jax.metric_writer import read_jsonl


def summarize(metrics_path: str | pathlib.Path) -> dict:
  """Returns the run's headline numbers from its metrics file.

  Keys: ``final_test_accuracy`` (fraction), ``best_test_accuracy``, ``best_epoch``,
  ``final_test_loss``, ``epochs``, ``steps``, ``wall_s`` (seconds, from the last record of the
  last segment; resumed runs add their segments), ``median_images_per_s`` (train records),
  ``segments`` (1 + number of resumes), ``num_params``, ``model``, ``data_source``, ``platform``,
  and the code/hardware provenance of the last segment (``git_commit``, ``cpu``, ... when logged);
  for runs with a weight EMA (``ema_decay > 0``) also ``final_ema_test_accuracy`` and
  ``best_ema_test_accuracy``.

  Raises:
    ValueError: the file has no evaluation record.
  """
  recs = read_jsonl(metrics_path)
  evals = [r for r in recs if "test_accuracy" in r]
  if not evals:
    raise ValueError(f"{metrics_path}: no evaluation record (test_accuracy) yet")
  trains = [r for r in recs if "images_per_s" in r]
  starts = [r for r in recs if r.get("event") == "start"]
  # wall_s restarts at 0 in each resumed segment: add each segment's last value.
  wall, seg_last = 0.0, 0.0
  for r in recs:
    if r.get("event") == "start":
      wall += seg_last
      seg_last = 0.0
    elif "wall_s" in r:
      seg_last = r["wall_s"]
  wall += seg_last
  best = max(evals, key=lambda r: r["test_accuracy"])
  final = evals[-1]
  ema = ({"final_ema_test_accuracy": final["ema_test_accuracy"],
          "best_ema_test_accuracy": max(r["ema_test_accuracy"] for r in evals)}
         if "ema_test_accuracy" in final else {})
  return {
      "model": starts[0].get("model") if starts else None,
      "num_params": starts[0].get("num_params") if starts else None,
      "data_source": starts[0].get("data_source") if starts else None,
      "platform": starts[0].get("platform") if starts else None,
      "devices": starts[0].get("devices") if starts else None,
      **{k: starts[-1].get(k) for k in provenance.KEYS if starts and k in starts[-1]},
      "segments": len(starts),
      "steps": final["step"],
      "epochs": final["epoch"],
      "final_test_accuracy": final["test_accuracy"],
      "final_test_loss": final["test_loss"],
      "test_count": final.get("test_count"),
      "best_test_accuracy": best["test_accuracy"],
      "best_epoch": best["epoch"],
      **ema,
      "wall_s": wall,
      "median_images_per_s": statistics.median(r["images_per_s"] for r in trains[1:] or trains)
                             if trains else None,
  }


def comparison_row(workdir: str | pathlib.Path) -> dict:
  """One row of the comparison table: :func:`summarize` of ``workdir/metrics.jsonl`` plus
  ``macs`` (multiply-accumulates per image of one forward pass, counted by
  :func:`cnn_jax.summary.count_macs` on the model that ``workdir/config.json`` names, at its
  dataset's image size) and ``run`` (the workdir's name). Provenance keys (``git_commit``,
  ``cpu``, ...) missing from the log are taken from ``workdir/provenance.json`` if present.

  Raises:
    FileNotFoundError: ``config.json`` or ``metrics.jsonl`` is missing from ``workdir``.
    ValueError: no evaluation record yet (see :func:`summarize`).
    KeyError: the config names a dataset or model this version does not register.
  """
  from cnn_jax import models  # pylint: disable=g-import-not-at-top
  from cnn_jax.data.datasets import DATASETS  # pylint: disable=g-import-not-at-top
  from cnn_jax.summary import count_macs  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  cfg = json.loads((workdir / "config.json").read_text())
  info = DATASETS[cfg["data"]["name"]]
  model = models.create(cfg["model"]["name"], num_classes=info.num_classes,
                        **cfg["model"].get("kwargs", {}))
  row = summarize(workdir / "metrics.jsonl")
  # Runs logged before the start record carried provenance may have it recorded beside
  # their logs; logged values always win.
  side = workdir / "provenance.json"
  if side.exists():
    for k, v in json.loads(side.read_text()).items():
      row.setdefault(k, v)
  row.update(run=workdir.name, macs=count_macs(model, info.image_shape),
             dataset=cfg["data"]["name"], batch_size=cfg["batch_size"])
  return row


def comparison_table(workdirs) -> str:
  """A Markdown table, one row per run in ``workdirs`` (see :func:`comparison_row`).

  Columns: run, model, parameters, MMACs per image (FLOPs = 2 x MACs), epochs, final and
  best test top-1 (%) of the weights, final test top-1 (%) of the weight EMA ('-' for runs
  without one, ``ema_decay = 0``), median train throughput (images/s, on the run's own
  hardware: compare throughput only between rows with the same hardware column), wall time
  (minutes), hardware and commit.
  """
  head = ("| run | model | params | MMACs/image | epochs | top-1 final (%) | top-1 best (%) "
          "| EMA top-1 final (%) | train images/s | wall (min) | hardware | commit |")
  lines = [head, "|" + " --- |" * head.count(" | ") + " --- |"]
  for w in workdirs:
    r = comparison_row(w)
    hw = r.get("cpu") or r.get("platform") or "?"
    if r.get("device_kind") and r.get("device_kind") != "cpu":
      hw = f"{r['devices']} x {r['device_kind']}"
    elif r.get("cpu_count"):
      hw = f"{r['cpu_count']}-core {hw}"
    commit = (r.get("git_commit") or "?")[:7] + ("+dirty" if r.get("git_dirty") else "")
    ips = "-" if r["median_images_per_s"] is None else f"{r['median_images_per_s']:.0f}"
    ema = (f"{100 * r['final_ema_test_accuracy']:.2f}" if "final_ema_test_accuracy" in r
           else "-")
    lines.append(
        f"| {r['run']} | `{r['model']}` | {r['num_params']:,} | {r['macs'] / 1e6:.2f} "
        f"| {r['epochs']:g} | {100 * r['final_test_accuracy']:.2f} "
        f"| {100 * r['best_test_accuracy']:.2f} | {ema} | {ips} | {r['wall_s'] / 60:.1f} "
        f"| {hw} | {commit} |")
  return "\n".join(lines)


def plot(metrics_path: str | pathlib.Path, out: str | pathlib.Path) -> None:
  """Writes train loss and test top-1 against epochs to ``out`` (PNG); test top-1 of the
  weight EMA too, for runs that kept one."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  recs = read_jsonl(metrics_path)
  tr = [r for r in recs if "train_loss" in r and "test_accuracy" not in r]
  ev = [r for r in recs if "test_accuracy" in r]
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
  a.plot([r["epoch"] for r in tr], [r["train_loss"] for r in tr])
  a.set(xlabel="epoch", ylabel="train loss", yscale="log")
  b.plot([r["epoch"] for r in ev], [100 * r["test_accuracy"] for r in ev], marker=".",
         label="weights")
  ev_ema = [r for r in ev if "ema_test_accuracy" in r]
  if ev_ema:
    b.plot([r["epoch"] for r in ev_ema], [100 * r["ema_test_accuracy"] for r in ev_ema],
           marker=".", label="weight EMA")
    b.legend()
  b.set(xlabel="epoch", ylabel="test top-1 (%)")
  for ax in (a, b):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=120)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("workdirs", type=pathlib.Path, nargs="+", metavar="workdir")
  ap.add_argument("--plot", type=pathlib.Path, default=None,
                  help="write curves to this PNG (one workdir only)")
  ap.add_argument("--table", action="store_true",
                  help="print a Markdown comparison table, one row per workdir")
  args = ap.parse_args()
  if args.table:
    print(comparison_table(args.workdirs))
    return
  if len(args.workdirs) != 1:
    ap.error("give one workdir, or several with --table")
  path = args.workdirs[0] / "metrics.jsonl"
  print(json.dumps(summarize(path), indent=2))
  if args.plot:
    plot(path, args.plot)


if __name__ == "__main__":
  main()
