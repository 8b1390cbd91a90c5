"""cnn_jax.report on hand-written logs: segment wall times, medians, table rows, provenance."""

import json

import pytest

from cnn_jax import report
from cnn_jax.config import base_config


def _write_run(workdir, records, model="cifar10_cnn"):
  workdir.mkdir()
  cfg = base_config()
  cfg.model.name = model
  (workdir / "config.json").write_text(cfg.to_json())
  with (workdir / "metrics.jsonl").open("w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


# A run of 2 epochs x 10 steps, killed after the first epoch and resumed.
RECORDS = [
    {"event": "start", "step": 0, "model": "cifar10_cnn", "num_params": 289194,
     "data_source": "x", "platform": "cpu", "devices": 1},
    {"step": 5, "epoch": 0.5, "train_loss": 2.0, "images_per_s": 100.0, "wall_s": 10.0},
    {"step": 10, "epoch": 1.0, "train_loss": 1.5, "images_per_s": 300.0, "wall_s": 20.0},
    {"step": 10, "epoch": 1.0, "test_loss": 1.4, "test_accuracy": 0.5, "test_count": 100,
     "wall_s": 25.0},
    {"event": "start", "step": 10, "model": "cifar10_cnn", "num_params": 289194,
     "git_commit": "a" * 40, "git_dirty": False, "cpu": "Test CPU", "cpu_count": 2,
     "device_kind": "cpu"},
    {"step": 15, "epoch": 1.5, "train_loss": 1.2, "images_per_s": 200.0, "wall_s": 12.0},
    {"step": 20, "epoch": 2.0, "train_loss": 1.0, "images_per_s": 250.0, "wall_s": 24.0},
    {"step": 20, "epoch": 2.0, "test_loss": 1.1, "test_accuracy": 0.45, "test_count": 100,
     "wall_s": 30.0},
]


def test_summarize_adds_segments_and_takes_final_and_best(tmp_path):
  _write_run(tmp_path / "run", RECORDS)
  s = report.summarize(tmp_path / "run" / "metrics.jsonl")
  assert s["segments"] == 2 and s["wall_s"] == 25.0 + 30.0
  assert s["final_test_accuracy"] == 0.45 and s["best_test_accuracy"] == 0.5
  assert s["best_epoch"] == 1.0 and s["epochs"] == 2.0 and s["steps"] == 20
  # The first train record (compilation) is left out of the median: median(300, 200, 250).
  assert s["median_images_per_s"] == 250.0
  assert s["git_commit"] == "a" * 40 and s["cpu"] == "Test CPU"


def test_summarize_without_evaluation_names_the_file(tmp_path):
  _write_run(tmp_path / "run", RECORDS[:3])
  with pytest.raises(ValueError, match="metrics.jsonl: no evaluation record"):
    report.summarize(tmp_path / "run" / "metrics.jsonl")


def test_comparison_table_row_and_provenance_sidecar(tmp_path):
  # One segment (no resume): wall time is its last wall_s, 30 s = 0.5 min.
  no_prov = [r for r in RECORDS if r.get("event") != "start"]
  _write_run(tmp_path / "old_run", [RECORDS[0]] + no_prov)
  (tmp_path / "old_run" / "provenance.json").write_text(json.dumps(
      {"git_commit": "b" * 40, "git_dirty": False, "cpu": "Side CPU", "cpu_count": 4}))
  # The resumed run also kept a weight EMA: its final EMA top-1 gets its own column.
  _write_run(tmp_path / "new_run", [dict(r, ema_test_accuracy=r["test_accuracy"] + 0.1)
                                    if "test_accuracy" in r else r for r in RECORDS])
  lines = report.comparison_table([tmp_path / "old_run", tmp_path / "new_run"]).splitlines()
  assert len(lines) == 4 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
  # cifar10_cnn MACs per 32x32 image, by hand: convs 32x32x(3*9*32 + 32*9*32),
  # 16x16x(32*9*64 + 64*9*64), 8x8x(64*9*128 + 128*9*128), dense 128*10.
  macs = (32 * 32 * 9 * (3 * 32 + 32 * 32) + 16 * 16 * 9 * (32 * 64 + 64 * 64)
          + 8 * 8 * 9 * (64 * 128 + 128 * 128) + 128 * 10)
  assert lines[2].startswith(f"| old_run | `cifar10_cnn` | 289,194 | {macs / 1e6:.2f} | 2 "
                             f"| 45.00 | 50.00 | - | 250 | 0.5 | 4-core Side CPU | bbbbbbb |")
  assert lines[3].endswith("| 45.00 | 50.00 | 55.00 | 250 | 0.9 | 2-core Test CPU | aaaaaaa |")


@pytest.mark.parametrize("ema", [False, True])
def test_plot_writes_a_png_with_and_without_ema(tmp_path, ema):
  recs = [dict(r, ema_test_accuracy=0.6) if ema and "test_accuracy" in r else r for r in RECORDS]
  _write_run(tmp_path / "run", recs)
  report.plot(tmp_path / "run" / "metrics.jsonl", tmp_path / "curves.png")
  assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
