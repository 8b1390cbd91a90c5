"""Summarise a run's ``metrics.jsonl``: final and best top-1, wall time, throughput, curves.

``python -m cnn_jax.report <workdir> [--plot curves.png]`` prints a Markdown summary computed
from the logged records only (so README and experiment notes quote numbers a script made).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics

from cnn_jax.metric_writer import read_jsonl


def summarize(metrics_path: str | pathlib.Path) -> dict:
  """Returns the run's headline numbers from its metrics file.

  Keys: ``final_test_accuracy`` (fraction), ``best_test_accuracy``, ``best_epoch``,
  ``final_test_loss``, ``epochs``, ``steps``, ``wall_s`` (seconds, from the last record of the
  last segment; resumed runs add their segments), ``median_images_per_s`` (train records),
  ``segments`` (1 + number of resumes), ``num_params``, ``model``, ``data_source``, ``platform``.

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
  return {
      "model": starts[0].get("model") if starts else None,
      "num_params": starts[0].get("num_params") if starts else None,
      "data_source": starts[0].get("data_source") if starts else None,
      "platform": starts[0].get("platform") if starts else None,
      "devices": starts[0].get("devices") if starts else None,
      "segments": len(starts),
      "steps": final["step"],
      "epochs": final["epoch"],
      "final_test_accuracy": final["test_accuracy"],
      "final_test_loss": final["test_loss"],
      "test_count": final.get("test_count"),
      "best_test_accuracy": best["test_accuracy"],
      "best_epoch": best["epoch"],
      "wall_s": wall,
      "median_images_per_s": statistics.median(r["images_per_s"] for r in trains[1:] or trains)
                             if trains else None,
  }


def plot(metrics_path: str | pathlib.Path, out: str | pathlib.Path) -> None:
  """Writes train loss and test top-1 against epochs to ``out`` (PNG)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  recs = read_jsonl(metrics_path)
  tr = [r for r in recs if "train_loss" in r and "test_accuracy" not in r]
  ev = [r for r in recs if "test_accuracy" in r]
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
  a.plot([r["epoch"] for r in tr], [r["train_loss"] for r in tr])
  a.set(xlabel="epoch", ylabel="train loss", yscale="log")
  b.plot([r["epoch"] for r in ev], [100 * r["test_accuracy"] for r in ev], marker=".")
  b.set(xlabel="epoch", ylabel="test top-1 (%)")
  for ax in (a, b):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=120)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("workdir", type=pathlib.Path)
  ap.add_argument("--plot", type=pathlib.Path, default=None, help="write curves to this PNG")
  args = ap.parse_args()
  path = args.workdir / "metrics.jsonl"
  s = summarize(path)
  print(json.dumps(s, indent=2))
  if args.plot:
    plot(path, args.plot)


if __name__ == "__main__":
  main()
